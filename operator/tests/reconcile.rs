//! Reconcile against a mocked API server (kube-rs's tower-test pattern) and a scripted job
//! (a fake JobControl): every scenario lists the exact requests the operator must make, in
//! order, what the server answers, and what worker 0 answers. A shared journal records both
//! sides, so a test can assert that the savepoint came before the new StatefulSet.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use streamjob_crds::graph::to_logical_graph;
use streamjob_crds::spec::{PlanStatus, SnapshotInfo, StreamJob, StreamJobStatus, UpgradeStatus};
use streamjob_crds::validate::parse_job;
use streamjob_operator::control::{
    ControlError, JobControl, JobReport, RunState, Snapshot, Target,
};
use streamjob_operator::controller::{Context, DEFAULT_MAX_WORKERS_PER_JOB, FINALIZER, reconcile};
use streamjob_operator::metrics::{JobRates, Metrics};
use streamjob_operator::resources::{self, Defaults, Run};

type Check = Box<dyn Fn(&Value) + Send>;
type Answer = Box<dyn Fn(&Value) -> Value + Send>;
type Journal = Arc<Mutex<Vec<String>>>;

/// One expected request and the answer to it.
struct Expect {
    method: Method,
    path: String,
    check: Option<Check>,
    status: StatusCode,
    /// Answer body; `None` echoes the request body (what an apply returns, near enough).
    reply: Option<Value>,
    /// Answer made from the request body.
    reply_with: Option<Answer>,
}

