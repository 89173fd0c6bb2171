//! The transport the runtime needs between worker processes, as a trait: a channel whose two
//! ends run on different workers is split into an [`Outbound`] half (the local receiver,
//! read as frames) and an [`Inbound`] half (the local sender, fed from frames). Something
//! that implements [`Transport`] (the gRPC exchange in `net`) carries the frames; routers
//! and input gates only ever see ordinary bounded channels.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::codec::record::Wire;
use crate::runtime::channel::{Receiver, Sender};
use crate::runtime::context::CancelFlag;
use crate::runtime::message::{Batch, CheckpointBarrier, Message, Signal};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One channel of one edge: (plan edge index, upstream subtask, downstream subtask).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId {
    pub edge: u32,
    pub from: u32,
    pub to: u32,
}

/// What crosses the network for one channel message. Records travel as encoded batches.
#[derive(Debug)]
pub enum Frame {
    Batch(Bytes),
    Watermark(i64),
    Barrier(CheckpointBarrier),
    EndOfInput,
}

/// The upstream half of a remote channel: yields the channel's messages as frames.
pub trait Outbound: Send {
    /// Next frame, or `None` if the local producer went away without ending the stream.
    fn next_frame(&mut self) -> BoxFuture<'_, Option<Frame>>;
}

/// Why a frame could not be delivered to the local channel.
pub enum PushError {
    /// The local consumer is gone (it failed or was cancelled; that is reported locally).
    Closed,
    Malformed(String),
}

/// The downstream half of a remote channel: turns frames back into messages.
pub trait Inbound: Send + Sync {
    fn push(&self, frame: Frame) -> BoxFuture<'_, Result<(), PushError>>;
}

/// A remote channel's upstream half, to be sent to `peer`.
pub struct OutboundChannel {
    pub id: ChannelId,
    pub outbound: Box<dyn Outbound>,
    pub label: String,
    pub peer: u32,
}

/// A remote channel's downstream half, waiting for its peer to open it.
pub struct InboundSlot {
    pub inbound: Box<dyn Inbound>,
    pub label: String,
    pub peer: u32,
}

/// Carries the remote halves of a worker's channels to and from the other workers.
pub trait Transport {
    /// Registers the inbound halves (their peers open them) and starts sending the outbound
    /// ones. Called once, before the local tasks run.
    fn open(
        &mut self,
        outbound: Vec<OutboundChannel>,
        inbound: Vec<(ChannelId, InboundSlot)>,
    ) -> Result<(), String>;

    /// Called once the local tasks returned: waits until every outbound channel delivered
    /// what it holds (only briefly once `cancel` is set, so a failing job still reports
    /// why). Returns the record bytes sent.
    fn drain(&mut self, cancel: &CancelFlag) -> u64;
}

/// `Signal::Idle` travels as a watermark frame with this value, which no real watermark
/// has (gates and assigners only emit watermarks above `i64::MIN`).
const IDLE_ON_WIRE: i64 = i64::MIN;

pub(crate) struct TypedOutbound<T> {
    pub rx: Receiver<T>,
    pub wire: Wire<T>,
    /// Size of the last encoded batch, to allocate the next one right.
    pub last_len: usize,
}

impl<T: Send + 'static> Outbound for TypedOutbound<T> {
    fn next_frame(&mut self) -> BoxFuture<'_, Option<Frame>> {
        Box::pin(async move {
            let msg = self.rx.recv_async().await.ok()?;
            Some(match msg {
                Message::Batch(batch) => match self.encode(batch) {
                    Ok(frame) => frame,
                    Err(e) => {
                        // Closing without end of input fails the peer's input; the cause
                        // is only known here.
                        tracing::error!("{e}");
                        return None;
                    }
                },
                Message::Signal(Signal::Watermark(w)) => Frame::Watermark(w),
                Message::Signal(Signal::Idle) => Frame::Watermark(IDLE_ON_WIRE),
                Message::Signal(Signal::Barrier(b)) => Frame::Barrier(b),
                Message::Signal(Signal::EndOfInput) => Frame::EndOfInput,
                Message::Signal(Signal::CheckpointComplete(_)) => {
                    unreachable!("routers never send chain-local signals")
                }
            })
        })
    }
}

impl<T> TypedOutbound<T> {
    /// A batch as one network frame: the records as a postcard sequence, then their event
    /// timestamps if they have any (codec::record). Key hashes stay behind: the receiving
    /// keyed operator hashes the key itself (8 bytes per record would often double what
    /// crosses the network).
    fn encode(&mut self, batch: Batch<T>) -> Result<Frame, crate::codec::record::EncodeError> {
        let mut buf = Vec::with_capacity(self.last_len + self.last_len / 8);
        (self.wire.encode)(&batch.records, &mut buf)?;
        if !batch.timestamps.is_empty() {
            crate::codec::record::append_timestamps(&batch.timestamps, &mut buf)?;
        }
        self.last_len = buf.len();
        Ok(Frame::Batch(buf.into()))
    }
}

pub(crate) struct TypedInbound<T> {
    pub tx: Sender<T>,
    pub wire: Wire<T>,
}

impl<T: Send + 'static> Inbound for TypedInbound<T> {
    fn push(&self, frame: Frame) -> BoxFuture<'_, Result<(), PushError>> {
        Box::pin(async move {
            let msg = match frame {
                Frame::Batch(bytes) => match (self.wire.decode_timed)(&bytes)
                    .map_err(|e| PushError::Malformed(e.to_string()))?
                {
                    (records, None) => Message::Batch(Batch::of(records)),
                    (records, Some(stamps)) => Message::Batch(Batch::timed(records, stamps)),
                },
                Frame::Watermark(IDLE_ON_WIRE) => Message::Signal(Signal::Idle),
                Frame::Watermark(w) => Message::Signal(Signal::Watermark(w)),
                Frame::Barrier(b) => Message::Signal(Signal::Barrier(b)),
                Frame::EndOfInput => Message::Signal(Signal::EndOfInput),
            };
            self.tx.send_async(msg).await.map_err(|_| PushError::Closed)
        })
    }
}
