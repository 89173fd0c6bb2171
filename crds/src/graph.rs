//! `StreamJob` spec -> [`LogicalGraph`].
//!
//! Sources, transformations and sinks become nodes, in step order (so every edge goes from a
//! lower to a higher node id, as the planner requires). `keyBy` and `rebalance` steps are
//! not nodes: they are properties of the edges that leave them. An edge from step `a`
//! through `keyBy k` to step `b` is `a -> b` with [`Partitioning::Hash`], and
//! [`JobGraph::edge_key_by`] records `k`, whose expression computes the key; through
//! `rebalance` it is [`Partitioning::Rebalance`]. When such steps are stacked the last one
//! wins (a `keyBy` after a `keyBy` re-keys, a `rebalance` after a `keyBy` drops the keying),
//! as with Flink's `DataStream` calls.

use crate::plan::{LogicalEdge, LogicalGraph, LogicalNode, NodeKind, Partitioning};
use crate::spec::{StreamJob, StreamJobSpec};
use crate::validate::{late_output_targets, resolve_inputs};

/// The logical graph of a job plus the mapping back to its steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobGraph {
    pub graph: LogicalGraph,
    /// For each node id: the index in `spec.steps` it came from.
    pub node_step: Vec<usize>,
    /// For each step: its node id (`None` for `keyBy` and `rebalance` steps, which are edges,
    /// and for steps with no valid kind).
    pub step_node: Vec<Option<usize>>,
    /// Parallel to `graph.edges`: for a `Hash` edge, the index of the `keyBy` step whose
    /// expression computes the key.
    pub edge_key_by: Vec<Option<usize>>,
    /// Parallel to `graph.edges`: whether the edge carries a window's late records (its
    /// `lateOutput`) rather than its results.
    pub edge_late: Vec<bool>,
}

impl JobGraph {
    /// Step index of the node.
    pub fn step_of(&self, node: usize) -> usize {
        self.node_step[node]
    }

    /// The `keyBy` step keying the input of `node`, when its hash-partitioned inputs all
    /// share one (the usual case: a `reduce` right after a `keyBy`).
    pub fn key_by_of(&self, node: usize) -> Option<usize> {
        let mut keys = self
            .graph
            .edges
            .iter()
            .zip(&self.edge_key_by)
            .filter(|(e, _)| e.to == node)
            .filter_map(|(_, k)| *k);
        let first = keys.next()?;
        keys.all(|k| k == first).then_some(first)
    }
}

/// Node operator name of a step kind: `source:<kind>`, `map`, `filter`, `flat_map`,
/// `reduce`, `sink:<kind>`.
fn operator(spec: &StreamJobSpec, i: usize) -> Option<(NodeKind, String, Option<u32>)> {
    let step = &spec.steps[i];
    Some(match step.kind()? {
        "source" => {
            let src = step.source.as_ref()?;
            let kind = *src.kinds().first()?;
            let limit = matches!(kind, "socket" | "collection").then_some(1);
            (NodeKind::Source, format!("source:{kind}"), limit)
        }
        "sink" => {
            let sink = step.sink.as_ref()?;
            (
                NodeKind::Sink,
                format!("sink:{}", sink.kinds().first()?),
                None,
            )
        }
        "map" => (NodeKind::Transform, "map".into(), None),
        "filter" => (NodeKind::Transform, "filter".into(), None),
        "flatMap" => (NodeKind::Transform, "flat_map".into(), None),
        "reduce" => (NodeKind::Transform, "reduce".into(), None),
        "window" => {
            let w = step.window.as_ref()?;
            let assigner = [
                (w.tumbling.is_some(), "tumbling"),
                (w.sliding.is_some(), "sliding"),
                (w.session.is_some(), "session"),
                (w.count.is_some(), "count"),
            ]
            .into_iter()
            .find_map(|(set, n)| set.then_some(n))?;
            // Without a keyBy before it, a window sees every record: one subtask (Flink's
            // windowAll).
            let inputs = resolve_inputs(spec);
            let keyed = !inputs[i].is_empty()
                && inputs[i]
                    .iter()
                    .all(|&k| spec.steps[k].kind() == Some("keyBy"));
            let limit = (!keyed).then_some(1);
            (NodeKind::Transform, format!("window:{assigner}"), limit)
        }
        _ => return None,
    })
}

