//! gRPC health service of a worker, served next to the exchange.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Request, Response, Status};

use crate::net::health_proto::health_check_response::ServingStatus;
use crate::net::health_proto::health_server::{Health, HealthServer};
use crate::net::health_proto::{HealthCheckRequest, HealthCheckResponse};

/// What the probes see.
#[derive(Debug, Default)]
pub struct HealthState {
    /// Tasks are running (or the job finished).
    pub ready: AtomicBool,
}

pub(crate) struct HealthService(pub Arc<HealthState>);

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let status = match request.get_ref().service.as_str() {
            "" | "liveness" => ServingStatus::Serving,
            "readiness" if self.0.ready.load(Ordering::Acquire) => ServingStatus::Serving,
            "readiness" => ServingStatus::NotServing,
            _ => ServingStatus::ServiceUnknown,
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }
}

pub(crate) fn server(state: Arc<HealthState>) -> HealthServer<HealthService> {
    HealthServer::new(HealthService(state))
}
