//! The last link of a chain: distributes records over the channels of one outgoing edge and
//! cuts them into batches.

use std::sync::Arc;

use streamjob_crds::keygroup::{key_group_of_hash, subtask_for_key_group};

use crate::error::TaskError;
use crate::runtime::channel::{Endpoint, Sender, send};
use crate::runtime::message::{Batch, Message, Signal};
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

/// What is being collected for one channel.
struct Pending<T> {
    items: Vec<T>,
    /// Event timestamps parallel to the records; left empty (no allocation, and an untimed
    /// batch on the channel) until a record with a timestamp is routed.
    stamps: Vec<i64>,
    hashes: Vec<u64>,
}

pub(crate) struct Router<T> {
    senders: Vec<Sender<T>>,
    pending: Vec<Pending<T>>,
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
        let batch_size = batch_size.max(1);
        let pending = senders
            .iter()
            .map(|_| Pending {
                items: Vec::with_capacity(batch_size),
                stamps: Vec::new(),
                hashes: Vec::new(),
            })
            .collect();
        let next = first_target % senders.len().max(1);
        Router {
            senders,
            pending,
            route,
            batch_size,
            max_parallelism,
            next,
            who,
        }
    }

    #[inline]
    fn push(&mut self, target: usize, item: T, hash: Option<u64>) -> Result<(), TaskError> {
        let ts = current_timestamp();
        let p = &mut self.pending[target];
        if ts != NO_TIMESTAMP || !p.stamps.is_empty() {
            if p.stamps.len() < p.items.len() {
                p.stamps.resize(p.items.len(), NO_TIMESTAMP);
            }
            p.stamps.push(ts);
        }
        if let Some(h) = hash {
            if p.hashes.capacity() == 0 {
                p.hashes.reserve(self.batch_size);
            }
            p.hashes.push(h);
        }
        p.items.push(item);
        if p.items.len() >= self.batch_size {
            self.send_batch(target)?;
        }
        Ok(())
    }

    fn send_batch(&mut self, target: usize) -> Result<(), TaskError> {
        let p = &mut self.pending[target];
        let records = std::mem::replace(&mut p.items, Vec::with_capacity(self.batch_size));
        crate::runtime::metrics::records_out(records.len() as u64);
        let mut timestamps = std::mem::take(&mut p.stamps);
        if !timestamps.is_empty() {
            timestamps.resize(records.len(), NO_TIMESTAMP);
        }
        let batch = Batch {
            records,
            timestamps,
            key_hashes: std::mem::take(&mut p.hashes),
        };
        send(&self.senders[target], Message::Batch(batch), &self.who)
    }
}

impl<T: Clone + Send> Output<T> for Router<T> {
    #[inline]
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        match &self.route {
            Route::Forward => self.push(0, item, None),
            Route::Rebalance => {
                let t = self.next;
                self.next = if t + 1 == self.senders.len() {
                    0
                } else {
                    t + 1
                };
                self.push(t, item, None)
            }
            Route::Hash(key_hash) => {
                let hash = key_hash(&item);
                let group = key_group_of_hash(hash, self.max_parallelism);
                let target =
                    subtask_for_key_group(group, self.senders.len() as u32, self.max_parallelism)
                        as usize;
                self.push(target, item, Some(hash))
            }
            Route::Broadcast => {
                for t in 1..self.senders.len() {
                    self.push(t, item.clone(), None)?;
                }
                self.push(0, item, None)
            }
        }
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
        for target in 0..self.pending.len() {
            if !self.pending[target].items.is_empty() {
                self.send_batch(target)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::codec::key_hash::stable_hash;
    use crate::runtime::channel::{InputGate, Receiver, channel};
    use crate::runtime::context::{CancelFlag, SubtaskContext};
    use crate::runtime::task::InputTask;
    use crate::runtime::time::set_current_timestamp;

    type Rec = (String, u64);

    fn who() -> Endpoint {
        Endpoint {
            operator: "t".into(),
            subtask: 0,
            cancel: CancelFlag::default(),
        }
    }

    fn router(route: Route<Rec>, n: usize) -> (Router<Rec>, Vec<Receiver<Rec>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| channel(64)).unzip();
        (Router::new(txs, route, 3, 128, 0, who()), rxs)
    }

    fn by_word() -> Route<Rec> {
        Route::Hash(Arc::new(|r: &Rec| stable_hash(r.0.as_str())))
    }

    /// What reaches the head of the downstream chain: record, timestamp, key hash.
    type Seen = Arc<Mutex<Vec<(Rec, i64, Option<u64>)>>>;

    struct Head(Seen);

    impl Output<Rec> for Head {
        fn emit(&mut self, item: Rec) -> Result<(), TaskError> {
            let ts = current_timestamp();
            self.0.lock().unwrap().push((item, ts, None));
            Ok(())
        }
        fn emit_keyed(&mut self, item: Rec, key_hash: u64) -> Result<(), TaskError> {
            let ts = current_timestamp();
            self.0.lock().unwrap().push((item, ts, Some(key_hash)));
            Ok(())
        }
        fn signal(&mut self, _: Signal) -> Result<(), TaskError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), TaskError> {
            Ok(())
        }
    }

