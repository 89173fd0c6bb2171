//! The last link of a chain: distributes records over the channels of one outgoing edge and
//! cuts them into batches.

use std::sync::Arc;

use streamjob_crds::keygroup::{key_group_of_hash, subtask_for_key_group};

use crate::error::TaskError;
use crate::runtime::channel::{Endpoint, Sender, send};
use crate::runtime::message::{Message, Signal};
use crate::runtime::output::Output;
use crate::runtime::time::{NO_TIMESTAMP, current_timestamp};

/// Stable hash of a record's key (see `streamjob_crds::StableKey`).
pub(crate) type KeyHashFn<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

pub(crate) enum Route<T> {
    /// One channel (to the subtask with the same index).
    Forward,
    Rebalance,
    Hash(KeyHashFn<T>),
    Broadcast,
}

pub(crate) struct Router<T> {
    senders: Vec<Sender<T>>,
    buffers: Vec<Vec<T>>,
    /// Event timestamps parallel to `buffers`, per target; left empty (no allocation, and
    /// an untimed batch on the channel) until a record with a timestamp is routed.
    stamps: Vec<Vec<i64>>,
    route: Route<T>,
    batch_size: usize,
    max_parallelism: u32,
    next: usize,
    who: Endpoint,
}

impl<T: Clone + Send> Router<T> {
    pub fn new(
        senders: Vec<Sender<T>>,
        route: Route<T>,
        batch_size: usize,
        max_parallelism: u32,
        first_target: usize,
        who: Endpoint,
    ) -> Self {
        let buffers = senders
            .iter()
            .map(|_| Vec::with_capacity(batch_size))
            .collect();
        let stamps = senders.iter().map(|_| Vec::new()).collect();
        let next = first_target % senders.len().max(1);
        Router {
            senders,
            buffers,
            stamps,
            route,
            batch_size: batch_size.max(1),
            max_parallelism,
            next,
            who,
        }
    }

    #[inline]
    fn push(&mut self, target: usize, item: T) -> Result<(), TaskError> {
        let ts = current_timestamp();
        let buf = &mut self.buffers[target];
        let stamps = &mut self.stamps[target];
        if ts != NO_TIMESTAMP || !stamps.is_empty() {
            if stamps.len() < buf.len() {
                stamps.resize(buf.len(), NO_TIMESTAMP);
            }
            stamps.push(ts);
        }
        buf.push(item);
        if buf.len() >= self.batch_size {
            self.send_batch(target)?;
        }
        Ok(())
    }

    fn send_batch(&mut self, target: usize) -> Result<(), TaskError> {
        let records = std::mem::replace(
            &mut self.buffers[target],
            Vec::with_capacity(self.batch_size),
        );
        crate::runtime::metrics::records_out(records.len() as u64);
        let stamps = std::mem::take(&mut self.stamps[target]);
        let msg = if stamps.is_empty() {
            Message::Data(records)
        } else {
            let mut stamps = stamps;
            stamps.resize(records.len(), NO_TIMESTAMP);
            Message::Timed(records, stamps)
        };
        send(&self.senders[target], msg, &self.who)
    }
}

impl<T: Clone + Send> Output<T> for Router<T> {
    #[inline]
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        let target = match &self.route {
            Route::Forward => 0,
            Route::Rebalance => {
                let t = self.next;
                self.next = if t + 1 == self.senders.len() {
                    0
                } else {
                    t + 1
                };
                t
            }
            Route::Hash(key_hash) => {
                let group = key_group_of_hash(key_hash(&item), self.max_parallelism);
                subtask_for_key_group(group, self.senders.len() as u32, self.max_parallelism)
                    as usize
            }
            Route::Broadcast => {
                for t in 1..self.senders.len() {
                    self.push(t, item.clone())?;
                }
                0
            }
        };
        self.push(target, item)
    }

    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        if let Signal::CheckpointComplete(_) = signal {
            return Ok(());
        }
        // Signals stay in order with data: whatever is buffered goes first.
        self.flush()?;
        for tx in &self.senders {
            send(tx, Message::Signal(signal), &self.who)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TaskError> {
        for target in 0..self.buffers.len() {
            if !self.buffers[target].is_empty() {
                self.send_batch(target)?;
            }
        }
        Ok(())
    }
}
