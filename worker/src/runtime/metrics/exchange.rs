//! Counters of the network exchange, one set per remote channel and direction: bytes and
//! batches sent or received, and (sending side) the credit the receiver has granted and the
//! sender not used yet. Each channel's counters are written by the one async task that sends
//! or receives it, once per batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{JobMetrics, TaskSnapshot, bump};
use crate::runtime::transport::ChannelId;

/// Which half of a remote channel this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This worker runs the upstream subtask and sends.
    Sent,
    /// This worker runs the downstream subtask and receives.
    Received,
}

#[derive(Debug)]
pub struct ChannelMetrics {
    pub id: ChannelId,
    /// The worker at the other end.
    pub peer: u32,
    pub direction: Direction,
    bytes: AtomicU64,
    batches: AtomicU64,
    credits: AtomicU64,
}

impl ChannelMetrics {
    /// One encoded batch of `bytes` went out or came in.
    #[inline]
    pub fn batch(&self, bytes: u64) {
        bump(&self.bytes, bytes);
        bump(&self.batches, 1);
    }

    /// Batches the sender may still send before it waits for the receiver.
    #[inline]
    pub fn credits(&self, n: u32) {
        self.credits.store(u64::from(n), Ordering::Relaxed);
    }
}

/// A point-in-time copy of a channel's counters, with its ends named.
#[derive(Debug, Clone)]
pub(crate) struct ChannelSnapshot {
    pub from_operator: String,
    pub to_operator: String,
    pub from: u32,
    pub to: u32,
    pub peer: u32,
    pub direction: Direction,
    pub bytes: u64,
    pub batches: u64,
    pub credits: u64,
}

impl JobMetrics {
    /// The counters of one half of a remote channel; a restarted job continues those of
    /// its earlier run.
    pub fn channel(&self, id: ChannelId, peer: u32, direction: Direction) -> Arc<ChannelMetrics> {
        let mut channels = self.channels.lock().unwrap();
        if let Some(c) = channels
            .iter()
            .find(|c| c.id == id && c.direction == direction)
        {
            return c.clone();
        }
        let c = Arc::new(ChannelMetrics {
            id,
            peer,
            direction,
            bytes: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            credits: AtomicU64::new(0),
        });
        channels.push(c.clone());
        c
    }

    /// The head operators of the chains a plan edge joins.
    fn edge_ends(&self, edge: u32) -> Option<(String, String)> {
        let layout = self.layout.read().unwrap();
        let plan = &layout.as_ref()?.plan;
        let e = plan.edges.get(edge as usize)?;
        let head = |chain: usize| plan.nodes[plan.chains[chain].nodes[0]].name.clone();
        Some((head(e.from_chain), head(e.to_chain)))
    }

    pub(crate) fn channel_snapshots(&self) -> Vec<ChannelSnapshot> {
        let channels = self.channels.lock().unwrap().clone();
        let mut v: Vec<_> = channels
            .iter()
            .filter_map(|c| {
                let (from_operator, to_operator) = self.edge_ends(c.id.edge)?;
                Some(ChannelSnapshot {
                    from_operator,
                    to_operator,
                    from: c.id.from,
                    to: c.id.to,
                    peer: c.peer,
                    direction: c.direction,
                    bytes: c.bytes.load(Ordering::Relaxed),
                    batches: c.batches.load(Ordering::Relaxed),
                    credits: c.credits.load(Ordering::Relaxed),
                })
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.from_operator, &a.to_operator, a.from, a.to).cmp(&(
                &b.from_operator,
                &b.to_operator,
                b.from,
                b.to,
            ))
        });
        v
    }

    /// Adds each task's exchange bytes: sent by the upstream subtask of a channel, received
    /// by the downstream one.
    pub(super) fn add_exchange_bytes(&self, tasks: &mut [TaskSnapshot]) {
        for c in self.channel_snapshots() {
            let (operator, subtask) = match c.direction {
                Direction::Sent => (&c.from_operator, c.from),
                Direction::Received => (&c.to_operator, c.to),
            };
            if let Some(t) = tasks
                .iter_mut()
                .find(|t| &t.operator == operator && t.subtask == subtask)
            {
                match c.direction {
                    Direction::Sent => t.bytes_out += c.bytes,
                    Direction::Received => t.bytes_in += c.bytes,
                }
            }
        }
    }
}
