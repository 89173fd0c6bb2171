//! Exactly-once with checkpointing: the two-phase commit of the Kafka sink's writer
//! (the writer itself, and the other guarantees, are in `sink`).
//!
//! two-phase commit (Flink's `KafkaSink`). Each subtask
//! has a small pool of transactional producers with stable ids
//! `<prefix>-<subtask>-<slot>`, so a restart knows every id this subtask could have used.
//! They are created and initialised (`init_transactions`, in parallel, in the background)
//! when the job starts. At the barrier of checkpoint n the open transaction is
//! pre-committed (flushed: every record acknowledged), recorded in the checkpoint with its
//! producer id and epoch, and writing continues in a transaction on the next free producer
//! of the pool (ready, so the switch costs the flush only). When checkpoint n is complete,
//! every pending transaction of a checkpoint <= n commits (a failed checkpoint never
//! completes, so a later one commits its transaction too). A committed producer takes a new
//! transaction only after a later checkpoint completed: until then the checkpoints that
//! list its previous transaction may be restored, and the restore must not commit the new
//! one (both have the same producer id and epoch). If no producer is free, the checkpoint
//! fails with an error naming the pool size (`producer_pool_size`).
//!
//! A restore first commits the transactions listed in the restored checkpoint: its
//! completion means they must become visible, and the process that pre-committed them may
//! have died before committing. librdkafka cannot resume another process's transaction, so
//! the sink asks the transaction coordinator itself (`FindCoordinator` + `EndTxn`, see
//! `txn_client`) with the producer id and epoch it recorded (librdkafka reports them in its
//! statistics, `eos` section). A fenced epoch means an earlier restore committed it. Only
//! then does it initialise the pool's ids, which aborts whatever transaction began after
//! the checkpoint (those records are written again). With a smaller parallelism, subtask
//! `i` also commits the checkpointed transactions and fences the ids of old subtasks
//! `j >= parallelism` with `j % parallelism == i`; and subtask 0 looks up the ids of
//! subtasks >= parallelism (`DescribeTransactions`, Kafka 3.0+) and fences those with an
//! open transaction, which a run at a higher parallelism that crashed before completing a
//! checkpoint leaves (no restored state names them).
//!
//! Limits: the transaction timeout (`transactionTimeoutMs`) must outlast a checkpoint
//! interval plus a restart, or the broker aborts a pending transaction first (its output is
//! then lost, and the restore cannot tell). Recovery connects with the sink's TLS and SASL
//! settings (see `security`; SASL GSSAPI and OAUTHBEARER make the sink refuse to start in
//! this mode).
//!
//! End of a bounded input: `finish` only pre-commits the last transaction; the job's final
//! checkpoint (written once every task has finished; the tasks wait for it) lists it, and
//! its completion, `CheckpointComplete(FINAL_CHECKPOINT)`, commits it. A crash before then
//! restores the previous checkpoint and aborts it; a crash after commits it on restore.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, Producer};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::super::security::Security;
use super::super::txn_client::{self, Committed};
use super::{
    DeliveryReports, FINISH_TIMEOUT, INIT_TIMEOUT, Mode, STATE_VERSION, Settings, Writer,
    create_producer, offset_ranges,
};
use crate::error::BoxError;
use crate::runtime::message::FINAL_CHECKPOINT;

/// Producer id and epoch of a transactional producer: with the transactional id, all the
/// transaction coordinator needs to end its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProducerId {
    pub(super) id: i64,
    pub(super) epoch: i16,
}

/// The `eos` section of librdkafka's statistics JSON (STATISTICS.md): the producer id and
/// epoch once one is assigned.
pub(super) fn parse_eos(json: &[u8]) -> Option<ProducerId> {
    #[derive(Deserialize)]
    struct Eos {
        idemp_state: String,
        producer_id: i64,
        producer_epoch: i16,
    }
    const KEY: &[u8] = b"\"eos\"";
    // The section comes last; a topic named "eos" comes before it.
    let at = json.windows(KEY.len()).rposition(|w| w == KEY)?;
    let rest = &json[at + KEY.len()..];
    let open = rest.iter().position(|&b| b == b'{')?;
    let close = open + rest[open..].iter().position(|&b| b == b'}')?;
    let eos: Eos = serde_json::from_slice(&rest[open..=close]).ok()?;
    (eos.idemp_state == "Assigned" && eos.producer_id >= 0).then_some(ProducerId {
        id: eos.producer_id,
        epoch: eos.producer_epoch,
    })
}

/// What a producer of the pool is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    /// Receives the records written now.
    Open,
    /// Pre-committed at the barrier of `checkpoint`; commits once a checkpoint >= it completes.
    Pending {
        checkpoint: u64,
        records: u64,
    },
    /// Committed while `after_barrier` was the latest barrier: the snapshots up to that
    /// checkpoint may list its transaction, so it takes no new one (which a restore of them
    /// would commit) until a later checkpoint completed.
    Committed {
        after_barrier: u64,
    },
}

