//! The reconcile queue depth against a mocked API server: a change to a job's StatefulSet seen
//! while the job's reconcile runs leaves the job waiting (depth 1, one reconcile in flight);
//! the controller runs it again once the first reconcile ends, and the depth drops to 0.
//! Time is tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use kube::client::Body;
use serde_json::json;
use streamjob_operator::controller;
use streamjob_operator::metrics::Metrics;
use tokio::sync::oneshot;
use tokio::time::Instant;

mod common;

const JOBS: &str = "/apis/streamjob.dev/v1alpha1/namespaces/prod/streamjobs";
const STS: &str = "/apis/apps/v1/namespaces/prod/statefulsets";

fn body(v: serde_json::Value) -> Body {
    Body::from(serde_json::to_vec(&v).unwrap())
}

fn list(kind: &str, items: Vec<serde_json::Value>) -> Body {
    body(json!({
        "apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items
    }))
}

fn gauge(m: &Metrics, name: &str) -> String {
    let text = m.render();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("streamjob_operator_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .to_string()
}

/// Polls `f` on the paused clock until it holds (a minute at most).
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Responder = tower_test::mock::SendResponse<Response<Body>>;

#[tokio::test(start_paused = true)]
async fn a_job_changed_while_it_reconciles_waits_in_the_queue_until_it_runs_again() {
    let (ctx, metrics, mut handle) = common::leader_context();
    // The reconciles' reads of the job, answered by the test; the StatefulSet watch.
    let gets: Arc<Mutex<Vec<Responder>>> = Arc::default();
    let (sts_watch_tx, sts_watch_rx) = oneshot::channel::<Responder>();
    let held = gets.clone();
    let server = tokio::spawn(async move {
        let mut sts_watch = Some(sts_watch_tx);
        let mut open = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let watch = query.contains("watch=true") || query.contains("watch=1");
            if path == format!("{JOBS}/j") {
                held.lock().unwrap().push(send);
            } else if path == JOBS && !watch {
                let job = json!({
                    "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                    "metadata": {"name": "j", "namespace": "prod", "uid": "u1",
                                 "resourceVersion": "1"},
                    "spec": {}
                });
                send.send_response(Response::new(list("StreamJobList", vec![job])));
            } else if path == STS && watch && sts_watch.is_some() {
                let _ = sts_watch.take().unwrap().send(send);
            } else if watch {
                open.push(send);
            } else {
                send.send_response(Response::new(list("List", vec![])));
            }
        }
    });
    let controller = tokio::spawn(controller::run(ctx, vec!["prod".into()]));
    // The first reconcile took the job off the queue and waits for its read.
    until("the first reconcile", || gets.lock().unwrap().len() == 1).await;
    assert_eq!(gauge(&metrics, "reconcile_queue_depth"), "0");
    assert_eq!(gauge(&metrics, "reconciles_in_flight"), "1");
    // Its StatefulSet changes meanwhile: the job waits for another reconcile.
    let sts_watch = sts_watch_rx.await.unwrap();
    let event = json!({"type": "MODIFIED", "object": {
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": "j", "namespace": "prod", "resourceVersion": "2",
            "ownerReferences": [{"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                                 "name": "j", "uid": "u1", "controller": true}]}
    }});
    let mut line = serde_json::to_vec(&event).unwrap();
    line.push(b'\n');
    sts_watch.send_response(Response::new(Body::from(line)));
    until("the job to wait in the queue", || {
        gauge(&metrics, "reconcile_queue_depth") == "1"
    })
    .await;
    assert_eq!(gauge(&metrics, "reconciles_in_flight"), "1");
    assert_eq!(gets.lock().unwrap().len(), 1, "no second reconcile yet");
    // The first reconcile ends (the job is gone): the waiting one runs, the queue is empty.
    let not_found = || {
        Response::builder()
            .status(404)
            .body(body(
                json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                              "reason": "NotFound", "code": 404}),
            ))
            .unwrap()
    };
    let first = gets.lock().unwrap().remove(0);
    first.send_response(not_found());
    until("the second reconcile", || gets.lock().unwrap().len() == 1).await;
    assert_eq!(gauge(&metrics, "reconcile_queue_depth"), "0");
    let second = gets.lock().unwrap().remove(0);
    second.send_response(not_found());
    until("no reconcile in flight", || {
        gauge(&metrics, "reconciles_in_flight") == "0"
    })
    .await;
    assert_eq!(gauge(&metrics, "reconcile_queue_depth"), "0");
    controller.abort();
    server.abort();
}
