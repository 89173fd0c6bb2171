//! Discarding sink that counts records (Flink's `DiscardingSink`), for benchmarks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::api::functions::{Sink, SinkWriter};
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

/// Shared count of the records a blackhole sink received, over all its subtasks.
#[derive(Clone, Default, Debug)]
pub struct RecordCounter(Arc<AtomicU64>);

impl RecordCounter {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::AcqRel);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

pub struct BlackholeSink {
    counter: RecordCounter,
}

impl BlackholeSink {
    pub fn new() -> (Self, RecordCounter) {
        let counter = RecordCounter::default();
        (
            BlackholeSink {
                counter: counter.clone(),
            },
            counter,
        )
    }
}

impl<T: Send + 'static> Sink<T> for BlackholeSink {
    fn kind(&self) -> &'static str {
        "blackhole"
    }
    fn create_writer(&self, _ctx: &SubtaskContext) -> Result<Box<dyn SinkWriter<T>>, BoxError> {
        Ok(Box::new(BlackholeWriter {
            local: 0,
            counter: self.counter.clone(),
        }))
    }
}

struct BlackholeWriter {
    local: u64,
    counter: RecordCounter,
}

impl<T: Send> SinkWriter<T> for BlackholeWriter {
    #[inline]
    fn write(&mut self, item: T) -> Result<(), BoxError> {
        drop(item);
        self.local += 1;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BoxError> {
        // Publish locally counted records in bulk: no shared-counter traffic per record.
        self.counter
            .0
            .fetch_add(std::mem::take(&mut self.local), Ordering::AcqRel);
        Ok(())
    }
}
