//! Defined in [`crate::api::sinks::blackhole`] (the API's own `DataStream` methods use it, and
//! the API sits below the connectors); listed here with the other connectors.

pub use crate::api::sinks::blackhole::*;