fn expect(method: Method, path: &str) -> Expect {
    Expect {
        method,
        path: path.into(),
        check: None,
        status: StatusCode::OK,
        reply: None,
        reply_with: None,
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
    fn reply_with(mut self, f: impl Fn(&Value) -> Value + Send + 'static) -> Self {
        self.reply_with = Some(Box::new(f));
        self
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

const NS: &str = "/namespaces/prod";
const JOB_PATH: &str = "/apis/streamjob.dev/v1alpha1/namespaces/prod/streamjobs/wc";
const TOKEN: &str = "secret-token";

fn defaults() -> Defaults {
    Defaults {
        worker_image: "streamjob:test".into(),
        image_pull_policy: None,
        worker_resources: None,
    }
}

/// Job `wc` in `prod` at generation 2.
fn job(spec: &str) -> StreamJob {
    job_at(spec, 2)
}

fn job_at(spec: &str, generation: i64) -> StreamJob {
    let mut j = parse_job(&format!(
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: wc\n  namespace: prod\nspec:\n{spec}"
    ))
    .unwrap();
    j.metadata.uid = Some("uid-1".into());
    j.metadata.generation = Some(generation);
    j.metadata.resource_version = Some("100".into());
    j
}

/// A job in a stateful mode, with the finalizer it gets on its first reconcile.
fn stateful(spec: &str, generation: i64) -> StreamJob {
    let mut j = job_at(spec, generation);
    j.metadata.finalizers = Some(vec![FINALIZER.into()]);
    j
}

const STEPS: &str = "  steps:
    - {name: src, source: {collection: {values: [a, b]}}}
    - {name: by, keyBy: {expr: value}}
    - {name: n, reduce: {expr: acc}}
    - {name: out, sink: {print: {}}}
";

const SPEC: &str = "  parallelism: 2
  steps:
    - {name: src, source: {collection: {values: [a, b]}}}
    - {name: by, keyBy: {expr: value}}
    - {name: n, reduce: {expr: acc}}
    - {name: out, sink: {print: {}}}
";

/// A checkpointed spec in `mode` with `extra` fields (each line indented by two spaces).
fn spec(mode: &str, parallelism: u32, extra: &str) -> String {
    format!(
        "  parallelism: {parallelism}\n  upgradeMode: {mode}\n  checkpointing: {{intervalMs: 1000, directory: 'file:///ckpt'}}\n{extra}{STEPS}"
    )
}

fn run_of(id: &str, restore_from: Option<&str>, restart_nonce: Option<i64>) -> Run {
    Run {
        id: id.into(),
        restore_from: restore_from.map(String::from),
        restart_nonce,
    }
}

/// The StatefulSet the operator made for `job` running `run`, as the server returns it:
/// the controller has seen it and `ready` pods run it.
fn deployed(job: &StreamJob, run: &Run, ready: i32) -> Value {
    let plan = to_logical_graph(job).plan().unwrap();
    let c = resources::children_for_run(job, &plan, &defaults(), run).unwrap();
    let mut v = serde_json::to_value(&c.stateful_set).unwrap();
    v["apiVersion"] = "apps/v1".into();
    v["kind"] = "StatefulSet".into();
    v["metadata"]["generation"] = 1.into();
    let replicas = v["spec"]["replicas"].clone();
    v["status"] = json!({"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas, "observedGeneration": 1});
    v
}

/// What an apply of the StatefulSet returns: the body, seen by the controller, `ready` pods.
fn applied(body: &Value, ready: i32) -> Value {
    let mut v = body.clone();
    v["metadata"]["generation"] = 2.into();
    let replicas = v["spec"]["replicas"].clone();
    v["status"] = json!({"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas, "observedGeneration": 2});
    v
}

fn env(sts: &Value, name: &str) -> Option<String> {
    sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap().to_string())
}

fn annotation(sts: &Value, name: &str) -> Option<String> {
    sts["spec"]["template"]["metadata"]["annotations"][name]
        .as_str()
        .map(String::from)
}

/// A scripted job: the GetStatus and TriggerSavepoint answers of worker 0, in order.
#[derive(Default)]
struct Job {
    journal: Journal,
    statuses: Mutex<VecDeque<Result<JobReport, ControlError>>>,
    savepoints: Mutex<VecDeque<(bool, Result<Snapshot, ControlError>)>>,
    /// What the workers' metrics endpoints answer (None: unreachable).
    rates: Option<JobRates>,
}

impl Job {
    fn status(self, r: Result<JobReport, ControlError>) -> Self {
        self.statuses.lock().unwrap().push_back(r);
        self
    }
    fn rates(mut self, r: JobRates) -> Self {
        self.rates = Some(r);
        self
    }
    /// Expects a TriggerSavepoint with `stop` and answers `r`.
    fn savepoint(self, stop: bool, r: Result<Snapshot, ControlError>) -> Self {
        self.savepoints.lock().unwrap().push_back((stop, r));
        self
    }
}

fn check_target(t: &Target) {
    assert_eq!(
        (t.namespace.as_str(), t.job.as_str(), t.token.as_str()),
        ("prod", "wc", TOKEN)
    );
    assert_eq!(t.address(), "wc-worker-0.wc-workers.prod.svc:6121");
}

impl JobControl for Job {
    fn trigger_savepoint<'a>(
        &'a self,
        target: &'a Target,
        stop: bool,
    ) -> BoxFuture<'a, Result<Snapshot, ControlError>> {
        check_target(target);
        self.journal
            .lock()
            .unwrap()
            .push(format!("TriggerSavepoint stop={stop}"));
        let (want, answer) = self
            .savepoints
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected TriggerSavepoint(stop={stop})"));
        assert_eq!(stop, want, "TriggerSavepoint stop");
        Box::pin(async move { answer })
    }

    fn status<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<JobReport, ControlError>> {
        check_target(target);
        self.journal.lock().unwrap().push("GetStatus".into());
        let answer = self
            .statuses
            .lock()
            .unwrap()
            .pop_front()
            .expect("unexpected GetStatus");
        Box::pin(async move { answer })
    }

    fn rates<'a>(&'a self, target: &'a Target, workers: u32) -> BoxFuture<'a, Option<JobRates>> {
        check_target(target);
        self.journal
            .lock()
            .unwrap()
            .push(format!("Rates workers={workers}"));
        Box::pin(async move { self.rates })
    }
}

fn report(state: RunState) -> JobReport {
    JobReport {
        state,
        last_checkpoint: None,
        last_savepoint: None,
        restored_from: None,
        failure: None,
        restarts: 0,
        metrics: None,
    }
}

const T0_MS: u64 = 1_700_000_000_000;

/// Snapshot `id`, completed `id` seconds after 2023-11-14T22:13:20Z.
fn snap(id: u64, path: &str) -> Snapshot {
    Snapshot {
        id,
        path: path.into(),
        completed_ms: T0_MS + id * 1000,
    }
}

fn running_with_checkpoint(run: &str, id: u64) -> JobReport {
    JobReport {
        last_checkpoint: Some(snap(id, &format!("file:///ckpt/{run}/chk-{id}"))),
        ..report(RunState::Running)
    }
}

const SAVEPOINT: &str = "file:///ckpt/savepoints/savepoint-7";

/// Reconciles each job in turn with one context (its in-memory state carries over) while
/// serving `script` and answering as `fake` says; fails on any request not in the script,
/// out of order, or missing, and on answers of the job left unused. Returns each reconcile's
/// result and the journal.
async fn run_all(
    jobs: Vec<StreamJob>,
    script: impl Into<Vec<Expect>>,
    fake: Job,
) -> (Vec<Result<(), String>>, Vec<String>) {
    let script: Vec<Expect> = script.into();
    let journal = fake.journal.clone();
    let server_journal = journal.clone();
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    // Each reconcile reads its job afresh: the server answers with the job being reconciled
    // (what the API server holds), unless the script expects that read itself.
    let current: Arc<Mutex<Value>> = Arc::new(Mutex::new(Value::Null));
    let held = current.clone();
    let server = tokio::spawn(async move {
        for (i, e) in script.into_iter().enumerate() {
            let (req, send) = loop {
                let (req, send) = handle
                    .next_request()
                    .await
                    .unwrap_or_else(|| panic!("request {i} ({} {}) never came", e.method, e.path));
                let fresh_read = req.method() == Method::GET && req.uri().path() == JOB_PATH;
                if fresh_read && !(e.method == Method::GET && e.path == JOB_PATH) {
                    let body = held.lock().unwrap().clone();
                    send.send_response(
                        Response::builder()
                            .body(Body::from(serde_json::to_vec(&body).unwrap()))
                            .unwrap(),
                    );
                    continue;
                }
                break (req, send);
            };
            let (method, uri) = (req.method().clone(), req.uri().clone());
            server_journal
                .lock()
                .unwrap()
                .push(format!("{method} {}", uri.path()));
            assert_eq!(
                (method.as_str(), uri.path()),
                (e.method.as_str(), e.path.as_str()),
                "request {i}"
            );
            if method == Method::PATCH {
                let q = uri.query().unwrap_or("");
                assert!(
                    q.contains("fieldManager=streamjob-operator"),
                    "patches name our field manager: {q}"
                );
                let apply = req.headers()["content-type"] == "application/apply-patch+yaml";
                assert_eq!(
                    apply,
                    q.contains("force=true"),
                    "server-side apply forces: {q}"
                );
            }
            if method == Method::DELETE
                && let Some(q) = uri.query()
            {
                server_journal.lock().unwrap().push(format!("query {q}"));
            }
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(check) = &e.check {
                check(&body);
            }
            let reply = match (e.reply, &e.reply_with) {
                (Some(v), _) => v,
                (None, Some(f)) => f(&body),
                (None, None) => body,
            };
            send.send_response(
                Response::builder()
                    .status(e.status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        // Nothing else may be requested (but the fresh read of a job).
        while let Some((req, send)) = handle.next_request().await {
            assert!(
                req.method() == Method::GET && req.uri().path() == JOB_PATH,
                "unexpected request {} {}",
                req.method(),
                req.uri()
            );
            let body = held.lock().unwrap().clone();
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    let client = kube::Client::new(service, "default");
    let fake = Arc::new(fake);
    let ctx = Arc::new(
        Context::new(client, defaults(), Arc::new(Metrics::default())).with_control(fake.clone()),
    );
    let mut results = Vec::new();
    for job in jobs {
        *current.lock().unwrap() = serde_json::to_value(&job).unwrap();
        results.push(
            reconcile(Arc::new(job), ctx.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    // Dropping the context drops the client: the server task sees the end of requests.
    drop(ctx);
    if let Err(e) = server.await {
        std::panic::resume_unwind(e.into_panic());
    }
    assert!(
        fake.statuses.lock().unwrap().is_empty(),
        "GetStatus answers left"
    );
    assert!(
        fake.savepoints.lock().unwrap().is_empty(),
        "TriggerSavepoint answers left"
    );
    let journal = journal.lock().unwrap().clone();
    (results, journal)
}

/// One reconcile; see [`run_all`].
async fn run(
    job: StreamJob,
    script: impl Into<Vec<Expect>>,
    fake: Job,
) -> (Result<(), String>, Vec<String>) {
    let (mut results, journal) = run_all(vec![job], script, fake).await;
    (results.remove(0), journal)
}

/// Where `entry` is in the journal (it must be there).
fn at(journal: &[String], entry: &str) -> usize {
    journal
        .iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("{entry} not in {journal:#?}"))
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

/// An event with its type and a part of its note.
fn event_with(reason: &'static str, type_: &'static str, note: &str) -> Expect {
    let note = note.to_string();
    expect(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events")).check(move |b| {
        assert_eq!(
            (b["reason"].as_str(), b["type"].as_str()),
            (Some(reason), Some(type_)),
            "event {b}"
        );
        assert_eq!(b["regarding"]["name"], "wc");
        let text = b["note"].as_str().unwrap();
        assert!(text.contains(&note), "event note {text:?} lacks {note:?}");
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

fn statefulset() -> Expect {
    expect(
        Method::PATCH,
        &format!("/apis/apps/v1{NS}/statefulsets/wc-worker"),
    )
}

fn pdb(present: bool) -> Expect {
    let path = format!("/apis/policy/v1{NS}/poddisruptionbudgets/wc-worker");
    match present {
        true => expect(Method::PATCH, &path),
        false => expect(Method::DELETE, &path).status(404).reply(not_found()),
    }
}

fn applies(sts: Value, pdb_present: bool) -> Vec<Expect> {
    vec![
        expect(Method::PATCH, &format!("/api/v1{NS}/configmaps/wc-spec")).check(|b| {
            assert!(
                b["data"]["streamjob.yaml"]
                    .as_str()
                    .unwrap()
                    .contains("name: wc")
            );
        }),
        expect(Method::PATCH, &format!("/api/v1{NS}/services/wc-workers")),
        statefulset().reply(sts),
        pdb(pdb_present),
    ]
}

/// The applies with a check of the StatefulSet the operator sends; the server answers it
/// seen by its controller with `ready` pods.
fn applies_checked(
    check: impl Fn(&Value) + Send + 'static,
    ready: i32,
    pdb_present: bool,
) -> Vec<Expect> {
    vec![
        expect(Method::PATCH, &format!("/api/v1{NS}/configmaps/wc-spec")),
        expect(Method::PATCH, &format!("/api/v1{NS}/services/wc-workers")),
        statefulset_checked(check, ready),
        pdb(pdb_present),
    ]
}

fn statefulset_checked(check: impl Fn(&Value) + Send + 'static, ready: i32) -> Expect {
    statefulset()
        .check(check)
        .reply_with(move |body| applied(body, ready))
}

fn token_exists() -> Expect {
    expect(Method::GET, &format!("/api/v1{NS}/secrets/wc-token")).reply(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wc-token"},
        "data": {"token": "c2VjcmV0LXRva2Vu"}
    }))
}

fn get_sts(reply: Value) -> Expect {
    expect(
        Method::GET,
        &format!("/apis/apps/v1{NS}/statefulsets/wc-worker"),
    )
    .reply(reply)
}

fn job_patch(check: impl Fn(&Value) + Send + 'static) -> Expect {
    expect(
        Method::PATCH,
        &format!("/apis/streamjob.dev/v1alpha1{NS}/streamjobs/wc"),
    )
    .check(check)
    .reply(json!({"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "wc"}, "spec": {"steps": []}}))
}

/// The requests a reconcile must make, in the order they must come.
struct Script(Vec<Expect>);

impl Script {
    /// A reconcile of a job with workers: it reads the job's token, then the workers'
    /// StatefulSet, which the server holds as `sts`.
    fn workers(sts: Value) -> Self {
        Script(vec![token_exists(), get_sts(sts)])
    }

    /// A reconcile of a job whose workers run unchanged: the StatefulSet the server holds as
    /// `sts` is read, and the children applied again (the StatefulSet answered with `sts`).
    fn steady(sts: Value) -> Self {
        let mut script = Script::workers(sts.clone());
        script.0.extend(applies(sts, true));
        script
    }

    fn then(mut self, e: Expect) -> Self {
        self.0.push(e);
        self
    }

    /// The children applied; see [`applies_checked`].
    fn applies(
        mut self,
        check: impl Fn(&Value) + Send + 'static,
        ready: i32,
        pdb_present: bool,
    ) -> Self {
        self.0.extend(applies_checked(check, ready, pdb_present));
        self
    }

    /// A stop-with-savepoint for a change to `generation` that worker 0 answers with
    /// [`SAVEPOINT`] (savepoint 7).
    fn stop_with_savepoint(self, generation: i64) -> Self {
        // The intent first: an operator restarted now knows a change was under way.
        self.then(status(move |s| {
            assert_eq!(
                s["upgrade"],
                json!({"step": "savepointing", "targetGeneration": generation})
            );
        }))
        // Then the savepoint's path, before anything depends on it.
        .then(status(move |s| {
            assert_eq!(
                s["upgrade"],
                json!({"step": "deploying", "targetGeneration": generation, "savepointPath": SAVEPOINT})
            );
            assert_eq!(
                s["lastSavepoint"],
                json!({"id": 7, "time": "2023-11-14T22:13:27Z", "path": SAVEPOINT})
            );
        }))
        .then(event_with("SavepointTaken", "Normal", SAVEPOINT))
    }
}

impl From<Script> for Vec<Expect> {
    fn from(script: Script) -> Self {
        script.0
    }
}

/// Asserts that the StatefulSet sent has `replicas` pods that run `run_id`, restoring
/// `restore_from` while the run has no checkpoint of its own.
fn assert_run(sts: &Value, replicas: i32, run_id: &str, restore_from: Option<&str>) {
    assert_eq!(sts["spec"]["replicas"], replicas, "replicas");
    assert_eq!(env(sts, "STREAMJOB_RUN_ID").as_deref(), Some(run_id));
    assert_eq!(env(sts, "STREAMJOB_RESTORE_FROM").as_deref(), restore_from);
}

/// Asserts that the workers were stopped with a savepoint before the StatefulSet changed.
fn assert_stopped_before_apply(journal: &[String]) {
    let sts = format!("PATCH /apis/apps/v1{NS}/statefulsets/wc-worker");
    assert!(
        at(journal, "TriggerSavepoint stop=true") < at(journal, &sts),
        "{journal:#?}"
    );
}

/// The status of a job whose upgrade to generation 2 is at `step`.
fn upgrading(step: &str, savepoint_path: Option<&str>) -> Option<UpgradeStatus> {
    Some(UpgradeStatus {
        step: step.into(),
        target_generation: 2,
        savepoint_path: savepoint_path.map(String::from),
    })
}

// ---------------------------------------------------------------------------------------
// Creation, steady state, invalid specs, API errors
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_new_job_gets_its_children_an_event_and_a_deploying_status() {
    // Nonces set at creation are seen, not acted on: there is nothing to snapshot or restart.
    let j = job(&format!(
        "  savepointTriggerNonce: 3\n  restartNonce: 4\n{SPEC}"
    ));
    let hash = resources::spec_hash(&j);
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
    let mut a = applies(sts_reply(2, &hash, 0), true);
    a[2] = statefulset()
        .check(|b| {
            assert_run(b, 2, "wc-uid1-2", None);
            assert_eq!(
                annotation(b, "streamjob.dev/restart-nonce").as_deref(),
                Some("4")
            );
            assert_eq!(b["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
        })
        .reply(sts_reply(2, &hash, 0));
    script.extend(a);
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
        assert_eq!(s["runId"], "wc-uid1-2");
        assert_eq!(s["observedSavepointTriggerNonce"], 3);
        assert_eq!(s["observedRestartNonce"], 4);
        assert!(s.get("upgrade").is_none(), "{s}");
    }));
    // A new job has no workers to ask.
    let (result, journal) = run(j, script, Job::default()).await;
    result.unwrap();
    assert!(!journal.iter().any(|e| e == "GetStatus"));
}

#[tokio::test]
async fn ready_workers_make_the_job_running_and_report_their_checkpoints() {
    let j = job(SPEC);
    let current = run_of("wc-uid1-2", None, None);
    let script = Script::workers(deployed(&j, &current, 2))
        .applies(|_| {}, 2, true)
        .then(status(|s| {
            assert_eq!(s["phase"], "Running");
            assert_eq!(condition(s, "Ready")["status"], "True");
            assert_eq!(condition(s, "Ready")["message"], "2/2 workers ready");
            assert_eq!(condition(s, "Degraded")["status"], "False");
            assert_eq!(
                s["lastCheckpoint"],
                json!({"id": 4, "time": "2023-11-14T22:13:24Z", "path": "file:///ckpt/wc-uid1-2/chk-4"})
            );
            assert_eq!(s["restoredFrom"], "file:///ckpt/savepoints/savepoint-1");
        }));
    let fake = Job::default().status(Ok(JobReport {
        restored_from: Some("file:///ckpt/savepoints/savepoint-1".into()),
        ..running_with_checkpoint("wc-uid1-2", 4)
    }));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn the_status_shows_the_rates_lag_restarts_and_last_checkpoint_of_a_running_job() {
    let j = job(SPEC);
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 2)).then(status(|s| {
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["recordsInPerSecond"], 1200);
        assert_eq!(s["recordsOutPerSecond"], 9600);
        assert_eq!(s["kafkaLag"], 4321);
        assert_eq!(s["restarts"], 3);
        assert_eq!(s["lastCheckpoint"]["time"], "2023-11-14T22:13:25Z");
    }));
    let fake = Job::default()
        .status(Ok(JobReport {
            restarts: 3,
            ..running_with_checkpoint("wc-uid1-2", 5)
        }))
        .rates(JobRates {
            records_in_per_second: 1200,
            records_out_per_second: 9600,
            kafka_lag: Some(4321),
        });
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    // Every worker of the StatefulSet is asked (the rate is the job's, not worker 0's).
    assert!(
        journal.iter().any(|e| e == "Rates workers=2"),
        "{journal:?}"
    );
}

#[tokio::test]
async fn unknown_rates_leave_the_rate_columns_empty() {
    let j = job(SPEC);
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 2)).then(status(|s| {
        assert!(s.get("recordsInPerSecond").is_none(), "{s}");
        assert!(s.get("kafkaLag").is_none(), "{s}");
        assert_eq!(s["restarts"], 0);
    }));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn an_unreachable_worker_0_changes_nothing_in_a_steady_job() {
    let j = job(SPEC);
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 2)).then(status(|s| {
        assert_eq!(s["phase"], "Running");
        assert!(s.get("lastFailure").is_none(), "{s}");
    }));
    let fake = Job::default().status(Err(ControlError::Unreachable {
        address: "wc-worker-0.wc-workers.prod.svc:6121".into(),
        cause: "connection refused".into(),
    }));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn a_finished_job_is_reported_finished_once() {
    let mut j = job(SPEC);
    j.status = Some(StreamJobStatus {
        phase: Some(streamjob_crds::spec::Phase::Running),
        ..Default::default()
    });
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 2))
        .then(event_with(
            "JobFinished",
            "Normal",
            "final snapshot file:///ckpt/wc-uid1-2/chk-9",
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Finished");
            assert_eq!(condition(s, "Ready")["reason"], "Finished");
            assert_eq!(condition(s, "Degraded")["status"], "False");
            assert_eq!(s["lastCheckpoint"]["id"], 9);
        }));
    let fake = Job::default().status(Ok(JobReport {
        state: RunState::Finished,
        ..running_with_checkpoint("wc-uid1-2", 9)
    }));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn a_failed_job_is_reported_failed_with_its_cause() {
    let j = job(SPEC);
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 2))
        .then(event_with(
            "JobFailed",
            "Warning",
            "after 3 restart(s): task n[1]: division by zero",
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Failed");
            assert_eq!(condition(s, "Degraded")["reason"], "JobFailed");
            assert_eq!(condition(s, "Degraded")["status"], "True");
            assert_eq!(s["lastFailure"], "task n[1]: division by zero");
        }));
    let fake = Job::default().status(Ok(JobReport {
        failure: Some("task n[1]: division by zero".into()),
        restarts: 3,
        ..report(RunState::Failed)
    }));
    run(j, script, fake).await.0.unwrap();
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
    run(j, script, Job::default()).await.0.unwrap();
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
    let script = vec![status(|s| assert_eq!(s["phase"], "Failed"))];
    run(j, script, Job::default()).await.0.unwrap();
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_for_a_retry() {
    let script = vec![
        expect(Method::GET, &format!("/api/v1{NS}/secrets/wc-token"))
            .status(500)
            .reply(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd is down"})),
    ];
    let err = run(job(SPEC), script, Job::default()).await.0.unwrap_err();
    assert!(err.contains("etcd is down"), "{err}");
}

#[tokio::test]
async fn pods_of_an_older_template_are_replaced_all_at_once() {
    // The StatefulSet controller has seen the new template (updateRevision) but no pod runs
    // it: a rolling update would wait for a new pod that cannot join old peers.
    let j = job(SPEC);
    let hash = resources::spec_hash(&j);
    let mut seen = sts_reply(2, &hash, 2);
    seen["status"] = json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 0, "observedGeneration": 1,
        "currentRevision": "wc-worker-5b6c", "updateRevision": "wc-worker-7d9f"});
    let script = Script::steady(seen)
        .then(
            expect(Method::DELETE, &format!("/api/v1{NS}/pods"))
                .reply(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})),
        )
        .then(status(|s| assert_eq!(s["phase"], "Deploying")));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    let (result, journal) = run(j.clone(), script, fake).await;
    result.unwrap();
    let query = journal.iter().find(|e| e.starts_with("query ")).unwrap();
    let query = query
        .replace("%3D", "=")
        .replace("%21", "!")
        .replace("%2C", ",")
        .replace("%2F", "/");
    // Pods are told apart by the hash of the template the operator rendered, not by the
    // StatefulSet's revisions (which someone else's edit changes too).
    let plan = to_logical_graph(&j).plan().unwrap();
    let c = resources::children(&j, &plan, &defaults()).unwrap();
    let ours = resources::template_hash_of(&c.stateful_set).unwrap();
    for part in [
        "app.kubernetes.io/instance=wc",
        "app.kubernetes.io/name=streamjob",
        &format!("streamjob.dev/template-hash!={ours}"),
    ] {
        assert!(query.contains(part), "{query} lacks {part}");
    }
    assert!(!query.contains("controller-revision-hash"), "{query}");
}

// ---------------------------------------------------------------------------------------
// Upgrades: one per upgradeMode for a spec and parallelism change
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stateless_upgrade_starts_a_fresh_run() {
    let old = job_at(SPEC, 1);
    let j = job(&SPEC.replace("parallelism: 2", "parallelism: 3"));
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, None), 2))
        .applies(
            |b| {
                assert_run(b, 3, "wc-uid1-2", None);
                assert_eq!(
                    b["spec"]["template"]["spec"]["containers"][0]["args"][3],
                    "3"
                );
            },
            0,
            true,
        )
        .then(event_with(
            "UpgradeStarted",
            "Normal",
            "rolling generation 2 onto 3 worker(s) (stateless): new run wc-uid1-2 starts from empty state",
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Deploying");
            assert_eq!(s["desiredWorkers"], 3);
            assert_eq!(s["runId"], "wc-uid1-2");
            assert_eq!(
                s["upgrade"],
                json!({"step": "deploying", "targetGeneration": 2})
            );
            assert_eq!(condition(s, "Progressing")["reason"], "Upgrading");
            assert!(s.get("restoredFrom").is_none(), "{s}");
        }));
    let fake = Job::default().status(Ok(running_with_checkpoint("wc-uid1-1", 4)));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    assert!(!journal.iter().any(|e| e.starts_with("TriggerSavepoint")));
}

