//! Talks to Kafka transaction coordinators directly, for what librdkafka cannot do: commit
//! the transaction of a producer that no longer exists, and look up transactions that a
//! crashed run left open.
//!
//! A transaction pre-committed for a checkpoint that completed must be committed when the job
//! restarts from it (aborting it would lose output the sources will not read again), but
//! librdkafka cannot resume another process's transaction. The coordinator only needs the
//! transactional id, producer id and epoch to end it, so this speaks the few requests that
//! takes: `FindCoordinator` (key type transaction), `EndTxn` (`committed = true`) and
//! `DescribeTransactions` (Kafka 3.0+), which tells whether a transactional id exists and
//! whether its transaction is open without creating or fencing anything. Messages are the
//! `kafka-protocol` crate's; each connection asks the broker's versions (`ApiVersions`) and
//! uses the highest both sides support. `EndTxn` stops at v4: v5 belongs to transactions v2
//! (KIP-890), which librdkafka's transactions, the ones ended here, do not use.
//!
//! Connections take the sink's TLS and SASL settings (`security`): a certificate the CA does
//! not vouch for, or a refused password, fails at once with one line naming the broker and
//! the cause (retrying cannot fix either), while a broker that is not up yet is retried.
//!
//! What the coordinator answers to the commit:
//! - no error: the transaction is committed now, or it already was (a retried commit);
//! - a fenced epoch (`INVALID_PRODUCER_EPOCH`, `PRODUCER_FENCED`): a newer producer with
//!   this transactional id exists, so the transaction was ended before. The sink only gives
//!   an id a new epoch (`init_transactions`) after committing every transaction of the
//!   restored checkpoint on it, so this means committed (unless the broker aborted it on its
//!   transaction timeout, which `transactionTimeoutMs` must rule out);
//! - anything else (`INVALID_TXN_STATE`: it was aborted; `INVALID_PRODUCER_ID_MAPPING`: the
//!   id is unknown or expired) is an error: the output of that checkpoint cannot be made
//!   visible, and the job must not pretend otherwise.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, DescribeTransactionsRequest, EndTxnRequest,
    FindCoordinatorRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest, TransactionalId,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Request, StrBytes, VersionRange,
};
use tracing::{debug, warn};

use super::scram::Scram;
use super::security::{Mechanism, Sasl, Security, server_name};

/// `FindCoordinator` key type of a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;
const UNSUPPORTED_VERSION: i16 = 35;
const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
/// The ApiVersions version asked first (flexible, Kafka 2.4+); older brokers answer
/// UNSUPPORTED_VERSION and are asked again with v0.
const API_VERSIONS_FIRST: i16 = 3;
/// See the module docs: v5 is transactions v2.
const END_TXN_MAX: i16 = 4;

/// Largest response accepted (these responses are small; a larger size is a protocol error).
const MAX_RESPONSE: usize = 1 << 20;

/// The transaction to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Txn {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committed {
    /// The coordinator accepted the commit (or had committed it already).
    Now,
    /// The epoch was fenced: a newer producer with this id ended the transaction before.
    Earlier,
}

fn describe_error(what: &str, code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => format!("{what}: {e:?} ({code})"),
        None => format!("{what}: no error"),
    }
}

/// Errors worth another try (the coordinator moves, loads, or is writing markers).
fn retriable(code: i16) -> bool {
    matches!(code, 7 | 14 | 15 | 16 | 51)
}

/// One try of a request: done, worth another try, or failed for good.
enum Attempt<R> {
    Done(R),
    Retry(String),
    Fail(String),
}

/// Why a connection or request failed: worth another try (the broker is down, restarting,
/// or the connection broke), or not (TLS or SASL refused us, the protocol does not fit).
#[derive(Debug)]
enum Failure {
    Retry(String),
    Fatal(String),
}

/// `?` for attempts.
macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(Failure::Retry(e)) => return Attempt::Retry(e),
            Err(Failure::Fatal(e)) => return Attempt::Fail(e),
        }
    };
}

