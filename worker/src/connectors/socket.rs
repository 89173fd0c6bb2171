//! `socket_text_stream`: lines from a TCP server (non-parallel source), e.g. `nc -lk 9999`.
//!
//! Reconnect policy (Flink's `maxRetry`): when the connection cannot be made or is lost, try
//! again once a second for up to `max_retry` seconds; 0 means end the stream when the server
//! closes the connection; negative means forever. When retrying gives up, the stream ends if
//! it was ever connected and the job fails if it never was.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::api::functions::{Collector, Source, SourceReader, SourceStatus};
use crate::connectors::SOURCE_BATCH;
use crate::connectors::file::LineToRecord;
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

const RETRY_EVERY: Duration = Duration::from_secs(1);

pub struct SocketSource<T = String> {
    host: String,
    port: u16,
    max_retry: i64,
    make: LineToRecord<T>,
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
            make,
        }
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
        Ok(Box::new(SocketReader {
            make: self.make,
            addr: format!("{}:{}", self.host, self.port),
            max_retry: self.max_retry,
            poll: ctx
                .buffer_timeout
                .clamp(Duration::from_millis(1), Duration::from_millis(100)),
            conn: None,
            line: Vec::new(),
            down_since: None,
            last_attempt: None,
            ever_connected: false,
        }))
    }
}

struct SocketReader<T> {
    make: LineToRecord<T>,
    addr: String,
    max_retry: i64,
    poll: Duration,
    conn: Option<BufReader<TcpStream>>,
    line: Vec<u8>,
    /// When the connection was lost (or first failed), while retrying.
    down_since: Option<Instant>,
    last_attempt: Option<Instant>,
    ever_connected: bool,
}

impl<T> SocketReader<T> {
    fn retry_allowed(&self) -> bool {
        let since = self.down_since.map(|t| t.elapsed()).unwrap_or_default();
        self.max_retry < 0 || since < Duration::from_secs(self.max_retry as u64)
    }

    fn connect(&mut self) -> std::io::Result<()> {
        let mut last = None;
        for addr in self.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    s.set_read_timeout(Some(self.poll))?;
                    self.conn = Some(BufReader::new(s));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address")))
    }

    fn lost(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        self.conn = None;
        if !self.line.is_empty() {
            out.collect((self.make)(&String::from_utf8_lossy(&self.line)));
            self.line.clear();
        }
        if self.max_retry == 0 {
            return Ok(SourceStatus::Finished);
        }
        self.down_since = Some(Instant::now());
        Ok(SourceStatus::Idle)
    }
}

impl<T: Send> SourceReader<T> for SocketReader<T> {
    fn poll_next(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        if self.conn.is_none() {
            if self.last_attempt.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
                std::thread::sleep(self.poll);
                return Ok(SourceStatus::Idle);
            }
            self.last_attempt = Some(Instant::now());
            if let Err(e) = self.connect() {
                if self.max_retry == 0 {
                    return Err(format!("cannot connect to {}: {e}", self.addr).into());
                }
                self.down_since.get_or_insert_with(Instant::now);
                if !self.retry_allowed() {
                    // As in Flink: a stream that was up ends when reconnecting gives up.
                    if self.ever_connected {
                        return Ok(SourceStatus::Finished);
                    }
                    return Err(format!(
                        "cannot connect to {} (gave up after {}s): {e}",
                        self.addr, self.max_retry
                    )
                    .into());
                }
                return Ok(SourceStatus::Idle);
            }
            self.down_since = None;
            self.ever_connected = true;
        }
        let conn = self.conn.as_mut().expect("connected above");
        for _ in 0..SOURCE_BATCH {
            match conn.read_until(b'\n', &mut self.line) {
                Ok(0) => return self.lost(out),
                Ok(_) if self.line.last() == Some(&b'\n') => {
                    let mut end = self.line.len() - 1;
                    if end > 0 && self.line[end - 1] == b'\r' {
                        end -= 1;
                    }
                    out.collect((self.make)(&String::from_utf8_lossy(&self.line[..end])));
                    self.line.clear();
                }
                // Partial line at end of stream: the next read returns 0.
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(SourceStatus::Idle);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.lost(out),
            }
        }
        Ok(SourceStatus::MoreAvailable)
    }
}