#[tokio::test]
async fn a_last_state_upgrade_keeps_the_run_and_what_it_restores() {
    // The run restored a savepoint when it started; its new pods restore its latest
    // checkpoint, or that savepoint again if it has none yet.
    let old = stateful(&spec("last-state", 2, ""), 1);
    let before = run_of(
        "wc-uid1-1",
        Some("file:///ckpt/savepoints/savepoint-3"),
        None,
    );
    let j = stateful(&spec("last-state", 3, ""), 2);
    let script = Script::workers(deployed(&old, &before, 2))
        .applies(
            |b| {
                assert_run(
                    b,
                    3,
                    "wc-uid1-1",
                    Some("file:///ckpt/savepoints/savepoint-3"),
                )
            },
            0,
            true,
        )
        .then(event_with(
            "UpgradeStarted",
            "Normal",
            "(last-state): the new pods restore the latest checkpoint of run wc-uid1-1",
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Deploying");
            assert_eq!(s["runId"], "wc-uid1-1");
            assert_eq!(
                s["upgrade"],
                json!({"step": "deploying", "targetGeneration": 2})
            );
            assert_eq!(s["lastCheckpoint"]["path"], "file:///ckpt/wc-uid1-1/chk-4");
        }));
    let fake = Job::default().status(Ok(running_with_checkpoint("wc-uid1-1", 4)));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    assert!(!journal.iter().any(|e| e.starts_with("TriggerSavepoint")));
}

