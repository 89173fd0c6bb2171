//! Who this worker is and where its peers are.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything a worker needs to take part in a distributed run of a job.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This worker's index, `0..workers`.
    pub index: u32,
    /// Number of workers running the job.
    pub workers: u32,
    /// Slots per worker: worker i runs subtasks `i*slots .. (i+1)*slots` of every chain.
    pub slots: u32,
    /// Address this worker's exchange server listens on.
    pub listen: SocketAddr,
    /// `host:port` of every worker, indexed by worker (this worker's own entry is unused).
    pub peers: Vec<String>,
    /// Shared secret every exchange stream must carry.
    pub token: String,
    /// How long to wait for peers (connect with backoff) before failing.
    pub connect_timeout: Duration,
    /// Batches a receiver grants per channel (its buffer, and the sender's window).
    pub credit: u32,
    /// Hash of what defines the job beyond its plan (a spec's expressions and settings);
    /// workers with different job hashes refuse each other. 0 if there is nothing more.
    pub job_hash: u64,
    /// After the job finishes, keep running (and answering probes) instead of returning, so
    /// a pod is not restarted into running the job again.
    pub idle_after_finish: bool,
    /// What the gRPC health service reports.
    pub health: std::sync::Arc<crate::net::health::HealthState>,
    /// Mutual TLS for the exchange, if configured.
    pub tls: Option<TlsPems>,
    /// Times this worker has restarted the job (restart strategy), for the status API.
    pub restarts: u32,
}

/// PEM contents for mutual TLS on the exchange: this worker's certificate and key, and the
/// CA that signs every worker's certificate (checked on both ends).
#[derive(Clone)]
pub struct TlsPems {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for TlsPems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPems { .. }")
    }
}

impl TlsPems {
    /// Reads the three PEM files; errors name the file.
    pub fn load(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Result<Self, String> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read TLS {what} {}: {e}", p.display()))
        };
        Ok(TlsPems {
            cert: read("certificate", cert)?,
            key: read("key", key)?,
            ca: read("CA certificate", ca)?,
        })
    }
}

/// Worker index from a StatefulSet pod name (`wordcount-worker-2` -> 2).
pub fn index_from_pod_name(pod: &str) -> Option<u32> {
    pod.rsplit_once('-')?.1.parse().ok()
}

/// Peer addresses from a pattern with `{i}` (worker index) and any other `{name}` filled
/// from `vars`, e.g. `{job}-worker-{i}.{job}-workers.{namespace}.svc:{port}`.
pub fn peers_from_pattern(
    pattern: &str,
    workers: u32,
    vars: &[(&str, &str)],
) -> Result<Vec<String>, String> {
    let mut base = pattern.to_string();
    for (k, v) in vars {
        base = base.replace(&format!("{{{k}}}"), v);
    }
    let out: Vec<String> = (0..workers)
        .map(|i| base.replace("{i}", &i.to_string()))
        .collect();
    if let Some(open) = out.first().and_then(|p| p.find('{')) {
        let name: String = out[0][open..].chars().take_while(|&c| c != '}').collect();
        return Err(format!("peer pattern has no value for {name}}}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_give_indexes() {
        assert_eq!(index_from_pod_name("wordcount-worker-2"), Some(2));
        assert_eq!(index_from_pod_name("a-b-worker-10"), Some(10));
        assert_eq!(index_from_pod_name("worker"), None);
        assert_eq!(index_from_pod_name("wordcount-worker-x"), None);
    }

    #[test]
    fn patterns_expand_per_worker() {
        let p = peers_from_pattern(
            "{job}-worker-{i}.{job}-workers.{namespace}.svc:{port}",
            2,
            &[("job", "wc"), ("namespace", "prod"), ("port", "6123")],
        )
        .unwrap();
        assert_eq!(
            p,
            [
                "wc-worker-0.wc-workers.prod.svc:6123",
                "wc-worker-1.wc-workers.prod.svc:6123"
            ]
        );
        let e = peers_from_pattern("{job}-{i}:{port}", 1, &[("job", "wc")]).unwrap_err();
        assert_eq!(e, "peer pattern has no value for {port}");
    }
}
