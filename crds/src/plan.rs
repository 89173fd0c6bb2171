//! Logical graph -> physical plan.
//!
//! The logical graph is what an API (the Rust `DataStream` builder or a `StreamJob` spec)
//! produces: operators and the edges between them, with no code attached. The planner decides
//! parallelism, fuses operators into chains by Flink's rule and, for distributed runs, assigns
//! subtasks to workers. Everything here is plain data so that the operator (which sizes the
//! StatefulSet) and every worker (which runs its share) compute the same answer.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::keygroup::{DEFAULT_MAX_PARALLELISM, MAX_MAX_PARALLELISM};

/// How records of an edge are distributed over the downstream subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Partitioning {
    /// Subtask i feeds subtask i. Requires equal parallelism; chainable.
    Forward,
    /// Round-robin over all downstream subtasks.
    Rebalance,
    /// By key group of the record's key (`key_by`).
    Hash,
    /// Every record to every downstream subtask.
    Broadcast,
}

impl Partitioning {
    pub fn label(self) -> &'static str {
        match self {
            Partitioning::Forward => "FORWARD",
            Partitioning::Rebalance => "REBALANCE",
            Partitioning::Hash => "HASH",
            Partitioning::Broadcast => "BROADCAST",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeKind {
    Source,
    Transform,
    Sink,
}

/// One operator of the logical graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogicalNode {
    /// Dense index, also the node's position in `LogicalGraph::nodes`.
    pub id: usize,
    pub kind: NodeKind,
    /// What the operator does, e.g. `map`, `reduce`, `source:file`, `sink:print`.
    pub operator: String,
    /// Display name (defaults to the operator).
    pub name: String,
    /// Stable id used to match state on restore; see [`LogicalGraph::uids`] for the default.
    pub uid: Option<String>,
    /// Parallelism set on this operator; `None` uses the job default.
    pub parallelism: Option<u32>,
    /// Upper bound the operator supports (1 for non-parallel sources such as a socket).
    pub max_parallelism: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogicalEdge {
    pub from: usize,
    pub to: usize,
    pub partitioning: Partitioning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogicalGraph {
    pub job_name: String,
    pub default_parallelism: u32,
    /// Number of key groups.
    pub max_parallelism: u32,
    pub nodes: Vec<LogicalNode>,
    pub edges: Vec<LogicalEdge>,
}

impl LogicalGraph {
    pub fn new(job_name: impl Into<String>) -> Self {
        LogicalGraph {
            job_name: job_name.into(),
            default_parallelism: 1,
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            nodes: Vec::new(),
            edges: Vec::new(),
        }
    }
}

/// Why a graph cannot be planned. Each variant names the operator it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the job has no operators")]
    Empty,
    #[error("the job has no sink: add print(), sink_to(..) or another sink")]
    NoSink,
    #[error("parallelism must be at least 1 (job default is {0})")]
    ZeroDefaultParallelism(u32),
    #[error("maxParallelism must be between 1 and {MAX_MAX_PARALLELISM}, got {0}")]
    BadMaxParallelism(u32),
    #[error("operator '{name}': parallelism must be at least 1")]
    ZeroParallelism { name: String },
    #[error(
        "operator '{name}': parallelism {parallelism} exceeds maxParallelism {max_parallelism} (the number of key groups)"
    )]
    ParallelismAboveMax {
        name: String,
        parallelism: u32,
        max_parallelism: u32,
    },
    #[error("operator '{name}' is not parallel: parallelism {parallelism} > its limit {limit}")]
    NotParallel {
        name: String,
        parallelism: u32,
        limit: u32,
    },
    #[error("operator '{name}' has no input")]
    MissingInput { name: String },
    #[error("source '{name}' cannot have an input")]
    SourceWithInput { name: String },
    #[error("sink '{name}' cannot have an output")]
    SinkWithOutput { name: String },
    #[error(
        "edge {from} -> {to} refers to a missing operator or goes backwards (graphs must be acyclic)"
    )]
    BadEdge { from: usize, to: usize },
    #[error("operator '{name}': id {id} does not match its position {pos}")]
    BadNodeId { name: String, id: usize, pos: usize },
    #[error("operators '{first}' and '{second}' share the uid '{uid}'")]
    DuplicateUid {
        uid: String,
        first: String,
        second: String,
    },
    #[error(
        "plan needs {needed} workers ({slots} slot(s) each for parallelism {parallelism}), only {workers} given"
    )]
    NotEnoughWorkers {
        needed: u32,
        workers: u32,
        slots: u32,
        parallelism: u32,
    },
}

