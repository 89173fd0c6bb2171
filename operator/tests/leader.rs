//! Leader election against a mocked API server, one scenario per transition: acquiring a
//! free lease, waiting out a live holder (judged on our own clock), renewing, losing the lease
//! to another replica, stopping at the renew deadline when the API server does not answer
//! (before any standby may take over), and releasing the lease on shutdown. Time is tokio's
//! paused clock, so the seconds pass without waiting.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use streamjob_operator::leader::{Elector, Lost, Timing};
use tokio::time::Instant;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/streamjob-operator";
const CREATE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

type Check = Box<dyn Fn(&Value) + Send>;

/// One expected request: method, path, answer status and body; `check` sees the request body.
struct Step {
    method: Method,
    path: &'static str,
    status: u16,
    reply: Value,
    check: Option<Check>,
}

fn step(method: Method, path: &'static str, status: u16, reply: Value) -> Step {
    Step {
        method,
        path,
        status,
        reply,
        check: None,
    }
}

impl Step {
    fn check(mut self, f: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(f));
        self
    }
}

fn lease(holder: Option<&str>, renew: &str, version: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "streamjob-operator", "namespace": "ops", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew, "leaseTransitions": 1}
    })
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn unavailable() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable", "code": 503, "message": "etcd is down"})
}

/// An elector for `me` whose API server answers `script` in order (and nothing else).
fn elector(me: &str, script: Vec<Step>) -> (Elector, tokio::task::JoinHandle<usize>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut served = 0;
        for (i, s) in script.into_iter().enumerate() {
            let Some((req, send)) = handle.next_request().await else {
                panic!("request {i} ({} {}) never came", s.method, s.path);
            };
            assert_eq!(
                (req.method().as_str(), req.uri().path()),
                (s.method.as_str(), s.path),
                "request {i}"
            );
            let body: Value =
                serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap())
                    .unwrap_or(Value::Null);
            if let Some(check) = &s.check {
                check(&body);
            }
            send.send_response(
                Response::builder()
                    .status(StatusCode::from_u16(s.status).unwrap())
                    .body(Body::from(serde_json::to_vec(&s.reply).unwrap()))
                    .unwrap(),
            );
            served += 1;
        }
        served
    });
    let client = kube::Client::new(service, "default");
    (
        Elector::new(client, "ops", "streamjob-operator", me, Timing::default()),
        server,
    )
}

