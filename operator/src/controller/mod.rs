//! The reconcile loop: StreamJob -> token Secret, ConfigMap, headless Service, StatefulSet
//! and PodDisruptionBudget (server-side apply, one field manager), then an honest status.
//!
//! # Runs, upgrades and savepoints
//!
//! Every deployment of the workers is a *run* ([`Run`]): the StatefulSet's pod template names
//! its checkpoint namespace (`STREAMJOB_RUN_ID`) and the snapshot it starts from while it has
//! no checkpoint of its own (`STREAMJOB_RESTORE_FROM`). The template is the record of what
//! runs; `status.upgrade` records a change in progress, so an operator restarted in the middle
//! of one finishes it instead of starting over. Per reconcile, with the workers' StatefulSet
//! as it is (`before`) and the spec as it should be:
//!
//! - no StatefulSet: create it; a fresh run (the workers read `initialSavepointPath`).
//! - running, spec (or `restartNonce`) changed: by `upgradeMode`
//!   - `stateless`: a fresh run (new id, nothing to restore), rolled in;
//!   - `last-state`: the same run (the new pods restore its latest checkpoint, or what it
//!     restored from if it has none yet);
//!   - `savepoint`: `upgrade.step = savepointing` is recorded, then stop-with-savepoint on
//!     worker 0; `upgrade.step = deploying` with the savepoint's path is recorded, then a new
//!     run restoring it is applied. If the savepoint fails or worker 0 is unreachable nothing
//!     is applied: the old workers keep running, and the failure goes to an event,
//!     `lastFailure` and the conditions, retried with backoff. A finished job needs no
//!     savepoint (its final snapshot is restored); a failed one blocks until the user picks
//!     another mode.
//! - running, `state: suspended`: `savepoint` takes a stop-with-savepoint first (blocking the
//!   same way), and the scaled-to-0 template already names the run that restores it;
//!   `last-state` and `stateless` scale to 0 at once.
//! - suspended, `state: running`: `stateless` starts a fresh run; the other modes scale the
//!   prepared run up (it restores the suspend savepoint, or its own latest checkpoint).
//! - unchanged: re-apply the same run (drift repair); a finished rollout ends `upgrade`.
//!
//! Pods of an older template are deleted all at once, after the StatefulSet controller has
//! seen the new one (`updateStrategy: OnDelete`): old and new pods cannot run one job together.
//!
//! `savepointTriggerNonce` takes a savepoint without stopping (`stop=false`); while the
//! workers run, `GetStatus` fills `lastCheckpoint`, `lastSavepoint`, `restoredFrom`,
//! `lastFailure` and detects finished and failed jobs. Deleting a job with
//! `savepointOnDeletion` in a stateful mode goes through the [`FINALIZER`]: a
//! stop-with-savepoint before the job goes, bounded by [`DELETION_SAVEPOINT_ATTEMPTS`] and
//! [`DELETION_SAVEPOINT_DEADLINE`].

mod children;
mod context;
mod events;
mod finalizer;
mod report;
mod savepoint;
mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource, ResourceExt};
use streamjob_crds::graph::to_logical_graph;
use streamjob_crds::plan::PhysicalPlan;
use streamjob_crds::spec::{StreamJob, StreamJobStatus};
use streamjob_crds::validate::validate_job;
use tracing::{Instrument as _, info_span, warn};

pub use context::{
    Context, DEFAULT_MAX_WORKERS_PER_JOB, DELETION_SAVEPOINT_ATTEMPTS, DELETION_SAVEPOINT_DEADLINE,
    DEPLOYING, Error, FINALIZER, MANAGER, SAVEPOINTING,
};

use crate::control::Target;
use crate::resources::{self, Run};
use crate::status::{self, Observed, Report};
use children::{apply, deployment_problems, ensure_token, replace_outdated_pods, sync_pdb};
use context::key;
use events::{patch_status, publish, warn_event};
use finalizer::{finalize, sync_finalizer};
use report::{job_report, merge_report};
use savepoint::take_requested_savepoint;
use upgrade::{Next, Transition, announce, announce_job_state, blocked, next_run, replicas};

