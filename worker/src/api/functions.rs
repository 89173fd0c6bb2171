//! Extension points: sources, sinks, and the collector that `flat_map` and sources emit into.
//!
//! They are defined in [`crate::runtime::functions`], where the task drivers and operators
//! that call them live; this is their place in the user-facing API.

pub use crate::runtime::functions::{
    Collector, Sink, SinkWriter, Source, SourceReader, SourceStatus,
};
