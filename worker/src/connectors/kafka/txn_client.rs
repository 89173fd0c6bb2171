//! Talks to Kafka transaction coordinators directly, for what librdkafka cannot do: commit
//! the transaction of a producer that no longer exists, and look up transactions that a
//! crashed run left open.
//!
//! A transaction pre-committed for a checkpoint that completed must be committed when the job
//! restarts from it (aborting it would lose output the sources will not read again), but
//! librdkafka cannot resume another process's transaction. The coordinator only needs the
//! transactional id, producer id and epoch to end it, so this speaks the few requests that
//! takes over a plain TCP connection: `ApiVersions` v0, `FindCoordinator` v1 (key type
//! transaction) and `EndTxn` v1 (`committed = true`), fixed non-flexible versions every broker
//! since Kafka 0.11 supports; and `DescribeTransactions` v0 (Kafka 3.0+, flexible encoding),
//! which tells whether a transactional id exists and whether its transaction is open without
//! creating or fencing anything.
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

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

const API_FIND_COORDINATOR: i16 = 10;
const API_VERSIONS: i16 = 18;
const API_END_TXN: i16 = 26;
const API_DESCRIBE_TRANSACTIONS: i16 = 65;
/// `FindCoordinator` key type of a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;
const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;

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

/// Kafka error codes these requests can return.
fn error_name(code: i16) -> &'static str {
    match code {
        7 => "REQUEST_TIMED_OUT",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        35 => "UNSUPPORTED_VERSION",
        47 => "INVALID_PRODUCER_EPOCH",
        48 => "INVALID_TXN_STATE",
        49 => "INVALID_PRODUCER_ID_MAPPING",
        51 => "CONCURRENT_TRANSACTIONS",
        53 => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        90 => "PRODUCER_FENCED",
        105 => "TRANSACTIONAL_ID_NOT_FOUND",
        _ => "UNKNOWN",
    }
}

fn describe_error(what: &str, code: i16) -> String {
    format!("{what}: {} ({code})", error_name(code))
}

/// Errors worth another try (the coordinator moves, loads, or is writing markers).
fn retriable(code: i16) -> bool {
    matches!(code, 7 | 14 | 15 | 16 | 51)
}

/// Only plaintext connections are implemented; anything else must fail loudly rather than
/// leave a committed checkpoint's output uncommitted.
pub(crate) fn check_security(protocol: Option<&str>) -> Result<(), String> {
    match protocol {
        None => Ok(()),
        Some(p) if p.eq_ignore_ascii_case("plaintext") => Ok(()),
        Some(p) => Err(format!(
            "exactly-once with checkpointing commits the transactions of a restored checkpoint \
             over its own connection to the transaction coordinator, which supports \
             security.protocol=plaintext only; '{p}' is not supported yet: use at-least-once, \
             or exactly-once without checkpointing"
        )),
    }
}

/// (api key, lowest version, highest version) of each request a broker supports.
type ApiVersions = Vec<(i16, i16, i16)>;

/// One try of a request: done, worth another try, or failed for good.
enum Attempt<R> {
    Done(R),
    Retry(String),
    Fail(String),
}

/// `?` for attempts: connection and protocol errors are worth another try.
macro_rules! retry_on_err {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Attempt::Retry(e),
        }
    };
}

/// A request/response connection to one broker.
struct Conn {
    stream: TcpStream,
    client_id: String,
    correlation: i32,
}

