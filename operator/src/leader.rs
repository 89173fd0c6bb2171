//! Leader election with a coordination.k8s.io Lease, so two operator replicas never reconcile
//! at once. The timing is client-go's leaderelection: the holder renews every `retry_period`
//! and stops acting once it could not renew for `renew_deadline`, which is shorter than
//! `lease_duration`, the time a contender waits after it last saw the lease change before it
//! takes over. Expiry is judged on the local monotonic clock from when this replica observed
//! the lease record change, never by comparing another node's `renewTime` with our wall clock.
//! Updates carry the lease's resourceVersion, so two contenders cannot both win. A leader that
//! shuts down releases the lease, so a standby takes over at its next try.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::warn;

/// Timing of the election (client-go's defaults).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The parts of a lease record whose change proves its holder alive.
type Record = (Option<String>, Option<MicroTime>, Option<i32>);

fn record(spec: &LeaseSpec) -> Record {
    (
        spec.holder_identity.clone().filter(|h| !h.is_empty()),
        spec.renew_time.clone(),
        spec.lease_transitions,
    )
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The record as last seen, and when (local monotonic clock).
    observed: Mutex<Option<(Record, Instant)>>,
}

/// Why this replica stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    #[error("{0} holds the lease")]
    TakenBy(String),
    #[error("could not renew the lease for {0:?} (the renew deadline)")]
    RenewDeadline(Duration),
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        assert!(
            timing.renew_deadline < timing.lease_duration,
            "the renew deadline must be shorter than the lease duration"
        );
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
            observed: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Notes the record seen now; returns when it was first seen unchanged.
    fn observe(&self, spec: &LeaseSpec) -> Instant {
        let rec = record(spec);
        let mut observed = self.observed.lock().unwrap();
        match &*observed {
            Some((r, at)) if *r == rec => *at,
            _ => {
                let now = Instant::now();
                *observed = Some((rec, now));
                now
            }
        }
    }

    /// One round: acquires or renews the lease; `Ok(true)` while this replica is the leader,
    /// `Ok(false)` while another live replica holds it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let spec = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created.spec.unwrap_or_default());
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let seen_at = self.observe(&current);
        let holder = current.holder_identity.as_deref().unwrap_or("");
        let ours = holder == self.identity;
        if !holder.is_empty() && !ours {
            let duration = current
                .lease_duration_seconds
                .map_or(self.timing.lease_duration, |s| {
                    Duration::from_secs(s.max(0) as u64)
                });
            if seen_at.elapsed() < duration {
                return Ok(false);
            }
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(spec(
            if ours {
                current.acquire_time.clone()
            } else {
                None
            },
            transitions,
        ));
        // replace() sends the resourceVersion we read: a concurrent winner makes this 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(renewed) => {
                self.observe(&renewed.spec.unwrap_or_default());
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Tries every retry period until this replica leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the lease every retry period while this replica leads; returns as soon as it
    /// cannot prove leadership: another replica holds the lease, or no renewal succeeded
    /// within the renew deadline (a hung request counts from when it started).
    pub async fn keep(&self) -> Lost {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            let left = self.timing.renew_deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire()).await {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => {
                    let holder = self
                        .observed
                        .lock()
                        .unwrap()
                        .as_ref()
                        .and_then(|(r, _)| r.0.clone())
                        .unwrap_or_else(|| "another replica".into());
                    return Lost::TakenBy(holder);
                }
                Ok(Err(e)) => warn!(error = %e, "renewing the leader lease"),
                Err(_) => warn!("renewing the leader lease timed out"),
            }
            if renewed.elapsed() >= self.timing.renew_deadline {
                return Lost::RenewDeadline(self.timing.renew_deadline);
            }
        }
    }

    /// Gives the lease up (on shutdown): no holder, and a 1 s duration, so a standby takes
    /// over at its next try instead of waiting out the lease.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else holds it already.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}
