//! The worker's HTTP port: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, the
//! live job page (`/`, assets embedded in the binary: clusters are often offline) and its
//! JSON (`/api/job`), and `/api/summary`, the numbers the operator copies into the status.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;

use crate::runtime::metrics;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen on {addr} for metrics and the job page: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the metrics server: {0}")]
    Runtime(std::io::Error),
}

fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route("/app.js", get(|| async { page(APP_JS, "text/javascript") }))
        .route("/style.css", get(|| async { page(STYLE, "text/css") }))
        .route("/metrics", get(|| async { prometheus() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { ready() }))
        .route(
            "/api/job",
            get(|| async { Json(metrics::global().job_summary()) }),
        )
        .route("/api/summary", get(|| async { Json(metrics::summary()) }))
}

fn page(body: &'static str, kind: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, kind)], body)
}

fn prometheus() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(),
    )
}

fn ready() -> impl IntoResponse {
    match metrics::global().ready() {
        true => (StatusCode::OK, "ready"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "tasks not running yet"),
    }
}

/// Serves the port on a thread of its own (the job's threads are not disturbed by scrapes)
/// until the process exits. Returns the address it listens on (port 0 picks a free one).
pub fn start(addr: SocketAddr) -> Result<SocketAddr, WebError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| WebError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| WebError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| WebError::Bind { addr, source })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WebError::Runtime)?;
    std::thread::Builder::new()
        .name("web".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(async {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        metrics::global().sample();
                        for (worker, address) in PEERS.get().into_iter().flatten() {
                            tokio::spawn(read_peer(*worker, address.clone()));
                        }
                    }
                });
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "metrics server stopped"),
                };
                if let Err(e) = axum::serve(listener, routes()).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            })
        })
        .map_err(WebError::Runtime)?;
    Ok(local)
}

/// The other workers' metrics ports, which worker 0 reads once a second so that its page and
/// `/api/summary` cover the whole job.
static PEERS: std::sync::OnceLock<Vec<(u32, String)>> = std::sync::OnceLock::new();

/// Time another worker gets to answer (less than the sampling tick).
const PEER_TIMEOUT: Duration = Duration::from_millis(800);

/// Makes this process (worker 0) read the `/api/job` of the other workers: `(worker,
/// host:port)` each. Set once; later calls (a restarted job) change nothing.
pub fn read_peers(peers: Vec<(u32, String)>) {
    let _ = PEERS.set(peers);
}

/// The metrics addresses of the other workers: given explicitly, or each peer's exchange
/// host with this worker's metrics port (every pod of a job serves the same port).
pub fn peer_addresses(
    index: u32,
    exchange_peers: &[String],
    explicit: &[String],
    own_port: Option<u16>,
) -> Vec<(u32, String)> {
    let hosts: Vec<String> = match (explicit.is_empty(), own_port) {
        (false, _) => explicit.to_vec(),
        (true, Some(port)) if port != 0 => exchange_peers
            .iter()
            .map(|p| match p.rsplit_once(':') {
                Some((host, _)) => format!("{host}:{port}"),
                None => format!("{p}:{port}"),
            })
            .collect(),
        _ => return Vec::new(),
    };
    hosts
        .into_iter()
        .enumerate()
        .filter(|&(i, _)| i as u32 != index)
        .map(|(i, a)| (i as u32, a))
        .collect()
}

async fn read_peer(worker: u32, address: String) {
    let answer = match tokio::time::timeout(PEER_TIMEOUT, http_get(&address, "/api/job")).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {PEER_TIMEOUT:?}")),
    };
    if let Err(e) = &answer {
        tracing::debug!(worker, %address, error = %e, "cannot read a peer's job metrics");
    }
    metrics::global().peer_report(worker, &address, answer.as_deref().map_err(Clone::clone));
}

/// GET `path` from `host:port` over plain HTTP/1.1.
// The operator's `metrics::get_summary` repeats these lines; see there why they are not shared.
async fn http_get(address: &str, path: &str) -> Result<Vec<u8>, String> {
    use http_body_util::{BodyExt as _, Empty};
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(header::HOST, address)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes().to_vec())
}

/// A `--web-port`/`--metrics-port` value: a port (0: any free one) or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebPort(pub Option<u16>);

impl std::str::FromStr for WebPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(WebPort(None)),
            p => p
                .parse()
                .map(|p| WebPort(Some(p)))
                .map_err(|_| format!("'{s}' is neither a port number nor 'off'")),
        }
    }
}

impl std::fmt::Display for WebPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}"),
            None => f.write_str("off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::peer_addresses;

    #[test]
    fn peers_are_read_on_their_exchange_host_with_the_metrics_port_or_as_given() {
        let exchange = [
            "wc-worker-0.wc:6121".to_string(),
            "wc-worker-1.wc:6121".into(),
        ];
        assert_eq!(
            peer_addresses(0, &exchange, &[], Some(9249)),
            [(1, "wc-worker-1.wc:9249".to_string())]
        );
        let given = ["-".to_string(), "127.0.0.1:4000".into()];
        assert_eq!(
            peer_addresses(0, &exchange, &given, Some(0)),
            [(1, "127.0.0.1:4000".to_string())]
        );
        // Metrics off or on a random port: the peers' ports are unknown.
        assert!(peer_addresses(0, &exchange, &[], None).is_empty());
        assert!(peer_addresses(0, &exchange, &[], Some(0)).is_empty());
    }
}
