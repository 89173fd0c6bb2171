//! `watermarks` and `window` in the spec: what validates, what is rejected (with the step
//! and field), and the graph a window step becomes.

use std::time::Duration;

use streamjob_crds::Partitioning;
use streamjob_crds::graph::to_job_graph;
use streamjob_crds::spec::AggregateFunction;
use streamjob_crds::validate::{
    StepOp, ValidatedJob, WindowAggregation, WindowAssigner, parse_job, validate_job,
};

fn job(steps: &str) -> String {
    let body: String = steps.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: t\nspec:\n  parallelism: 2\n  steps:\n{body}"
    )
}

const SRC: &str = "- name: src\n  source:\n    collection: {values: [{u: a, ts: 1}]}\n    watermarks: {timestamp: value.ts, maxOutOfOrderness: 5s, idleness: 1m}";

fn valid(steps: &str) -> ValidatedJob {
    let text = job(steps);
    let parsed = parse_job(&text).unwrap_or_else(|e| panic!("parse failed: {e}\n{text}"));
    validate_job(&parsed).unwrap_or_else(|e| panic!("{e:#?}\n{text}"))
}

#[track_caller]
fn assert_error(steps: &str, path: &str, fragment: &str) {
    let text = job(steps);
    let parsed = parse_job(&text).unwrap_or_else(|e| panic!("parse failed: {e}\n{text}"));
    let errs: Vec<(String, String)> = match validate_job(&parsed) {
        Ok(_) => panic!("spec unexpectedly valid:\n{text}"),
        Err(errs) => errs.into_iter().map(|e| (e.path, e.message)).collect(),
    };
    assert!(
        errs.iter().any(|(p, m)| p == path && m.contains(fragment)),
        "expected {path}: ..{fragment}.. in {errs:#?}"
    );
}