/// Builds the job graph. Meant for validated specs; on an invalid one it is best-effort
/// (unknown inputs and steps without a kind are left out).
pub fn to_job_graph(job: &StreamJob) -> JobGraph {
    let spec = &job.spec;
    let mut graph = LogicalGraph::new(job.metadata.name.clone().unwrap_or_default());
    graph.default_parallelism = spec.parallelism;
    graph.max_parallelism = spec.max_parallelism;
    let inputs = resolve_inputs(spec);
    let late = late_output_targets(spec);
    let n = spec.steps.len();
    let mut node_step = Vec::new();
    let mut step_node = vec![None; n];
    let mut edge_key_by = Vec::new();
    let mut edge_late = Vec::new();
    // For each step: the (node, partitioning, keyBy step, late) its consumers connect to.
    let mut ends: Vec<Vec<End>> = Vec::with_capacity(n);

    for (i, step) in spec.steps.iter().enumerate() {
        let mut upstream: Vec<End> = inputs[i].iter().flat_map(|&k| ends[k].clone()).collect();
        if let Some(&w) = late.get(&i)
            && let Some(node) = step_node[w]
        {
            upstream.push((node, Partitioning::Forward, None, true));
        }
        let mine = match step.kind() {
            Some("keyBy") => upstream
                .iter()
                .map(|&(node, _, _, late)| (node, Partitioning::Hash, Some(i), late))
                .collect(),
            Some("rebalance") => upstream
                .iter()
                .map(|&(node, _, _, late)| (node, Partitioning::Rebalance, None, late))
                .collect(),
            _ => match operator(spec, i) {
                Some((kind, op, limit)) => {
                    let id = graph.nodes.len();
                    graph.nodes.push(LogicalNode {
                        id,
                        kind,
                        operator: op,
                        name: step.name.clone(),
                        uid: step.uid.clone(),
                        parallelism: step.parallelism,
                        max_parallelism: limit,
                    });
                    node_step.push(i);
                    step_node[i] = Some(id);
                    for (from, partitioning, key, late) in upstream {
                        graph.edges.push(LogicalEdge {
                            from,
                            to: id,
                            partitioning,
                        });
                        edge_key_by.push(key);
                        edge_late.push(late);
                    }
                    // A source's timestamps and watermarks are an operator of their own,
                    // chained to it (as Flink's `assignTimestampsAndWatermarks`), so their
                    // checkpointed watermark has a uid of its own.
                    let tail = match step.source.as_ref().filter(|s| s.watermarks.is_some()) {
                        Some(_) => {
                            let w = graph.nodes.len();
                            graph.nodes.push(LogicalNode {
                                id: w,
                                kind: NodeKind::Transform,
                                operator: WATERMARKS_OPERATOR.into(),
                                name: format!("{}.watermarks", step.name),
                                uid: step.uid.as_ref().map(|u| format!("{u}.watermarks")),
                                parallelism: step.parallelism,
                                max_parallelism: limit,
                            });
                            node_step.push(i);
                            graph.edges.push(LogicalEdge {
                                from: id,
                                to: w,
                                partitioning: Partitioning::Forward,
                            });
                            edge_key_by.push(None);
                            edge_late.push(false);
                            w
                        }
                        None => id,
                    };
                    vec![(tail, Partitioning::Forward, None, false)]
                }
                None => Vec::new(),
            },
        };
        ends.push(mine);
    }
    JobGraph {
        graph,
        node_step,
        step_node,
        edge_key_by,
        edge_late,
    }
}

