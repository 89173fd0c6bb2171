//! The gRPC data exchange. Every channel whose two ends run on different workers becomes one
//! `Open` stream from the upstream worker to the downstream one (all streams to a peer share
//! one HTTP/2 connection). The local halves stay ordinary bounded channels, so routers and
//! input gates do not know whether a channel is remote.
//!
//! Flow control is credit-based: the receiver grants `credit` batches when it accepts the
//! stream and grants more as it hands batches to the local channel, so a sender never has
//! more than `credit` batches in flight per channel and a slow consumer stops its producers
//! in other processes with bounded memory on both sides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument as _, debug, info_span};

use crate::error::{Cause, TaskError};
use crate::net::PROTOCOL_VERSION;
use crate::net::cluster::TlsPems;
use crate::net::proto::exchange_client::ExchangeClient;
use crate::net::proto::exchange_server::{Exchange, ExchangeServer};
use crate::net::proto::{self, Barrier, Hello, Reply, frame, reply};
use crate::runtime::context::CancelFlag;
use crate::runtime::message::CheckpointBarrier;
use crate::runtime::metrics::{self, ChannelMetrics, Direction};
use crate::runtime::transport::{ChannelId, Frame, InboundSlot, OutboundChannel, PushError};

/// Largest gRPC message accepted (one batch of large records).
const MAX_MESSAGE: usize = 256 << 20;

/// The frame of the runtime's transport as it travels in the protocol.
fn to_proto(f: Frame) -> frame::Kind {
    match f {
        Frame::Batch(b) => frame::Kind::Batch(b),
        Frame::Watermark(w) => frame::Kind::Watermark(w),
        Frame::Barrier(b) => frame::Kind::Barrier(Barrier {
            id: b.id,
            timestamp_ms: b.timestamp_ms,
        }),
        Frame::EndOfInput => frame::Kind::EndOfInput(true),
    }
}

fn from_proto(k: frame::Kind) -> Result<Frame, String> {
    Ok(match k {
        frame::Kind::Batch(b) => Frame::Batch(b),
        frame::Kind::Watermark(w) => Frame::Watermark(w),
        frame::Kind::Barrier(b) => Frame::Barrier(CheckpointBarrier {
            id: b.id,
            timestamp_ms: b.timestamp_ms,
        }),
        frame::Kind::EndOfInput(_) => Frame::EndOfInput,
        frame::Kind::Hello(_) => return Err("second hello on a stream".into()),
    })
}

/// Errors of the exchange, collected with the task errors of the run; the first one cancels
/// the local tasks.
#[derive(Clone)]
pub(crate) struct Failures {
    pub cancel: CancelFlag,
    pub errors: Arc<Mutex<Vec<TaskError>>>,
    pub worker: u32,
}

impl Failures {
    pub fn fail(&self, message: String) {
        tracing::error!(%message, "exchange failed");
        self.errors.lock().unwrap().push(TaskError::secondary(
            "exchange",
            self.worker,
            Cause::Network,
            message,
        ));
        self.cancel.set();
    }
}

/// What both ends of every stream must agree on.
#[derive(Clone)]
pub(crate) struct Handshake {
    pub job: String,
    pub plan_hash: String,
    pub token: Arc<str>,
}

pub(crate) struct ExchangeService {
    pub handshake: Handshake,
    pub credit: u32,
    pub slots: Arc<Mutex<HashMap<ChannelId, InboundSlot>>>,
    pub failures: Failures,
}

