//! The reconcile loop: StreamJob -> token Secret, ConfigMap, headless Service, StatefulSet
//! and PodDisruptionBudget (server-side apply, one field manager), then an honest status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use streamjob_crds::graph::to_logical_graph;
use streamjob_crds::spec::{JobState, StreamJob};
use streamjob_crds::validate::validate_job;
use tracing::{Instrument as _, info, info_span, warn};

use crate::metrics::Metrics;
use crate::resources::{self, Children, Defaults};
use crate::status::{self, Observed};

/// Field manager of every object the operator applies.
pub const MANAGER: &str = "streamjob-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot create a job token: {0}")]
    Token(std::io::Error),
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per job, for backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
}

impl Context {
    pub fn new(client: Client, defaults: Defaults, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            defaults,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

fn key(job: &StreamJob) -> (String, String) {
    (job.namespace().unwrap_or_default(), job.name_any())
}

/// Reconciles one job; the span carries its namespace and name.
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("reconcile", namespace = %job.namespace().unwrap_or_default(), job = %job.name_any());
    let started = Instant::now();
    let result = reconcile_inner(&job, &ctx).instrument(span).await;
    ctx.metrics.observe(started.elapsed(), result.is_err());
    if result.is_ok() {
        ctx.failures.lock().unwrap().remove(&key(&job));
    }
    result
}

/// Retries API errors with exponential backoff (5 s doubling up to 5 min) per job.
pub fn error_policy(job: Arc<StreamJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().unwrap();
    let n = failures.entry(key(&job)).or_insert(0);
    *n += 1;
    let delay = Duration::from_secs(5 * (1u64 << (*n - 1).min(6))).min(Duration::from_secs(300));
    warn!(job = %job.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_inner(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    if job.meta().deletion_timestamp.is_some() {
        // Children carry owner references: the garbage collector deletes them.
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let jobs: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &ns);

    // Invalid specs change nothing but the status, and wait for the next edit.
    let plan = match validate_job(job) {
        Ok(_) => to_logical_graph(job)
            .plan()
            .map_err(|e| vec![format!("spec: {e}")]),
        Err(errors) => Err(errors.iter().map(|e| e.to_string()).collect()),
    };
    let children = plan.and_then(|plan| {
        resources::children(job, &plan, &ctx.defaults)
            .map(|c| (plan, c))
            .map_err(|e| vec![e])
    });
    let (plan, children) = match children {
        Ok(pc) => pc,
        Err(errors) => {
            let status = status::invalid(job, &errors);
            if job.status.as_ref().and_then(|s| s.message.as_ref()) != status.message.as_ref() {
                publish(
                    ctx,
                    job,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    &errors.join("; "),
                )
                .await;
            }
            patch_status(&jobs, &name, &status).await?;
            return Ok(Action::await_change());
        }
    };

    ensure_token(ctx, job, &ns).await?;
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let before = sts_api.get_opt(&children.stateful_set.name_any()).await?;
    apply(ctx, &ns, &children.config_map).await?;
    apply(ctx, &ns, &children.service).await?;
    let sts: StatefulSet = apply(ctx, &ns, &children.stateful_set).await?;
    sync_pdb(ctx, &ns, job, &children).await?;
    announce(ctx, job, before.as_ref(), &children).await;

    let observed = Observed::from_statefulset(&sts);
    let status = status::running(job, &plan, children.workers, &observed);
    patch_status(&jobs, &name, &status).await?;
    // Owned objects trigger reconciles on change; the periodic one catches drift.
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Server-side apply of a child, returning what the server stored.
async fn apply<K>(ctx: &Context, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let name = obj.meta().name.clone().expect("children are named");
    let mut obj = obj.clone();
    // Apply bodies need apiVersion and kind.
    let value = {
        let mut v = serde_json::to_value(&mut obj).expect("objects serialise");
        v["apiVersion"] = K::api_version(&()).into();
        v["kind"] = K::kind(&()).into();
        v
    };
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await?)
}

async fn sync_pdb(ctx: &Context, ns: &str, job: &StreamJob, c: &Children) -> Result<(), Error> {
    match &c.pdb {
        Some(pdb) => {
            apply(ctx, ns, pdb).await?;
        }
        None => {
            let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), ns);
            let name = resources::statefulset_name(&job.name_any());
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Creates the job's exchange token Secret once (a random 128-bit token).
async fn ensure_token(ctx: &Context, job: &StreamJob, ns: &str) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = resources::token_secret_name(&job.name_any());
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let token = random_token().map_err(Error::Token)?;
    match api
        .create(
            &PostParams::default(),
            &resources::token_secret(job, &token),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Another reconcile created it first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn random_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Events for what changed: Created, Updated (spec), Scaled, Suspended, Resumed.
async fn announce(ctx: &Context, job: &StreamJob, before: Option<&StatefulSet>, c: &Children) {
    let replicas = |s: &StatefulSet| s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let hash = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(resources::SPEC_HASH_ANNOTATION).cloned())
    };
    let new = &c.stateful_set;
    let Some(old) = before else {
        let note = format!(
            "created StatefulSet {} with {} worker(s)",
            new.name_any(),
            replicas(new)
        );
        info!("{note}");
        return publish(ctx, job, EventType::Normal, "Created", "Create", &note).await;
    };
    let (from, to) = (replicas(old), replicas(new));
    if from != to {
        let (reason, note) = match (from, to, job.spec.state) {
            (_, 0, JobState::Suspended) => {
                ("Suspended", "suspended: workers scaled to 0".to_string())
            }
            (0, _, JobState::Running) => ("Resumed", format!("resumed with {to} worker(s)")),
            _ => ("Scaled", format!("scaled workers from {from} to {to}")),
        };
        info!("{note}");
        publish(ctx, job, EventType::Normal, reason, "Scale", &note).await;
    }
    if hash(old) != hash(new) {
        let note = "spec changed: rolling the workers".to_string();
        info!("{note}");
        publish(ctx, job, EventType::Normal, "Updated", "Update", &note).await;
    }
}

async fn publish(
    ctx: &Context,
    job: &StreamJob,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let mut note = note.to_string();
    // Event notes are limited to 1 kB.
    if note.len() > 1000 {
        let cut = (0..=1000)
            .rev()
            .find(|&i| note.is_char_boundary(i))
            .unwrap_or(0);
        note.truncate(cut);
        note.push_str(" ...");
    }
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    // Events are best effort: failing to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&ev, &job.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish event");
    }
}

async fn patch_status(
    jobs: &Api<StreamJob>,
    name: &str,
    status: &streamjob_crds::spec::StreamJobStatus,
) -> Result<(), Error> {
    let body = serde_json::json!({
        "apiVersion": StreamJob::api_version(&()),
        "kind": StreamJob::kind(&()),
        "status": status,
    });
    jobs.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Runs the controller until the stream ends; `namespaces` empty means all namespaces.
pub async fn run(ctx: Arc<Context>, namespaces: Vec<String>) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default();
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=streamjob-operator");
    let controllers: Vec<_> = if namespaces.is_empty() {
        vec![(
            Api::<StreamJob>::all(client.clone()),
            Api::<StatefulSet>::all(client.clone()),
            Api::<ConfigMap>::all(client.clone()),
            Api::<Service>::all(client.clone()),
        )]
    } else {
        namespaces
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                )
            })
            .collect()
    };
    let runs = controllers.into_iter().map(|(jobs, sts, cms, svcs)| {
        Controller::new(jobs, wc.clone())
            .owns(sts, owned.clone())
            .owns(cms, owned.clone())
            .owns(svcs, owned.clone())
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|r| async move {
                if let Err(e) = r {
                    warn!(error = %e, "controller");
                }
            })
    });
    futures::future::join_all(runs).await;
}