#[tokio::test]
async fn a_savepoint_upgrade_stops_with_a_savepoint_before_the_new_statefulset() {
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let j = stateful(&spec("savepoint", 3, ""), 2);
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, None), 2))
        .stop_with_savepoint(2)
        .applies(|b| assert_run(b, 3, "wc-uid1-2", Some(SAVEPOINT)), 0, true)
        .then(event_with(
            "UpgradeStarted",
            "Normal",
            &format!("(savepoint): new run wc-uid1-2 restores {SAVEPOINT}"),
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Deploying");
            assert_eq!(s["runId"], "wc-uid1-2");
            assert_eq!(s["restoredFrom"], SAVEPOINT);
            assert_eq!(s["upgrade"]["savepointPath"], SAVEPOINT);
            assert_eq!(s["lastSavepoint"]["path"], SAVEPOINT);
        }));
    let fake = Job::default()
        .status(Ok(running_with_checkpoint("wc-uid1-1", 6)))
        .savepoint(true, Ok(snap(7, SAVEPOINT)));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    let savepoint = at(&journal, "TriggerSavepoint stop=true");
    let status_path = format!("PATCH /apis/streamjob.dev/v1alpha1{NS}/streamjobs/wc/status");
    assert!(at(&journal, &status_path) < savepoint, "{journal:#?}");
    assert_stopped_before_apply(&journal);
    assert!(
        savepoint < at(&journal, &format!("PATCH /api/v1{NS}/configmaps/wc-spec")),
        "the old workers keep their spec until they stopped: {journal:#?}"
    );
}

#[tokio::test]
async fn a_finished_upgrade_is_announced_and_cleared() {
    let mut j = stateful(&spec("savepoint", 3, ""), 2);
    j.status = Some(StreamJobStatus {
        upgrade: upgrading("deploying", Some(SAVEPOINT)),
        run_id: Some("wc-uid1-2".into()),
        ..Default::default()
    });
    let current = run_of("wc-uid1-2", Some(SAVEPOINT), None);
    let script = Script::workers(deployed(&j, &current, 3))
        .applies(|_| {}, 3, true)
        .then(event_with(
            "UpgradeFinished",
            "Normal",
            "generation 2: 3/3 workers of run wc-uid1-2 ready",
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Running");
            assert!(s.get("upgrade").is_none(), "{s}");
            assert_eq!(s["restoredFrom"], SAVEPOINT);
        }));
    let fake = Job::default().status(Ok(JobReport {
        restored_from: Some(SAVEPOINT.into()),
        ..report(RunState::Running)
    }));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn a_failed_savepoint_keeps_the_old_workers_and_reports_it() {
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let mut j = stateful(&spec("savepoint", 3, ""), 2);
    j.status = Some(StreamJobStatus {
        plan: Some(PlanStatus {
            chains: 2,
            slots: 2,
            fingerprint: "old-plan".into(),
            summary: None,
        }),
        ..Default::default()
    });
    let script = vec![
        token_exists(),
        get_sts(deployed(&old, &run_of("wc-uid1-1", None, None), 2)),
        status(|s| assert_eq!(s["upgrade"]["step"], "savepointing")),
        event_with(
            "SavepointFailed",
            "Warning",
            "stop-with-savepoint for the upgrade to generation 2 failed: checkpoint 8 expired \
             before completing; the old workers keep running",
        ),
        status(|s| {
            // The old workers run on, and say why nothing moves.
            assert_eq!(s["phase"], "Running");
            assert_eq!(s["readyWorkers"], 2);
            assert_eq!(s["desiredWorkers"], 2);
            assert_eq!(s["plan"]["fingerprint"], "old-plan");
            assert_eq!(
                s["upgrade"],
                json!({"step": "savepointing", "targetGeneration": 2})
            );
            let degraded = condition(s, "Degraded");
            assert_eq!(
                (degraded["status"].as_str(), degraded["reason"].as_str()),
                (Some("True"), Some("SavepointFailed"))
            );
            assert_eq!(condition(s, "Progressing")["status"], "False");
            assert!(
                s["lastFailure"]
                    .as_str()
                    .unwrap()
                    .contains("checkpoint 8 expired before completing"),
                "{s}"
            );
            assert!(s.get("runId").is_none(), "{s}");
        }),
    ];
    let fake = Job::default()
        .status(Ok(report(RunState::Running)))
        .savepoint(
            true,
            Err(ControlError::Failed(
                "checkpoint 8 expired before completing".into(),
            )),
        );
    let (result, journal) = run(j, script, fake).await;
    let err = result.unwrap_err();
    assert!(err.contains("stop-with-savepoint"), "{err}");
    // Nothing of the new spec reached the cluster.
    assert!(
        !journal
            .iter()
            .any(|e| e.contains("statefulsets") && e.starts_with("PATCH")
                || e.contains("configmaps")),
        "{journal:#?}"
    );
}

#[tokio::test]
async fn an_unreachable_worker_0_blocks_a_savepoint_upgrade_without_falling_back() {
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let j = stateful(&spec("savepoint", 3, ""), 2);
    let script = vec![
        token_exists(),
        get_sts(deployed(&old, &run_of("wc-uid1-1", None, None), 1)),
        event_with(
            "SavepointFailed",
            "Warning",
            "the upgrade to generation 2 needs a savepoint, but worker 0 at \
             wc-worker-0.wc-workers.prod.svc:6121 is unreachable: connection refused",
        ),
        status(|s| {
            assert_eq!(s["phase"], "Deploying");
            assert_eq!(condition(s, "Degraded")["reason"], "SavepointFailed");
            assert!(
                condition(s, "Degraded")["message"]
                    .as_str()
                    .unwrap()
                    .contains("set upgradeMode: last-state"),
                "{s}"
            );
        }),
    ];
    let fake = Job::default().status(Err(ControlError::Unreachable {
        address: "wc-worker-0.wc-workers.prod.svc:6121".into(),
        cause: "connection refused".into(),
    }));
    let (result, journal) = run(j, script, fake).await;
    assert!(result.is_err());
    assert!(!journal.iter().any(|e| e.starts_with("TriggerSavepoint")));
}

#[tokio::test]
async fn an_upgrade_interrupted_after_its_savepoint_restores_the_recorded_one() {
    // The operator stopped after recording the savepoint, before applying: the old workers
    // have stopped, so it must not take another (it could not), but restore that one.
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let mut j = stateful(&spec("savepoint", 3, ""), 2);
    j.status = Some(StreamJobStatus {
        upgrade: upgrading("deploying", Some(SAVEPOINT)),
        last_savepoint: Some(SnapshotInfo {
            id: 7,
            time: "2023-11-14T22:13:27Z".into(),
            path: SAVEPOINT.into(),
        }),
        ..Default::default()
    });
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, None), 2))
        .applies(|b| assert_run(b, 3, "wc-uid1-2", Some(SAVEPOINT)), 0, true)
        .then(event("UpgradeStarted"))
        .then(status(|s| {
            assert_eq!(s["upgrade"]["savepointPath"], SAVEPOINT);
            assert_eq!(s["runId"], "wc-uid1-2");
        }));
    let fake = Job::default().status(Ok(JobReport {
        last_savepoint: Some(snap(7, SAVEPOINT)),
        ..report(RunState::Finished)
    }));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    assert!(!journal.iter().any(|e| e.starts_with("TriggerSavepoint")));
}