/// A transaction pre-committed for a checkpoint, as the checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PendingTxn {
    pub(super) checkpoint: u64,
    pub(super) transactional_id: String,
    pub(super) producer_id: i64,
    pub(super) producer_epoch: i16,
    pub(super) records: u64,
}

/// The checkpointed state of an exactly-once (two-phase commit) subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SinkState {
    pub(super) version: u32,
    /// Ids are `<prefix>-<subtask>-<slot>` for slot < `pool_size`.
    pub(super) transactional_id_prefix: String,
    pub(super) subtask: u32,
    pub(super) pool_size: u32,
    pub(super) pending: Vec<PendingTxn>,
}

pub(super) fn transactional_id(prefix: &str, subtask: u32, slot: u32) -> String {
    format!("{prefix}-{subtask}-{slot}")
}

/// The new subtask that takes over an old subtask's transactions after a rescale.
pub(super) fn owner_of(old_subtask: u32, parallelism: u32) -> u32 {
    old_subtask % parallelism
}

/// A client for the transaction coordinators, over the sink's TLS and SASL settings.
pub(super) fn coordinators(
    settings: &Settings,
    client_id: &str,
) -> Result<txn_client::Client, String> {
    Ok(txn_client::Client::new(
        settings.bootstrap_servers(),
        &format!("{client_id}-recovery"),
        Security::of(&settings.client)?,
        Instant::now() + INIT_TIMEOUT,
    ))
}

/// Transactional ids of subtasks >= `parallelism` (with this prefix and pool size) that hold
/// an open transaction: a run at a higher parallelism that crashed before any of its
/// checkpoints completed leaves them, and no restored state names them. They would hold back
/// `read_committed` readers until the broker's transaction timeout. Probes subtask after
/// subtask until two in a row whose first id the coordinator does not know (every subtask
/// initialises its whole pool at start; the second one covers a run killed while its subtasks
/// were still starting).
pub(super) fn lingering_ids(
    settings: &Settings,
    client_id: &str,
    parallelism: u32,
    pool_size: u32,
) -> Result<Vec<String>, String> {
    let prefix = settings
        .transactional_id_prefix
        .as_deref()
        .unwrap_or_default();
    let client = coordinators(settings, client_id)?;
    let state = |id: &str| {
        client
            .state(id)
            .map_err(|e| format!("cannot look up Kafka transactional id {id}: {e}"))
    };
    let mut open = Vec::new();
    let mut unknown_in_a_row = 0;
    for subtask in parallelism..parallelism.saturating_add(1024) {
        let first = transactional_id(prefix, subtask, 0);
        match state(&first)? {
            None => {
                info!(
                    "the Kafka brokers do not support DescribeTransactions (Kafka < 3.0): \
                     transactions left open by a crashed run at a higher parallelism end on \
                     the broker's transaction timeout"
                );
                return Ok(open);
            }
            Some(txn_client::TxnState::Unknown) => {
                unknown_in_a_row += 1;
                if unknown_in_a_row == 2 {
                    break;
                }
                continue;
            }
            Some(s) => {
                unknown_in_a_row = 0;
                if s.is_open() {
                    open.push(first);
                }
            }
        }
        for slot in 1..pool_size {
            let id = transactional_id(prefix, subtask, slot);
            if state(&id)?.is_some_and(|s| s.is_open()) {
                open.push(id);
            }
        }
    }
    crate::runtime::metrics::kafka::transactions_aborted(open.len() as u64);
    Ok(open)
}

/// What a writer's background initialisation needs.
pub(super) struct InitJob {
    pub(super) settings: Settings,
    pub(super) client_id: String,
    pub(super) own: Vec<(String, Arc<BaseProducer<DeliveryReports>>)>,
    pub(super) fence: Vec<String>,
    /// Subtask 0 with two-phase commit also aborts what removed subtasks left open.
    pub(super) probe: Option<(u32, u32)>,
}

