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
