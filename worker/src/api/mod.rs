//! The user-facing DataStream API.

pub mod datastream;
pub mod environment;
pub mod functions;
pub(crate) mod graph;
pub mod sinks;
pub mod windowed;
// Defined next to the operators that run them (operators sit below the API); this is their
// place in the user-facing API.
pub use crate::operators::process_fn as process;
pub use crate::operators::watermark_strategy as watermark;
pub use crate::operators::windows;