/// An operator after planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedNode {
    pub id: usize,
    pub kind: NodeKind,
    pub operator: String,
    pub name: String,
    pub uid: String,
    pub parallelism: u32,
    pub chain: usize,
}

/// Operators fused into one task: records pass between them by direct calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chain {
    pub id: usize,
    /// Node ids, head first.
    pub nodes: Vec<usize>,
    pub parallelism: u32,
    pub name: String,
}

/// A logical edge that crosses chains, i.e. goes through a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainEdge {
    pub from_chain: usize,
    pub to_chain: usize,
    pub from_node: usize,
    pub to_node: usize,
    pub partitioning: Partitioning,
}

/// One parallel instance of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubtaskId {
    pub chain: usize,
    pub index: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalPlan {
    pub job_name: String,
    pub max_parallelism: u32,
    pub nodes: Vec<PlannedNode>,
    pub chains: Vec<Chain>,
    pub edges: Vec<ChainEdge>,
}

impl LogicalGraph {
    /// The uid of every operator, by node id: the one set on it, else its name when no other
    /// operator has that name (a spec's step names are unique, so a step's uid is its name),
    /// else `<id>-<operator>` as before names were used. A name-derived uid survives inserting
    /// or removing other operators; renaming a step changes it, and a restore then names the
    /// state it cannot place. Two operators ending up with one uid (a name that is another
    /// operator's explicit uid) is an error naming both.
    pub fn uids(&self) -> Result<Vec<String>, PlanError> {
        let mut names: std::collections::HashMap<&str, usize> = Default::default();
        for node in &self.nodes {
            *names.entry(node.name.as_str()).or_default() += 1;
        }
        let mut owner: std::collections::HashMap<String, &str> = Default::default();
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let uid = match &node.uid {
                Some(uid) => uid.clone(),
                None if names[node.name.as_str()] == 1 => node.name.clone(),
                None => format!("{}-{}", node.id, node.operator),
            };
            if let Some(first) = owner.insert(uid.clone(), &node.name) {
                return Err(PlanError::DuplicateUid {
                    uid,
                    first: first.to_string(),
                    second: node.name.clone(),
                });
            }
            out.push(uid);
        }
        Ok(out)
    }

    /// Plans the graph: resolves parallelism, turns forward edges between different
    /// parallelisms into rebalance (as Flink does), hash edges between two operators of
    /// parallelism 1 into forward edges, and chains operators.
    ///
    /// Chaining rule (Flink's): `b` joins `a`'s chain when the edge `a -> b` is forward, both
    /// have the same parallelism, it is `a`'s only output and `b`'s only input. `key_by`,
    /// `rebalance`, a parallelism change, fan-out and fan-in all start a new chain.
    pub fn plan(&self) -> Result<PhysicalPlan, PlanError> {
        if self.nodes.is_empty() {
            return Err(PlanError::Empty);
        }
        if self.default_parallelism == 0 {
            return Err(PlanError::ZeroDefaultParallelism(0));
        }
        if self.max_parallelism == 0 || self.max_parallelism > MAX_MAX_PARALLELISM {
            return Err(PlanError::BadMaxParallelism(self.max_parallelism));
        }
        let n = self.nodes.len();
        let mut inputs: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut outputs: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (pos, node) in self.nodes.iter().enumerate() {
            if node.id != pos {
                return Err(PlanError::BadNodeId {
                    name: node.name.clone(),
                    id: node.id,
                    pos,
                });
            }
        }
        for (i, e) in self.edges.iter().enumerate() {
            // Ids are assigned in creation order and an edge always points at a newer node, so
            // "from < to" is both the acyclicity check and a topological order for free.
            if e.from >= n || e.to >= n || e.from >= e.to {
                return Err(PlanError::BadEdge {
                    from: e.from,
                    to: e.to,
                });
            }
            inputs[e.to].push(i);
            outputs[e.from].push(i);
        }

        let mut parallelism = Vec::with_capacity(n);
        let uids = self.uids()?;
        for node in &self.nodes {
            match node.kind {
                NodeKind::Source if !inputs[node.id].is_empty() => {
                    return Err(PlanError::SourceWithInput {
                        name: node.name.clone(),
                    });
                }
                NodeKind::Transform | NodeKind::Sink if inputs[node.id].is_empty() => {
                    return Err(PlanError::MissingInput {
                        name: node.name.clone(),
                    });
                }
                NodeKind::Sink if !outputs[node.id].is_empty() => {
                    return Err(PlanError::SinkWithOutput {
                        name: node.name.clone(),
                    });
                }
                _ => {}
            }
            let p = match (node.parallelism, node.max_parallelism) {
                (Some(0), _) => {
                    return Err(PlanError::ZeroParallelism {
                        name: node.name.clone(),
                    });
                }
                (Some(p), Some(limit)) if p > limit => {
                    return Err(PlanError::NotParallel {
                        name: node.name.clone(),
                        parallelism: p,
                        limit,
                    });
                }
                (Some(p), _) => p,
                // An unset parallelism on a non-parallel operator quietly takes its limit.
                (None, Some(limit)) => self.default_parallelism.min(limit),
                (None, None) => self.default_parallelism,
            };
            if p > self.max_parallelism {
                return Err(PlanError::ParallelismAboveMax {
                    name: node.name.clone(),
                    parallelism: p,
                    max_parallelism: self.max_parallelism,
                });
            }
            parallelism.push(p);
        }
        if !self.nodes.iter().any(|n| n.kind == NodeKind::Sink) {
            return Err(PlanError::NoSink);
        }

        let partitioning: Vec<Partitioning> = self
            .edges
            .iter()
            .map(|e| match e.partitioning {
                Partitioning::Forward if parallelism[e.from] != parallelism[e.to] => {
                    Partitioning::Rebalance
                }
                // With one subtask on each side every key goes to subtask 0 anyway: the
                // edge is forward and may chain, saving a channel and a thread hop per
                // record. Keyed operators place keys in key groups themselves (from their
                // own key hash), so their state still rescales by key group.
                Partitioning::Hash if parallelism[e.from] == 1 && parallelism[e.to] == 1 => {
                    Partitioning::Forward
                }
                p => p,
            })
            .collect();

        let mut chain_of = vec![usize::MAX; n];
        let mut chains: Vec<Chain> = Vec::new();
        for node in &self.nodes {
            let id = node.id;
            let chained_to = match inputs[id].as_slice() {
                [e] => {
                    let edge = &self.edges[*e];
                    (partitioning[*e] == Partitioning::Forward
                        && outputs[edge.from].len() == 1
                        && parallelism[edge.from] == parallelism[id])
                        .then_some(chain_of[edge.from])
                }
                _ => None,
            };
            match chained_to {
                Some(c) => {
                    chains[c].nodes.push(id);
                    chain_of[id] = c;
                }
                None => {
                    chain_of[id] = chains.len();
                    chains.push(Chain {
                        id: chains.len(),
                        nodes: vec![id],
                        parallelism: parallelism[id],
                        name: String::new(),
                    });
                }
            }
        }
        for chain in &mut chains {
            chain.name = chain
                .nodes
                .iter()
                .map(|&i| self.nodes[i].name.as_str())
                .collect::<Vec<_>>()
                .join(" -> ");
        }
        let edges = self
            .edges
            .iter()
            .zip(&partitioning)
            .filter(|(e, _)| chain_of[e.from] != chain_of[e.to])
            .map(|(e, &p)| ChainEdge {
                from_chain: chain_of[e.from],
                to_chain: chain_of[e.to],
                from_node: e.from,
                to_node: e.to,
                partitioning: p,
            })
            .collect();
        let nodes = self
            .nodes
            .iter()
            .map(|node| PlannedNode {
                id: node.id,
                kind: node.kind,
                operator: node.operator.clone(),
                name: node.name.clone(),
                uid: uids[node.id].clone(),
                parallelism: parallelism[node.id],
                chain: chain_of[node.id],
            })
            .collect();
        Ok(PhysicalPlan {
            job_name: self.job_name.clone(),
            max_parallelism: self.max_parallelism,
            nodes,
            chains,
            edges,
        })
    }
}

