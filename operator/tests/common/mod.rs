//! Helpers shared by the operator's integration tests.

use std::sync::Arc;

use http::{Request, Response};
use kube::client::Body;
use streamjob_operator::controller::Context;
use streamjob_operator::metrics::Metrics;
use streamjob_operator::resources::Defaults;

/// The API server a test plays: it takes each request the controller sends and answers it.
pub type ApiServer = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The context of an operator that holds the leader lease, talking to a mocked API server;
/// returns it with its metrics and the mock's handle.
pub fn leader_context() -> (Arc<Context>, Arc<Metrics>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let metrics = Arc::new(Metrics::default());
    metrics.set_leader(true);
    let ctx = Arc::new(Context::new(
        kube::Client::new(service, "default"),
        Defaults {
            worker_image: "x".into(),
            image_pull_policy: None,
            worker_resources: None,
        },
        metrics.clone(),
    ));
    (ctx, metrics, handle)
}
