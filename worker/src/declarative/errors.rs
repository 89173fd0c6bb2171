//! The job's `onError` policy: fail, skip and count, or send the record to the dead-letter
//! sink with the step and the error attached.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use streamjob_crds::expr::{EvalError, Value};
use streamjob_crds::spec::OnError;
use tracing::warn;

use super::SpecRun;
use crate::api::functions::{Sink, SinkWriter};
use crate::connectors::file_sink::FileSink;
use crate::error::{JobError, TaskError};
use crate::operators::OpId;
use crate::runtime::context::SubtaskContext;

/// The dead-letter sink of a job.
pub(super) enum DeadLetterSink {
    /// Files are named by subtask (see [`FileSink::path_for`]): writers are shared per file.
    File(FileSink<Value>),
    /// Other sinks get one writer per subtask index.
    Other(Arc<dyn Sink<Value>>),
}

/// Which writer an operator's dead letters go to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum WriterKey {
    File(PathBuf),
    Subtask(u32),
}

type SharedWriter = Arc<Mutex<Box<dyn SinkWriter<Value>>>>;
type WeakWriter = Weak<Mutex<Box<dyn SinkWriter<Value>>>>;

/// The job's `onError` policy and where dead letters go.
pub(super) struct ErrorPolicy {
    on_error: OnError,
    dead_letter: Option<DeadLetterSink>,
    /// Every operator of a subtask (and every task with the same subtask index in this
    /// process) writes through one writer: a writer of its own would open the same file
    /// again, truncating it and overwriting the others' letters. Weak, so the writers of a
    /// run are closed when its operators are, and a restarted run opens them afresh.
    writers: Mutex<HashMap<WriterKey, WeakWriter>>,
    run: SpecRun,
}

impl ErrorPolicy {
    pub(super) fn new(
        on_error: OnError,
        dead_letter: Option<DeadLetterSink>,
        run: SpecRun,
    ) -> Self {
        ErrorPolicy {
            on_error,
            dead_letter,
            writers: Mutex::new(HashMap::new()),
            run,
        }
    }

    fn writer(&self, ctx: &SubtaskContext) -> Result<Option<SharedWriter>, JobError> {
        let Some(sink) = &self.dead_letter else {
            return Ok(None);
        };
        let key = match sink {
            DeadLetterSink::File(f) => WriterKey::File(f.path_for(ctx)),
            DeadLetterSink::Other(_) => WriterKey::Subtask(ctx.subtask),
        };
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = writers.get(&key).and_then(Weak::upgrade) {
            return Ok(Some(w));
        }
        let created = match sink {
            DeadLetterSink::File(f) => f.create_writer(ctx),
            DeadLetterSink::Other(s) => s.create_writer(ctx),
        }
        .map_err(|e| JobError::Setup {
            operator: format!("{} (dead letters)", ctx.operator),
            message: e.to_string(),
        })?;
        let w = Arc::new(Mutex::new(created));
        writers.insert(key, Arc::downgrade(&w));
        Ok(Some(w))
    }
}

/// Per-operator instance of the policy.
pub(super) struct Handler {
    policy: Arc<ErrorPolicy>,
    id: OpId,
    dead_letter: Option<SharedWriter>,
    /// Whether this operator wrote dead letters since its last flush.
    unflushed: bool,
}

impl Handler {
    pub(super) fn new(policy: Arc<ErrorPolicy>, ctx: &SubtaskContext) -> Result<Self, JobError> {
        let dead_letter = policy.writer(ctx)?;
        Ok(Handler {
            policy,
            id: OpId::of(ctx),
            dead_letter,
            unflushed: false,
        })
    }

    /// Applies the policy to a record whose expression failed.
    #[cold]
    pub(super) fn failed(&mut self, record: &Value, err: EvalError) -> Result<(), TaskError> {
        match self.policy.on_error {
            OnError::Fail => Err(self.id.fail(format!("record {record}: {err}"))),
            OnError::Skip => {
                let n = self.policy.run.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                // Rate-limited: the first ten, then every thousandth.
                if n <= 10 || n.is_multiple_of(1000) {
                    warn!(step = %self.id.name, skipped = n, "skipping record {record}: {err}");
                }
                Ok(())
            }
            OnError::DeadLetter => {
                let mut letter = serde_json::Map::new();
                letter.insert(
                    "step".to_string(),
                    serde_json::Value::String(self.id.name.to_string()),
                );
                letter.insert("error".to_string(), serde_json::Value::String(err.message));
                letter.insert("record".to_string(), record.to_json());
                let letter = Value::from(serde_json::Value::Object(letter));
                let writer = self
                    .dead_letter
                    .as_ref()
                    .expect("validated: deadLetter sink exists");
                writer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(letter)
                    .map_err(|e| self.id.fail(format!("dead-letter sink: {e}")))?;
                self.unflushed = true;
                self.policy
                    .run
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    pub(super) fn flush(&mut self) -> Result<(), TaskError> {
        match &self.dead_letter {
            Some(w) if self.unflushed => {
                self.unflushed = false;
                w.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .flush()
                    .map_err(|e| self.id.fail(format!("dead-letter sink: {e}")))
            }
            _ => Ok(()),
        }
    }
}
