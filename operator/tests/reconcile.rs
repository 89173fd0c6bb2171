//! Reconcile against a mocked API server (kube-rs's tower-test pattern): every scenario
//! lists the exact requests the operator must make, in order, and what the server answers.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use streamjob_crds::spec::StreamJob;
use streamjob_crds::validate::parse_job;
use streamjob_operator::controller::{Context, reconcile};
use streamjob_operator::metrics::Metrics;
use streamjob_operator::resources::Defaults;

type Check = Box<dyn Fn(&Value) + Send>;

/// One expected request and the answer to it.
struct Expect {
    method: Method,
    path: String,
    check: Option<Check>,
    status: StatusCode,
    /// Answer body; `None` echoes the request body (what an apply returns, near enough).
    reply: Option<Value>,
}

fn expect(method: Method, path: &str) -> Expect {
    Expect {
        method,
        path: path.into(),
        check: None,
        status: StatusCode::OK,
        reply: None,
    }
}

impl Expect {
    fn status(mut self, s: u16) -> Self {
        self.status = StatusCode::from_u16(s).unwrap();
        self
    }
    fn reply(mut self, v: Value) -> Self {
        self.reply = Some(v);
        self
    }
    fn check(mut self, f: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(f));
        self
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

const NS: &str = "/namespaces/prod";

fn job(spec: &str) -> StreamJob {
    let mut j = parse_job(&format!(
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: wc\n  namespace: prod\nspec:\n{spec}"
    ))
    .unwrap();
    j.metadata.uid = Some("uid-1".into());
    j.metadata.generation = Some(2);
    j.metadata.resource_version = Some("100".into());
    j
}

const SPEC: &str = "  parallelism: 2
  steps:
    - {name: src, source: {collection: {values: [a, b]}}}
    - {name: by, keyBy: {expr: value}}
    - {name: n, reduce: {expr: acc}}
    - {name: out, sink: {print: {}}}
";

/// Runs `reconcile` while serving `script`; fails on any request not in the script, out of
/// order, or missing.
async fn run(job: StreamJob, script: Vec<Expect>) -> Result<(), String> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        for (i, e) in script.into_iter().enumerate() {
            let (req, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("request {i} ({} {}) never came", e.method, e.path));
            let (method, uri) = (req.method().clone(), req.uri().clone());
            assert_eq!(
                (method.as_str(), uri.path()),
                (e.method.as_str(), e.path.as_str()),
                "request {i}"
            );
            if method == Method::PATCH {
                let q = uri.query().unwrap_or("");
                assert!(
                    q.contains("fieldManager=streamjob-operator") && q.contains("force=true"),
                    "server-side apply with our field manager: {q}"
                );
            }
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(check) = &e.check {
                check(&body);
            }
            let reply = e.reply.unwrap_or(body);
            send.send_response(
                Response::builder()
                    .status(e.status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        // Nothing else may be requested.
        if let Some((req, _)) = handle.next_request().await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    });
    let client = kube::Client::new(service, "default");
    let ctx = Arc::new(Context::new(
        client,
        Defaults {
            worker_image: "streamjob:test".into(),
            image_pull_policy: None,
            worker_resources: None,
        },
        Arc::new(Metrics::default()),
    ));
    let result = reconcile(Arc::new(job), ctx)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    // Dropping the context drops the client: the server task sees the end of requests.
    server.await.map_err(|e| format!("{e}"))?;
    result
}

fn sts_reply(replicas: i32, hash: &str, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "wc-worker", "namespace": "prod", "generation": 1},
        "spec": {
            "replicas": replicas, "serviceName": "wc-workers",
            "selector": {"matchLabels": {"app.kubernetes.io/instance": "wc"}},
            "template": {"metadata": {"annotations": {"streamjob.dev/spec-hash": hash}}}
        },
        "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas, "observedGeneration": 1}
    })
}

fn event(reason: &'static str) -> Expect {
    expect(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events")).check(move |b| {
        assert_eq!(b["reason"], reason, "event {b}");
        assert_eq!(b["regarding"]["name"], "wc");
    })
}

