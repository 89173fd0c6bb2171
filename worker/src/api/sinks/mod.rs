//! The in-process sinks behind `DataStream::print`, `collect_sink` and `blackhole`. They
//! need nothing outside the runtime, so they sit in the API layer that offers them;
//! `connectors::{print, collect, blackhole}` re-export them with the other connectors.

pub mod blackhole;
pub mod collect;
pub mod print;