pub(crate) fn check_token(
    token: &str,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<(), Status> {
    let expected = format!("Bearer {token}");
    let got = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Compare in constant time: the token is the only thing guarding the exchange.
    let same: bool = got.as_bytes().ct_eq(expected.as_bytes()).into();
    if same {
        Ok(())
    } else {
        Err(Status::unauthenticated(
            "request without the job's token (STREAMJOB_TOKEN differs between workers)",
        ))
    }
}

impl ExchangeService {
    fn check_hello(&self, h: &Hello) -> Result<(), Status> {
        let me = &self.handshake;
        let mismatch = if h.protocol_version != PROTOCOL_VERSION {
            Some(format!(
                "protocol version mismatch: worker {} speaks {}, worker {} speaks {}",
                h.from_worker, h.protocol_version, self.failures.worker, PROTOCOL_VERSION
            ))
        } else if h.job != me.job {
            Some(format!(
                "job mismatch: worker {} runs job '{}', worker {} runs '{}'",
                h.from_worker, h.job, self.failures.worker, me.job
            ))
        } else if let Some(m) = crate::net::coordination::other_run(
            h.from_worker,
            &h.plan_hash,
            self.failures.worker,
            &me.plan_hash,
        ) {
            Some(m)
        } else if h.plan_hash != me.plan_hash {
            Some(format!(
                "plan hash mismatch: worker {} runs plan {}, worker {} runs plan {} \
                 (every worker must run the same spec)",
                h.from_worker, h.plan_hash, self.failures.worker, me.plan_hash
            ))
        } else {
            None
        };
        match mismatch {
            // A peer still in an earlier run of the job: it fails and joins this run.
            Some(m) if crate::net::coordination::earlier_run(&h.plan_hash, &me.plan_hash) => {
                Err(Status::failed_precondition(m))
            }
            // The data this worker waits for will never come: fail here too.
            Some(m) => {
                self.failures.fail(m.clone());
                Err(Status::failed_precondition(m))
            }
            None => Ok(()),
        }
    }
}

type ReplyTx = mpsc::Sender<Result<Reply, Status>>;

#[tonic::async_trait]
impl Exchange for ExchangeService {
    type OpenStream = ReceiverStream<Result<Reply, Status>>;

    async fn open(
        &self,
        request: Request<Streaming<proto::Frame>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        check_token(&self.handshake.token, request.metadata())?;
        let mut frames = request.into_inner();
        let hello = match frames.message().await? {
            Some(proto::Frame {
                kind: Some(frame::Kind::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the first frame must be a hello")),
        };
        self.check_hello(&hello)?;
        let id = ChannelId {
            edge: hello.edge,
            from: hello.from_subtask,
            to: hello.to_subtask,
        };
        let slot = self.slots.lock().unwrap().remove(&id).ok_or_else(|| {
            Status::not_found(format!(
                "worker {} has no open channel {id:?} (opened twice, or assignments differ)",
                self.failures.worker
            ))
        })?;
        let (tx, rx) = mpsc::channel(8);
        tx.send(Ok(Reply {
            kind: Some(reply::Kind::Accepted(self.credit)),
        }))
        .await
        .map_err(|_| Status::cancelled("peer left during the handshake"))?;
        let span = info_span!("exchange-in", channel = %slot.label, peer = slot.peer);
        let counters = metrics::global().channel(id, slot.peer, Direction::Received);
        tokio::spawn(
            receive(
                frames,
                slot,
                tx,
                self.credit,
                self.failures.clone(),
                counters,
            )
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Feeds a remote channel's frames into its local channel, granting credit as batches are
/// handed on.
async fn receive(
    mut frames: Streaming<proto::Frame>,
    slot: InboundSlot,
    replies: ReplyTx,
    credit: u32,
    failures: Failures,
    counters: Arc<ChannelMetrics>,
) {
    let refill = (credit / 2).max(1);
    let mut owed = 0u32;
    let what = |s: &str| format!("channel {} from worker {}: {s}", slot.label, slot.peer);
    loop {
        let kind = match frames.message().await {
            Ok(Some(proto::Frame { kind: Some(k) })) => k,
            Ok(Some(proto::Frame { kind: None })) => {
                return failures.fail(what("empty frame (incompatible peer)"));
            }
            Ok(None) => {
                return failures.fail(what(
                    "stream closed before end of input (the upstream worker failed)",
                ));
            }
            Err(status) => {
                return failures.fail(what(&format!(
                    "lost connection to worker {}: {}",
                    slot.peer,
                    status.message()
                )));
            }
        };
        let kind = match from_proto(kind) {
            Ok(k) => k,
            Err(m) => return failures.fail(what(&m)),
        };
        let is_batch = matches!(kind, Frame::Batch(_));
        if let Frame::Batch(b) = &kind {
            counters.batch(b.len() as u64);
        }
        let end = matches!(kind, Frame::EndOfInput);
        match slot.inbound.push(kind).await {
            Ok(()) => {}
            // Local consumer gone: its own error is reported; dropping the stream tells
            // the sender.
            Err(PushError::Closed) => return,
            Err(PushError::Malformed(m)) => return failures.fail(what(&m)),
        }
        if end {
            debug!("end of input");
            // Dropping `replies` ends the reply stream: the sender knows all arrived.
            return;
        }
        if is_batch {
            owed += 1;
            if owed >= refill {
                let grant = Reply {
                    kind: Some(reply::Kind::Credit(owed)),
                };
                if replies.send(Ok(grant)).await.is_err() {
                    return failures.fail(what("sender went away"));
                }
                owed = 0;
            }
        }
    }
}

/// Connects to a peer, retrying with backoff until `timeout`.
pub(crate) async fn connect(
    peer: u32,
    addr: &str,
    timeout: Duration,
    cancel: &CancelFlag,
    tls: Option<&TlsPems>,
) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("worker {peer}: bad address '{addr}': {e}"))?;
    if let Some(t) = tls {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        endpoint = endpoint
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&t.ca))
                    .identity(Identity::from_pem(&t.cert, &t.key))
                    .domain_name(host.trim_start_matches('[').trim_end_matches(']')),
            )
            .map_err(|e| format!("worker {peer}: TLS setup: {e}"))?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(8 << 20));
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        match endpoint.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) => {
                if cancel.is_set() {
                    return Err(format!(
                        "worker {peer} at {addr}: cancelled while connecting"
                    ));
                }
                if started.elapsed() >= timeout {
                    return Err(format!(
                        "worker {peer} at {addr} is unreachable after {timeout:?}: {}",
                        error_chain(&e)
                    ));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Sends one channel to its peer until end of input; returns the bytes sent.
pub(crate) async fn send(
    channel: Channel,
    mut ch: OutboundChannel,
    handshake: Handshake,
    worker: u32,
) -> Result<u64, String> {
    let what = |s: &str| format!("channel {} to worker {}: {s}", ch.label, ch.peer);
    let (tx, rx) = mpsc::channel::<proto::Frame>(4);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        job: handshake.job.clone(),
        plan_hash: handshake.plan_hash.clone(),
        edge: ch.id.edge,
        from_subtask: ch.id.from,
        to_subtask: ch.id.to,
        from_worker: worker,
    };
    tx.send(proto::Frame {
        kind: Some(frame::Kind::Hello(hello)),
    })
    .await
    .expect("receiver alive");
    let mut request = Request::new(ReceiverStream::new(rx));
    let bearer: MetadataValue<_> = format!("Bearer {}", handshake.token)
        .parse()
        .map_err(|_| what("the token is not a valid header value"))?;
    request.metadata_mut().insert("authorization", bearer);
    let mut client = ExchangeClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let mut replies = client
        .open(request)
        .await
        .map_err(|s| what(&format!("refused: {}", s.message())))?
        .into_inner();
    let mut credit = match replies.message().await {
        Ok(Some(Reply {
            kind: Some(reply::Kind::Accepted(c)),
        })) => c,
        Ok(_) => return Err(what("no handshake reply")),
        Err(s) => return Err(what(&format!("refused: {}", s.message()))),
    };
    let counters = metrics::global().channel(ch.id, ch.peer, Direction::Sent);
    counters.credits(credit);
    let mut bytes = 0u64;
    loop {
        tokio::select! {
            r = replies.message() => match r {
                Ok(Some(Reply { kind: Some(reply::Kind::Credit(c)) })) => {
                    credit += c;
                    counters.credits(credit);
                }
                Ok(_) => return Err(what("receiver closed the channel before end of input")),
                Err(s) => return Err(what(&format!("lost connection: {}", s.message()))),
            },
            f = ch.outbound.next_frame(), if credit > 0 => {
                let Some(kind) = f else {
                    // The local producer failed; closing without end of input tells the peer.
                    return Ok(bytes);
                };
                if let Frame::Batch(b) = &kind {
                    credit -= 1;
                    bytes += b.len() as u64;
                    counters.batch(b.len() as u64);
                    counters.credits(credit);
                }
                let end = matches!(kind, Frame::EndOfInput);
                if tx.send(proto::Frame { kind: Some(to_proto(kind)) }).await.is_err() {
                    return Err(what("stream closed by the transport"));
                }
                if end {
                    break;
                }
            }
        }
    }
    drop(tx);
    // The receiver ends its reply stream once it has handed on end of input.
    loop {
        match replies.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(bytes),
            Err(s) => {
                return Err(what(&format!(
                    "lost connection at end of input: {}",
                    s.message()
                )));
            }
        }
    }
}

pub(crate) fn server(service: ExchangeService) -> ExchangeServer<ExchangeService> {
    ExchangeServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}