/// A plain or TLS stream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A TLS error (bad certificate, wrong CA, protocol mismatch) inside an I/O error.
fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A request/response connection to one broker, after `ApiVersions` and SASL.
struct Conn {
    address: String,
    stream: Stream,
    client_id: String,
    correlation: i32,
    /// The broker's (lowest, highest) version of each request.
    versions: HashMap<i16, VersionRange>,
}

impl Conn {
    fn open(
        address: &str,
        client_id: &str,
        security: &Security,
        deadline: Instant,
    ) -> Result<Conn, Failure> {
        let at = |what: String| format!("Kafka broker {address}: {what}");
        let addrs: Vec<_> = address
            .to_socket_addrs()
            .map_err(|e| Failure::Retry(at(format!("cannot resolve: {e}"))))?
            .collect();
        let mut last = at("resolves to no address".into());
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, remaining(deadline)) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = at(format!("cannot connect: {e}")),
            }
        }
        let tcp = tcp.ok_or(Failure::Retry(last))?;
        tcp.set_nodelay(true).ok();
        let timeout = Some(remaining(deadline));
        let io = |e: std::io::Error| Failure::Retry(at(format!("connection failed: {e}")));
        tcp.set_read_timeout(timeout).map_err(io)?;
        tcp.set_write_timeout(timeout).map_err(io)?;
        let stream = match &security.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
                let name = server_name(host).map_err(|e| Failure::Fatal(at(e)))?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| Failure::Fatal(at(format!("TLS setup failed: {e}"))))?;
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                while tls.conn.is_handshaking() {
                    if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                        return Err(match tls_error(&e) {
                            Some(t) => Failure::Fatal(at(format!("TLS handshake failed: {t}"))),
                            None => Failure::Retry(at(format!("TLS handshake failed: {e}"))),
                        });
                    }
                }
                Stream::Tls(Box::new(tls))
            }
        };
        let mut conn = Conn {
            address: address.to_string(),
            stream,
            client_id: client_id.to_string(),
            correlation: 0,
            versions: HashMap::new(),
        };
        conn.api_versions(deadline)?;
        if let Some(sasl) = &security.sasl {
            conn.authenticate(sasl, deadline)?;
        }
        Ok(conn)
    }

    fn at(&self, what: impl std::fmt::Display) -> String {
        format!("Kafka broker {}: {what}", self.address)
    }

    /// The highest version of `R` both sides support, at most `our_max`.
    fn version<R: Request>(&self, our_min: i16, our_max: i16) -> Result<Option<i16>, Failure> {
        let Some(theirs) = self.versions.get(&R::KEY) else {
            return Ok(None);
        };
        let ours = VersionRange {
            min: R::VERSIONS.min.max(our_min),
            max: R::VERSIONS.max.min(our_max),
        };
        let both = ours.intersect(theirs);
        if both.is_empty() {
            return Err(Failure::Fatal(self.at(format!(
                "no common version of {}: this client speaks {ours}, the broker {theirs}",
                api_name(R::KEY)
            ))));
        }
        Ok(Some(both.max))
    }

    /// Sends one request and decodes its response.
    fn call<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        deadline: Instant,
    ) -> Result<R::Response, Failure> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())));
        let mut msg = BytesMut::new();
        msg.extend_from_slice(&[0; 4]);
        let encoded = header
            .encode(&mut msg, R::header_version(version))
            .and_then(|()| request.encode(&mut msg, version));
        if let Err(e) = encoded {
            return Err(Failure::Fatal(
                self.at(format!("cannot encode request: {e}")),
            ));
        }
        let len = (msg.len() - 4) as i32;
        msg[..4].copy_from_slice(&len.to_be_bytes());
        let timeout = Some(remaining(deadline));
        let address = self.address.clone();
        let io = |e: std::io::Error| {
            Failure::Retry(format!("Kafka broker {address}: connection failed: {e}"))
        };
        self.stream.tcp().set_read_timeout(timeout).map_err(io)?;
        self.stream.tcp().set_write_timeout(timeout).map_err(io)?;
        self.stream.write_all(&msg).map_err(io)?;
        self.stream.flush().map_err(io)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(io)?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > MAX_RESPONSE {
            return Err(Failure::Retry(
                self.at(format!("malformed response (size {size})")),
            ));
        }
        let mut resp = vec![0u8; size as usize];
        self.stream.read_exact(&mut resp).map_err(io)?;
        let mut body = Bytes::from(resp);
        let decoded = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .and_then(|h| Ok((h, R::Response::decode(&mut body, version)?)));
        let (h, response) = decoded.map_err(|e| {
            Failure::Retry(self.at(format!(
                "malformed response to {} v{version}: {e}",
                api_name(R::KEY)
            )))
        })?;
        if h.correlation_id != self.correlation {
            return Err(Failure::Retry(self.at(format!(
                "response to request {} answered request {}",
                self.correlation, h.correlation_id
            ))));
        }
        Ok(response)
    }

    /// Learns the broker's request versions.
    fn api_versions(&mut self, deadline: Instant) -> Result<(), Failure> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("streamjob"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response: ApiVersionsResponse = match self.call(&request, API_VERSIONS_FIRST, deadline)
        {
            Ok(r) if r.error_code != UNSUPPORTED_VERSION => r,
            // An older broker answers UNSUPPORTED_VERSION in the v0 layout, which may not
            // decode as v3: ask again in v0 (on a new connection if it closed this one).
            _ => self.call(&request, 0, deadline)?,
        };
        if response.error_code != 0 {
            return Err(Failure::Retry(
                self.at(describe_error("ApiVersions", response.error_code)),
            ));
        }
        self.versions = response
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.api_key,
                    VersionRange {
                        min: k.min_version,
                        max: k.max_version,
                    },
                )
            })
            .collect();
        Ok(())
    }

    /// SASL: `SaslHandshake` v1+ and `SaslAuthenticate` rounds.
    fn authenticate(&mut self, sasl: &Sasl, deadline: Instant) -> Result<(), Failure> {
        let m = sasl.mechanism.name();
        let address = self.address.clone();
        let as_user = move |what: String| {
            format!(
                "Kafka broker {address}: SASL {m} authentication as '{}' failed: {what}",
                sasl.username
            )
        };
        let Some(v) = self.version::<SaslHandshakeRequest>(1, i16::MAX)? else {
            return Err(Failure::Fatal(as_user(
                "the broker does not offer SASL".into(),
            )));
        };
        let hs = self.call(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(m)),
            v,
            deadline,
        )?;
        if hs.error_code != 0 {
            let offered: Vec<&str> = hs.mechanisms.iter().map(|s| s.as_str()).collect();
            return Err(Failure::Fatal(as_user(format!(
                "{} (the broker offers {})",
                describe_error("SaslHandshake", hs.error_code),
                offered.join(", ")
            ))));
        }
        let Some(av) = self.version::<SaslAuthenticateRequest>(0, i16::MAX)? else {
            return Err(Failure::Fatal(as_user(
                "the broker does not support SaslAuthenticate".into(),
            )));
        };
        let round = |this: &mut Conn, bytes: Vec<u8>| -> Result<Bytes, Failure> {
            let r = this.call(
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes)),
                av,
                deadline,
            )?;
            if r.error_code != 0 {
                let msg = r.error_message.as_ref().map(|s| s.as_str()).unwrap_or("");
                return Err(Failure::Fatal(as_user(format!(
                    "{}{}{msg}",
                    describe_error("SaslAuthenticate", r.error_code),
                    if msg.is_empty() { "" } else { ": " }
                ))));
            }
            Ok(r.auth_bytes)
        };
        match sasl.mechanism {
            Mechanism::Plain => {
                let token = format!("\0{}\0{}", sasl.username, sasl.password);
                round(self, token.into_bytes())?;
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                let mut scram = Scram::new(sasl.mechanism, &sasl.username, &sasl.password)
                    .map_err(|e| Failure::Fatal(as_user(e)))?;
                let server_first = round(self, scram.client_first())?;
                let last = scram
                    .client_final(&server_first)
                    .map_err(|e| Failure::Fatal(as_user(e)))?;
                let server_final = round(self, last)?;
                scram
                    .verify_server_final(&server_final)
                    .map_err(|e| Failure::Fatal(as_user(e)))?;
            }
        }
        debug!(broker = %self.address, mechanism = m, "SASL authenticated");
        Ok(())
    }
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|_| format!("API {key}"), |k| format!("{k:?}"))
}

fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100))
}

/// `host:port` of each bootstrap server (librdkafka also accepts `proto://host:port`).
fn bootstrap_addresses(servers: &str) -> Vec<String> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.rsplit_once("://").map_or(s, |(_, a)| a).to_string())
        .collect()
}

/// Why connecting to the brokers with these TLS/SASL settings cannot work, if it cannot: a
/// certificate the CA does not vouch for, a refused password, a mechanism the broker does not
/// offer. One line naming the broker and the cause; `None` if a broker accepts the
/// connection or none answers by `deadline` (then librdkafka's own error says more).
pub(crate) fn connection_refusal(
    bootstrap_servers: &str,
    client_id: &str,
    security: &Security,
    deadline: Instant,
) -> Option<String> {
    for address in bootstrap_addresses(bootstrap_servers) {
        match Conn::open(&address, client_id, security, deadline) {
            Ok(_) => return None,
            Err(Failure::Fatal(e)) => return Some(e),
            Err(Failure::Retry(_)) => {}
        }
    }
    None
}

/// The state of a transactional id at its coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnState {
    /// The coordinator does not know the id (never used, or expired).
    Unknown,
    /// `Empty`, `Ongoing`, `PrepareCommit`, `PrepareAbort`, `CompleteCommit`, ...
    Known(String),
}

