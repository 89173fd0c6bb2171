//! Local channels between subtasks and the input gate that merges a subtask's inputs.
//!
//! Every (upstream subtask, downstream subtask) pair of an edge gets its own bounded channel
//! of batches. Bounded capacity is the credit: an upstream with no free slot blocks, which
//! backpressures all the way to the source. Separate channels per input (rather than one
//! shared queue) let a task stop reading one input while it waits for the others' barriers,
//! which is what barrier alignment needs, and is the same shape the network exchange uses.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use flume::{RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};

use crate::error::{Cause, TaskError};
use crate::runtime::context::{CANCEL_POLL, CancelFlag};
use crate::runtime::message::{Message, Signal};

pub(crate) type Sender<T> = flume::Sender<Message<T>>;
pub(crate) type Receiver<T> = flume::Receiver<Message<T>>;

pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    flume::bounded(capacity.max(1))
}

/// Who is sending, for errors.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub operator: String,
    pub subtask: u32,
    pub cancel: CancelFlag,
}

/// Blocking send that gives up when the job is cancelled or the receiver is gone.
pub(crate) fn send<T>(tx: &Sender<T>, msg: Message<T>, who: &Endpoint) -> Result<(), TaskError> {
    let mut msg = match tx.try_send(msg) {
        Ok(()) => return Ok(()),
        Err(TrySendError::Full(m)) => m,
        Err(TrySendError::Disconnected(_)) => return Err(downstream_gone(who)),
    };
    let _backpressured = crate::runtime::metrics::BackpressureScope::start();
    loop {
        match tx.send_timeout(msg, CANCEL_POLL) {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Timeout(m)) => {
                if who.cancel.is_set() {
                    return Err(cancelled(who));
                }
                msg = m;
            }
            Err(SendTimeoutError::Disconnected(_)) => return Err(downstream_gone(who)),
        }
    }
}

fn downstream_gone(who: &Endpoint) -> TaskError {
    TaskError::secondary(
        &who.operator,
        who.subtask,
        Cause::PeerGone,
        "a downstream subtask stopped",
    )
}

pub(crate) fn cancelled(who: &Endpoint) -> TaskError {
    TaskError::secondary(
        &who.operator,
        who.subtask,
        Cause::Cancelled,
        "cancelled because another task failed",
    )
}

/// The input queue depth is sampled once in this many batches.
const QUEUE_SAMPLE: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputState {
    Open,
    /// Delivered the barrier of this checkpoint; not read until all inputs have.
    Blocked(u64),
    Finished,
}

/// Merges the channels feeding one subtask: round-robin reads, watermark = minimum over
/// inputs that are neither finished nor idle, aligned barriers, and end-of-input once every
/// input has ended.
pub(crate) struct InputGate<T> {
    inputs: Vec<Receiver<T>>,
    state: Vec<InputState>,
    watermarks: Vec<i64>,
    /// Inputs that announced [`Signal::Idle`] and sent nothing since.
    idle: Vec<bool>,
    /// Whether this gate told downstream it is idle (all its live inputs are).
    idle_out: bool,
    current_watermark: i64,
    open: usize,
    /// Barrier being aligned (delivered by some inputs, awaited on the others).
    pending_barrier: Option<crate::CheckpointBarrier>,
    /// When the first input delivered the pending barrier (alignment time, for metrics).
    aligning_since: Option<Instant>,
    /// Batches taken, to sample the queue depth every [`QUEUE_SAMPLE`] batches.
    batches: u32,
    next: usize,
    ready: VecDeque<Message<T>>,
    who: Endpoint,
}

impl<T> InputGate<T> {
    pub fn new(inputs: Vec<Receiver<T>>, who: Endpoint) -> Self {
        let n = inputs.len();
        InputGate {
            inputs,
            state: vec![InputState::Open; n],
            watermarks: vec![i64::MIN; n],
            idle: vec![false; n],
            idle_out: false,
            current_watermark: i64::MIN,
            open: n,
            pending_barrier: None,
            aligning_since: None,
            batches: 0,
            next: 0,
            ready: VecDeque::new(),
            who,
        }
    }

