//! `from_collection`: a bounded, non-parallel source over an in-memory list.

use std::sync::Arc;

use crate::api::functions::{Collector, Source, SourceReader, SourceStatus};
use crate::connectors::SOURCE_BATCH;
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

pub struct CollectionSource<T> {
    items: Arc<Vec<T>>,
}

impl<T> CollectionSource<T> {
    pub fn new(items: Vec<T>) -> Self {
        CollectionSource {
            items: Arc::new(items),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Source<T> for CollectionSource<T> {
    fn max_parallelism(&self) -> Option<u32> {
        Some(1)
    }
    fn kind(&self) -> &'static str {
        "collection"
    }
    fn create_reader(&self, _ctx: &SubtaskContext) -> Result<Box<dyn SourceReader<T>>, BoxError> {
        Ok(Box::new(CollectionReader {
            items: self.items.clone(),
            pos: 0,
        }))
    }
}

struct CollectionReader<T> {
    items: Arc<Vec<T>>,
    pos: usize,
}

impl<T: Clone + Send + Sync> SourceReader<T> for CollectionReader<T> {
    fn poll_next(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        if self.pos == 0 {
            crate::runtime::metrics::source_total(None, Some(self.items.len() as u64));
        }
        let end = (self.pos + SOURCE_BATCH).min(self.items.len());
        for item in &self.items[self.pos..end] {
            out.collect(item.clone());
        }
        self.pos = end;
        Ok(if self.pos == self.items.len() {
            SourceStatus::Finished
        } else {
            SourceStatus::MoreAvailable
        })
    }
}