fn status(check: impl Fn(&Value) + Send + 'static) -> Expect {
    expect(
        Method::PATCH,
        &format!("/apis/streamjob.dev/v1alpha1{NS}/streamjobs/wc/status"),
    )
    .check(move |b| check(&b["status"]))
    .reply(json!({"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "wc"}, "spec": {"steps": []}}))
}

fn condition<'a>(s: &'a Value, t: &str) -> &'a Value {
    s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == t)
        .unwrap_or_else(|| panic!("no {t} condition in {s}"))
}

fn applies(sts: Value, pdb: bool) -> Vec<Expect> {
    let mut v = vec![
        expect(Method::PATCH, &format!("/api/v1{NS}/configmaps/wc-spec")).check(|b| {
            assert!(
                b["data"]["streamjob.yaml"]
                    .as_str()
                    .unwrap()
                    .contains("name: wc")
            );
        }),
        expect(Method::PATCH, &format!("/api/v1{NS}/services/wc-workers")),
        expect(
            Method::PATCH,
            &format!("/apis/apps/v1{NS}/statefulsets/wc-worker"),
        )
        .reply(sts),
    ];
    v.push(if pdb {
        expect(
            Method::PATCH,
            &format!("/apis/policy/v1{NS}/poddisruptionbudgets/wc-worker"),
        )
    } else {
        expect(
            Method::DELETE,
            &format!("/apis/policy/v1{NS}/poddisruptionbudgets/wc-worker"),
        )
        .status(404)
        .reply(not_found())
    });
    v
}

fn token_exists() -> Expect {
    expect(Method::GET, &format!("/api/v1{NS}/secrets/wc-token"))
        .reply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wc-token"}}))
}

#[tokio::test]
async fn a_new_job_gets_its_children_an_event_and_a_deploying_status() {
    let j = job(SPEC);
    let hash = streamjob_operator::resources::spec_hash(&j);
    let mut script = vec![
        expect(Method::GET, &format!("/api/v1{NS}/secrets/wc-token"))
            .status(404)
            .reply(not_found()),
        expect(Method::POST, &format!("/api/v1{NS}/secrets")).check(|b| {
            assert_eq!(b["metadata"]["name"], "wc-token");
            assert_eq!(b["stringData"]["token"].as_str().unwrap().len(), 32);
            assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        }),
        expect(
            Method::GET,
            &format!("/apis/apps/v1{NS}/statefulsets/wc-worker"),
        )
        .status(404)
        .reply(not_found()),
    ];
    script.extend(applies(sts_reply(2, &hash, 0), true));
    script.push(event("Created"));
    script.push(status(|s| {
        assert_eq!(s["phase"], "Deploying");
        assert_eq!(s["desiredWorkers"], 2);
        assert_eq!(s["readyWorkers"], 0);
        assert_eq!(s["observedGeneration"], 2);
        assert_eq!(condition(s, "SpecValid")["status"], "True");
        assert_eq!(condition(s, "Ready")["status"], "False");
        assert_eq!(condition(s, "Progressing")["reason"], "RollingOut");
        assert_eq!(condition(s, "Ready")["observedGeneration"], 2);
        assert_eq!(s["plan"]["slots"], 2);
    }));
    run(j, script).await.unwrap();
}

#[tokio::test]
async fn ready_workers_make_the_job_running() {
    let j = job(SPEC);
    let hash = streamjob_operator::resources::spec_hash(&j);
    let mut script = vec![
        token_exists(),
        expect(
            Method::GET,
            &format!("/apis/apps/v1{NS}/statefulsets/wc-worker"),
        )
        .reply(sts_reply(2, &hash, 2)),
    ];
    script.extend(applies(sts_reply(2, &hash, 2), true));
    script.push(status(|s| {
        assert_eq!(s["phase"], "Running");
        assert_eq!(condition(s, "Ready")["status"], "True");
        assert_eq!(condition(s, "Ready")["message"], "2/2 workers ready");
        assert_eq!(condition(s, "Degraded")["status"], "False");
    }));
    run(j, script).await.unwrap();
}