impl InitJob {
    /// `init_transactions` on every producer of the pool (fencing their previous incarnations
    /// and aborting their open transactions) and on the ids to fence, all in parallel.
    pub(super) fn run(self) -> Result<(), String> {
        let mut fence = self.fence;
        if let Some((parallelism, pool)) = self.probe {
            fence.extend(lingering_ids(
                &self.settings,
                &self.client_id,
                parallelism,
                pool,
            )?);
        }
        let (settings, client_id) = (&self.settings, &self.client_id);
        let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let own = self.own.iter().map(|(id, producer)| {
                scope.spawn(move || {
                    producer
                        .init_transactions(INIT_TIMEOUT)
                        .map_err(|e| format!("cannot initialise Kafka transactions ({id}): {e}"))
                })
            });
            let others = fence.iter().map(|id| {
                scope.spawn(move || {
                    let producer = create_producer(settings, Mode::Timed, client_id, Some(id))?;
                    producer
                        .init_transactions(INIT_TIMEOUT)
                        .map_err(|e| format!("cannot fence Kafka transactional id {id}: {e}"))
                })
            });
            let handles: Vec<_> = own.chain(others).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err("a Kafka producer set-up thread panicked".to_string())
                    })
                })
                .collect()
        });
        results.into_iter().collect::<Result<(), String>>()?;
        if !fence.is_empty() {
            info!(ids = ?fence, "fenced transactional ids left by an earlier run");
        }
        Ok(())
    }
}

impl<T> Writer<T> {
    /// The producer id and epoch of a two-phase-commit producer, from librdkafka's
    /// statistics (reported every `STATS_INTERVAL_MS` once the id is assigned).
    pub(super) fn producer_id(&mut self, slot: usize) -> Result<ProducerId, BoxError> {
        let s = &mut self.slots[slot];
        let started = Instant::now();
        loop {
            let reported = *s.producer.context().producer_id.lock().unwrap();
            match (s.producer_id, reported) {
                (Some(known), Some(now)) if known == now => return Ok(known),
                (Some(known), now) => {
                    return Err(format!(
                        "the Kafka producer {} changed its producer id or epoch \
                         ({known:?} -> {now:?})",
                        s.transactional_id.as_deref().unwrap_or_default()
                    )
                    .into());
                }
                (None, Some(now)) => {
                    s.producer_id = Some(now);
                    return Ok(now);
                }
                (None, None) if started.elapsed() > Duration::from_secs(10) => {
                    return Err(format!(
                        "librdkafka reported no producer id for {} in its statistics within 10 s",
                        s.transactional_id.as_deref().unwrap_or_default()
                    )
                    .into());
                }
                (None, None) => s.producer.poll(Duration::from_millis(10)),
            }
        }
    }