fn window(body: &str) -> String {
    format!(
        "{SRC}\n- name: by-user\n  keyBy: {{expr: value.u}}\n- name: w\n  window:\n{}\n- name: out\n  sink: {{print: {{}}}}",
        body.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

#[test]
fn a_keyed_tumbling_window_with_aggregates_compiles() {
    let v = valid(&window(
        "tumbling: {size: 1m}\nallowedLateness: 30s\naggregates:\n- {name: clicks, function: count}\n- {name: total, function: sum, expr: value.ts}\noutput: \"{'user': key, 'start': window.start, 'clicks': clicks, 'total': total}\"",
    ));
    let w = match &v.steps[2].op {
        StepOp::Window(w) => w,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        w.assigner,
        WindowAssigner::Tumbling {
            size: Duration::from_secs(60)
        }
    );
    assert_eq!(w.allowed_lateness, Duration::from_secs(30));
    assert!(w.keyed);
    assert_eq!(w.output_vars(), ["key", "window", "clicks", "total"]);
    match &w.aggregation {
        WindowAggregation::Aggregates(a) => {
            assert_eq!(a[0].function, AggregateFunction::Count);
            assert!(a[0].expr.is_none());
            assert_eq!(a[1].expr.as_ref().unwrap().source(), "value.ts");
        }
        other => panic!("{other:?}"),
    }
    let wm = v.steps[0].watermarks.as_ref().unwrap();
    assert_eq!(wm.max_out_of_orderness, Duration::from_secs(5));
    assert_eq!(wm.idleness, Some(Duration::from_secs(60)));
}

#[test]
fn every_assigner_and_reduce_compile() {
    for (assigner, expected) in [
        (
            "sliding: {size: 10s, slide: 2s}",
            WindowAssigner::Sliding {
                size: Duration::from_secs(10),
                slide: Duration::from_secs(2),
            },
        ),
        (
            "session: {gap: 250ms}",
            WindowAssigner::Session {
                gap: Duration::from_millis(250),
            },
        ),
        (
            "count: {size: 3}",
            WindowAssigner::Count { size: 3, slide: 3 },
        ),
        (
            "count: {size: 3, slide: 1}",
            WindowAssigner::Count { size: 3, slide: 1 },
        ),
    ] {
        let v = valid(&window(&format!(
            "{assigner}\nreduce: \"acc.ts > value.ts ? acc : value\"\noutput: \"[key, value]\""
        )));
        match &v.steps[2].op {
            StepOp::Window(w) => {
                assert_eq!(w.assigner, expected);
                assert_eq!(w.output_vars(), ["key", "window", "value"]);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_window_without_key_by_is_one_subtask_and_late_records_get_their_own_edge() {
    let text = job(&format!(
        "{SRC}\n- name: w\n  window:\n    tumbling: {{size: 1s}}\n    aggregates: [{{name: n, function: count}}]\n    lateOutput: late\n- name: out\n  sink: {{print: {{}}}}\n- name: late\n  sink: {{print: {{}}}}"
    ));
    let parsed = parse_job(&text).unwrap();
    let v = validate_job(&parsed).unwrap();
    match &v.steps[1].op {
        StepOp::Window(w) => {
            assert!(!w.keyed);
            assert_eq!(w.late_output, Some(3));
        }
        other => panic!("{other:?}"),
    }
    let g = to_job_graph(&parsed);
    let names: Vec<&str> = g.graph.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["src", "src.watermarks", "w", "out", "late"]);
    assert_eq!(g.graph.nodes[1].operator, "watermarks");
    assert_eq!(g.graph.nodes[2].operator, "window:tumbling");
    assert_eq!(g.graph.nodes[2].max_parallelism, Some(1));
    let edges: Vec<(usize, usize, Partitioning, bool)> = g
        .graph
        .edges
        .iter()
        .zip(&g.edge_late)
        .map(|(e, l)| (e.from, e.to, e.partitioning, *l))
        .collect();
    assert_eq!(
        edges,
        [
            (0, 1, Partitioning::Forward, false),
            (1, 2, Partitioning::Forward, false),
            (2, 3, Partitioning::Forward, false),
            (2, 4, Partitioning::Forward, true)
        ]
    );
    let plan = g.graph.plan().unwrap();
    assert_eq!(plan.nodes[2].parallelism, 1);
    assert_eq!(
        plan.chains[0].nodes,
        [0, 1, 2],
        "source, watermarks and window chain"
    );
    assert!(
        plan.explain().contains("w (window:tumbling"),
        "{}",
        plan.explain()
    );
}

#[test]
fn nexmark_sources_carry_their_own_timestamps() {
    let v = valid(
        "- name: events\n  source:\n    nexmark: {events: 1000, eventsPerSecond: 100}\n    watermarks: {maxOutOfOrderness: 0s}\n- name: bids\n  filter: {expr: \"value.type == 'bid'\"}\n- name: w\n  window:\n    tumbling: {size: 10s}\n    aggregates: [{name: top, function: max, expr: value.price}]\n- name: out\n  sink: {print: {}}",
    );
    assert!(v.steps[0].watermarks.as_ref().unwrap().timestamp.is_none());
}

#[test]
fn bad_durations_name_the_field() {
    assert_error(
        &window("tumbling: {size: 1d}\naggregates: [{name: n, function: count}]"),
        "spec.steps[2].window.tumbling.size",
        "unknown unit 'd'",
    );
    assert_error(
        &window("tumbling: {size: 0s}\naggregates: [{name: n, function: count}]"),
        "spec.steps[2].window.tumbling.size",
        "longer than 0",
    );
    assert_error(
        &window("sliding: {size: 1s, slide: 2s}\naggregates: [{name: n, function: count}]"),
        "spec.steps[2].window.sliding.slide",
        "longer than size",
    );
    assert_error(
        &window("sliding: {size: 1h, slide: 1ms}\naggregates: [{name: n, function: count}]"),
        "spec.steps[2].window.sliding.slide",
        "more than 1000 windows",
    );
    assert_error(
        &window("session: {gap: 5 m}\naggregates: [{name: n, function: count}]"),
        "spec.steps[2].window.session.gap",
        "expected a duration",
    );
    assert_error(
        &window(
            "tumbling: {size: 1s}\nallowedLateness: soon\naggregates: [{name: n, function: count}]",
        ),
        "spec.steps[2].window.allowedLateness",
        "expected a duration",
    );
    let src = "- name: src\n  source:\n    collection: {values: [1]}\n    watermarks: {timestamp: value, maxOutOfOrderness: 5x}\n- name: out\n  sink: {print: {}}";
    assert_error(
        src,
        "spec.steps[0].source.watermarks.maxOutOfOrderness",
        "unknown unit 'x'",
    );
}

#[test]
fn window_kind_and_aggregation_mistakes_name_the_field() {
    assert_error(
        &window(
            "tumbling: {size: 1s}\nsession: {gap: 1s}\naggregates: [{name: n, function: count}]",
        ),
        "spec.steps[2].window",
        "found tumbling and session",
    );
    assert_error(
        &window("tumbling: {size: 1s}"),
        "spec.steps[2].window",
        "exactly one of aggregates",
    );
    assert_error(
        &window("tumbling: {size: 1s}\naggregates: [{name: n, function: sum}]"),
        "spec.steps[2].window.aggregates[0].expr",
        "sum needs an expr",
    );
    assert_error(
        &window("tumbling: {size: 1s}\naggregates: [{name: n, function: count, expr: value}]"),
        "spec.steps[2].window.aggregates[0].expr",
        "count takes no expr",
    );
    assert_error(
        &window("tumbling: {size: 1s}\naggregates: [{name: key, function: count}]"),
        "spec.steps[2].window.aggregates[0].name",
        "taken by a variable",
    );
    assert_error(
        &window(
            "tumbling: {size: 1s}\naggregates: [{name: n, function: count}, {name: n, function: max, expr: value}]",
        ),
        "spec.steps[2].window.aggregates[1].name",
        "duplicate aggregate 'n'",
    );
    assert_error(
        &window("tumbling: {size: 1s}\naggregates: [{name: n, function: sum, expr: \"'x'\"}]"),
        "spec.steps[2].window.aggregates[0].expr",
        "must return int or uint or double",
    );
    assert_error(
        &window(
            "tumbling: {size: 1s}\naggregates: [{name: n, function: count}]\noutput: \"[key, m]\"",
        ),
        "spec.steps[2].window.output",
        "does not compile",
    );
    assert_error(
        &window("tumbling: {size: 1s}\nreduce: \"acc +\""),
        "spec.steps[2].window.reduce",
        "does not compile",
    );
}

#[test]
fn time_and_lateness_mistakes_name_the_field() {
    assert_error(
        &window("count: {size: 2}\ntime: event\naggregates: [{name: n, function: count}]"),
        "spec.steps[2].window.time",
        "count windows",
    );
    assert_error(
        &window("count: {size: 2, slide: 3}\naggregates: [{name: n, function: count}]"),
        "spec.steps[2].window.count.slide",
        "between 1 and size (2)",
    );
    assert_error(
        &window(
            "tumbling: {size: 1s}\ntime: processing\nallowedLateness: 1s\naggregates: [{name: n, function: count}]",
        ),
        "spec.steps[2].window.allowedLateness",
        "needs time: event",
    );
    assert_error(
        &window(
            "tumbling: {size: 1s}\ntime: processing\nlateOutput: out\naggregates: [{name: n, function: count}]",
        ),
        "spec.steps[2].window.lateOutput",
        "only event-time windows",
    );
    assert_error(
        &window(
            "tumbling: {size: 1s}\nlateOutput: nowhere\naggregates: [{name: n, function: count}]",
        ),
        "spec.steps[2].window.lateOutput",
        "unknown step 'nowhere'",
    );
    assert_error(
        &window("tumbling: {size: 1s}\nlateOutput: src\naggregates: [{name: n, function: count}]"),
        "spec.steps[2].window.lateOutput",
        "not after this step",
    );
    let no_watermarks = "- name: src\n  source: {collection: {values: [1]}}\n- name: w\n  window:\n    tumbling: {size: 1s}\n    aggregates: [{name: n, function: count}]\n- name: out\n  sink: {print: {}}";
    assert_error(
        no_watermarks,
        "spec.steps[1].window.time",
        "source 'src' has no watermarks",
    );
    // Processing time needs no timestamps.
    valid(&no_watermarks.replace(
        "tumbling: {size: 1s}",
        "tumbling: {size: 1s}\n    time: processing",
    ));
    assert_error(
        "- name: src\n  source:\n    collection: {values: [1]}\n    watermarks: {maxOutOfOrderness: 1s}\n- name: out\n  sink: {print: {}}",
        "spec.steps[0].source.watermarks.timestamp",
        "required",
    );
    assert_error(
        "- name: src\n  source:\n    collection: {values: [1]}\n    watermarks: {timestamp: \"'x'\"}\n- name: out\n  sink: {print: {}}",
        "spec.steps[0].source.watermarks.timestamp",
        "must return int",
    );
}

#[test]
fn a_window_over_all_records_must_run_in_one_subtask() {
    assert_error(
        &format!(
            "{SRC}\n- name: w\n  parallelism: 2\n  window:\n    tumbling: {{size: 1s}}\n    aggregates: [{{name: n, function: count}}]\n- name: out\n  sink: {{print: {{}}}}"
        ),
        "spec.steps[1].parallelism",
        "parallelism must be 1",
    );
}
