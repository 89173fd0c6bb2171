//! The last link of a chain: distributes records over the channels of one outgoing edge and
//! cuts them into batches.

use std::sync::Arc;

use streamjob_crds::keygroup::{key_group_of_hash, subtask_for_key_group};

use crate::error::TaskError;
use crate::runtime::channel::{Endpoint, Sender, send};
use crate::runtime::message::{Message, Signal};
use crate::runtime::output::Output;

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
        let next = first_target % senders.len().max(1);
        Router {
            senders,
            buffers,
            route,
            batch_size: batch_size.max(1),
            max_parallelism,
            next,
            who,
        }
    }

    #[inline]
    fn push(&mut self, target: usize, item: T) -> Result<(), TaskError> {
        let buf = &mut self.buffers[target];
        buf.push(item);
        if buf.len() >= self.batch_size {
            let full = std::mem::replace(buf, Vec::with_capacity(self.batch_size));
            crate::metrics::records_out(full.len() as u64);
            send(&self.senders[target], Message::Data(full), &self.who)?;
        }
        Ok(())
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
        for (buf, tx) in self.buffers.iter_mut().zip(&self.senders) {
            if !buf.is_empty() {
                let part = std::mem::replace(buf, Vec::with_capacity(self.batch_size));
                crate::metrics::records_out(part.len() as u64);
                send(tx, Message::Data(part), &self.who)?;
            }
        }
        Ok(())
    }
}