/// Operator name of the node that assigns a source's timestamps and watermarks.
pub const WATERMARKS_OPERATOR: &str = "watermarks";

/// Where a consumer connects: (node, partitioning, keyBy step, carries late records).
type End = (usize, Partitioning, Option<usize>, bool);

/// The logical graph of a job (see [`to_job_graph`] for the mapping back to steps).
pub fn to_logical_graph(job: &StreamJob) -> LogicalGraph {
    to_job_graph(job).graph
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{parse_job, validate_job};
    use Partitioning::*;

    fn graph(steps: &str) -> JobGraph {
        let body: String = steps.lines().map(|l| format!("    {l}\n")).collect();
        let text = format!(
            "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: g\nspec:\n  parallelism: 2\n  steps:\n{body}"
        );
        let job = parse_job(&text).unwrap();
        if let Err(e) = validate_job(&job) {
            panic!("{e:?}");
        }
        to_job_graph(&job)
    }

    fn edges(g: &JobGraph) -> Vec<(usize, usize, Partitioning, Option<usize>)> {
        g.graph
            .edges
            .iter()
            .zip(&g.edge_key_by)
            .map(|(e, k)| (e.from, e.to, e.partitioning, *k))
            .collect()
    }

    #[test]
    fn fan_out_and_fan_in() {
        let g = graph(
            "- {name: src, source: {file: {path: /x}}}
- {name: a, map: {expr: value}}
- {name: b, input: [src], filter: {expr: 'value != \"\"'}}
- {name: u, input: [a, b], map: {expr: value}}
- {name: out, sink: {print: {}}}",
        );
        assert_eq!(
            edges(&g),
            [
                (0, 1, Forward, None),
                (0, 2, Forward, None),
                (1, 3, Forward, None),
                (2, 3, Forward, None),
                (3, 4, Forward, None)
            ]
        );
        assert_eq!(g.graph.plan().unwrap().chains.len(), 4);
    }

    #[test]
    fn rebalance_and_key_by_are_edges_and_the_last_one_wins() {
        let g = graph(
            "- {name: src, source: {file: {path: /x}}}
- {name: spread, rebalance: {}}
- {name: m, map: {expr: value}}
- {name: k1, keyBy: {expr: value}}
- {name: k2, keyBy: {expr: size(value)}}
- {name: r, reduce: {expr: acc}}
- {name: rb, rebalance: {}}
- {name: out, sink: {print: {}}}",
        );
        let names: Vec<&str> = g.graph.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["src", "m", "r", "out"]);
        assert_eq!(
            edges(&g),
            [
                (0, 1, Rebalance, None),
                (1, 2, Hash, Some(4)),
                (2, 3, Rebalance, None)
            ]
        );
        assert_eq!(g.key_by_of(2), Some(4));
        assert_eq!(g.key_by_of(3), None);
        assert_eq!(g.node_step, [0, 2, 5, 7]);
    }

    #[test]
    fn one_key_by_feeding_two_steps() {
        let g = graph(
            "- {name: src, source: {collection: {values: [1, 2]}}}
- {name: k, keyBy: {expr: value}}
- {name: sum, reduce: {expr: acc + value}}
- {name: max, input: [k], reduce: {expr: 'acc > value ? acc : value'}}
- {name: out, input: [sum, max], sink: {print: {}}}",
        );
        assert_eq!(
            edges(&g),
            [
                (0, 1, Hash, Some(1)),
                (0, 2, Hash, Some(1)),
                (1, 3, Forward, None),
                (2, 3, Forward, None)
            ]
        );
        assert_eq!(g.graph.nodes[0].max_parallelism, Some(1));
        assert_eq!(g.graph.nodes[0].operator, "source:collection");
        let plan = g.graph.plan().unwrap();
        assert_eq!(plan.nodes[0].parallelism, 1);
        assert_eq!(plan.nodes[1].parallelism, 2);
    }
}