// ---------------------------------------------------------------------------------------
// Suspend and resume, per upgradeMode
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn savepoint_mode_suspends_after_a_savepoint_and_resumes_from_it() {
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let suspended = stateful(&spec("savepoint", 2, "  state: suspended\n"), 2);
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, None), 2))
        .stop_with_savepoint(2)
        // The template names the run a resume starts: it restores the savepoint.
        .applies(|b| assert_run(b, 0, "wc-uid1-2", Some(SAVEPOINT)), 0, false)
        .then(event_with(
            "Suspended",
            "Normal",
            &format!("after savepoint {SAVEPOINT}; resuming restores it"),
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Suspended");
            assert_eq!(s["desiredWorkers"], 0);
            assert!(s.get("upgrade").is_none(), "{s}");
            assert_eq!(s["lastSavepoint"]["path"], SAVEPOINT);
        }));
    let fake = Job::default()
        .status(Ok(report(RunState::Running)))
        .savepoint(true, Ok(snap(7, SAVEPOINT)));
    let (result, journal) = run(suspended.clone(), script, fake).await;
    result.unwrap();
    assert_stopped_before_apply(&journal);

    let resumed = stateful(&spec("savepoint", 2, ""), 3);
    let prepared = run_of("wc-uid1-2", Some(SAVEPOINT), None);
    let script = Script::workers(deployed(&suspended, &prepared, 0))
        .applies(|b| assert_run(b, 2, "wc-uid1-2", Some(SAVEPOINT)), 0, true)
        .then(event_with(
            "Resumed",
            "Normal",
            &format!("resumed with 2 worker(s) (savepoint): run wc-uid1-2 restores {SAVEPOINT}"),
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Deploying");
            assert_eq!(s["runId"], "wc-uid1-2");
        }));
    // Nothing runs while suspended: worker 0 is not asked.
    run(resumed, script, Job::default()).await.0.unwrap();
}

#[tokio::test]
async fn last_state_mode_suspends_at_once_and_resumes_from_the_latest_checkpoint() {
    let old = stateful(&spec("last-state", 2, ""), 1);
    let suspended = stateful(&spec("last-state", 2, "  state: suspended\n"), 2);
    let current = run_of("wc-uid1-1", None, None);
    let script = Script::workers(deployed(&old, &current, 2))
        .applies(|b| assert_run(b, 0, "wc-uid1-1", None), 0, false)
        .then(event_with(
            "Suspended",
            "Normal",
            "resuming restores the latest checkpoint of run wc-uid1-1",
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Suspended");
            assert_eq!(s["lastCheckpoint"]["path"], "file:///ckpt/wc-uid1-1/chk-9");
        }));
    let fake = Job::default().status(Ok(running_with_checkpoint("wc-uid1-1", 9)));
    let (result, journal) = run(suspended.clone(), script, fake).await;
    result.unwrap();
    assert!(!journal.iter().any(|e| e.starts_with("TriggerSavepoint")));

    let resumed = stateful(&spec("last-state", 2, ""), 3);
    let script = Script::workers(deployed(&suspended, &current, 0))
        .applies(|b| assert_run(b, 2, "wc-uid1-1", None), 0, true)
        .then(event_with(
            "Resumed",
            "Normal",
            "run wc-uid1-1 restores the latest checkpoint of run wc-uid1-1",
        ))
        .then(status(|s| assert_eq!(s["runId"], "wc-uid1-1")));
    run(resumed, script, Job::default()).await.0.unwrap();
}

#[tokio::test]
async fn stateless_mode_suspends_at_once_and_resumes_empty() {
    let suspended = job_at(&format!("  state: suspended\n{SPEC}"), 2);
    let current = run_of("wc-uid1-1", None, None);
    let script = Script::workers(deployed(&job_at(SPEC, 1), &current, 2))
        .applies(|b| assert_run(b, 0, "wc-uid1-1", None), 0, false)
        .then(event_with(
            "Suspended",
            "Normal",
            "suspended: workers scaled to 0 (stateless), resuming starts from empty state",
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Suspended");
            assert_eq!(s["desiredWorkers"], 0);
            assert_eq!(condition(s, "Ready")["reason"], "Suspended");
        }));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    run(suspended.clone(), script, fake).await.0.unwrap();

    let resumed = job_at(SPEC, 3);
    let script = Script::workers(deployed(&suspended, &current, 0))
        .applies(|b| assert_run(b, 2, "wc-uid1-3", None), 0, true)
        .then(event_with(
            "Resumed",
            "Normal",
            "run wc-uid1-3 starts from empty state",
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Deploying");
            assert_eq!(s["runId"], "wc-uid1-3");
        }));
    run(resumed, script, Job::default()).await.0.unwrap();
}

#[tokio::test]
async fn a_savepoint_suspend_that_fails_keeps_the_job_running() {
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let suspended = stateful(&spec("savepoint", 2, "  state: suspended\n"), 2);
    let script = vec![
        token_exists(),
        get_sts(deployed(&old, &run_of("wc-uid1-1", None, None), 2)),
        event_with(
            "SavepointFailed",
            "Warning",
            "the suspend needs a savepoint, but the job failed (task n[0]: out of memory)",
        ),
        status(|s| {
            assert_eq!(s["phase"], "Running");
            assert_eq!(s["desiredWorkers"], 2);
        }),
    ];
    let fake = Job::default().status(Ok(JobReport {
        failure: Some("task n[0]: out of memory".into()),
        ..report(RunState::Failed)
    }));
    assert!(run(suspended, script, fake).await.0.is_err());
}

// ---------------------------------------------------------------------------------------
// Nonces
// ---------------------------------------------------------------------------------------

/// A job in `mode` whose `savepointTriggerNonce` went from 4 to 5.
fn savepoint_requested(mode: &str) -> StreamJob {
    let mut j = stateful(&spec(mode, 2, "  savepointTriggerNonce: 5\n"), 2);
    j.status = Some(StreamJobStatus {
        observed_savepoint_trigger_nonce: Some(4),
        ..Default::default()
    });
    j
}

#[tokio::test]
async fn a_new_savepoint_trigger_nonce_takes_a_savepoint_and_keeps_the_workers() {
    // The nonce is not part of what the workers read: the pods stay.
    let old = stateful(&spec("savepoint", 2, "  savepointTriggerNonce: 4\n"), 1);
    let j = savepoint_requested("savepoint");
    let current = run_of("wc-uid1-1", None, None);
    let mut script = vec![
        token_exists(),
        get_sts(deployed(&old, &current, 2)),
        event_with(
            "SavepointTaken",
            "Normal",
            &format!("savepoint for savepointTriggerNonce 5: {SAVEPOINT}"),
        ),
        status(|s| {
            assert_eq!(s["observedSavepointTriggerNonce"], 5);
            assert_eq!(s["lastSavepoint"]["path"], SAVEPOINT);
        }),
    ];
    let mut a = applies_checked(|b| assert_run(b, 2, "wc-uid1-1", None), 2, true);
    a[0] = expect(Method::PATCH, &format!("/api/v1{NS}/configmaps/wc-spec")).check(|b| {
        let manifest = b["data"]["streamjob.yaml"].as_str().unwrap();
        for field in [
            "savepointTriggerNonce",
            "upgradeMode",
            "state:",
            "savepointOnDeletion",
        ] {
            assert!(!manifest.contains(field), "{field} in {manifest}");
        }
        assert!(manifest.contains("checkpointing"), "{manifest}");
    });
    script.extend(a);
    script.push(status(|s| {
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["observedSavepointTriggerNonce"], 5);
    }));
    let fake = Job::default()
        .status(Ok(report(RunState::Running)))
        .savepoint(false, Ok(snap(7, SAVEPOINT)));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    at(&journal, "TriggerSavepoint stop=false");
}

#[tokio::test]
async fn a_failed_requested_savepoint_is_recorded_and_not_retried() {
    let j = savepoint_requested("last-state");
    let current = run_of("wc-uid1-1", None, None);
    let script = Script::workers(deployed(&j, &current, 2))
        .then(event_with(
            "SavepointFailed",
            "Warning",
            "savepoint for savepointTriggerNonce 5 failed: disk full",
        ))
        .then(status(|s| {
            assert_eq!(s["observedSavepointTriggerNonce"], 5);
            assert_eq!(
                s["lastFailure"],
                "savepoint for savepointTriggerNonce 5 failed: disk full"
            );
        }))
        .applies(|_| {}, 2, true)
        .then(status(|s| assert_eq!(s["phase"], "Running")));
    let fake = Job::default()
        .status(Ok(report(RunState::Running)))
        .savepoint(false, Err(ControlError::Failed("disk full".into())));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn a_new_restart_nonce_in_savepoint_mode_restarts_from_a_savepoint() {
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let j = stateful(&spec("savepoint", 2, "  restartNonce: 7\n"), 2);
    let before = deployed(&old, &run_of("wc-uid1-1", None, None), 2);
    let old_hash = annotation(&before, "streamjob.dev/spec-hash");
    let script = Script::workers(before)
        .stop_with_savepoint(2)
        .applies(
            move |b| {
                assert_run(b, 2, "wc-uid1-2", Some(SAVEPOINT));
                assert_eq!(annotation(b, "streamjob.dev/spec-hash"), old_hash);
                assert_eq!(
                    annotation(b, "streamjob.dev/restart-nonce").as_deref(),
                    Some("7")
                );
            },
            0,
            true,
        )
        .then(event_with(
            "Restarted",
            "Normal",
            &format!("restartNonce 7 (savepoint): new run wc-uid1-2 restores {SAVEPOINT}"),
        ))
        .then(status(|s| {
            assert_eq!(s["observedRestartNonce"], 7);
            assert_eq!(s["runId"], "wc-uid1-2");
            assert_eq!(s["upgrade"]["step"], "deploying");
        }));
    let fake = Job::default()
        .status(Ok(report(RunState::Running)))
        .savepoint(true, Ok(snap(7, SAVEPOINT)));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    assert_stopped_before_apply(&journal);
}

#[tokio::test]
async fn a_new_restart_nonce_in_last_state_mode_restarts_the_same_run() {
    let old = stateful(&spec("last-state", 2, "  restartNonce: 6\n"), 1);
    let j = stateful(&spec("last-state", 2, "  restartNonce: 7\n"), 2);
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, Some(6)), 2))
        .applies(
            |b| {
                assert_run(b, 2, "wc-uid1-1", None);
                assert_eq!(
                    annotation(b, "streamjob.dev/restart-nonce").as_deref(),
                    Some("7")
                );
            },
            0,
            true,
        )
        .then(event_with(
            "Restarted",
            "Normal",
            "restartNonce 7 (last-state): the new pods restore the latest checkpoint of run wc-uid1-1",
        ))
        .then(status(|s| assert_eq!(s["observedRestartNonce"], 7)));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    run(j, script, fake).await.0.unwrap();
}

