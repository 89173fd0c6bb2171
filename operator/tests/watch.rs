//! The controller's watch against a mocked API server: a watch that ends in 410 Gone (the
//! API server compacted past our resourceVersion, as after an outage) is relisted within
//! seconds with kube-runtime's default backoff, and `/readyz` reports not ready from the
//! failure until the relist completes. Time is tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use kube::client::Body;
use serde_json::json;
use streamjob_operator::controller;
use tokio::time::Instant;

mod common;

const JOBS: &str = "/apis/streamjob.dev/v1alpha1/namespaces/prod/streamjobs";

fn list(kind: &str, version: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": version}, "items": []
    }))
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_expires_is_relisted_within_seconds_and_readyz_follows_it() {
    let (ctx, metrics, mut handle) = common::leader_context();
    // What the test saw: (event, readiness at that moment, when).
    let seen: Arc<Mutex<Vec<(String, bool, Instant)>>> = Arc::default();
    let log = seen.clone();
    let m = metrics.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut job_lists = 0;
        let mut job_watches = 0;
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let watch = query.contains("watch=true") || query.contains("watch=1");
            let note = |what: &str| {
                log.lock()
                    .unwrap()
                    .push((what.to_string(), m.ready().is_ok(), Instant::now()))
            };
            match (path == JOBS, watch) {
                (true, false) => {
                    job_lists += 1;
                    note(&format!("list {job_lists}"));
                    let version = if job_lists == 1 { "1" } else { "5" };
                    send.send_response(
                        Response::builder()
                            .body(Body::from(list("StreamJobList", version)))
                            .unwrap(),
                    );
                }
                (true, true) => {
                    job_watches += 1;
                    note(&format!("watch {job_watches}"));
                    if job_watches == 1 {
                        let gone = json!({"type": "ERROR", "object": {
                            "apiVersion": "v1", "kind": "Status", "status": "Failure",
                            "message": "too old resource version: 1 (4)", "reason": "Expired", "code": 410
                        }});
                        let mut body = serde_json::to_vec(&gone).unwrap();
                        body.push(b'\n');
                        send.send_response(Response::builder().body(Body::from(body)).unwrap());
                    } else {
                        held.push(send);
                    }
                }
                // Owned objects and pods: empty lists, and watches that stay open.
                (false, false) => send.send_response(
                    Response::builder()
                        .body(Body::from(list("List", "1")))
                        .unwrap(),
                ),
                (false, true) => held.push(send),
            }
        }
    });
    let controller = tokio::spawn(controller::run(ctx, vec!["prod".into()]));
    // Wait (on the paused clock) for the relist and the second watch.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = seen.lock().unwrap().iter().any(|(w, _, _)| w == "watch 2");
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let names: Vec<&str> = seen.iter().map(|(w, _, _)| w.as_str()).collect();
    assert_eq!(
        names,
        ["list 1", "watch 1", "list 2", "watch 2"],
        "{seen:?}"
    );
    // Not ready before the first list, ready once listed, not ready after the 410 until
    // the relist, ready again after it.
    let ready: Vec<bool> = seen.iter().map(|(_, r, _)| *r).collect();
    assert_eq!(ready, [false, true, false, true], "{seen:?}");
    let gone_to_relist = seen[2].2 - seen[1].2;
    assert!(
        gone_to_relist < Duration::from_secs(3),
        "relisted {gone_to_relist:?} after the 410"
    );
    controller.abort();
    server.abort();
}