#[tokio::test]
async fn a_spec_and_parallelism_change_rolls_and_scales_the_workers() {
    let j = job(&SPEC.replace("parallelism: 2", "parallelism: 3"));
    let hash = streamjob_operator::resources::spec_hash(&j);
    let mut script = vec![
        token_exists(),
        expect(
            Method::GET,
            &format!("/apis/apps/v1{NS}/statefulsets/wc-worker"),
        )
        .reply(sts_reply(2, "old-hash", 2)),
    ];
    let mut a = applies(sts_reply(3, &hash, 2), true);
    a[2] = expect(
        Method::PATCH,
        &format!("/apis/apps/v1{NS}/statefulsets/wc-worker"),
    )
    .check(move |b| {
        assert_eq!(b["spec"]["replicas"], 3);
        assert_eq!(
            b["spec"]["template"]["spec"]["containers"][0]["args"][3],
            "3"
        );
    })
    .reply(sts_reply(3, &hash, 2));
    script.extend(a);
    script.push(event("Scaled"));
    script.push(event("Updated"));
    script.push(status(|s| {
        assert_eq!(s["phase"], "Deploying");
        assert_eq!(s["desiredWorkers"], 3);
    }));
    run(j, script).await.unwrap();
}

#[tokio::test]
async fn suspend_scales_to_zero_and_resume_brings_the_workers_back() {
    let suspended = job(&format!("  state: suspended\n{SPEC}"));
    let hash = streamjob_operator::resources::spec_hash(&suspended);
    let mut script = vec![
        token_exists(),
        expect(
            Method::GET,
            &format!("/apis/apps/v1{NS}/statefulsets/wc-worker"),
        )
        .reply(sts_reply(2, &hash, 2)),
    ];
    script.extend(applies(sts_reply(0, &hash, 0), false));
    script.push(event("Suspended"));
    script.push(status(|s| {
        assert_eq!(s["phase"], "Suspended");
        assert_eq!(s["desiredWorkers"], 0);
        assert_eq!(condition(s, "Ready")["reason"], "Suspended");
    }));
    run(suspended, script).await.unwrap();

    let resumed = job(SPEC);
    let hash = streamjob_operator::resources::spec_hash(&resumed);
    let mut script = vec![
        token_exists(),
        expect(
            Method::GET,
            &format!("/apis/apps/v1{NS}/statefulsets/wc-worker"),
        )
        .reply(sts_reply(0, &hash, 0)),
    ];
    script.extend(applies(sts_reply(2, &hash, 0), true));
    script.push(event("Resumed"));
    script.push(status(|s| assert_eq!(s["phase"], "Deploying")));
    run(resumed, script).await.unwrap();
}

#[tokio::test]
async fn an_invalid_spec_only_gets_a_failed_status_and_an_event() {
    let j = job(
        "  parallelism: 2\n  steps:\n    - {name: src, source: {collection: {values: [a]}}}\n    - {name: n, reduce: {expr: acc}}\n    - {name: out, sink: {print: {}}}\n",
    );
    let script = vec![
        expect(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events")).check(|b| {
            assert_eq!(b["reason"], "InvalidSpec");
            assert_eq!(b["type"], "Warning");
            assert!(
                b["note"].as_str().unwrap().contains("spec.steps[1].reduce"),
                "{b}"
            );
        }),
        status(|s| {
            assert_eq!(s["phase"], "Failed");
            let v = condition(s, "SpecValid");
            assert_eq!(
                (v["status"].as_str(), v["reason"].as_str()),
                (Some("False"), Some("InvalidSpec"))
            );
            assert!(
                v["message"]
                    .as_str()
                    .unwrap()
                    .contains("spec.steps[1].reduce")
            );
            assert!(s["message"].as_str().unwrap().starts_with("invalid spec: "));
        }),
    ];
    run(j, script).await.unwrap();
}

#[tokio::test]
async fn an_unchanged_invalid_spec_does_not_repeat_its_event() {
    let mut j = job("  steps:\n    - {name: src, source: {collection: {values: [a]}}}\n");
    let errors: Vec<String> = streamjob_crds::validate::validate_job(&j)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    j.status = Some(streamjob_operator::status::invalid(&j, &errors));
    run(j, vec![status(|s| assert_eq!(s["phase"], "Failed"))])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_deleted_job_is_left_to_the_garbage_collector() {
    let mut j = job(SPEC);
    j.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    run(j, vec![]).await.unwrap();
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_for_a_retry() {
    let script = vec![
        expect(Method::GET, &format!("/api/v1{NS}/secrets/wc-token"))
            .status(500)
            .reply(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd is down"})),
    ];
    let err = run(job(SPEC), script).await.unwrap_err();
    assert!(err.contains("etcd is down"), "{err}");
}
