//! `streamjob savepoint` and `streamjob status`: clients of worker 0's job control API.

use anyhow::{Context, Result, bail};
use streamjob::net::control_proto::job_control_client::JobControlClient;
use streamjob::net::control_proto::{SavepointRequest, Snapshot, StatusRequest};
use tonic::Request;

use super::worker::TOKEN_ENV;

fn request<T>(message: T) -> Result<Request<T>> {
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    if token.is_empty() {
        bail!("{TOKEN_ENV} is not set: the job control API needs the job's token");
    }
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?,
    );
    Ok(r)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

async fn client(address: &str) -> Result<JobControlClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("bad address '{address}'"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach worker 0 at {address}"))?;
    Ok(JobControlClient::new(channel))
}

fn snapshot_json(s: &Option<Snapshot>) -> serde_json::Value {
    match s {
        Some(s) => serde_json::json!({"id": s.id, "path": s.path, "completedMs": s.completed_ms}),
        None => serde_json::Value::Null,
    }
}

pub fn savepoint(address: &str, stop: bool, directory: Option<String>) -> Result<()> {
    let reply = runtime()?.block_on(async {
        client(address)
            .await?
            .trigger_savepoint(request(SavepointRequest {
                stop,
                directory: directory.unwrap_or_default(),
            })?)
            .await
            .map_err(|s| anyhow::anyhow!("savepoint failed: {}", s.message()))
    })?;
    let sp = reply
        .into_inner()
        .savepoint
        .context("the job answered without a savepoint")?;
    println!("{}", sp.path);
    eprintln!(
        "savepoint {} complete{}",
        sp.id,
        if stop { "; the job stops" } else { "" }
    );
    Ok(())
}

pub fn status(address: &str) -> Result<()> {
    let reply = runtime()?.block_on(async {
        client(address)
            .await?
            .get_status(request(StatusRequest {})?)
            .await
            .map_err(|s| anyhow::anyhow!("status failed: {}", s.message()))
    })?;
    let r = reply.into_inner();
    let json = serde_json::json!({
        "state": r.state,
        "lastCheckpoint": snapshot_json(&r.last_checkpoint),
        "lastSavepoint": snapshot_json(&r.last_savepoint),
        "restoredFrom": r.restored_from,
        "failure": r.failure,
        "restarts": r.restarts,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