impl PhysicalPlan {
    /// Edges feeding a chain, in plan order (this order numbers a chain's input channels).
    pub fn inputs_of(&self, chain: usize) -> impl Iterator<Item = &ChainEdge> {
        self.edges.iter().filter(move |e| e.to_chain == chain)
    }

    /// Edges leaving a chain, in plan order.
    pub fn outputs_of(&self, chain: usize) -> impl Iterator<Item = &ChainEdge> {
        self.edges.iter().filter(move |e| e.from_chain == chain)
    }

    /// Largest parallelism of any chain: with slot sharing, the number of slots the job needs.
    pub fn slots_needed(&self) -> u32 {
        self.chains.iter().map(|c| c.parallelism).max().unwrap_or(0)
    }

    /// Number of workers for `slots_per_worker`. The operator sizes the StatefulSet with this
    /// and the workers use [`PhysicalPlan::assignment`]; both come from this one function.
    pub fn workers_needed(&self, slots_per_worker: u32) -> u32 {
        self.slots_needed().div_ceil(slots_per_worker.max(1))
    }

    /// Worker that runs subtask `index` of any chain (Flink's slot sharing: slot i holds
    /// subtask i of every chain, worker w holds slots `w*slots .. (w+1)*slots`).
    pub fn worker_of(index: u32, slots_per_worker: u32) -> u32 {
        index / slots_per_worker.max(1)
    }