// ---------------------------------------------------------------------------------------
// The finalizer and deletion
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stateful_job_gets_the_finalizer_and_a_stateless_one_loses_it() {
    let j = job(&spec("last-state", 2, ""));
    let current = run_of("wc-uid1-1", None, None);
    let script = Script(vec![
        job_patch(|b| {
            assert_eq!(
                b,
                &json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "100"}})
            );
        }),
        token_exists(),
        get_sts(deployed(&j, &current, 2)),
    ])
    .applies(|_| {}, 2, true)
    .then(status(|s| assert_eq!(s["phase"], "Running")));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    run(j, script, fake).await.0.unwrap();

    // savepointOnDeletion: false needs no finalizer; other finalizers stay.
    let mut j = stateful(&spec("last-state", 2, "  savepointOnDeletion: false\n"), 2);
    j.metadata.finalizers = Some(vec!["example.com/keep".into(), FINALIZER.into()]);
    let script = Script(vec![
        job_patch(|b| {
            assert_eq!(
                b,
                &json!({"metadata": {"finalizers": ["example.com/keep"], "resourceVersion": "100"}})
            );
        }),
        token_exists(),
        get_sts(deployed(&j, &current, 2)),
    ])
    .applies(|_| {}, 2, true)
    .then(status(|_| {}));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    run(j, script, fake).await.0.unwrap();
}

fn deleted(mut j: StreamJob, ago: std::time::Duration) -> StreamJob {
    let at = k8s_openapi::jiff::Timestamp::now() - ago;
    j.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
    j
}

fn remove_finalizer() -> Expect {
    job_patch(|b| {
        assert_eq!(
            b,
            &json!({"metadata": {"finalizers": [], "resourceVersion": "100"}})
        );
    })
}

#[tokio::test]
async fn a_deleted_job_without_the_finalizer_is_left_to_the_garbage_collector() {
    let j = deleted(job(SPEC), std::time::Duration::ZERO);
    run(j, vec![], Job::default()).await.0.unwrap();
}

#[tokio::test]
async fn deleting_a_running_job_takes_a_savepoint_before_the_finalizer_goes() {
    let j = stateful(&spec("savepoint", 2, ""), 2);
    let running = deployed(&j, &run_of("wc-uid1-2", None, None), 2);
    let j = deleted(j, std::time::Duration::from_secs(1));
    let script = vec![
        get_sts(running),
        token_exists(),
        event_with(
            "SavepointTaken",
            "Normal",
            &format!("savepoint before deletion: {SAVEPOINT}"),
        ),
        remove_finalizer(),
    ];
    let fake = Job::default()
        .status(Ok(report(RunState::Running)))
        .savepoint(true, Ok(snap(7, SAVEPOINT)));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    assert!(
        at(&journal, "TriggerSavepoint stop=true")
            < at(
                &journal,
                &format!("PATCH /apis/streamjob.dev/v1alpha1{NS}/streamjobs/wc")
            )
    );
}

#[tokio::test]
async fn a_failing_deletion_savepoint_is_retried_then_given_up() {
    let mut j = stateful(&spec("last-state", 2, ""), 2);
    j.status = Some(StreamJobStatus {
        last_checkpoint: Some(SnapshotInfo {
            id: 9,
            time: "2023-11-14T22:13:29Z".into(),
            path: "file:///ckpt/wc-uid1-2/chk-9".into(),
        }),
        ..Default::default()
    });
    let running = deployed(&j, &run_of("wc-uid1-2", None, None), 2);
    let j = deleted(j, std::time::Duration::from_secs(1));
    let mut script = Vec::new();
    for attempt in 1..=3 {
        script.push(get_sts(running.clone()));
        script.push(token_exists());
        script.push(if attempt < 3 {
            event_with(
                "SavepointFailed",
                "Warning",
                &format!("(attempt {attempt} of 3): worker 0 timed out; retrying"),
            )
        } else {
            event_with(
                "SavepointFailed",
                "Warning",
                "(attempt 3 of 3): worker 0 timed out; deleting without a savepoint \
                 (latest checkpoint: file:///ckpt/wc-uid1-2/chk-9)",
            )
        });
    }
    script.push(remove_finalizer());
    let mut fake = Job::default();
    for _ in 0..3 {
        fake = fake
            .status(Ok(report(RunState::Running)))
            .savepoint(true, Err(ControlError::Failed("worker 0 timed out".into())));
    }
    let (results, _) = run_all(vec![j.clone(), j.clone(), j], script, fake).await;
    assert!(results[0].is_err() && results[1].is_err(), "{results:?}");
    results[2].clone().unwrap();
}

#[tokio::test]
async fn a_deletion_savepoint_is_not_attempted_past_its_deadline() {
    let j = stateful(&spec("savepoint", 2, ""), 2);
    let running = deployed(&j, &run_of("wc-uid1-2", None, None), 2);
    let j = deleted(j, std::time::Duration::from_secs(601));
    let script = vec![
        get_sts(running),
        event_with(
            "SavepointFailed",
            "Warning",
            "no savepoint 600 s after the deletion; deleting without a savepoint",
        ),
        remove_finalizer(),
    ];
    run(j, script, Job::default()).await.0.unwrap();
}

#[tokio::test]
async fn deleting_a_suspended_or_finished_job_needs_no_savepoint() {
    let j = stateful(&spec("savepoint", 2, "  state: suspended\n"), 2);
    let stopped = deployed(&j, &run_of("wc-uid1-2", Some(SAVEPOINT), None), 0);
    let script = vec![get_sts(stopped), remove_finalizer()];
    let j = deleted(j, std::time::Duration::from_secs(1));
    run(j, script, Job::default()).await.0.unwrap();

    let j = stateful(&spec("savepoint", 2, ""), 2);
    let running = deployed(&j, &run_of("wc-uid1-2", None, None), 2);
    let script = vec![
        get_sts(running),
        token_exists(),
        event_with(
            "SavepointSkipped",
            "Normal",
            "the job had finished (final snapshot: file:///ckpt/wc-uid1-2/chk-9)",
        ),
        remove_finalizer(),
    ];
    let fake = Job::default().status(Ok(JobReport {
        state: RunState::Finished,
        ..running_with_checkpoint("wc-uid1-2", 9)
    }));
    let j = deleted(j, std::time::Duration::from_secs(1));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn a_blocked_upgrade_retries_without_repeating_its_warning() {
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let j = stateful(&spec("savepoint", 3, ""), 2);
    let before = deployed(&old, &run_of("wc-uid1-1", None, None), 2);
    let mut script = Vec::new();
    for attempt in 0..2 {
        script.push(token_exists());
        script.push(get_sts(before.clone()));
        script.push(status(|s| assert_eq!(s["upgrade"]["step"], "savepointing")));
        if attempt == 0 {
            script.push(event_with("SavepointFailed", "Warning", "disk full"));
        }
        script.push(status(|s| {
            assert_eq!(condition(s, "Degraded")["reason"], "SavepointFailed")
        }));
    }
    // A stop attempt may have changed the job: each retry asks it again.
    let fake = Job::default()
        .status(Ok(report(RunState::Running)))
        .savepoint(true, Err(ControlError::Failed("disk full".into())))
        .status(Ok(report(RunState::Running)))
        .savepoint(true, Err(ControlError::Failed("disk full".into())));
    let (results, _) = run_all(vec![j.clone(), j], script, fake).await;
    assert!(results.iter().all(Result::is_err), "{results:?}");
}

#[tokio::test]
async fn switching_a_blocked_upgrade_to_last_state_lets_it_through() {
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let mut j = stateful(&spec("last-state", 3, ""), 3);
    j.status = Some(StreamJobStatus {
        upgrade: upgrading("savepointing", None),
        last_failure: Some("stop-with-savepoint ... failed".into()),
        ..Default::default()
    });
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, None), 2))
        .applies(|b| assert_run(b, 3, "wc-uid1-1", None), 0, true)
        .then(event("UpgradeStarted"))
        .then(status(|s| {
            assert_eq!(
                s["upgrade"],
                json!({"step": "deploying", "targetGeneration": 3})
            );
            assert_eq!(condition(s, "Degraded")["status"], "False");
        }));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    assert!(!journal.iter().any(|e| e.starts_with("TriggerSavepoint")));
}

