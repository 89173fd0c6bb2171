//! `socket_text_stream`: lines from a TCP server (non-parallel source), e.g. `nc -lk 9999`.
//!
//! Reconnect policy (Flink's `maxRetry`): when the connection cannot be made or is lost, try
//! again once a second for up to `max_retry` seconds; 0 means end the stream when the server
//! closes the connection; negative means forever. When retrying gives up, the stream ends if
//! it was ever connected and the job fails if it never was.
//!
//! A source never waits without a word: it logs the address when it starts connecting, every
//! [`DEFAULT_REPORT_EVERY`] while it cannot connect, and with growing pauses (from that period
//! up to [`MAX_REPORT_EVERY`]) while a connected server sends nothing. A connection attempt
//! runs on its own thread, so a server that never answers delays neither checkpoints nor
//! cancellation; it fails after the connect timeout.
//!
//! A line that is not UTF-8 fails the job (naming the address and the byte offset since the
//! connection was made) unless the source was given a handler.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::api::functions::{Collector, Source, SourceReader, SourceStatus};
use crate::connectors::SOURCE_BATCH;
use crate::connectors::lines::{
    InvalidLineFactory, InvalidLineHandler, LineToRecord, decode, handler_for, trim_line_end,
};
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How long one connection attempt may take unless set otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a source that waits says so, at first.
pub const DEFAULT_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Longest pause between reports of a connected server that sends nothing.
pub const MAX_REPORT_EVERY: Duration = Duration::from_secs(300);

pub struct SocketSource<T = String> {
    host: String,
    port: u16,
    max_retry: i64,
    connect_timeout: Duration,
    report_every: Duration,
    make: LineToRecord<T>,
    on_invalid: Option<InvalidLineFactory>,
}

impl SocketSource<String> {
    pub fn new(host: &str, port: u16, max_retry: i64) -> Self {
        Self::with_records(host, port, max_retry, str::to_owned)
    }
}

impl<T> SocketSource<T> {
    /// Lines become records through `make`.
    pub fn with_records(host: &str, port: u16, max_retry: i64, make: LineToRecord<T>) -> Self {
        SocketSource {
            host: host.to_string(),
            port,
            max_retry,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            report_every: DEFAULT_REPORT_EVERY,
            make,
            on_invalid: None,
        }
    }

    /// How long one connection attempt may take (default [`DEFAULT_CONNECT_TIMEOUT`]); an
    /// attempt that takes longer counts as failed (and is retried as `max_retry` says).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How often a waiting source logs that it waits (default [`DEFAULT_REPORT_EVERY`]).
    pub fn report_waiting_every(mut self, every: Duration) -> Self {
        self.report_every = every.max(Duration::from_millis(1));
        self
    }

    /// What to do with a line that is not UTF-8 (default: the job fails, naming the address
    /// and the byte offset). The factory makes the handler of the (single) subtask.
    pub fn on_invalid_utf8(
        mut self,
        factory: impl Fn(&SubtaskContext) -> Result<InvalidLineHandler, BoxError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.on_invalid = Some(std::sync::Arc::new(factory));
        self
    }
}

impl<T: Send + 'static> Source<T> for SocketSource<T> {
    fn max_parallelism(&self) -> Option<u32> {
        Some(1)
    }
    fn kind(&self) -> &'static str {
        "socket"
    }
    fn create_reader(&self, ctx: &SubtaskContext) -> Result<Box<dyn SourceReader<T>>, BoxError> {
        let addr = format!("{}:{}", self.host, self.port);
        info!(address = %addr, connect_timeout = ?self.connect_timeout, "socket source connecting");
        Ok(Box::new(SocketReader {
            make: self.make,
            on_invalid: handler_for(&self.on_invalid, ctx)?,
            origin: format!("socket {addr}"),
            addr,
            max_retry: self.max_retry,
            connect_timeout: self.connect_timeout,
            poll: ctx
                .buffer_timeout
                .clamp(Duration::from_millis(1), Duration::from_millis(100)),
            conn: None,
            connecting: None,
            line: Vec::new(),
            offset: 0,
            unreported: 0,
            down_since: None,
            last_attempt: None,
            ever_connected: false,
            waiting: Waiting::new(Instant::now(), self.report_every),
        }))
    }
}