impl TxnState {
    /// A transaction is open (or being ended): it holds back `read_committed` readers.
    pub fn is_open(&self) -> bool {
        matches!(self, TxnState::Known(s) if s == "Ongoing" || s.starts_with("Prepare"))
    }
}

/// A client for the transaction coordinators of one cluster.
pub(crate) struct Client {
    bootstrap: Vec<String>,
    client_id: String,
    security: Security,
    deadline: Instant,
}

impl Client {
    /// Requests retry what may pass (no coordinator yet, markers being written, connection
    /// failures) until `deadline`; TLS and SASL refusals fail at once.
    pub fn new(
        bootstrap_servers: &str,
        client_id: &str,
        security: Security,
        deadline: Instant,
    ) -> Client {
        Client {
            bootstrap: bootstrap_addresses(bootstrap_servers),
            client_id: client_id.to_string(),
            security,
            deadline,
        }
    }

    fn with_retries<R>(
        &self,
        id: &str,
        mut attempt: impl FnMut() -> Attempt<R>,
    ) -> Result<R, String> {
        if self.bootstrap.is_empty() {
            return Err("no bootstrap servers".into());
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match attempt() {
                Attempt::Done(r) => return Ok(r),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e) => {
                    if Instant::now() + backoff >= self.deadline {
                        return Err(format!("gave up retrying: {e}"));
                    }
                    warn!(transactional_id = id, error = %e, "transaction coordinator request failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn open(&self, address: &str) -> Result<Conn, Failure> {
        Conn::open(address, &self.client_id, &self.security, self.deadline)
    }

    /// A connection to the coordinator of `transactional_id`.
    fn coordinator(&self, transactional_id: &str) -> Attempt<Conn> {
        let mut conn = None;
        let mut last = String::new();
        for b in &self.bootstrap {
            match self.open(b) {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(Failure::Fatal(e)) => return Attempt::Fail(e),
                Err(Failure::Retry(e)) => last = e,
            }
        }
        let Some(mut conn) = conn else {
            return Attempt::Retry(last);
        };
        let Some(v) = attempt!(conn.version::<FindCoordinatorRequest>(1, i16::MAX)) else {
            return Attempt::Fail(conn.at("does not support FindCoordinator"));
        };
        let id = StrBytes::from_string(transactional_id.to_string());
        let mut request = FindCoordinatorRequest::default().with_key_type(KEY_TYPE_TRANSACTION);
        request = if v >= 4 {
            request.with_coordinator_keys(vec![id])
        } else {
            request.with_key(id)
        };
        let r = attempt!(conn.call(&request, v, self.deadline));
        let (error, message, host, port) = if v >= 4 {
            let Some(c) = r.coordinators.into_iter().next() else {
                return Attempt::Retry(conn.at("FindCoordinator answered no coordinator"));
            };
            (c.error_code, c.error_message, c.host, c.port)
        } else {
            (r.error_code, r.error_message, r.host, r.port)
        };
        if error != 0 {
            let what = format!(
                "{}{}",
                describe_error("FindCoordinator", error),
                message.map(|m| format!(": {m}")).unwrap_or_default()
            );
            return if retriable(error) {
                Attempt::Retry(conn.at(what))
            } else {
                Attempt::Fail(conn.at(what))
            };
        }
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if address == conn.address {
            return Attempt::Done(conn);
        }
        Attempt::Done(attempt!(self.open(&address)))
    }

    /// Commits `txn` (`EndTxn`, committed = true).
    pub fn commit(&self, txn: &Txn) -> Result<Committed, String> {
        let id = &txn.transactional_id;
        let outcome = self.with_retries(id, || {
            let mut conn = match self.coordinator(id) {
                Attempt::Done(c) => c,
                Attempt::Retry(e) => return Attempt::Retry(e),
                Attempt::Fail(e) => return Attempt::Fail(e),
            };
            let Some(v) = attempt!(conn.version::<EndTxnRequest>(0, END_TXN_MAX)) else {
                return Attempt::Fail(conn.at("does not support EndTxn"));
            };
            let request = EndTxnRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id.clone())))
                .with_producer_id(txn.producer_id.into())
                .with_producer_epoch(txn.producer_epoch)
                .with_committed(true);
            let r = attempt!(conn.call(&request, v, self.deadline));
            match r.error_code {
                0 => Attempt::Done(Committed::Now),
                47 | 90 => Attempt::Done(Committed::Earlier),
                e if retriable(e) => Attempt::Retry(conn.at(describe_error("EndTxn", e))),
                e => Attempt::Fail(conn.at(describe_error("EndTxn", e))),
            }
        })?;
        debug!(transactional_id = %id, ?outcome, "EndTxn");
        Ok(outcome)
    }

