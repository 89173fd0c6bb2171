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

#[cfg(test)]
mod tests {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health;

    use super::*;

    fn check(state: &HealthState, service: &str) -> Result<i32, tonic::Code> {
        let service_impl = HealthService::from_health_reporter(state.reporter.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(service_impl.check(tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        })))
        .map(|r| r.into_inner().status)
        .map_err(|s| s.code())
    }

    #[test]
    fn live_at_once_ready_once_told_and_unknown_services_are_not_found() {
        let state = HealthState::default();
        let serving = Ok(Wire::Serving as i32);
        assert_eq!(check(&state, "liveness"), serving);
        assert_eq!(check(&state, ""), serving);
        assert_eq!(check(&state, "readiness"), Ok(Wire::NotServing as i32));
        state.clone().set_ready();
        assert_eq!(check(&state, "readiness"), serving);
        assert_eq!(check(&state, "other"), Err(tonic::Code::NotFound));
    }
}
