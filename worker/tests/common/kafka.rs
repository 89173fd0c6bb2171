//! Kafka test helpers: the Java client's partitioner (to check the sink against it) and a
//! reader that keeps tombstones and headers apart from empty payloads.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};

/// Murmur2 as the Java client's `Utils.murmur2` computes it (32-bit, seed 0x9747b28c),
/// written from the published algorithm (Austin Appleby's MurmurHash2).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner gives a keyed record:
/// `toPositive(murmur2(key)) % partitions`, where `toPositive` masks the sign bit.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// A record as written: `payload` and header values are `None` when null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Every record of `topic` (read_uncommitted), waiting up to `deadline` for at least `min`.
pub fn read_raw(broker: &str, topic: &str, min: usize, deadline: Duration) -> Vec<RawRecord> {
    // librdkafka's default isolation level.
    let consumer = super::kafka_topics::from_start(broker, topic, true, "streamjob-test-read-raw");
    let started = Instant::now();
    let mut out = Vec::new();
    let mut seen: BTreeMap<(i32, i64), ()> = BTreeMap::new();
    while started.elapsed() < deadline && out.len() < min {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.unwrap();
        if seen.insert((m.partition(), m.offset()), ()).is_some() {
            continue;
        }
        out.push(RawRecord {
            partition: m.partition(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    super::wait_until(
        Duration::from_secs(30),
        format!("{what} did not start on port {port}"),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

fn test_bin(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/with-kafka.sh (`make test`)")
    })
}

/// A Kafka-protocol broker that keeps every acknowledged record across a SIGKILL: tansu
/// with its log in S3 (a moto server of its own, which outlives the broker's restarts).
/// noida-db, the default test broker, loses acknowledged records across restarts, so a
/// broker-restart test on it could not tell the job's losses from the broker's.
pub struct DurableBroker {
    pub port: u16,
    s3_port: u16,
    s3: std::process::Child,
    broker: Option<std::process::Child>,
    /// The broker's warnings and errors, every incarnation appended (`broker.log`).
    log: std::path::PathBuf,
}

/// `path` opened for appending, as a child's stdout or stderr.
fn append_to(path: &std::path::Path) -> std::process::Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .into()
}

impl DurableBroker {
    /// Keeps the broker's log (`broker.log`) and the S3 server's (`s3.log`) in `dir`.
    pub fn start(dir: &std::path::Path) -> Self {
        let s3_port = free_port();
        let s3 = std::process::Command::new(test_bin("STREAMJOB_TEST_MOTO_BIN"))
            .args(["-p", &s3_port.to_string()])
            .stdout(append_to(&dir.join("s3.log")))
            .stderr(append_to(&dir.join("s3.log")))
            .spawn()
            .unwrap();
        let mut b = DurableBroker {
            port: free_port(),
            s3_port,
            s3,
            broker: None,
            log: dir.join("broker.log"),
        };
        wait_for_port(s3_port, "the S3 server (moto)");
        b.create_bucket();
        b.start_broker();
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_bucket(&self) {
        use std::io::{Read, Write};
        let started = Instant::now();
        loop {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).unwrap();
            write!(
                s,
                "PUT /tansu HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.s3_port
            )
            .unwrap();
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "cannot create the S3 bucket: {reply}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_broker(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = std::process::Command::new(test_bin("STREAMJOB_TEST_TANSU_BIN"))
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "s3://tansu/"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.s3_port))
            .env("AWS_ALLOW_HTTP", "true")
            .env("RUST_LOG", "warn")
            .stdout(append_to(&self.log))
            .stderr(append_to(&self.log))
            .spawn()
            .unwrap();
        self.broker = Some(child);
        wait_for_port(self.port, "the broker (tansu)");
    }

    /// Copies tansu's cluster metadata (producers' sequences, transactions and their states:
    /// `meta.json` in its bucket) to `to`, for a failure's diagnosis. Uses boto3 from the
    /// test venv (next to the moto binary): moto refuses unsigned requests.
    pub fn save_metadata(&self, to: &std::path::Path) {
        let moto = test_bin("STREAMJOB_TEST_MOTO_BIN");
        let python = std::path::Path::new(&moto).with_file_name("python");
        let script = "import boto3, sys\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
            aws_access_key_id='test', aws_secret_access_key='test')\n\
            body = s3.get_object(Bucket='tansu', Key='clusters/tansu_cluster/meta.json')['Body']\n\
            open(sys.argv[2], 'wb').write(body.read())\n";
        let _ = std::process::Command::new(python)
            .args(["-c", script])
            .arg(format!("http://127.0.0.1:{}", self.s3_port))
            .arg(to)
            .status();
    }

    /// SIGKILL, then `down` later a new broker on the same port and storage.
    pub fn kill_and_restart(&mut self, down: Duration) {
        if let Some(mut b) = self.broker.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        std::io::Write::write_all(&mut log, b"==== SIGKILLed; restarting ====\n").unwrap();
        std::thread::sleep(down);
        self.start_broker();
    }
}

impl Drop for DurableBroker {
    fn drop(&mut self) {
        if let Some(mut b) = self.broker.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        let _ = self.s3.kill();
        let _ = self.s3.wait();
    }
}