    /// The state of `transactional_id` (`DescribeTransactions`), or `None` if the brokers
    /// do not support that request (before Kafka 3.0).
    pub fn state(&self, transactional_id: &str) -> Result<Option<TxnState>, String> {
        self.with_retries(transactional_id, || {
            let mut conn = match self.coordinator(transactional_id) {
                Attempt::Done(c) => c,
                Attempt::Retry(e) => return Attempt::Retry(e),
                Attempt::Fail(e) => return Attempt::Fail(e),
            };
            let Some(v) = attempt!(conn.version::<DescribeTransactionsRequest>(0, i16::MAX)) else {
                return Attempt::Done(None);
            };
            let request = DescribeTransactionsRequest::default().with_transactional_ids(vec![
                TransactionalId(StrBytes::from_string(transactional_id.to_string())),
            ]);
            let r = attempt!(conn.call(&request, v, self.deadline));
            let [state] = r.transaction_states.as_slice() else {
                return Attempt::Retry(conn.at(format!(
                    "DescribeTransactions: expected one transaction, got {}",
                    r.transaction_states.len()
                )));
            };
            match state.error_code {
                0 => Attempt::Done(Some(TxnState::Known(
                    state.transaction_state.as_str().to_string(),
                ))),
                TRANSACTIONAL_ID_NOT_FOUND => Attempt::Done(Some(TxnState::Unknown)),
                e if retriable(e) => {
                    Attempt::Retry(conn.at(describe_error("DescribeTransactions", e)))
                }
                e => Attempt::Fail(conn.at(describe_error("DescribeTransactions", e))),
            }
        })
    }
}

#[cfg(test)]
#[path = "txn_client_tests.rs"]
mod tests;
