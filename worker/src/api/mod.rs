//! The user-facing DataStream API.

pub mod datastream;
pub mod environment;
pub mod functions;
pub(crate) mod graph;
pub mod process;
pub mod watermark;
pub mod windowed;
pub mod windows;