    /// Two-phase commit: commits every pending transaction of a checkpoint <= `upto`, oldest
    /// first.
    pub(super) fn commit_pending(&mut self, upto: u64) -> Result<(), BoxError> {
        let mut due: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                SlotState::Pending { checkpoint, .. } if checkpoint <= upto => {
                    Some((checkpoint, i))
                }
                _ => None,
            })
            .collect();
        due.sort_unstable();
        for (checkpoint, i) in due {
            let slot = &mut self.slots[i];
            let records = match slot.state {
                SlotState::Pending { records, .. } => records,
                _ => 0,
            };
            slot.producer
                .commit_transaction(FINISH_TIMEOUT)
                .map_err(|e| {
                    format!(
                        "cannot commit the Kafka transaction of checkpoint {checkpoint} ({}): {e}",
                        slot.transactional_id.as_deref().unwrap_or_default()
                    )
                })?;
            slot.state = SlotState::Committed {
                after_barrier: self.last_barrier,
            };
            crate::runtime::metrics::kafka::transaction_committed();
            debug!(
                checkpoint,
                records,
                id = slot.transactional_id.as_deref().unwrap_or_default(),
                "committed Kafka transaction"
            );
        }
        Ok(())
    }

    /// The checkpointed state: the pending transactions.
    pub(super) fn state(&self) -> Result<Vec<u8>, BoxError> {
        let mut pending: Vec<PendingTxn> = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Pending {
                    checkpoint,
                    records,
                } => {
                    let p = s.producer_id.expect("two-phase producers have an id");
                    Some(PendingTxn {
                        checkpoint,
                        transactional_id: s.transactional_id.clone().unwrap_or_default(),
                        producer_id: p.id,
                        producer_epoch: p.epoch,
                        records,
                    })
                }
                _ => None,
            })
            .collect();
        pending.sort_by_key(|p| p.checkpoint);
        let state = SinkState {
            version: STATE_VERSION,
            transactional_id_prefix: self
                .settings
                .transactional_id_prefix
                .clone()
                .unwrap_or_default(),
            subtask: self.subtask,
            pool_size: self.slots.len() as u32,
            pending,
        };
        Ok(serde_json::to_vec(&state)?)
    }

    /// Two-phase commit at the barrier of `checkpoint`: pre-commits the open transaction and
    /// moves on to a free producer.
    pub(super) fn pre_commit(&mut self, checkpoint: u64) -> Result<(), BoxError> {
        if self.in_transaction > 0 {
            let cur = self.current;
            let started = Instant::now();
            // Every record of the transaction acknowledged: only the commit is left.
            self.flush_all(cur)?;
            self.producer_id(cur)?;
            let acked = self.slots[cur].producer.context().take_acked();
            debug!(
                checkpoint,
                records = self.in_transaction,
                id = self.slots[cur].transactional_id.as_deref().unwrap_or_default(),
                offsets = %offset_ranges(&acked),
                flush_ms = started.elapsed().as_millis() as u64,
                "pre-committed Kafka transaction"
            );
            if checkpoint == FINAL_CHECKPOINT {
                // End of input: nothing follows, so no new transaction; the final checkpoint
                // commits this one.
                self.slots[cur].state = SlotState::Pending {
                    checkpoint,
                    records: self.in_transaction,
                };
                self.in_transaction = 0;
                self.last_barrier = checkpoint;
                return Ok(());
            }
            let next = self
                .slots
                .iter()
                .position(|s| s.state == SlotState::Free)
                .ok_or_else(|| {
                    format!(
                        "Kafka sink: no free transactional producer at checkpoint \
                         {checkpoint}: all {} of subtask {} hold a transaction of a checkpoint \
                         that has not completed, or wait for a later checkpoint to complete \
                         after their commit (checkpoints are not completing; or raise the \
                         producer pool size)",
                        self.slots.len(),
                        self.subtask
                    )
                })?;
            self.slots[cur].state = SlotState::Pending {
                checkpoint,
                records: self.in_transaction,
            };
            self.current = next;
            self.open_transaction()?;
        }
        self.last_barrier = checkpoint;
        Ok(())
    }

    /// Commits the transactions a restored checkpoint lists and remembers which ids to fence.
    pub(super) fn recover(&mut self, old_subtask: u32, bytes: &[u8]) -> Result<(), BoxError> {
        if bytes.is_empty() {
            return Ok(()); // not exactly-once then: nothing pending
        }
        let state: SinkState = serde_json::from_slice(bytes)
            .map_err(|e| format!("cannot read the Kafka sink's checkpointed state: {e}"))?;
        if state.version != STATE_VERSION {
            return Err(format!(
                "the Kafka sink's checkpointed state has version {}, this build reads {STATE_VERSION}",
                state.version
            )
            .into());
        }
        let client = coordinators(&self.settings, &self.client_id)?;
        for p in &state.pending {
            let txn = txn_client::Txn {
                transactional_id: p.transactional_id.clone(),
                producer_id: p.producer_id,
                producer_epoch: p.producer_epoch,
            };
            let outcome = client.commit(&txn).map_err(|e| {
                format!(
                    "cannot commit Kafka transaction {} (producer id {}, epoch {}) of restored \
                     checkpoint {}: {e}",
                    p.transactional_id, p.producer_id, p.producer_epoch, p.checkpoint
                )
            })?;
            match outcome {
                Committed::Now => {
                    crate::runtime::metrics::kafka::transaction_committed();
                    info!(
                    id = %p.transactional_id,
                    checkpoint = p.checkpoint,
                    records = p.records,
                    "committed a transaction of the restored checkpoint"
                    )
                }
                Committed::Earlier => info!(
                    id = %p.transactional_id,
                    checkpoint = p.checkpoint,
                    "a transaction of the restored checkpoint was committed before (fenced epoch)"
                ),
            }
        }
        let own: BTreeSet<&str> = self
            .slots
            .iter()
            .filter_map(|s| s.transactional_id.as_deref())
            .collect();
        for slot in 0..state.pool_size {
            let id = transactional_id(&state.transactional_id_prefix, old_subtask, slot);
            if !own.contains(id.as_str()) {
                self.fence.insert(id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_ids_come_from_the_statistics_eos_section() {
        let stats = br#"{"name":"p#producer-1","topics":{"eos":{"partitions":{}}},"eos": { "idemp_state": "Assigned", "idemp_stateage": 47, "txn_state": "InTransaction", "txn_stateage": 9, "txn_may_enq": true, "producer_id": 1000, "producer_epoch": 3, "epoch_cnt": 1 }}"#;
        assert_eq!(parse_eos(stats), Some(ProducerId { id: 1000, epoch: 3 }));
        let unassigned = br#"{"eos": { "idemp_state": "WaitPID", "idemp_stateage": 1, "txn_state": "Init", "txn_stateage": 1, "txn_may_enq": false, "producer_id": -1, "producer_epoch": -1, "epoch_cnt": 0 }}"#;
        assert_eq!(parse_eos(unassigned), None);
        assert_eq!(parse_eos(br#"{"name":"x"}"#), None);
    }

    #[test]
    fn rescaled_subtasks_take_over_old_ones_round_robin() {
        // 5 -> 2: old 0, 2, 4 go to new 0; old 1, 3 to new 1.
        let owners: Vec<u32> = (0..5).map(|old| owner_of(old, 2)).collect();
        assert_eq!(owners, vec![0, 1, 0, 1, 0]);
        // 2 -> 3: everyone keeps their own.
        assert_eq!(owner_of(1, 3), 1);
    }
}