    /// Subtasks each worker runs, indexed by worker.
    pub fn assignment(
        &self,
        workers: u32,
        slots_per_worker: u32,
    ) -> Result<Vec<Vec<SubtaskId>>, PlanError> {
        let needed = self.workers_needed(slots_per_worker);
        if workers < needed {
            return Err(PlanError::NotEnoughWorkers {
                needed,
                workers,
                slots: slots_per_worker,
                parallelism: self.slots_needed(),
            });
        }
        let mut out = vec![Vec::new(); workers as usize];
        for chain in &self.chains {
            for index in 0..chain.parallelism {
                out[Self::worker_of(index, slots_per_worker) as usize].push(SubtaskId {
                    chain: chain.id,
                    index,
                });
            }
        }
        Ok(out)
    }

    /// Stable fingerprint of the plan; workers compare it in their handshake.
    pub fn fingerprint(&self) -> u64 {
        let json = serde_json::to_vec(self).expect("plans always serialise");
        xxhash_rust::xxh3::xxh3_64(&json)
    }

    /// Human-readable plan, as printed by `env.explain()` and `streamjob plan`.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Job '{}': {} chain(s), {} key groups",
            self.job_name,
            self.chains.len(),
            self.max_parallelism
        );
        for chain in &self.chains {
            let _ = writeln!(
                s,
                "  chain {} (parallelism {}):",
                chain.id, chain.parallelism
            );
            for &n in &chain.nodes {
                let node = &self.nodes[n];
                let _ = writeln!(
                    s,
                    "    [{}] {} ({}, uid {})",
                    node.id, node.name, node.operator, node.uid
                );
            }
        }
        if !self.edges.is_empty() {
            let _ = writeln!(s, "  edges:");
        }
        for e in &self.edges {
            let _ = writeln!(
                s,
                "    chain {} [{}] -> chain {} [{}]: {}",
                e.from_chain,
                self.nodes[e.from_node].name,
                e.to_chain,
                self.nodes[e.to_node].name,
                e.partitioning.label()
            );
        }
        s
    }

    /// Graphviz rendering: one cluster per chain.
    pub fn to_dot(&self) -> String {
        let mut s = format!("digraph \"{}\" {{\n  rankdir=LR;\n", escape(&self.job_name));
        for chain in &self.chains {
            let _ = writeln!(
                s,
                "  subgraph cluster_{} {{\n    label=\"chain {} (p={})\";",
                chain.id, chain.id, chain.parallelism
            );
            for &n in &chain.nodes {
                let _ = writeln!(s, "    n{} [label=\"{}\"];", n, escape(&self.nodes[n].name));
            }
            for w in chain.nodes.windows(2) {
                let _ = writeln!(s, "    n{} -> n{} [style=bold];", w[0], w[1]);
            }
            s.push_str("  }\n");
        }
        for e in &self.edges {
            let _ = writeln!(
                s,
                "  n{} -> n{} [label=\"{}\"];",
                e.from_node,
                e.to_node,
                e.partitioning.label()
            );
        }
        s.push_str("}\n");
        s
    }

    /// Mermaid flowchart rendering: one subgraph per chain.
    pub fn to_mermaid(&self) -> String {
        let mut s = String::from("flowchart LR\n");
        for chain in &self.chains {
            let _ = writeln!(
                s,
                "  subgraph c{}[\"chain {} (p={})\"]",
                chain.id, chain.id, chain.parallelism
            );
            for &n in &chain.nodes {
                let _ = writeln!(s, "    n{}[\"{}\"]", n, escape(&self.nodes[n].name));
            }
            for w in chain.nodes.windows(2) {
                let _ = writeln!(s, "    n{} --> n{}", w[0], w[1]);
            }
            s.push_str("  end\n");
        }
        for e in &self.edges {
            let _ = writeln!(
                s,
                "  n{} -- {} --> n{}",
                e.from_node,
                e.partitioning.label(),
                e.to_node
            );
        }
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct G(LogicalGraph);

    impl G {
        fn new(p: u32) -> Self {
            let mut g = LogicalGraph::new("t");
            g.default_parallelism = p;
            G(g)
        }
        fn node(
            &mut self,
            kind: NodeKind,
            op: &str,
            p: Option<u32>,
            from: &[(usize, Partitioning)],
        ) -> usize {
            let id = self.0.nodes.len();
            self.0.nodes.push(LogicalNode {
                id,
                kind,
                operator: op.into(),
                name: format!("{op}{id}"),
                uid: None,
                parallelism: p,
                max_parallelism: None,
            });
            for &(f, partitioning) in from {
                self.0.edges.push(LogicalEdge {
                    from: f,
                    to: id,
                    partitioning,
                });
            }
            id
        }
        fn chains(&self) -> Vec<Vec<usize>> {
            self.0
                .plan()
                .unwrap()
                .chains
                .into_iter()
                .map(|c| c.nodes)
                .collect()
        }
    }
    use NodeKind::*;
    use Partitioning::*;

    #[test]
    fn narrow_steps_chain_and_key_by_breaks() {
        let mut g = G::new(2);
        let s = g.node(Source, "source", None, &[]);
        let m = g.node(Transform, "flat_map", None, &[(s, Forward)]);
        let r = g.node(Transform, "reduce", None, &[(m, Hash)]);
        let k = g.node(Sink, "print", None, &[(r, Forward)]);
        assert_eq!(g.chains(), vec![vec![s, m], vec![r, k]]);
        let plan = g.0.plan().unwrap();
        assert_eq!(plan.edges.len(), 1);
        assert_eq!(plan.edges[0].partitioning, Hash);
        assert_eq!((plan.edges[0].from_node, plan.edges[0].to_node), (m, r));
    }

    #[test]
    fn key_by_between_two_operators_of_parallelism_1_chains() {
        let mut g = G::new(1);
        let s = g.node(Source, "source", None, &[]);
        let m = g.node(Transform, "flat_map", None, &[(s, Forward)]);
        let r = g.node(Transform, "reduce", None, &[(m, Hash)]);
        let k = g.node(Sink, "print", None, &[(r, Forward)]);
        assert_eq!(g.chains(), vec![vec![s, m, r, k]]);
        // Parallelism 1 on one side only: still a hash edge.
        let mut g = G::new(2);
        let s = g.node(Source, "source", Some(1), &[]);
        let r = g.node(Transform, "reduce", None, &[(s, Hash)]);
        let k = g.node(Sink, "print", None, &[(r, Forward)]);
        assert_eq!(g.chains(), vec![vec![s], vec![r, k]]);
        assert_eq!(g.0.plan().unwrap().edges[0].partitioning, Hash);
    }

    #[test]
    fn parallelism_change_breaks_chain_and_becomes_rebalance() {
        let mut g = G::new(2);
        let s = g.node(Source, "source", Some(1), &[]);
        let m = g.node(Transform, "map", None, &[(s, Forward)]);
        let k = g.node(Sink, "print", None, &[(m, Forward)]);
        assert_eq!(g.chains(), vec![vec![s], vec![m, k]]);
        let plan = g.0.plan().unwrap();
        assert_eq!(plan.edges[0].partitioning, Rebalance);
        assert_eq!(plan.chains[0].parallelism, 1);
        assert_eq!(plan.chains[1].parallelism, 2);
    }

    #[test]
    fn rebalance_breaks_chain_even_with_equal_parallelism() {
        let mut g = G::new(3);
        let s = g.node(Source, "source", None, &[]);
        let m = g.node(Transform, "map", None, &[(s, Rebalance)]);
        let k = g.node(Sink, "print", None, &[(m, Forward)]);
        assert_eq!(g.chains(), vec![vec![s], vec![m, k]]);
    }

    #[test]
    fn fan_out_and_fan_in_break_chains() {
        let mut g = G::new(1);
        let s = g.node(Source, "source", None, &[]);
        let a = g.node(Transform, "map", None, &[(s, Forward)]);
        let b = g.node(Transform, "filter", None, &[(s, Forward)]);
        let u = g.node(Transform, "map", None, &[(a, Forward), (b, Forward)]);
        let k = g.node(Sink, "print", None, &[(u, Forward)]);
        assert_eq!(g.chains(), vec![vec![s], vec![a], vec![b], vec![u, k]]);
    }

    #[test]
    fn all_forward_same_parallelism_is_one_chain() {
        let mut g = G::new(4);
        let s = g.node(Source, "source", None, &[]);
        let m = g.node(Transform, "map", None, &[(s, Forward)]);
        let f = g.node(Transform, "filter", None, &[(m, Forward)]);
        let k = g.node(Sink, "print", None, &[(f, Forward)]);
        assert_eq!(g.chains(), vec![vec![s, m, f, k]]);
        assert!(g.0.plan().unwrap().edges.is_empty());
    }

    #[test]
    fn non_parallel_source_takes_its_limit_unless_forced() {
        let mut g = G::new(4);
        let s = g.node(Source, "socket", None, &[]);
        g.0.nodes[s].max_parallelism = Some(1);
        let k = g.node(Sink, "print", None, &[(s, Forward)]);
        let plan = g.0.plan().unwrap();
        assert_eq!(plan.nodes[s].parallelism, 1);
        assert_eq!(plan.nodes[k].parallelism, 4);
        g.0.nodes[s].parallelism = Some(2);
        assert!(matches!(g.0.plan(), Err(PlanError::NotParallel { .. })));
    }

    #[test]
    fn invalid_graphs_are_rejected_with_the_operator_named() {
        let mut g = G::new(2);
        let s = g.node(Source, "source", None, &[]);
        let m = g.node(Transform, "map", Some(200), &[(s, Forward)]);
        assert_eq!(g.0.plan(), Err(PlanError::NoSink).or(g.0.plan()));
        g.node(Sink, "print", None, &[(m, Forward)]);
        let err = g.0.plan().unwrap_err();
        assert_eq!(
            err.to_string(),
            "operator 'map1': parallelism 200 exceeds maxParallelism 128 (the number of key groups)"
        );
        let mut g = G::new(1);
        g.node(Source, "source", None, &[]);
        assert_eq!(g.0.plan(), Err(PlanError::NoSink));
        let mut g = G::new(1);
        g.node(Sink, "print", None, &[]);
        assert!(matches!(g.0.plan(), Err(PlanError::MissingInput { .. })));
    }

    #[test]
    fn assignment_places_every_subtask_exactly_once() {
        let mut g = G::new(4);
        let s = g.node(Source, "source", Some(1), &[]);
        let m = g.node(Transform, "map", Some(3), &[(s, Forward)]);
        let r = g.node(Transform, "reduce", None, &[(m, Hash)]);
        g.node(Sink, "print", Some(2), &[(r, Forward)]);
        let plan = g.0.plan().unwrap();
        for slots in 1..=4 {
            let workers = plan.workers_needed(slots);
            assert_eq!(workers, 4u32.div_ceil(slots));
            let a = plan.assignment(workers, slots).unwrap();
            let mut all: Vec<SubtaskId> = a.iter().flatten().copied().collect();
            let total: u32 = plan.chains.iter().map(|c| c.parallelism).sum();
            assert_eq!(all.len() as u32, total);
            all.sort();
            all.dedup();
            assert_eq!(all.len() as u32, total, "a subtask was assigned twice");
            for (w, subtasks) in a.iter().enumerate() {
                assert!(subtasks.len() as u32 <= slots * plan.chains.len() as u32);
                for st in subtasks {
                    assert_eq!(PhysicalPlan::worker_of(st.index, slots), w as u32);
                }
            }
            if workers > 1 {
                assert!(plan.assignment(workers - 1, slots).is_err());
            }
        }
    }

    #[test]
    fn a_uid_defaults_to_the_unique_name_and_an_explicit_uid_wins() {
        let mut g = G::new(1);
        let s = g.node(Source, "source", None, &[]);
        let f = g.node(Transform, "filter", None, &[(s, Forward)]);
        let r = g.node(Transform, "reduce", None, &[(f, Hash)]);
        let k = g.node(Sink, "print", None, &[(r, Forward)]);
        g.0.nodes[r].name = "counts".into();
        g.0.nodes[k].uid = Some("out-v1".into());
        let uids = |g: &G| -> Vec<String> {
            g.0.plan()
                .unwrap()
                .nodes
                .into_iter()
                .map(|n| n.uid)
                .collect()
        };
        assert_eq!(uids(&g), ["source0", "filter1", "counts", "out-v1"]);
        // Inserting an operator moves positions but not name-derived uids.
        g.0.nodes.remove(f);
        g.0.edges.clear();
        for (i, n) in g.0.nodes.iter_mut().enumerate() {
            n.id = i;
        }
        g.0.edges.push(LogicalEdge {
            from: 0,
            to: 1,
            partitioning: Hash,
        });
        g.0.edges.push(LogicalEdge {
            from: 1,
            to: 2,
            partitioning: Forward,
        });
        assert_eq!(uids(&g), ["source0", "counts", "out-v1"]);
        // Names shared by several operators (the Rust API's defaults) fall back to the position.
        g.0.nodes[0].name = "counts".into();
        assert_eq!(uids(&g), ["0-source", "1-reduce", "out-v1"]);
        // A name that is another operator's uid is a clash, named.
        g.0.nodes[0].name = "out-v1".into();
        assert_eq!(
            g.0.plan().unwrap_err().to_string(),
            "operators 'out-v1' and 'print3' share the uid 'out-v1'"
        );
    }

    #[test]
    fn plan_round_trips_through_json_and_fingerprint_is_stable() {
        let mut g = G::new(2);
        let s = g.node(Source, "source", None, &[]);
        g.node(Sink, "print", None, &[(s, Rebalance)]);
        let plan = g.0.plan().unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        let back: PhysicalPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);
        assert_eq!(back.fingerprint(), plan.fingerprint());
        assert!(plan.explain().contains("REBALANCE"));
        assert!(plan.to_dot().contains("digraph"));
        assert!(plan.to_mermaid().starts_with("flowchart LR"));
    }
}