/// Reconciles one job (read afresh from the API server: the object given may be a stale copy
/// from the watch cache); the span carries its namespace and name.
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    reconcile_named(&ns, &job.name_any(), &ctx).await
}

async fn reconcile_named(ns: &str, name: &str, ctx: &Context) -> Result<Action, Error> {
    let span = info_span!("reconcile", namespace = %ns, job = %name);
    let started = Instant::now();
    let _in_flight = ctx.metrics.reconciling();
    let result = reconcile_fresh(ns, name, ctx).instrument(span).await;
    ctx.metrics.observe(started.elapsed(), result.is_err());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap()
            .remove(&(ns.to_string(), name.to_string()));
    }
    result
}

/// Retries failures with exponential backoff (5 s doubling up to 5 min) per job.
pub fn error_policy(job: Arc<StreamJob>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff(&key(&job), error, &ctx)
}

fn backoff(key: &context::Key, error: &Error, ctx: &Context) -> Action {
    let mut failures = ctx.failures.lock().unwrap();
    let n = failures.entry(key.clone()).or_insert(0);
    *n += 1;
    let delay = Duration::from_secs(5 * (1u64 << (*n - 1).min(6))).min(Duration::from_secs(300));
    warn!(namespace = %key.0, job = %key.1, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The job as the API server holds it now, read leniently (see [`crate::lenient`]).
async fn read_job(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<crate::lenient::Read>, Error> {
    let ar = ApiResource::erase::<StreamJob>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let Some(object) = api.get_opt(name).await? else {
        return Ok(None);
    };
    let value = serde_json::to_value(&object).expect("objects serialise");
    crate::lenient::read(value)
        .map(Some)
        .map_err(|e| Error::Read(format!("StreamJob {ns}/{name}: {e}")))
}

async fn reconcile_fresh(ns: &str, name: &str, ctx: &Context) -> Result<Action, Error> {
    let Some(read) = read_job(ctx, ns, name).await? else {
        // Deleted: children carry owner references, the garbage collector takes them.
        ctx.forget(&(ns.to_string(), name.to_string()));
        return Ok(Action::await_change());
    };
    reconcile_inner(&read.job, &read.unknown, ctx).await
}

/// Why a valid-looking job is not deployed: (condition reason, summary, errors).
type Refusal = (&'static str, &'static str, Vec<String>);

/// The plan of a job the operator can deploy, or why it will not.
fn plan_of(job: &StreamJob, unknown: &[String], ctx: &Context) -> Result<PhysicalPlan, Refusal> {
    if !unknown.is_empty() {
        let errors = unknown
            .iter()
            .map(|p| {
                format!(
                    "{p}: not a field of this operator's StreamJob (version {}): the CRD is \
                     newer than the operator; upgrade the operator",
                    env!("CARGO_PKG_VERSION")
                )
            })
            .collect();
        return Err((
            "UnknownFields",
            "the spec has fields this operator does not know",
            errors,
        ));
    }
    let invalid = |errors| ("InvalidSpec", "the spec is invalid", errors);
    let plan = match validate_job(job) {
        Ok(_) => to_logical_graph(job)
            .plan()
            .map_err(|e| invalid(vec![format!("spec: {e}")]))?,
        Err(errors) => return Err(invalid(errors.iter().map(|e| e.to_string()).collect())),
    };
    // The pod template merge is the same for every run: check it once here.
    resources::children(job, &plan, &ctx.defaults).map_err(|e| invalid(vec![e]))?;
    let slots = job.spec.slots_per_worker.max(1);
    let workers = plan.workers_needed(slots);
    if workers > ctx.max_workers_per_job {
        return Err((
            "WorkerLimitExceeded",
            "the job needs more workers than the operator allows per job",
            vec![format!(
                "spec: the job needs {workers} worker pods (largest step parallelism {} / \
                 slotsPerWorker {slots}), more than this operator allows per job ({}, \
                 --max-workers-per-job / the chart's maxWorkersPerJob); lower the parallelism \
                 or raise slotsPerWorker",
                plan.slots_needed(),
                ctx.max_workers_per_job
            )],
        ));
    }
    Ok(plan)
}

async fn reconcile_inner(
    job: &StreamJob,
    unknown: &[String],
    ctx: &Context,
) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let jobs: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &ns);
    if job.meta().deletion_timestamp.is_some() {
        return finalize(job, ctx, &jobs).await;
    }
    sync_finalizer(job, &jobs).await?;

    // A spec the operator will not deploy changes nothing but the status, and waits for the
    // next edit.
    let plan = match plan_of(job, unknown, ctx) {
        Ok(plan) => plan,
        Err((reason, what, errors)) => {
            let status = status::rejected(job, reason, what, &errors);
            if job.status.as_ref().and_then(|s| s.message.as_ref()) != status.message.as_ref() {
                publish(
                    ctx,
                    job,
                    EventType::Warning,
                    reason,
                    "Validate",
                    &errors.join("; "),
                )
                .await;
            }
            patch_status(&jobs, &name, &status).await?;
            return Ok(Action::await_change());
        }
    };

    let mut st = job.status.clone().unwrap_or_default();
    match deploy(job, ctx, &jobs, &plan, &mut st).await {
        Err(Error::ChildRejected {
            kind,
            name: child,
            message,
        }) => {
            // Whatever was applied before stays; the status says what is missing and why.
            let note = format!("{kind} {child} was rejected by the API server: {message}");
            warn_event(ctx, job, "ChildRejected", "Apply", &note).await;
            let status = status::child_rejected(job, &st, &note);
            patch_status(&jobs, &name, &status).await?;
            Err(Error::ChildRejected {
                kind,
                name: child,
                message,
            })
        }
        other => other,
    }
}

/// The Degraded reasons whose `lastFailure` is stale once that condition is gone.
const PASSING_FAILURES: [&str; 3] = ["SavepointFailed", "ChildRejected", "DeploymentFailed"];

fn degraded_reason(job: &StreamJob) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .map(|c| c.reason.as_str())
}

