//! [`GrpcTransport`]: the runtime's [`Transport`] over the gRPC exchange. Inbound halves wait
//! in a table the exchange server hands to the streams peers open; outbound halves are sent
//! over one connection per peer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tracing::{Instrument as _, info_span};

use crate::net::cluster::TlsPems;
use crate::net::exchange::{self, ExchangeService, Failures, Handshake};
use crate::runtime::context::CancelFlag;
use crate::runtime::transport::{ChannelId, InboundSlot, OutboundChannel, Transport};

/// How long a failing job's senders get to report why before the worker stops waiting.
const FAILING_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct GrpcTransport {
    runtime: Handle,
    handshake: Handshake,
    failures: Failures,
    /// Address of every worker, by index.
    peers: Vec<String>,
    connect_timeout: Duration,
    tls: Option<TlsPems>,
    credit: u32,
    slots: Arc<Mutex<HashMap<ChannelId, InboundSlot>>>,
    senders: Vec<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
    sent: Arc<AtomicU64>,
}

impl GrpcTransport {
    pub fn new(
        runtime: Handle,
        handshake: Handshake,
        failures: Failures,
        peers: Vec<String>,
        connect_timeout: Duration,
        tls: Option<TlsPems>,
        credit: u32,
    ) -> Self {
        GrpcTransport {
            runtime,
            handshake,
            failures,
            peers,
            connect_timeout,
            tls,
            credit: credit.max(1),
            slots: Default::default(),
            senders: Vec::new(),
            watchdog: None,
            sent: Default::default(),
        }
    }

    /// The exchange service that accepts the streams peers open to this worker.
    pub fn service(&self) -> ExchangeService {
        ExchangeService {
            handshake: self.handshake.clone(),
            credit: self.credit,
            slots: self.slots.clone(),
            failures: self.failures.clone(),
        }
    }

    /// Peers that never open their channels would leave this worker waiting forever. Give
    /// them longer than the connect timeout, so an unreachable peer is reported as such.
    fn spawn_watchdog(&self) -> JoinHandle<()> {
        let (waiting, failures) = (self.slots.clone(), self.failures.clone());
        let timeout = self.connect_timeout * 2 + Duration::from_secs(2);
        self.runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            let missing: Vec<String> = waiting
                .lock()
                .unwrap()
                .values()
                .map(|s| format!("worker {} never opened channel {}", s.peer, s.label))
                .collect();
            if let Some(first) = missing.first() {
                failures.fail(format!(
                    "{first} within {timeout:?} ({} channel(s) missing)",
                    missing.len()
                ));
            }
        })
    }

    /// One connection to `peer`, one stream per channel on it.
    fn spawn_sender(&self, peer: u32, channels: Vec<OutboundChannel>) -> JoinHandle<()> {
        let addr = self.peers[peer as usize].clone();
        let (failures, handshake, sent) = (
            self.failures.clone(),
            self.handshake.clone(),
            self.sent.clone(),
        );
        let (timeout, worker, tls) = (self.connect_timeout, self.failures.worker, self.tls.clone());
        let span = info_span!("exchange-out", peer, %addr);
        self.runtime.spawn(
            async move {
                let conn =
                    match exchange::connect(peer, &addr, timeout, &failures.cancel, tls.as_ref())
                        .await
                    {
                        Ok(c) => c,
                        // Once cancelled, the reason is already reported.
                        Err(_) if failures.cancel.is_set() => return,
                        Err(e) => return failures.fail(e),
                    };
                let streams: Vec<_> = channels
                    .into_iter()
                    .map(|ch| {
                        let (conn, handshake) = (conn.clone(), handshake.clone());
                        tokio::spawn(exchange::send(conn, ch, handshake, worker))
                    })
                    .collect();
                for s in streams {
                    match s.await {
                        Ok(Ok(bytes)) => {
                            sent.fetch_add(bytes, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => failures.fail(e),
                        Err(e) => failures.fail(format!("exchange sender panicked: {e}")),
                    }
                }
            }
            .instrument(span),
        )
    }
}

impl Transport for GrpcTransport {
    fn open(
        &mut self,
        outbound: Vec<OutboundChannel>,
        inbound: Vec<(ChannelId, InboundSlot)>,
    ) -> Result<(), String> {
        self.slots.lock().unwrap().extend(inbound);
        self.watchdog = Some(self.spawn_watchdog());
        let mut by_peer: HashMap<u32, Vec<OutboundChannel>> = HashMap::new();
        for ch in outbound {
            if ch.peer as usize >= self.peers.len() {
                return Err(format!(
                    "channel {} goes to worker {}, but only {} peer addresses are known",
                    ch.label,
                    ch.peer,
                    self.peers.len()
                ));
            }
            by_peer.entry(ch.peer).or_default().push(ch);
        }
        self.senders = by_peer
            .into_iter()
            .map(|(peer, channels)| self.spawn_sender(peer, channels))
            .collect();
        Ok(())
    }

    fn drain(&mut self, cancel: &CancelFlag) -> u64 {
        let mut failing_since: Option<Instant> = None;
        while self.senders.iter().any(|h| !h.is_finished()) {
            if cancel.is_set() {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > FAILING_GRACE {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        self.sent.load(Ordering::Relaxed)
    }
}