impl Conn {
    fn open(address: &str, client_id: &str, deadline: Instant) -> Result<Conn, String> {
        let addrs: Vec<_> = address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {address}: {e}"))?
            .collect();
        let mut last = format!("{address} resolves to no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, remaining(deadline)) {
                Ok(stream) => {
                    stream.set_nodelay(true).ok();
                    return Ok(Conn {
                        stream,
                        client_id: client_id.to_string(),
                        correlation: 0,
                    });
                }
                Err(e) => last = format!("cannot connect to {address}: {e}"),
            }
        }
        Err(last)
    }

    /// Sends one request and returns the response after its correlation id. `flexible`
    /// requests use request header v2 and response header v1 (tagged fields).
    fn call(
        &mut self,
        api: i16,
        version: i16,
        flexible: bool,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, String> {
        self.correlation += 1;
        let mut msg = Vec::with_capacity(64 + body.len());
        msg.extend_from_slice(&[0; 4]);
        msg.extend_from_slice(&api.to_be_bytes());
        msg.extend_from_slice(&version.to_be_bytes());
        msg.extend_from_slice(&self.correlation.to_be_bytes());
        put_str(&mut msg, &self.client_id);
        if flexible {
            msg.push(0); // no tagged fields
        }
        msg.extend_from_slice(body);
        let len = (msg.len() - 4) as i32;
        msg[..4].copy_from_slice(&len.to_be_bytes());
        let io = |e: std::io::Error| format!("connection to the broker failed: {e}");
        let timeout = Some(remaining(deadline));
        self.stream.set_write_timeout(timeout).map_err(io)?;
        self.stream.set_read_timeout(timeout).map_err(io)?;
        self.stream.write_all(&msg).map_err(io)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(io)?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > MAX_RESPONSE {
            return Err(format!("malformed response (size {size})"));
        }
        let mut resp = vec![0u8; size as usize];
        self.stream.read_exact(&mut resp).map_err(io)?;
        let mut r = Reader::new(&resp);
        let correlation = r.i32()?;
        if correlation != self.correlation {
            return Err(format!(
                "response to request {} answered request {correlation}",
                self.correlation
            ));
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        Ok(resp[r.pos..].to_vec())
    }

    /// The requests the broker supports.
    fn api_versions(&mut self, deadline: Instant) -> Result<ApiVersions, String> {
        let resp = self.call(API_VERSIONS, 0, false, &[], deadline)?;
        let mut r = Reader::new(&resp);
        let error = r.i16()?;
        if error != 0 {
            return Err(describe_error("ApiVersions", error));
        }
        let n = r.i32()?;
        let mut out = Vec::new();
        for _ in 0..n.max(0) {
            out.push((r.i16()?, r.i16()?, r.i16()?));
        }
        Ok(out)
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Kafka's unsigned varints are protobuf's base-128 varints: one implementation, prost's.
fn put_uvarint(out: &mut Vec<u8>, n: u64) {
    prost::encoding::encode_varint(n, out);
}

fn put_compact_str(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64 + 1);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos + n;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or("truncated response from the broker")?;
        self.pos = end;
        Ok(s)
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn uvarint(&mut self) -> Result<u64, String> {
        let mut rest = self.buf.get(self.pos..).unwrap_or_default();
        let before = rest.len();
        let n = prost::encoding::decode_varint(&mut rest)
            .map_err(|_| "malformed or truncated varint in the broker's response".to_string())?;
        self.pos += before - rest.len();
        Ok(n)
    }
    fn nullable_str(&mut self) -> Result<Option<String>, String> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(
            String::from_utf8_lossy(self.take(n as usize)?).into_owned(),
        ))
    }
    fn compact_str(&mut self) -> Result<Option<String>, String> {
        let n = self.uvarint()?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(
            String::from_utf8_lossy(self.take(n as usize - 1)?).into_owned(),
        ))
    }
    fn skip_tagged_fields(&mut self) -> Result<(), String> {
        for _ in 0..self.uvarint()? {
            let _tag = self.uvarint()?;
            let size = self.uvarint()?;
            self.take(size as usize)?;
        }
        Ok(())
    }
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
    deadline: Instant,
}