/// Deploys a job the operator accepted: the token, the run the workers get, the children,
/// and the status.
async fn deploy(
    job: &StreamJob,
    ctx: &Context,
    jobs: &Api<StreamJob>,
    plan: &PhysicalPlan,
    st: &mut StreamJobStatus,
) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let token = ensure_token(ctx, job, &ns).await?;
    let target = Target {
        namespace: ns.clone(),
        job: name.clone(),
        token,
    };
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let before = sts_api.get_opt(&resources::statefulset_name(&name)).await?;
    let was_running = before.as_ref().is_some_and(|s| replicas(s) > 0);

    // What the running job says about itself.
    let report = match was_running {
        true => Some(
            job_report(
                ctx,
                job,
                &target,
                before.as_ref().map_or(0, replicas) as u32,
            )
            .await,
        ),
        false => None,
    };
    let failure_reported = matches!(&report, Some(Ok(r)) if r.failure.is_some());
    if let Some(Ok(r)) = &report {
        // While a change rolls out, the answer may come from an old pod.
        let settled = st.upgrade.is_none()
            || before
                .as_ref()
                .is_some_and(|s| Observed::from_statefulset(s).rolled_out);
        merge_report(st, r, settled);
    }

    take_requested_savepoint(ctx, job, jobs, &target, st, before.as_ref()).await?;

    let step = match next_run(ctx, job, jobs, &target, st, before.as_ref(), &report).await? {
        Next::Apply(step) => step,
        Next::Blocked(why) => {
            let before = before.expect("only running workers block a change");
            return blocked(ctx, job, jobs, plan, &before, st, why).await;
        }
    };

    let children = resources::children_for_run(job, plan, &ctx.defaults, &step.run)
        .expect("the pod template merged above");
    apply(ctx, &ns, &children.config_map).await?;
    apply(ctx, &ns, &children.service).await?;
    let sts: StatefulSet = apply(ctx, &ns, &children.stateful_set).await?;
    sync_pdb(ctx, &ns, job, &children).await?;
    replace_outdated_pods(ctx, &ns, &name, &children.stateful_set, &sts).await?;
    let observed = Observed::from_statefulset(&sts);

    if step.transition != Transition::Steady {
        // New pods: what they restore is known only for a new run given a savepoint, until
        // they report (a run's own checkpoint takes precedence over what it was given).
        let previous = before.as_ref().and_then(Run::of);
        let new_run = previous.is_none_or(|r| r.id != step.run.id);
        st.restored_from = match step.transition {
            Transition::Upgrade { .. } if new_run => step.run.restore_from.clone(),
            _ => None,
        };
        ctx.forget_report(&key(job));
    }
    st.run_id = Some(step.run.id.clone());
    st.observed_restart_nonce = step.run.restart_nonce;
    // The scale subresource's view: the parallelism the workers were given, and their pods.
    st.parallelism = Some(job.spec.parallelism);
    st.selector = Some(resources::selector_string(&name));
    announce(ctx, job, st, &step, &children, &observed).await;

    // Pods that cannot be created or started, while some are missing or not ready (new pods
    // get a reconcile to appear first).
    let deployment = match step.transition {
        Transition::Steady if replicas(&sts) > observed.ready => {
            deployment_problems(ctx, &ns, &name, replicas(&sts), &sts).await?
        }
        _ => None,
    };
    if let Some(cause) = &deployment {
        warn_event(ctx, job, "DeploymentFailed", "Observe", cause).await;
    }
    // A failure this status reported that is over now is not left behind.
    if degraded_reason(job).is_some_and(|r| PASSING_FAILURES.contains(&r)) && !failure_reported {
        st.last_failure = None;
    }
    if let Some(cause) = &deployment {
        st.last_failure = Some(cause.clone());
    }

    let report = match step.transition {
        Transition::Steady => report.as_ref().and_then(|r| r.as_ref().ok()),
        _ => None,
    };
    let status = status::running(
        job,
        st,
        plan,
        children.workers,
        &observed,
        &Report {
            job: report,
            blocked: None,
            deployment: deployment.as_deref(),
        },
    );
    announce_job_state(ctx, job, &status, report).await;
    patch_status(jobs, &name, &status).await?;
    // Owned objects and the worker pods trigger reconciles on change; running jobs are polled
    // for their status, and the periodic reconcile catches drift.
    Ok(Action::requeue(match replicas(&sts) {
        0 => Duration::from_secs(300),
        _ => ctx.poll_interval,
    }))
}

