//! gRPC health of a worker (Kubernetes `grpc` probes), served next to the exchange by
//! `tonic-health`. The pod's liveness probe asks for service `liveness`, its readiness probe
//! for `readiness` (see the operator's pod template); `""` is the whole server.

use futures_util::FutureExt as _;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// What the probes see. Clones share the same statuses.
#[derive(Debug, Clone)]
pub struct HealthState {
    reporter: HealthReporter,
}

impl Default for HealthState {
    /// Live, not ready yet.
    fn default() -> Self {
        let state = HealthState {
            reporter: HealthReporter::new(),
        };
        state.set("liveness", ServingStatus::Serving);
        state.set("readiness", ServingStatus::NotServing);
        state
    }
}

impl HealthState {
    /// Tasks are running (or the job finished): the readiness probe passes from now on.
    pub fn set_ready(&self) {
        self.set("readiness", ServingStatus::Serving);
    }

    fn set(&self, service: &str, status: ServingStatus) {
        // The reporter's lock is only held for a map lookup, never across an await, so this
        // completes at once; waiting would need an async context the callers do not have.
        let mut update = Box::pin(self.reporter.set_service_status(service, status));
        loop {
            if (&mut update).now_or_never().is_some() {
                return;
            }
            std::thread::yield_now();
        }
    }
}

pub(crate) fn server(state: &HealthState) -> HealthServer<HealthService> {
    HealthServer::new(HealthService::from_health_reporter(state.reporter.clone()))
}
