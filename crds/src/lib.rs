//! Shared, pure pieces of streamjob that the operator and the worker must agree on:
//! key-group math, the logical graph and the planner that turns it into chains and
//! assigns subtasks to workers. No async runtime and no network in here.

pub mod duration;
pub mod expr;
pub mod graph;
pub mod kafka_security;
pub mod keygroup;
pub mod plan;
pub mod spec;
pub mod validate;

pub use keygroup::{KeyGroupRange, StableKey};
pub use plan::{
    Chain, ChainEdge, LogicalEdge, LogicalGraph, LogicalNode, NodeKind, Partitioning, PhysicalPlan,
    PlanError,
};