/// The namespace reconciles and the queue depth metric key a job by.
fn job_namespace(job: &DynamicObject) -> String {
    job.namespace().unwrap_or_else(|| "default".into())
}

/// Maps a child to the StreamJobs owning it (by its owner references, as
/// `Controller::owns` maps them), each marked queued for the queue depth metric.
fn owning_jobs<C: Resource>(
    metrics: Arc<crate::metrics::Metrics>,
    ar: ApiResource,
) -> impl Fn(C) -> Vec<ObjectRef<DynamicObject>> + Send + Sync + 'static {
    move |child| {
        let ns = child.namespace();
        let jobs: Vec<_> = child
            .owner_references()
            .iter()
            .filter_map(|o| ObjectRef::from_owner_ref(ns.as_deref(), o, ar.clone()))
            .collect();
        for job in &jobs {
            metrics.queued(job.namespace.as_deref().unwrap_or("default"), &job.name);
        }
        jobs
    }
}

/// Runs the controller until SIGTERM or SIGINT; `namespaces` empty means all namespaces.
///
/// The watch of StreamJobs uses kube-runtime's watcher with its default backoff (it relists
/// after a 410 Gone or an API server restart); its events mark the watch up or down for
/// `/readyz`. Objects come from the watch as `DynamicObject`s, so one that a newer CRD wrote
/// cannot fail the watch; each reconcile reads its job afresh (see [`crate::lenient`]).
pub async fn run(ctx: Arc<Context>, namespaces: Vec<String>) {
    let client = ctx.client.clone();
    let ar = ApiResource::erase::<StreamJob>(&());
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=streamjob-operator");
    let scopes: Vec<Option<String>> = match namespaces.is_empty() {
        true => vec![None],
        false => namespaces.into_iter().map(Some).collect(),
    };
    let runs = scopes.into_iter().map(|scope| {
        // One Api per kind, in the scope: all namespaces or one.
        fn scoped<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
        where
            K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
        {
            match ns {
                None => Api::all(client.clone()),
                Some(ns) => Api::namespaced(client.clone(), ns),
            }
        }
        let jobs: Api<DynamicObject> = match &scope {
            None => Api::all_with(client.clone(), &ar),
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        };
        // Children by their metadata only (their owner references), as `owns` watches them.
        let sts: Api<PartialObjectMeta<StatefulSet>> = scoped(&client, &scope);
        let cms: Api<PartialObjectMeta<ConfigMap>> = scoped(&client, &scope);
        let svcs: Api<PartialObjectMeta<Service>> = scoped(&client, &scope);
        let pods: Api<Pod> = scoped(&client, &scope);
        let watch_name = format!(
            "streamjobs in {}",
            scope.as_deref().unwrap_or("all namespaces")
        );
        let metrics = ctx.metrics.clone();
        metrics.set_watch(&watch_name, false);
        let writer = Writer::<DynamicObject>::new(ar.clone());
        let reader = writer.as_reader();
        let trigger = watcher(jobs, watcher::Config::default())
            .default_backoff()
            .inspect(move |event| match event {
                Ok(watcher::Event::InitDone) => metrics.set_watch(&watch_name, true),
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, watch = %watch_name, "watch failed; retrying with backoff");
                    metrics.set_watch(&watch_name, false);
                }
            })
            .reflect(writer)
            .applied_objects();
        // Every trigger is marked queued for the queue depth metric (kube-runtime does not
        // expose its scheduler): the jobs' own changes here, their children's and pods' in
        // the mappers below, which do what `owns` would (owner references, metadata only).
        let queued = ctx.metrics.clone();
        let trigger = trigger.inspect(move |job| {
            if let Ok(job) = job {
                queued.queued(&job_namespace(job), &job.name_any());
            }
        });
        let (ar_pods, queued) = (ar.clone(), ctx.metrics.clone());
        Controller::for_stream_with(trigger, reader, ar.clone())
            .watches_stream_with(
                watcher(sts, owned.clone()).touched_objects(),
                owning_jobs(ctx.metrics.clone(), ar.clone()),
                (),
            )
            .watches_stream_with(
                watcher(cms, owned.clone()).touched_objects(),
                owning_jobs(ctx.metrics.clone(), ar.clone()),
                (),
            )
            .watches_stream_with(
                watcher(svcs, owned.clone()).touched_objects(),
                owning_jobs(ctx.metrics.clone(), ar.clone()),
                (),
            )
            // Pods are the StatefulSet's: map them to their job by its instance label.
            .watches(pods, owned.clone(), move |pod: Pod| {
                let job = pod.labels().get("app.kubernetes.io/instance")?.clone();
                let ns = pod.namespace()?;
                queued.queued(&ns, &job);
                Some(ObjectRef::new_with(&job, ar_pods.clone()).within(&ns))
            })
            .shutdown_on_signal()
            .run(
                |obj: Arc<DynamicObject>, ctx: Arc<Context>| {
                    // Off the queue now, when the controller hands the job over (a change
                    // seen from here on waits for the next reconcile).
                    let ns = job_namespace(&obj);
                    ctx.metrics.dequeued(&ns, &obj.name_any());
                    async move { reconcile_named(&ns, &obj.name_any(), &ctx).await }
                },
                |obj: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>| {
                    backoff(
                        &(obj.namespace().unwrap_or_default(), obj.name_any()),
                        error,
                        &ctx,
                    )
                },
                ctx.clone(),
            )
            .for_each(|r| {
                let metrics = ctx.metrics.clone();
                async move {
                    match r {
                        // A trigger for a job that is gone: no reconcile will take it.
                        Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                            let ns = obj.namespace.as_deref().unwrap_or("default");
                            metrics.dequeued(ns, &obj.name);
                        }
                        Err(e) => warn!(error = %e, "controller"),
                        Ok(_) => {}
                    }
                }
            })
    });
    futures::future::join_all(runs).await;
}