    /// Next element without blocking, or `None` if nothing is ready.
    pub fn try_next(&mut self) -> Result<Option<Message<T>>, TaskError> {
        if let Some(m) = self.ready.pop_front() {
            return Ok(Some(m));
        }
        let n = self.inputs.len();
        let start = self.next;
        for k in 0..n {
            let i = (start + k) % n;
            // Keep reading one input while its messages produce nothing to hand out
            // (watermarks that do not advance, barriers being aligned, its end of stream).
            while self.state[i] == InputState::Open {
                match self.inputs[i].try_recv() {
                    Ok(m) => {
                        self.accept(i, m);
                        if let Some(m) = self.ready.pop_front() {
                            self.next = (i + 1) % n;
                            return Ok(Some(m));
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Err(self.upstream_gone(i)),
                }
            }
        }
        Ok(None)
    }

    /// Next element, waiting at most `timeout`; `None` on timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Message<T>>, TaskError> {
        if let Some(m) = self.try_next()? {
            return Ok(Some(m));
        }
        if self.open == 0 {
            return Ok(None);
        }
        // Inputs blocked by barrier alignment are not waited on (no allocation here: an
        // idle task comes through this once per wakeup).
        let mut open = (0..self.inputs.len()).filter(|&i| self.state[i] == InputState::Open);
        let single = self
            .state
            .iter()
            .filter(|s| **s == InputState::Open)
            .count()
            == 1;
        let received = if single && let Some(i) = open.next() {
            match self.inputs[i].recv_timeout(timeout) {
                Ok(m) => Some((i, Ok(m))),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some((i, Err(()))),
            }
        } else {
            let mut sel = flume::Selector::new();
            for i in open {
                sel = sel.recv(&self.inputs[i], move |r| (i, r.map_err(|_| ())));
            }
            sel.wait_timeout(timeout).ok()
        };
        match received {
            None => Ok(None),
            Some((i, Err(()))) => Err(self.upstream_gone(i)),
            Some((i, Ok(m))) => {
                self.accept(i, m);
                Ok(self.ready.pop_front())
            }
        }
    }

    fn upstream_gone(&self, i: usize) -> TaskError {
        TaskError::secondary(
            &self.who.operator,
            self.who.subtask,
            Cause::PeerGone,
            format!("input channel {i} closed before end of stream (an upstream subtask failed)"),
        )
    }

    fn accept(&mut self, i: usize, m: Message<T>) {
        match m {
            Message::Batch(batch) => {
                self.set_active(i);
                self.count_queued();
                self.ready.push_back(Message::Batch(batch))
            }
            Message::Signal(Signal::Watermark(w)) => {
                self.set_active(i);
                self.watermarks[i] = self.watermarks[i].max(w);
                self.advance_watermark();
            }
            Message::Signal(Signal::Idle) => {
                self.idle[i] = true;
                self.advance_watermark();
                self.announce_idle_if_all_idle();
            }
            Message::Signal(Signal::Barrier(b)) => {
                self.state[i] = InputState::Blocked(b.id);
                self.aligning_since.get_or_insert_with(Instant::now);
                self.pending_barrier = Some(b);
                self.release_barrier_if_aligned();
            }
            // Chain-local: routers never send it.
            Message::Signal(Signal::CheckpointComplete(_)) => {}
            Message::Signal(Signal::EndOfInput) => {
                self.state[i] = InputState::Finished;
                self.open -= 1;
                if self.open == 0
                    && !self
                        .state
                        .iter()
                        .any(|s| matches!(s, InputState::Blocked(_)))
                {
                    self.ready.push_back(Message::Signal(Signal::EndOfInput));
                    return;
                }
                // A finished input no longer holds back alignment. Its watermark stays: a
                // bounded input sent +infinity before its end, and one stopped by a
                // savepoint must not let event time jump past the records it holds back
                // (windows would fire partial after the savepoint's barrier).
                if self.pending_barrier.is_some() {
                    self.release_barrier_if_aligned();
                }
            }
        }
    }

    fn release_barrier_if_aligned(&mut self) {
        if self.state.contains(&InputState::Open) {
            return;
        }
        let Some(barrier) = self.pending_barrier.take() else {
            return;
        };
        if let Some(t) = self.aligning_since.take() {
            crate::runtime::metrics::aligned(t.elapsed());
        }
        for s in &mut self.state {
            if matches!(s, InputState::Blocked(_)) {
                *s = InputState::Open;
            }
        }
        self.open = self
            .state
            .iter()
            .filter(|s| **s == InputState::Open)
            .count();
        self.ready
            .push_back(Message::Signal(Signal::Barrier(barrier)));
        if self.open == 0 {
            self.ready.push_back(Message::Signal(Signal::EndOfInput));
        }
    }

    /// Batches waiting in the inputs, for the queue-depth gauge. Reading a channel's length
    /// takes its lock (contended by the producer), so only every so many batches.
    #[inline]
    fn count_queued(&mut self) {
        self.batches = self.batches.wrapping_add(1);
        if self.batches % QUEUE_SAMPLE == 1 {
            crate::runtime::metrics::queued(self.inputs.iter().map(|r| r.len()).sum());
        }
    }

    /// Records or a watermark from an idle input: it counts again. Downstream learns that
    /// this gate is active again from the records or watermark themselves.
    #[inline]
    fn set_active(&mut self, i: usize) {
        if self.idle[i] {
            self.idle[i] = false;
            self.idle_out = false;
        }
    }

    fn announce_idle_if_all_idle(&mut self) {
        let all_idle = (0..self.inputs.len())
            .filter(|&i| self.state[i] != InputState::Finished)
            .all(|i| self.idle[i]);
        if all_idle && !self.idle_out && self.open > 0 {
            self.idle_out = true;
            self.ready.push_back(Message::Signal(Signal::Idle));
        }
    }

    fn advance_watermark(&mut self) {
        let min = (0..self.inputs.len())
            .filter(|&i| !self.idle[i])
            .map(|i| self.watermarks[i])
            .min();
        if let Some(min) = min
            && min > self.current_watermark
        {
            self.current_watermark = min;
            self.idle_out = false;
            self.ready
                .push_back(Message::Signal(Signal::Watermark(min)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CheckpointBarrier;
    use crate::runtime::message::Batch;

    fn gate(n: usize) -> (Vec<Sender<u32>>, InputGate<u32>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| channel(8)).unzip();
        let who = Endpoint {
            operator: "t".into(),
            subtask: 0,
            cancel: CancelFlag::default(),
        };
        (txs, InputGate::new(rxs, who))
    }

    fn drain(g: &mut InputGate<u32>) -> Vec<String> {
        let mut out = vec![];
        while let Some(m) = g.try_next().unwrap() {
            out.push(match m {
                Message::Batch(b) => format!("{:?}", b.records),
                Message::Signal(s) => format!("{s:?}"),
            });
        }
        out
    }

    #[test]
    fn end_of_input_only_after_every_input_ended() {
        let (txs, mut g) = gate(3);
        txs[0].send(Message::Signal(Signal::EndOfInput)).unwrap();
        txs[1].send(Message::Batch(Batch::of(vec![1]))).unwrap();
        txs[1].send(Message::Signal(Signal::EndOfInput)).unwrap();
        assert_eq!(drain(&mut g), vec!["[1]"]);
        txs[2].send(Message::Batch(Batch::of(vec![2]))).unwrap();
        txs[2].send(Message::Signal(Signal::EndOfInput)).unwrap();
        assert_eq!(drain(&mut g), vec!["[2]", "EndOfInput"]);
    }

    #[test]
    fn watermark_is_the_minimum_of_inputs() {
        let (txs, mut g) = gate(2);
        txs[0].send(Message::Signal(Signal::Watermark(10))).unwrap();
        assert!(drain(&mut g).is_empty());
        txs[1].send(Message::Signal(Signal::Watermark(5))).unwrap();
        assert_eq!(drain(&mut g), vec!["Watermark(5)"]);
        // Ended without +infinity (stopped by a savepoint): it still holds event time back.
        txs[1].send(Message::Signal(Signal::EndOfInput)).unwrap();
        assert!(drain(&mut g).is_empty());
    }

    #[test]
    fn a_bounded_input_ends_with_infinity_and_no_longer_holds_back() {
        let (txs, mut g) = gate(2);
        txs[0].send(Message::Signal(Signal::Watermark(10))).unwrap();
        txs[1].send(Message::Signal(Signal::Watermark(5))).unwrap();
        assert_eq!(drain(&mut g), vec!["Watermark(5)"]);
        txs[1]
            .send(Message::Signal(Signal::Watermark(i64::MAX)))
            .unwrap();
        txs[1].send(Message::Signal(Signal::EndOfInput)).unwrap();
        assert_eq!(drain(&mut g), vec!["Watermark(10)"]);
    }

    #[test]
    fn an_idle_input_does_not_hold_back_the_watermark() {
        let (txs, mut g) = gate(2);
        txs[0].send(Message::Signal(Signal::Watermark(10))).unwrap();
        assert!(drain(&mut g).is_empty());
        txs[1].send(Message::Signal(Signal::Idle)).unwrap();
        assert_eq!(drain(&mut g), vec!["Watermark(10)"]);
        // Back with records and a lower watermark: counts again, nothing goes backwards.
        txs[1]
            .send(Message::Batch(Batch::timed(vec![7], vec![3])))
            .unwrap();
        txs[1].send(Message::Signal(Signal::Watermark(5))).unwrap();
        assert_eq!(drain(&mut g), vec!["[7]"]);
        txs[0].send(Message::Signal(Signal::Watermark(20))).unwrap();
        assert!(drain(&mut g).is_empty());
        txs[1].send(Message::Signal(Signal::Watermark(15))).unwrap();
        assert_eq!(drain(&mut g), vec!["Watermark(15)"]);
        // Every input idle: the gate is idle, once.
        txs[0].send(Message::Signal(Signal::Idle)).unwrap();
        txs[1].send(Message::Signal(Signal::Idle)).unwrap();
        txs[1].send(Message::Signal(Signal::Idle)).unwrap();
        assert_eq!(drain(&mut g), vec!["Idle"]);
    }

    #[test]
    fn barrier_blocks_an_input_until_aligned() {
        let (txs, mut g) = gate(2);
        let b = CheckpointBarrier {
            id: 1,
            timestamp_ms: 0,
        };
        txs[0].send(Message::Signal(Signal::Barrier(b))).unwrap();
        txs[0].send(Message::Batch(Batch::of(vec![99]))).unwrap(); // after the barrier: must wait
        txs[1].send(Message::Batch(Batch::of(vec![1]))).unwrap();
        assert_eq!(drain(&mut g), vec!["[1]"]);
        txs[1].send(Message::Signal(Signal::Barrier(b))).unwrap();
        let out = drain(&mut g);
        assert_eq!(
            out[0],
            "Barrier(CheckpointBarrier { id: 1, timestamp_ms: 0 })"
        );
        assert_eq!(out[1], "[99]");
    }

    #[test]
    fn a_closed_input_without_end_of_stream_is_an_error() {
        let (mut txs, mut g) = gate(2);
        txs.remove(0);
        let err = g.next_timeout(Duration::from_millis(10)).unwrap_err();
        assert_eq!(err.cause, Cause::PeerGone);
    }
}