#[tokio::test]
async fn a_blocked_upgrade_whose_spec_is_reverted_is_cancelled() {
    let mut j = stateful(&spec("savepoint", 2, ""), 3);
    j.status = Some(StreamJobStatus {
        upgrade: upgrading("savepointing", None),
        ..Default::default()
    });
    let script = Script::workers(deployed(&j, &run_of("wc-uid1-1", None, None), 2))
        .applies(|_| {}, 2, true)
        .then(event_with(
            "UpgradeCancelled",
            "Normal",
            "the spec matches the running workers again",
        ))
        .then(status(|s| {
            assert!(s.get("upgrade").is_none(), "{s}");
            assert_eq!(s["phase"], "Running");
        }));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    run(j, script, fake).await.0.unwrap();
}

// ---------------------------------------------------------------------------------------
// A real cluster's failures: stale caches, newer CRDs, limits, rejected children, pods that
// cannot start, savepoint-mode changes of jobs that never ran
// ---------------------------------------------------------------------------------------

fn get_job(reply: Value) -> Expect {
    expect(Method::GET, JOB_PATH).reply(reply)
}

fn as_served(j: &StreamJob) -> Value {
    serde_json::to_value(j).unwrap()
}

#[tokio::test]
async fn the_spec_the_api_server_holds_wins_over_a_stale_cached_one() {
    // The watch cache still has generation 2 (parallelism 2); the server has generation 3
    // with parallelism 3 (e.g. changed while the watch was down).
    let cached = job(SPEC);
    let newer = job_at(&SPEC.replace("parallelism: 2", "parallelism: 3"), 3);
    let script = vec![
        get_job(as_served(&newer)),
        expect(Method::GET, &format!("/api/v1{NS}/secrets/wc-token"))
            .status(404)
            .reply(not_found()),
        expect(Method::POST, &format!("/api/v1{NS}/secrets")),
        get_sts(not_found()).status(404),
        expect(Method::PATCH, &format!("/api/v1{NS}/configmaps/wc-spec")),
        expect(Method::PATCH, &format!("/api/v1{NS}/services/wc-workers")),
        statefulset_checked(|b| assert_run(b, 3, "wc-uid1-3", None), 0),
        pdb(true),
        event("Created"),
        status(|s| {
            assert_eq!(s["observedGeneration"], 3);
            assert_eq!(s["desiredWorkers"], 3);
        }),
    ];
    run(cached, script, Job::default()).await.0.unwrap();
}

#[tokio::test]
async fn a_job_deleted_since_the_watch_saw_it_is_left_alone() {
    let script = vec![get_job(not_found()).status(404)];
    run(job(SPEC), script, Job::default()).await.0.unwrap();
}

#[tokio::test]
async fn fields_of_a_newer_crd_are_refused_by_name_not_dropped_silently() {
    let mut served = as_served(&job(SPEC));
    served["spec"]["steps"][3]["sink"]["print"]["target"] = "stderr".into();
    served["spec"]["autoscaler"] = json!({"min": 1});
    let script = vec![
        get_job(served),
        event_with("UnknownFields", "Warning", "spec.autoscaler: not a field"),
        status(|s| {
            assert_eq!(s["phase"], "Failed");
            let v = condition(s, "SpecValid");
            assert_eq!(
                (v["status"].as_str(), v["reason"].as_str()),
                (Some("False"), Some("UnknownFields"))
            );
            let msg = v["message"].as_str().unwrap();
            assert!(msg.contains("spec.steps[3].sink.print.target"), "{msg}");
            assert!(msg.contains("upgrade the operator"), "{msg}");
        }),
    ];
    run(job(SPEC), script, Job::default()).await.0.unwrap();
}

/// Runs one reconcile with a context whose worker cap is `cap`.
async fn run_capped(j: StreamJob, script: Vec<Expect>, cap: u32) -> Result<(), String> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let served = as_served(&j);
    let server = tokio::spawn(async move {
        for (i, e) in script.into_iter().enumerate() {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(
                (req.method().as_str(), req.uri().path()),
                (e.method.as_str(), e.path.as_str()),
                "request {i}"
            );
            let body: Value =
                serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap())
                    .unwrap_or(Value::Null);
            if let Some(check) = &e.check {
                check(&body);
            }
            let reply = e.reply.unwrap_or_else(|| served.clone());
            send.send_response(
                Response::builder()
                    .status(e.status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        if let Some((req, _)) = handle.next_request().await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    });
    let ctx = Arc::new(
        Context::new(
            kube::Client::new(service, "default"),
            defaults(),
            Arc::new(Metrics::default()),
        )
        .with_max_workers_per_job(cap),
    );
    let result = reconcile(Arc::new(j), ctx.clone())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    drop(ctx);
    if let Err(e) = server.await {
        std::panic::resume_unwind(e.into_panic());
    }
    result
}

#[tokio::test]
async fn a_job_that_needs_more_workers_than_the_cap_is_not_deployed() {
    // 20000 subtasks at 1 slot per worker: 20000 pods. Nothing is created; the status says
    // why and what to change.
    let j = job(&SPEC.replace(
        "parallelism: 2",
        "parallelism: 20000\n  maxParallelism: 32768",
    ));
    let script = vec![
        expect(Method::GET, JOB_PATH),
        event_with("WorkerLimitExceeded", "Warning", "needs 20000 worker pods"),
        status(|s| {
            assert_eq!(s["phase"], "Failed");
            let ready = condition(s, "Ready");
            assert_eq!(ready["reason"], "WorkerLimitExceeded");
            let msg = condition(s, "SpecValid")["message"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                msg.contains("more than this operator allows per job (256"),
                "{msg}"
            );
            assert!(msg.contains("raise slotsPerWorker"), "{msg}");
        }),
    ];
    run_capped(j, script, DEFAULT_MAX_WORKERS_PER_JOB)
        .await
        .unwrap();
    // At the cap exactly it deploys: 4 workers with a cap of 4.
    let j = job(&SPEC.replace("parallelism: 2", "parallelism: 4"));
    let script = vec![
        expect(Method::GET, JOB_PATH),
        expect(Method::GET, &format!("/api/v1{NS}/secrets/wc-token")).reply(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wc-token"},
            "data": {"token": "c2VjcmV0LXRva2Vu"}
        })),
        get_sts(not_found()).status(404),
        expect(Method::PATCH, &format!("/api/v1{NS}/configmaps/wc-spec")).reply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wc-spec"}})),
        expect(Method::PATCH, &format!("/api/v1{NS}/services/wc-workers")).reply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "wc-workers"}})),
        statefulset().reply(sts_reply(4, "x", 0)),
        pdb(true).reply(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "wc-worker"}})),
        event("Created"),
        status(|s| assert_eq!(s["desiredWorkers"], 4)),
    ];
    run_capped(j, script, 4).await.unwrap();
}

#[tokio::test]
async fn a_child_the_api_server_rejects_is_reported_and_retried() {
    let j = job(SPEC);
    let hash = resources::spec_hash(&j);
    let mut script = Script::workers(sts_reply(2, &hash, 2)).0;
    script.extend([
        expect(Method::PATCH, &format!("/api/v1{NS}/configmaps/wc-spec")),
        expect(Method::PATCH, &format!("/api/v1{NS}/services/wc-workers")),
        statefulset().status(422).reply(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
            "message": "StatefulSet.apps \"wc-worker\" is invalid: spec.template.spec.containers[0].resources.requests[cpu]: Invalid value: \"lots\": quantities must match the regular expression"
        })),
        event_with("ChildRejected", "Warning", "StatefulSet wc-worker was rejected by the API server: StatefulSet.apps \"wc-worker\" is invalid"),
        status(|s| {
            let ready = condition(s, "Ready");
            assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ChildRejected")));
            assert_eq!(condition(s, "Degraded")["status"], "True");
            let msg = ready["message"].as_str().unwrap();
            assert!(msg.contains("StatefulSet wc-worker") && msg.contains("\"lots\"") && msg.contains("422"), "{msg}");
            assert_eq!(s["lastFailure"], ready["message"]);
        }),
    ]);
    let fake = Job::default().status(Ok(report(RunState::Running)));
    let err = run(j, script, fake).await.0.unwrap_err();
    assert!(err.contains("StatefulSet wc-worker was rejected"), "{err}");
}

fn pod(name: &str, waiting: Option<(&str, &str)>) -> Value {
    let state = match waiting {
        Some((reason, message)) => json!({"waiting": {"reason": reason, "message": message}}),
        None => json!({"running": {}}),
    };
    json!({
        "metadata": {"name": name, "namespace": "prod"},
        "status": {"phase": "Pending", "containerStatuses": [
            {"name": "worker", "image": "streamjob:typo", "imageID": "", "ready": false, "restartCount": 0, "state": state}
        ]}
    })
}

fn pods_list(items: Vec<Value>) -> Expect {
    expect(Method::GET, &format!("/api/v1{NS}/pods"))
        .reply(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}))
}