/// When to say again that the source is still waiting.
struct Waiting {
    since: Instant,
    every: Duration,
    /// Time between the last report and the next.
    period: Duration,
    /// Waiting time at which the next report is due.
    next: Duration,
}

impl Waiting {
    fn new(since: Instant, every: Duration) -> Self {
        Waiting {
            since,
            every,
            period: every,
            next: every,
        }
    }

    /// Starts waiting afresh (connected, or data arrived).
    fn reset(&mut self, now: Instant) {
        *self = Waiting::new(now, self.every);
    }

    /// How long it has waited, if it is time to say so; the period to the next report is
    /// `grow(period)`.
    fn due(&mut self, now: Instant, grow: impl Fn(Duration) -> Duration) -> Option<Duration> {
        let waited = now.saturating_duration_since(self.since);
        if waited < self.next {
            return None;
        }
        self.period = grow(self.period);
        self.next = waited + self.period;
        Some(waited)
    }
}

type Connecting = mpsc::Receiver<std::io::Result<TcpStream>>;

struct SocketReader<T> {
    make: LineToRecord<T>,
    on_invalid: InvalidLineHandler,
    addr: String,
    /// `socket <addr>`, as errors name the source.
    origin: String,
    max_retry: i64,
    connect_timeout: Duration,
    poll: Duration,
    conn: Option<BufReader<TcpStream>>,
    /// An attempt in progress on its own thread.
    connecting: Option<Connecting>,
    line: Vec<u8>,
    /// Bytes read on this connection before `line`.
    offset: u64,
    /// Bytes emitted since the metrics were last told (once per poll).
    unreported: u64,
    /// When the connection was lost (or first failed), while retrying.
    down_since: Option<Instant>,
    last_attempt: Option<Instant>,
    ever_connected: bool,
    waiting: Waiting,
}

/// Tries every address of `addr` for up to `timeout` each.
fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address")))
}

impl<T> SocketReader<T> {
    fn retry_allowed(&self) -> bool {
        let since = self.down_since.map(|t| t.elapsed()).unwrap_or_default();
        self.max_retry < 0 || since < Duration::from_secs(self.max_retry as u64)
    }

    /// Polls the connection attempt (starting one when due): the new connection, `None`
    /// while it is under way or not due yet, or the attempt's error.
    fn poll_connect(&mut self) -> std::io::Result<Option<TcpStream>> {
        if self.connecting.is_none() {
            if self.last_attempt.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
                std::thread::sleep(self.poll);
                return Ok(None);
            }
            self.last_attempt = Some(Instant::now());
            let (tx, rx) = mpsc::sync_channel(1);
            let (addr, timeout) = (self.addr.clone(), self.connect_timeout);
            std::thread::Builder::new()
                .name("socket-connect".into())
                .spawn(move || {
                    let _ = tx.send(connect(&addr, timeout));
                })?;
            self.connecting = Some(rx);
        }
        let rx = self.connecting.as_ref().expect("set above");
        match rx.recv_timeout(self.poll) {
            Ok(result) => {
                self.connecting = None;
                result.map(Some)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.connecting = None;
                Err(std::io::Error::other("the connecting thread ended"))
            }
        }
    }

    fn lost(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        self.conn = None;
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.emit(&line, out)?;
        }
        if self.max_retry == 0 {
            return Ok(SourceStatus::Finished);
        }
        info!(address = %self.addr, "socket source lost its connection; reconnecting");
        self.down_since = Some(Instant::now());
        self.waiting.reset(Instant::now());
        Ok(SourceStatus::Idle)
    }

    /// Emits one line (without its end) read at `self.offset`, and moves the offset past
    /// `consumed` bytes.
    fn emit(&mut self, line: &[u8], out: &mut Collector<'_, T>) -> Result<(), BoxError> {
        let at = self.offset;
        self.offset += line.len() as u64;
        self.unreported += line.len() as u64;
        if let Some(record) = decode(
            trim_line_end(line),
            self.make,
            &self.origin,
            at,
            &mut self.on_invalid,
        )? {
            out.collect(record);
        }
        Ok(())
    }
}

