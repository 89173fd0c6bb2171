//! Subcommands of the `streamjob` binary that run jobs across worker processes.

pub mod control;
pub mod minicluster;
pub mod progress;
pub mod worker;