    /// Runs the downstream task of `rx` until its end of input; what its head saw.
    fn receive(rx: Receiver<Rec>) -> Vec<(Rec, i64, Option<u64>)> {
        let seen = Seen::default();
        let ctx = SubtaskContext {
            job_name: "j".into(),
            operator: "down".into(),
            uid: "down".into(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: 128,
            key_groups: streamjob_crds::KeyGroupRange::for_subtask(0, 1, 128),
            batch_size: 3,
            buffer_timeout: std::time::Duration::from_millis(5),
            cancel: CancelFlag::default(),
            checkpoints: None,
        };
        let task = InputTask {
            gate: InputGate::new(vec![rx], who()),
            head: Box::new(Head(seen.clone())) as Box<dyn Output<Rec>>,
            ctx,
        };
        crate::runtime::task::Task::run(Box::new(task)).unwrap();
        Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
    }

    fn rec(w: &str, n: u64) -> Rec {
        (w.to_string(), n)
    }

    #[test]
    fn hash_edges_deliver_each_record_with_its_key_hash_and_timestamp() {
        {
            let (mut r, rxs) = router(by_word(), 2);
            let words = ["a", "b", "c", "a", "d", "e", "f", "b"];
            for (i, w) in words.iter().enumerate() {
                // Only some records have a timestamp: the others arrive without one.
                set_current_timestamp(if i.is_multiple_of(3) {
                    i as i64
                } else {
                    NO_TIMESTAMP
                });
                r.emit(rec(w, i as u64)).unwrap();
            }
            r.signal(Signal::EndOfInput).unwrap();
            drop(r);
            let mut all = Vec::new();
            for (target, rx) in rxs.into_iter().enumerate() {
                for (item, ts, hash) in receive(rx) {
                    let h = stable_hash(item.0.as_str());
                    assert_eq!(hash, Some(h), "{item:?}");
                    let group = key_group_of_hash(h, 128);
                    assert_eq!(subtask_for_key_group(group, 2, 128) as usize, target);
                    let i = item.1 as usize;
                    let want = if i.is_multiple_of(3) {
                        i as i64
                    } else {
                        NO_TIMESTAMP
                    };
                    assert_eq!(ts, want, "{item:?}");
                    all.push(item);
                }
            }
            all.sort_by_key(|r| r.1);
            let want: Vec<Rec> = words
                .iter()
                .enumerate()
                .map(|(i, w)| rec(w, i as u64))
                .collect();
            assert_eq!(all, want);
        }
    }

    #[test]
    fn rebalance_and_broadcast_carry_no_key_hash() {
        {
            let (mut r, rxs) = router(Route::Broadcast, 2);
            set_current_timestamp(NO_TIMESTAMP);
            for i in 0..4 {
                r.emit(rec("x", i)).unwrap();
            }
            r.signal(Signal::EndOfInput).unwrap();
            drop(r);
            for rx in rxs {
                let seen = receive(rx);
                let want: Vec<_> = (0..4).map(|i| (rec("x", i), NO_TIMESTAMP, None)).collect();
                assert_eq!(seen, want);
            }
            let (mut r, rxs) = router(Route::Rebalance, 2);
            for i in 0..5 {
                r.emit(rec("y", i)).unwrap();
            }
            r.signal(Signal::EndOfInput).unwrap();
            drop(r);
            let counts: Vec<usize> = rxs.into_iter().map(|rx| receive(rx).len()).collect();
            assert_eq!(counts, vec![3, 2]);
        }
    }
}