impl<T: Send> SourceReader<T> for SocketReader<T> {
    fn poll_next(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        let status = self.read_lines(out);
        crate::runtime::metrics::source_read(std::mem::take(&mut self.unreported));
        status
    }
}

impl<T> SocketReader<T> {
    /// Connects when needed and emits up to a batch of lines.
    fn read_lines(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        if self.conn.is_none() {
            match self.poll_connect() {
                Ok(Some(stream)) => {
                    stream.set_read_timeout(Some(self.poll))?;
                    info!(address = %self.addr, "socket source connected");
                    self.conn = Some(BufReader::new(stream));
                    self.offset = 0;
                    self.down_since = None;
                    self.ever_connected = true;
                    self.waiting.reset(Instant::now());
                }
                Ok(None) => {
                    if let Some(waited) = self.waiting.due(Instant::now(), |p| p) {
                        warn!(address = %self.addr, waited = ?waited, "socket source is still waiting to connect");
                    }
                    return Ok(SourceStatus::Idle);
                }
                Err(e) => {
                    if self.max_retry == 0 {
                        return Err(format!("cannot connect to {}: {e}", self.addr).into());
                    }
                    self.down_since.get_or_insert_with(Instant::now);
                    if !self.retry_allowed() {
                        // As in Flink: a stream that was up ends when reconnecting gives up.
                        if self.ever_connected {
                            warn!(address = %self.addr, error = %e, "socket source gave up reconnecting; the stream ends");
                            return Ok(SourceStatus::Finished);
                        }
                        return Err(format!(
                            "cannot connect to {} (gave up after {}s): {e}",
                            self.addr, self.max_retry
                        )
                        .into());
                    }
                    if let Some(waited) = self.waiting.due(Instant::now(), |p| p) {
                        warn!(address = %self.addr, waited = ?waited, error = %e, "socket source is still waiting to connect; retrying");
                    }
                    return Ok(SourceStatus::Idle);
                }
            }
        }
        for _ in 0..SOURCE_BATCH {
            let conn = self.conn.as_mut().expect("connected above");
            match conn.read_until(b'\n', &mut self.line) {
                Ok(0) => return self.lost(out),
                Ok(_) if self.line.last() == Some(&b'\n') => {
                    let line = std::mem::take(&mut self.line);
                    self.emit(&line, out)?;
                    // The buffer is kept for the next line.
                    self.line = line;
                    self.line.clear();
                    self.waiting.reset(Instant::now());
                }
                // Partial line at end of stream: the next read returns 0.
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.line.is_empty()
                        && let Some(waited) = self
                            .waiting
                            .due(Instant::now(), |p| (p * 2).min(MAX_REPORT_EVERY))
                    {
                        warn!(address = %self.addr, waited = ?waited, "socket source is connected but has received no data");
                    }
                    return Ok(SourceStatus::Idle);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.lost(out),
            }
        }
        Ok(SourceStatus::MoreAvailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_reports_at_fixed_or_growing_periods() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = Waiting::new(t0, 10 * s);
        let fixed: Vec<_> = (0..=35).filter_map(|i| w.due(t0 + i * s, |p| p)).collect();
        assert_eq!(fixed, vec![10 * s, 20 * s, 30 * s]);
        let mut w = Waiting::new(t0, 10 * s);
        let growing: Vec<_> = (0..=200)
            .filter_map(|i| w.due(t0 + i * s, |p| (p * 2).min(MAX_REPORT_EVERY)))
            .collect();
        assert_eq!(growing, vec![10 * s, 30 * s, 70 * s, 150 * s]);
        w.reset(t0 + 200 * s);
        assert_eq!(w.due(t0 + 209 * s, |p| p), None);
        assert_eq!(w.due(t0 + 210 * s, |p| p), Some(10 * s));
    }
}