#[tokio::test]
async fn pods_that_cannot_start_are_reported_with_their_cause() {
    let j = job(SPEC);
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 0))
        .then(pods_list(vec![
            pod("wc-worker-0", Some(("ImagePullBackOff", "Back-off pulling image \"streamjob:typo\""))),
            pod("wc-worker-1", None),
        ]))
        .then(event_with(
            "DeploymentFailed",
            "Warning",
            "pod wc-worker-0: container worker: ImagePullBackOff: Back-off pulling image",
        ))
        .then(status(|s| {
            assert_eq!(s["phase"], "Deploying");
            let degraded = condition(s, "Degraded");
            assert_eq!((degraded["status"].as_str(), degraded["reason"].as_str()), (Some("True"), Some("DeploymentFailed")));
            assert_eq!(
                condition(s, "Ready")["message"],
                "0/2 workers ready: pod wc-worker-0: container worker: ImagePullBackOff: Back-off pulling image \"streamjob:typo\""
            );
            assert!(s["lastFailure"].as_str().unwrap().contains("ImagePullBackOff"));
        }));
    let fake = Job::default().status(Err(ControlError::Unreachable {
        address: "wc-worker-0.wc-workers.prod.svc:6121".into(),
        cause: "connection refused".into(),
    }));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn pods_the_statefulset_cannot_create_are_reported_from_its_events() {
    let j = job(SPEC);
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 0))
        .then(pods_list(vec![]))
        .then(
            expect(Method::GET, &format!("/api/v1{NS}/events")).reply(json!({
                "apiVersion": "v1", "kind": "EventList", "metadata": {},
                "items": [
                    {"metadata": {"name": "e1"}, "involvedObject": {"kind": "StatefulSet", "name": "wc-worker"}, "reason": "FailedCreate",
                     "lastTimestamp": "2026-12-01T10:00:00Z",
                     "message": "create Pod wc-worker-0 in StatefulSet wc-worker failed error: Pod \"wc-worker-0\" is invalid: spec.containers[0].env[7].name: Invalid value: \"1BAD\""}
                ]
            })),
        )
        .then(event_with("DeploymentFailed", "Warning", "StatefulSet wc-worker: FailedCreate: create Pod wc-worker-0"))
        .then(status(|s| {
            assert_eq!(condition(s, "Ready")["reason"], "DeploymentFailed");
            assert!(s["lastFailure"].as_str().unwrap().contains("\"1BAD\""), "{s}");
        }));
    let fake = Job::default().status(Err(ControlError::Unreachable {
        address: "wc-worker-0.wc-workers.prod.svc:6121".into(),
        cause: "no such host".into(),
    }));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    // The FailedCreate events of this StatefulSet only.
    let q = journal
        .iter()
        .filter(|e| e.starts_with("GET /api/v1/namespaces/prod/events"))
        .count();
    assert_eq!(q, 1, "{journal:#?}");
}

#[tokio::test]
async fn the_scale_subresource_reads_parallelism_and_selector_from_the_status() {
    let j = job(SPEC);
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 2)).then(status(|s| {
        assert_eq!(s["parallelism"], 2);
        assert_eq!(
            s["selector"],
            "app.kubernetes.io/instance=wc,app.kubernetes.io/name=streamjob"
        );
    }));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn a_scale_through_the_subresource_rolls_out_as_the_upgrade_mode_says() {
    // `kubectl scale sj wc --replicas 3` sets spec.parallelism (a new generation); in
    // savepoint mode that is a stop-with-savepoint and a restore at parallelism 3.
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let j = stateful(&spec("savepoint", 3, ""), 2);
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, None), 2))
        .stop_with_savepoint(2)
        .applies(|b| assert_run(b, 3, "wc-uid1-2", Some(SAVEPOINT)), 0, true)
        .then(event("UpgradeStarted"))
        .then(status(|s| assert_eq!(s["parallelism"], 3)));
    let fake = Job::default()
        .status(Ok(running_with_checkpoint("wc-uid1-1", 3)))
        .savepoint(true, Ok(snap(7, SAVEPOINT)));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    assert_stopped_before_apply(&journal);
}

fn blocked_before(j: &mut StreamJob, why: &str) {
    j.status = Some(StreamJobStatus {
        last_failure: Some(why.into()),
        conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            reason: "SavepointFailed".into(),
            message: why.into(),
            observed_generation: Some(2),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }],
        ..Default::default()
    });
}

#[tokio::test]
async fn a_savepoint_mode_change_of_a_job_that_never_ran_proceeds_without_a_savepoint() {
    // Pods never became ready (a bad image): no savepoint can be taken, and there is no
    // state to save. The fix of the image goes ahead, keeping the run (its pods would restore
    // a checkpoint of it if one existed unseen), and the stale failure goes.
    let old = stateful(&spec("savepoint", 2, "  image: streamjob:typo\n"), 1);
    let mut j = stateful(&spec("savepoint", 2, "  image: streamjob:fixed\n"), 2);
    blocked_before(
        &mut j,
        "the upgrade to generation 2 needs a savepoint, but worker 0 is unreachable",
    );
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, None), 0))
        .then(event_with(
            "SavepointSkipped",
            "Warning",
            "the upgrade to generation 2 proceeds without a savepoint: the job never produced state (no worker of run wc-uid1-1 is ready",
        ))
        .applies(
            |b| {
                assert_run(b, 2, "wc-uid1-1", None);
                assert_eq!(b["spec"]["template"]["spec"]["containers"][0]["image"], "streamjob:fixed");
            },
            0,
            true,
        )
        .then(event("UpgradeStarted"))
        .then(status(|s| {
            assert!(s.get("lastFailure").is_none(), "{s}");
            assert_eq!(condition(s, "Degraded")["status"], "False");
        }));
    let fake = Job::default().status(Err(ControlError::Unreachable {
        address: "wc-worker-0.wc-workers.prod.svc:6121".into(),
        cause: "connection refused".into(),
    }));
    let (result, journal) = run(j, script, fake).await;
    result.unwrap();
    assert!(!journal.iter().any(|e| e.starts_with("TriggerSavepoint")));
}

#[tokio::test]
async fn a_job_that_never_ran_suspends_without_a_savepoint() {
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let j = stateful(&spec("savepoint", 2, "  state: suspended\n"), 2);
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, None), 0))
        .then(event_with(
            "SavepointSkipped",
            "Warning",
            "the suspend proceeds without a savepoint",
        ))
        .applies(|b| assert_run(b, 0, "wc-uid1-1", None), 0, false)
        .then(event_with(
            "Suspended",
            "Normal",
            "resuming restores the latest checkpoint of run wc-uid1-1",
        ))
        .then(status(|s| assert_eq!(s["phase"], "Suspended")));
    let fake = Job::default().status(Err(ControlError::Unreachable {
        address: "wc-worker-0.wc-workers.prod.svc:6121".into(),
        cause: "connection refused".into(),
    }));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn a_job_with_a_known_checkpoint_still_needs_its_savepoint() {
    // Same pods-not-ready picture, but the run has checkpointed: the savepoint rule holds.
    let old = stateful(&spec("savepoint", 2, ""), 1);
    let mut j = stateful(&spec("savepoint", 3, ""), 2);
    j.status = Some(StreamJobStatus {
        last_checkpoint: Some(SnapshotInfo {
            id: 4,
            time: "2023-11-14T22:13:24Z".into(),
            path: "file:///ckpt/wc-uid1-1/chk-4".into(),
        }),
        ..Default::default()
    });
    let script = Script::workers(deployed(&old, &run_of("wc-uid1-1", None, None), 0))
        .then(event("SavepointFailed"))
        .then(status(|s| {
            assert_eq!(condition(s, "Degraded")["reason"], "SavepointFailed")
        }));
    let fake = Job::default().status(Err(ControlError::Unreachable {
        address: "wc-worker-0.wc-workers.prod.svc:6121".into(),
        cause: "connection refused".into(),
    }));
    assert!(run(j, script, fake).await.0.is_err());
}

#[tokio::test]
async fn a_rejection_that_is_over_leaves_no_last_failure_behind() {
    // The StatefulSet was rejected before; this time every child applies.
    let mut j = job(SPEC);
    blocked_before(
        &mut j,
        "StatefulSet wc-worker was rejected by the API server: ...",
    );
    let s = j.status.as_mut().unwrap();
    s.conditions[0].reason = "ChildRejected".into();
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 2)).then(status(|s| {
        assert!(s.get("lastFailure").is_none(), "{s}");
        assert_eq!(condition(s, "Degraded")["status"], "False");
        assert_eq!(condition(s, "Ready")["status"], "True");
    }));
    let fake = Job::default().status(Ok(report(RunState::Running)));
    run(j, script, fake).await.0.unwrap();
}

#[tokio::test]
async fn a_failure_the_job_still_reports_is_kept() {
    // A job failure is the job's own news: it stays while worker 0 reports it.
    let mut j = job(SPEC);
    blocked_before(&mut j, "an old savepoint failure");
    let hash = resources::spec_hash(&j);
    let script = Script::steady(sts_reply(2, &hash, 2)).then(status(|s| {
        assert_eq!(s["lastFailure"], "task n[1]: division by zero");
    }));
    let fake = Job::default().status(Ok(JobReport {
        failure: Some("task n[1]: division by zero".into()),
        restarts: 1,
        ..report(RunState::Running)
    }));
    run(j, script, fake).await.0.unwrap();
}
