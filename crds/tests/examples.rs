//! The bundled example manifests parse, validate, map to a plannable graph, and (for the
//! bounded ones) compute what they should when run by a tiny in-test interpreter.

use std::collections::HashMap;
use std::path::PathBuf;

use streamjob_crds::expr::Value;
use streamjob_crds::graph::to_job_graph;
use streamjob_crds::plan::{NodeKind, Partitioning};
use streamjob_crds::spec::StreamJob;
use streamjob_crds::validate::{StepOp, ValidatedJob};
use streamjob_crds::validate::{parse_job, validate_job};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

fn load(name: &str) -> (StreamJob, ValidatedJob) {
    let path = examples_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let job = parse_job(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let validated = validate_job(&job).unwrap_or_else(|errs| {
        panic!(
            "{name} is invalid:\n{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    (job, validated)
}

#[test]
fn every_example_is_valid_and_plans() {
    let mut seen = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let (job, _) = load(&name);
            let plan = to_job_graph(&job)
                .graph
                .plan()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(plan.slots_needed() >= 1);
            seen += 1;
        }
    }
    assert!(seen >= 4, "expected at least 4 examples, found {seen}");
}

#[test]
fn wordcount_graph_has_a_hash_edge_keyed_by_the_key_by_step() {
    let (job, _) = load("wordcount.yaml");
    let g = to_job_graph(&job);
    let names: Vec<&str> = g.graph.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["lines", "words", "pairs", "counts", "print"]);
    let ops: Vec<&str> = g.graph.nodes.iter().map(|n| n.operator.as_str()).collect();
    assert_eq!(
        ops,
        ["source:file", "flat_map", "map", "reduce", "sink:print"]
    );
    assert_eq!(g.graph.nodes[0].kind, NodeKind::Source);
    assert_eq!(g.graph.nodes[4].kind, NodeKind::Sink);
    let edges: Vec<(usize, usize, Partitioning)> = g
        .graph
        .edges
        .iter()
        .map(|e| (e.from, e.to, e.partitioning))
        .collect();
    assert_eq!(
        edges,
        [
            (0, 1, Partitioning::Forward),
            (1, 2, Partitioning::Forward),
            (2, 3, Partitioning::Hash),
            (3, 4, Partitioning::Forward),
        ]
    );
    assert_eq!(g.edge_key_by, [None, None, Some(3), None]);
    assert_eq!(g.key_by_of(3), Some(3));
    assert_eq!(
        g.step_node,
        [Some(0), Some(1), Some(2), None, Some(3), Some(4)]
    );
    assert_eq!(g.step_of(3), 4);
    let plan = g.graph.plan().unwrap();
    assert_eq!(plan.chains.len(), 2, "{}", plan.explain());
}

#[test]
fn socket_source_is_not_parallel() {
    let (job, _) = load("wordcount-socket.yaml");
    let g = to_job_graph(&job);
    assert_eq!(g.graph.nodes[0].operator, "source:socket");
    assert_eq!(g.graph.nodes[0].max_parallelism, Some(1));
    let plan = g.graph.plan().unwrap();
    assert_eq!(plan.nodes[0].parallelism, 1);
    assert_eq!(plan.nodes[1].parallelism, 2);
}

/// Runs a validated job on one thread: bounded sources only, records flow step by step,
/// rolling reduce per key. Returns what the sinks received, as text.
fn run(job: &ValidatedJob, file_base: &std::path::Path) -> Vec<String> {
    let mut outputs: Vec<Vec<Value>> = Vec::new();
    let mut keys: Vec<Vec<Option<Value>>> = Vec::new();
    let mut printed = Vec::new();
    for step in &job.steps {
        let mut input: Vec<(Value, Option<Value>)> = Vec::new();
        for &i in &step.inputs {
            input.extend(outputs[i].iter().cloned().zip(keys[i].iter().cloned()));
        }
        let mut out = Vec::new();
        let mut out_keys = Vec::new();
        let mut state: HashMap<Value, Value> = HashMap::new();
        match &step.op {
            StepOp::Source(src) => {
                if let Some(c) = &src.collection {
                    out.extend(c.values.iter().map(Value::from));
                } else if let Some(f) = &src.file {
                    let name = std::path::Path::new(&f.path).file_name().unwrap();
                    let text = std::fs::read_to_string(file_base.join(name)).unwrap();
                    out.extend(text.lines().map(Value::from));
                } else {
                    panic!("unbounded source in test");
                }
                out_keys.resize(out.len(), None);
            }
            StepOp::Map(p) => {
                for (v, _) in input {
                    out.push(p.eval(&[&v]).unwrap());
                    out_keys.push(None);
                }
            }
            StepOp::Filter(p) => {
                for (v, _) in input {
                    if p.eval_bool(&[&v]).unwrap() {
                        out.push(v);
                        out_keys.push(None);
                    }
                }
            }
            StepOp::FlatMap(p) => {
                for (v, _) in input {
                    for x in p.eval(&[&v]).unwrap().as_list().unwrap() {
                        out.push(x.clone());
                        out_keys.push(None);
                    }
                }
            }
            StepOp::KeyBy(p) => {
                for (v, _) in input {
                    let k = p.eval(&[&v]).unwrap();
                    assert!(k.is_key());
                    out.push(v);
                    out_keys.push(Some(k));
                }
            }
            StepOp::Reduce(p) => {
                for (v, k) in input {
                    let k = k.expect("reduce input is keyed");
                    let next = match state.get(&k) {
                        None => v,
                        Some(acc) => p.eval(&[acc, &v, &k]).unwrap(),
                    };
                    state.insert(k, next.clone());
                    out.push(next);
                    out_keys.push(None);
                }
            }
            StepOp::Window(_) => panic!("windows need event time: not simulated here"),
            StepOp::Rebalance => {
                for (v, _) in input {
                    out.push(v);
                    out_keys.push(None);
                }
            }
            StepOp::Sink { .. } => {
                printed.extend(input.iter().map(|(v, _)| v.to_string()));
            }
        }
        outputs.push(out);
        keys.push(out_keys);
    }
    printed
}

#[test]
fn wordcount_counts_the_bundled_text() {
    let (_, job) = load("wordcount.yaml");
    let printed = run(&job, &examples_dir().join("data"));
    let text = std::fs::read_to_string(examples_dir().join("data/words.txt")).unwrap();
    let total = text.split_whitespace().count();
    assert_eq!(printed.len(), total);
    let the = text
        .split_whitespace()
        .filter(|w| w.eq_ignore_ascii_case("the"))
        .count();
    assert!(the > 10);
    assert!(
        printed.contains(&format!(r#"["the",{the}]"#)),
        "{printed:?}"
    );
}

#[test]
fn user_events_count_per_user() {
    let (_, job) = load("user-events.yaml");
    let printed = run(&job, &examples_dir());
    assert_eq!(printed.len(), 6, "the event without a user is filtered out");
    assert_eq!(
        printed.last().unwrap(),
        r#"{"count":2,"last":"click","user":"bob"}"#
    );
    assert!(printed.contains(&r#"{"count":3,"last":"purchase","user":"alice"}"#.to_string()));
}
