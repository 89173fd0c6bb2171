//! streamjob's runtime: Flink's DataStream model in Rust.
//!
//! Building a job only records a logical graph ([`StreamExecutionEnvironment`],
//! [`DataStream`]); [`StreamExecutionEnvironment::execute`] plans it (chains, key groups, see
//! `streamjob_crds::plan`) and runs every subtask on its own thread. Chained operators call
//! each other directly; chains exchange batches of records over bounded channels, so a slow
//! consumer backpressures its producers and memory stays bounded.
//!
//! ```
//! use streamjob::StreamExecutionEnvironment;
//!
//! let env = StreamExecutionEnvironment::get_execution_environment();
//! env.set_parallelism(2);
//! let counts = env
//!     .from_collection(vec!["to be or not to be".to_string()])
//!     .flat_map(|line: String, out| {
//!         for w in line.split_whitespace() {
//!             out.collect((w.to_string(), 1u64));
//!         }
//!     })
//!     .key_by(|(w, _): &(String, u64)| w.clone())
//!     .reduce(|(w, a), (_, b)| (w, a + b))
//!     .collect_sink();
//! env.execute("word count").unwrap();
//! let mut finals = std::collections::BTreeMap::new();
//! for (w, c) in counts.take() {
//!     finals.insert(w, c);
//! }
//! assert_eq!(finals["to"], 2);
//! assert_eq!(finals["or"], 1);
//! ```

pub mod api;
pub mod cluster;
pub mod codec;
pub mod connectors;
pub mod declarative;
pub mod error;
pub mod net;
pub(crate) mod operators;
pub mod runtime;
pub mod state;
pub mod web;

pub use api::datastream::{DataStream, DataStreamSink, KeyedStream};
pub use api::environment::{JobExecutionResult, StreamExecutionEnvironment};
pub use api::functions::{Collector, Sink, SinkWriter, Source, SourceReader, SourceStatus};
pub use error::{BoxError, JobError, TaskError};
pub use runtime::context::SubtaskContext;
pub use runtime::message::{CheckpointBarrier, Message, Signal};
pub use streamjob_crds as crds;

/// Bounds every record type must meet: records move between task threads, and through serde
/// between worker processes and into checkpoints (see [`codec`]).
pub trait Data: Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static {}
impl<T: Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static> Data for T {}
