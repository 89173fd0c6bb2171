//! Built-in sources and sinks.

pub mod blackhole;
pub mod collect;
pub mod collection;
pub mod environment;
pub mod file;
pub mod file_sink;
pub mod kafka;
pub mod lines;
pub mod nexmark;
pub mod print;
pub mod socket;

/// Records a source emits per poll, so the task regularly gets to flush and check for
/// cancellation.
pub(crate) const SOURCE_BATCH: usize = 1024;
