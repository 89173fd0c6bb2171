//! In-memory sink for tests: gathers every record of every subtask.

use std::sync::{Arc, Mutex};

use crate::api::functions::{Sink, SinkWriter};
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

/// The records a collect sink received; read after `execute` returns.
pub struct Collected<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Collected<T> {
    fn clone(&self) -> Self {
        Collected(self.0.clone())
    }
}

impl<T> Collected<T> {
    /// Takes the records collected so far (subtasks interleave in arbitrary order).
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct CollectSink<T>(Arc<Mutex<Vec<T>>>);

impl<T> CollectSink<T> {
    pub fn new() -> (Self, Collected<T>) {
        let v = Arc::new(Mutex::new(Vec::new()));
        (CollectSink(v.clone()), Collected(v))
    }
}

impl<T: Send + 'static> Sink<T> for CollectSink<T> {
    fn kind(&self) -> &'static str {
        "collect"
    }
    fn create_writer(&self, _ctx: &SubtaskContext) -> Result<Box<dyn SinkWriter<T>>, BoxError> {
        Ok(Box::new(CollectWriter {
            buf: Vec::new(),
            shared: self.0.clone(),
        }))
    }
}

struct CollectWriter<T> {
    buf: Vec<T>,
    shared: Arc<Mutex<Vec<T>>>,
}

impl<T: Send> SinkWriter<T> for CollectWriter<T> {
    fn write(&mut self, item: T) -> Result<(), BoxError> {
        self.buf.push(item);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BoxError> {
        if !self.buf.is_empty() {
            self.shared.lock().unwrap().append(&mut self.buf);
        }
        Ok(())
    }
}