impl Client {
    /// Requests retry what may pass (no coordinator yet, markers being written, connection
    /// failures) until `deadline`.
    pub fn new(bootstrap_servers: &str, client_id: &str, deadline: Instant) -> Client {
        Client {
            bootstrap: bootstrap_addresses(bootstrap_servers),
            client_id: client_id.to_string(),
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

    /// A connection to the coordinator of `transactional_id` and the API versions of the
    /// cluster (as a bootstrap broker reports them).
    fn coordinator(&self, transactional_id: &str) -> Attempt<(Conn, ApiVersions)> {
        let mut conn = None;
        let mut last = String::new();
        for b in &self.bootstrap {
            match Conn::open(b, &self.client_id, self.deadline) {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let Some(mut conn) = conn else {
            return Attempt::Retry(last);
        };
        let versions = retry_on_err!(conn.api_versions(self.deadline));
        let find = versions.iter().find(|v| v.0 == API_FIND_COORDINATOR);
        if !find.is_some_and(|v| v.1 <= 1 && v.2 >= 1) {
            return Attempt::Fail(format!(
                "the broker does not support FindCoordinator v1 (has {find:?})"
            ));
        }
        let mut body = Vec::new();
        put_str(&mut body, transactional_id);
        body.push(KEY_TYPE_TRANSACTION as u8);
        let resp = retry_on_err!(conn.call(API_FIND_COORDINATOR, 1, false, &body, self.deadline));
        let parsed = (|| {
            let mut r = Reader::new(&resp);
            let _throttle = r.i32()?;
            let error = r.i16()?;
            let message = r.nullable_str()?;
            let _node = r.i32()?;
            let host = r.nullable_str()?.unwrap_or_default();
            let port = r.i32()?;
            Ok::<_, String>((error, message, host, port))
        })();
        let (host, port) = match retry_on_err!(parsed) {
            (0, _, host, port) => (host, port),
            (error, message, _, _) => {
                let what = format!(
                    "{}{}",
                    describe_error("FindCoordinator", error),
                    message.map(|m| format!(": {m}")).unwrap_or_default()
                );
                return if retriable(error) {
                    Attempt::Retry(what)
                } else {
                    Attempt::Fail(what)
                };
            }
        };
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let coordinator = retry_on_err!(Conn::open(&address, &self.client_id, self.deadline));
        Attempt::Done((coordinator, versions))
    }

    /// Commits `txn` (`EndTxn`, committed = true).
    pub fn commit(&self, txn: &Txn) -> Result<Committed, String> {
        let id = &txn.transactional_id;
        let outcome = self.with_retries(id, || {
            let (mut conn, versions) = match self.coordinator(id) {
                Attempt::Done(c) => c,
                Attempt::Retry(e) => return Attempt::Retry(e),
                Attempt::Fail(e) => return Attempt::Fail(e),
            };
            let end = versions.iter().find(|v| v.0 == API_END_TXN);
            let Some(&(_, 0..=1, hi)) = end else {
                return Attempt::Fail(format!(
                    "the broker does not support EndTxn v0-1 (has {end:?})"
                ));
            };
            let mut body = Vec::new();
            put_str(&mut body, id);
            body.extend_from_slice(&txn.producer_id.to_be_bytes());
            body.extend_from_slice(&txn.producer_epoch.to_be_bytes());
            body.push(1); // committed
            let resp =
                retry_on_err!(conn.call(API_END_TXN, hi.min(1), false, &body, self.deadline));
            let mut r = Reader::new(&resp);
            let error = retry_on_err!(r.i32().and_then(|_throttle| r.i16()));
            match error {
                0 => Attempt::Done(Committed::Now),
                47 | 90 => Attempt::Done(Committed::Earlier),
                e if retriable(e) => Attempt::Retry(describe_error("EndTxn", e)),
                e => Attempt::Fail(describe_error("EndTxn", e)),
            }
        })?;
        debug!(transactional_id = %id, ?outcome, "EndTxn");
        Ok(outcome)
    }

    /// The state of `transactional_id` (`DescribeTransactions` v0), or `None` if the brokers
    /// do not support that request (before Kafka 3.0).
    pub fn state(&self, transactional_id: &str) -> Result<Option<TxnState>, String> {
        self.with_retries(transactional_id, || {
            let (mut conn, versions) = match self.coordinator(transactional_id) {
                Attempt::Done(c) => c,
                Attempt::Retry(e) => return Attempt::Retry(e),
                Attempt::Fail(e) => return Attempt::Fail(e),
            };
            if !versions
                .iter()
                .any(|v| v.0 == API_DESCRIBE_TRANSACTIONS && v.1 == 0)
            {
                return Attempt::Done(None);
            }
            let mut body = Vec::new();
            put_uvarint(&mut body, 2); // one id
            put_compact_str(&mut body, transactional_id);
            body.push(0); // tagged fields
            let resp =
                retry_on_err!(conn.call(API_DESCRIBE_TRANSACTIONS, 0, true, &body, self.deadline));
            let parsed = (|| {
                let mut r = Reader::new(&resp);
                let _throttle = r.i32()?;
                if r.uvarint()? != 2 {
                    return Err("DescribeTransactions: expected one transaction".to_string());
                }
                let error = r.i16()?;
                let _id = r.compact_str()?;
                let state = r.compact_str()?.unwrap_or_default();
                Ok((error, state))
            })();
            match retry_on_err!(parsed) {
                (0, state) => Attempt::Done(Some(TxnState::Known(state))),
                (TRANSACTIONAL_ID_NOT_FOUND, _) => Attempt::Done(Some(TxnState::Unknown)),
                (e, _) if retriable(e) => Attempt::Retry(describe_error("DescribeTransactions", e)),
                (e, _) => Attempt::Fail(describe_error("DescribeTransactions", e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn bootstrap_lists_accept_protocol_prefixes_and_spaces() {
        assert_eq!(
            bootstrap_addresses("PLAINTEXT://a:9092, b:9093,,[::1]:9094"),
            vec!["a:9092", "b:9093", "[::1]:9094"]
        );
    }

    #[test]
    fn only_plaintext_is_accepted() {
        assert!(check_security(None).is_ok());
        assert!(check_security(Some("PLAINTEXT")).is_ok());
        let e = check_security(Some("SASL_SSL")).unwrap_err();
        assert!(e.contains("'SASL_SSL' is not supported yet"), "{e}");
    }

    #[test]
    fn varints_round_trip() {
        for n in [
            0u64,
            1,
            127,
            128,
            300,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_uvarint(&mut b, n);
            let mut r = Reader::new(&b);
            assert_eq!(r.uvarint().unwrap(), n);
            assert_eq!(r.pos, b.len(), "the reader moves past the varint");
        }
        // 300 is [0xac, 0x02]: a cut-off varint is an error, not a guess.
        assert!(Reader::new(&[0xac]).uvarint().is_err());
    }

    /// A broker answering with canned bytes: each connection gets ApiVersions, then either
    /// FindCoordinator (pointing at itself) or the request under test.
    fn fake_broker(final_answer: Vec<u8>) -> (u16, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                loop {
                    let mut size = [0u8; 4];
                    if s.read_exact(&mut size).is_err() {
                        break;
                    }
                    let mut req = vec![0u8; i32::from_be_bytes(size) as usize];
                    s.read_exact(&mut req).unwrap();
                    let api = i16::from_be_bytes([req[0], req[1]]);
                    let mut body = req[4..8].to_vec(); // correlation id
                    match api {
                        API_VERSIONS => {
                            body.extend_from_slice(&0i16.to_be_bytes());
                            body.extend_from_slice(&3i32.to_be_bytes());
                            for (k, lo, hi) in [(10i16, 0i16, 4i16), (26, 0, 3), (65, 0, 0)] {
                                body.extend_from_slice(&k.to_be_bytes());
                                body.extend_from_slice(&lo.to_be_bytes());
                                body.extend_from_slice(&hi.to_be_bytes());
                            }
                        }
                        API_FIND_COORDINATOR => {
                            body.extend_from_slice(&0i32.to_be_bytes()); // throttle
                            body.extend_from_slice(&0i16.to_be_bytes()); // error
                            body.extend_from_slice(&(-1i16).to_be_bytes()); // message
                            body.extend_from_slice(&1i32.to_be_bytes()); // node
                            put_str(&mut body, "127.0.0.1");
                            body.extend_from_slice(&i32::from(port).to_be_bytes());
                        }
                        _ => body.extend_from_slice(&final_answer),
                    }
                    requests.push(req);
                    let mut msg = (body.len() as i32).to_be_bytes().to_vec();
                    msg.extend_from_slice(&body);
                    s.write_all(&msg).unwrap();
                    if api == API_FIND_COORDINATOR {
                        break; // the client connects to the coordinator: this listener
                    }
                }
            }
            requests
        });
        (port, server)
    }

    fn header(api: i16, version: i16, correlation: i32) -> Vec<u8> {
        let mut h = api.to_be_bytes().to_vec();
        h.extend_from_slice(&version.to_be_bytes());
        h.extend_from_slice(&correlation.to_be_bytes());
        put_str(&mut h, "me");
        h
    }

    #[test]
    fn end_txn_is_encoded_as_the_protocol_says() {
        // throttle 0, INVALID_PRODUCER_EPOCH: ended before
        let mut answer = 0i32.to_be_bytes().to_vec();
        answer.extend_from_slice(&47i16.to_be_bytes());
        let (port, server) = fake_broker(answer);
        let txn = Txn {
            transactional_id: "tx-0-1".into(),
            producer_id: 1000,
            producer_epoch: 3,
        };
        let client = Client::new(
            &format!("127.0.0.1:{port}"),
            "me",
            Instant::now() + Duration::from_secs(10),
        );
        assert_eq!(client.commit(&txn).unwrap(), Committed::Earlier);
        let requests = server.join().unwrap();
        assert_eq!(requests[0], header(18, 0, 1));
        let mut find = header(10, 1, 2);
        put_str(&mut find, "tx-0-1");
        find.push(1);
        assert_eq!(requests[1], find);
        let mut end = header(26, 1, 1);
        put_str(&mut end, "tx-0-1");
        end.extend_from_slice(&1000i64.to_be_bytes());
        end.extend_from_slice(&3i16.to_be_bytes());
        end.push(1);
        assert_eq!(requests[2], end);
    }

    #[test]
    fn describe_transactions_uses_the_flexible_encoding() {
        // response header tags, throttle, one state: no error, id, "Ongoing", then fields
        // this client does not read
        let mut answer = vec![0];
        answer.extend_from_slice(&0i32.to_be_bytes());
        put_uvarint(&mut answer, 2);
        answer.extend_from_slice(&0i16.to_be_bytes());
        put_compact_str(&mut answer, "tx-3-0");
        put_compact_str(&mut answer, "Ongoing");
        answer.extend_from_slice(&[0; 30]);
        let (port, server) = fake_broker(answer);
        let client = Client::new(
            &format!("127.0.0.1:{port}"),
            "me",
            Instant::now() + Duration::from_secs(10),
        );
        let state = client.state("tx-3-0").unwrap().unwrap();
        assert_eq!(state, TxnState::Known("Ongoing".into()));
        assert!(state.is_open());
        let requests = server.join().unwrap();
        let mut describe = header(65, 0, 1);
        describe.push(0); // header tags
        describe.push(2); // one id
        describe.push(7);
        describe.extend_from_slice(b"tx-3-0");
        describe.push(0); // body tags
        assert_eq!(requests[2], describe);
    }
}