fn holder_is(who: &'static str) -> impl Fn(&Value) + Send + 'static {
    move |b: &Value| assert_eq!(b["spec"]["holderIdentity"], who, "{b}")
}

#[tokio::test(start_paused = true)]
async fn a_missing_lease_is_created_and_held() {
    let (e, server) = elector(
        "a",
        vec![
            step(Method::GET, PATH, 404, not_found()),
            step(
                Method::POST,
                CREATE,
                201,
                lease(Some("a"), "2026-12-01T10:00:00.000000Z", "1"),
            )
            .check(holder_is("a")),
        ],
    );
    assert!(e.try_acquire().await.unwrap());
    drop(e);
    assert_eq!(server.await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_live_holder_is_waited_out_on_our_own_clock() {
    // The holder's renewTime is far in the past by our wall clock (clock skew), but we have
    // just seen the lease: it is live until we saw it unchanged for the lease duration.
    let old = "2020-01-01T00:00:00.000000Z";
    let (e, server) = elector(
        "b",
        vec![
            step(Method::GET, PATH, 200, lease(Some("a"), old, "5")),
            step(Method::GET, PATH, 200, lease(Some("a"), old, "5")),
            step(Method::GET, PATH, 200, lease(Some("a"), old, "5")),
            step(Method::PUT, PATH, 200, lease(Some("b"), old, "6")).check(|b| {
                assert_eq!(b["spec"]["holderIdentity"], "b");
                assert_eq!(b["spec"]["leaseTransitions"], 2);
                assert_eq!(b["metadata"]["resourceVersion"], "5");
            }),
        ],
    );
    assert!(!e.try_acquire().await.unwrap(), "just seen: live");
    tokio::time::advance(Duration::from_secs(14)).await;
    assert!(
        !e.try_acquire().await.unwrap(),
        "14 s unchanged: still live"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(e.try_acquire().await.unwrap(), "16 s unchanged: expired");
    drop(e);
    assert_eq!(server.await.unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_keeps_renewing_is_never_taken_over() {
    let (e, server) = elector(
        "b",
        vec![
            step(
                Method::GET,
                PATH,
                200,
                lease(Some("a"), "2026-12-01T10:00:00.000000Z", "5"),
            ),
            step(
                Method::GET,
                PATH,
                200,
                lease(Some("a"), "2026-12-01T10:00:10.000000Z", "6"),
            ),
            step(
                Method::GET,
                PATH,
                200,
                lease(Some("a"), "2026-12-01T10:00:20.000000Z", "7"),
            ),
        ],
    );
    for _ in 0..3 {
        assert!(!e.try_acquire().await.unwrap());
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    drop(e);
    assert_eq!(server.await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_leader_renews_and_stops_when_another_replica_holds_the_lease() {
    let t = "2026-12-01T10:00:00.000000Z";
    let (e, server) = elector(
        "a",
        vec![
            // keep(): a renewal every retry period...
            step(Method::GET, PATH, 200, lease(Some("a"), t, "1")),
            step(Method::PUT, PATH, 200, lease(Some("a"), t, "2")).check(holder_is("a")),
            // ...then the lease turns out to be someone else's.
            step(Method::GET, PATH, 200, lease(Some("b"), t, "3")),
        ],
    );
    let started = Instant::now();
    assert_eq!(e.keep().await, Lost::TakenBy("b".into()));
    assert_eq!(started.elapsed(), Duration::from_secs(4));
    drop(e);
    assert_eq!(server.await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_stops_before_the_lease_could_expire() {
    // The API server answers 503 to every renewal: the leader must stop acting within the
    // renew deadline (10 s), before a standby could take over (15 s after its last change).
    // Tries at 2, 4, 6 and 8 s; at 10 s it stops.
    let script = (0..4)
        .map(|_| step(Method::GET, PATH, 503, unavailable()))
        .collect();
    let (e, server) = elector("a", script);
    let started = Instant::now();
    assert_eq!(e.keep().await, Lost::RenewDeadline(Duration::from_secs(10)));
    let took = started.elapsed();
    assert_eq!(took, Duration::from_secs(10));
    assert!(took < Timing::default().lease_duration);
    drop(e);
    assert_eq!(server.await.unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_hangs_counts_against_the_deadline() {
    // The server never answers the second renewal: the leader still stops at the deadline.
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(
            Response::builder()
                .body(Body::from(
                    serde_json::to_vec(&lease(Some("a"), "2026-12-01T10:00:00.000000Z", "1"))
                        .unwrap(),
                ))
                .unwrap(),
        );
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(
            Response::builder()
                .body(Body::from(
                    serde_json::to_vec(&lease(Some("a"), "2026-12-01T10:00:02.000000Z", "2"))
                        .unwrap(),
                ))
                .unwrap(),
        );
        // Hold the next request unanswered until the client gives up on it.
        let held = handle.next_request().await;
        std::future::pending::<()>().await;
        drop(held);
    });
    let e = Elector::new(
        kube::Client::new(service, "default"),
        "ops",
        "streamjob-operator",
        "a",
        Timing::default(),
    );
    let started = Instant::now();
    assert_eq!(e.keep().await, Lost::RenewDeadline(Duration::from_secs(10)));
    // Renewed at 2 s; the hung attempt started at 4 s; the deadline is 2 + 10 s.
    assert_eq!(started.elapsed(), Duration::from_secs(12));
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_the_lease_and_a_standby_takes_it_at_once() {
    let t = "2026-12-01T10:00:00.000000Z";
    let (leader, server) = elector(
        "a",
        vec![
            step(Method::GET, PATH, 200, lease(Some("a"), t, "4")),
            step(Method::PUT, PATH, 200, lease(None, t, "5")).check(|b| {
                assert!(b["spec"].get("holderIdentity").is_none(), "{b}");
                assert_eq!(b["spec"]["leaseDurationSeconds"], 1);
                assert_eq!(b["metadata"]["resourceVersion"], "4");
            }),
        ],
    );
    leader.release().await.unwrap();
    drop(leader);
    assert_eq!(server.await.unwrap(), 2);
    // The standby sees a lease without a holder: it need not wait out the old duration.
    let (standby, server) = elector(
        "b",
        vec![
            step(Method::GET, PATH, 200, lease(None, t, "5")),
            step(Method::PUT, PATH, 200, lease(Some("b"), t, "6")).check(holder_is("b")),
        ],
    );
    assert!(standby.try_acquire().await.unwrap());
    drop(standby);
    assert_eq!(server.await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_does_not_hold_the_lease_releases_nothing() {
    let (e, server) = elector(
        "a",
        vec![step(
            Method::GET,
            PATH,
            200,
            lease(Some("b"), "2026-12-01T10:00:00.000000Z", "4"),
        )],
    );
    e.release().await.unwrap();
    drop(e);
    assert_eq!(server.await.unwrap(), 1);
}
