//! Execution: channels between chains, the routers that fill them, the task drivers that run
//! one subtask each, and the executor that wires a plan into running threads.

pub mod channel;
pub mod checkpoint;
pub mod context;
pub mod executor;
pub mod functions;
pub(crate) mod graph;
pub mod message;
pub mod metrics;
pub mod output;
pub mod restart;
pub mod router;
pub mod storage;
pub mod task;
pub mod time;
pub mod transport;
