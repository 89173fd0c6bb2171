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
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use streamjob_crds::graph::to_logical_graph;
use streamjob_crds::spec::StreamJob;
use streamjob_crds::validate::validate_job;
use tracing::{Instrument as _, info_span, warn};

pub use context::{
    Context, DELETION_SAVEPOINT_ATTEMPTS, DELETION_SAVEPOINT_DEADLINE, DEPLOYING, Error, FINALIZER,
    MANAGER, SAVEPOINTING,
};

use crate::control::Target;
use crate::resources::{self, Run};
use crate::status::{self, Observed, Report};
use children::{apply, ensure_token, replace_outdated_pods, sync_pdb};
use context::key;
use events::{patch_status, publish};
use finalizer::{finalize, sync_finalizer};
use report::{job_report, merge_report};
use savepoint::take_requested_savepoint;
use upgrade::{Next, Transition, announce, announce_job_state, blocked, next_run, replicas};

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
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let jobs: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &ns);
    if job.meta().deletion_timestamp.is_some() {
        return finalize(job, ctx, &jobs).await;
    }
    sync_finalizer(job, &jobs).await?;

    // Invalid specs change nothing but the status, and wait for the next edit.
    let plan = match validate_job(job) {
        Ok(_) => to_logical_graph(job)
            .plan()
            .map_err(|e| vec![format!("spec: {e}")]),
        Err(errors) => Err(errors.iter().map(|e| e.to_string()).collect()),
    };
    let plan = plan.and_then(|plan| {
        // The pod template merge is the same for every run: check it once here.
        resources::children(job, &plan, &ctx.defaults)
            .map(|_| plan)
            .map_err(|e| vec![e])
    });
    let plan = match plan {
        Ok(plan) => plan,
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

    let token = ensure_token(ctx, job, &ns).await?;
    let target = Target {
        namespace: ns.clone(),
        job: name.clone(),
        token,
    };
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let before = sts_api.get_opt(&resources::statefulset_name(&name)).await?;
    let mut st = job.status.clone().unwrap_or_default();
    let was_running = before.as_ref().is_some_and(|s| replicas(s) > 0);

    // What the running job says about itself.
    let report = match was_running {
        true => Some(job_report(ctx, job, &target).await),
        false => None,
    };
    if let Some(Ok(r)) = &report {
        // While a change rolls out, the answer may come from an old pod.
        let settled = st.upgrade.is_none()
            || before
                .as_ref()
                .is_some_and(|s| Observed::from_statefulset(s).rolled_out);
        merge_report(&mut st, r, settled);
    }

    take_requested_savepoint(ctx, job, &jobs, &target, &mut st, before.as_ref()).await?;

    let step = match next_run(ctx, job, &jobs, &target, &mut st, before.as_ref(), &report).await? {
        Next::Apply(step) => step,
        Next::Blocked(why) => {
            let before = before.expect("only running workers block a change");
            return blocked(ctx, job, &jobs, &plan, &before, &mut st, why).await;
        }
    };

    let children = resources::children_for_run(job, &plan, &ctx.defaults, &step.run)
        .expect("the pod template merged above");
    apply(ctx, &ns, &children.config_map).await?;
    apply(ctx, &ns, &children.service).await?;
    let sts: StatefulSet = apply(ctx, &ns, &children.stateful_set).await?;
    sync_pdb(ctx, &ns, job, &children).await?;
    replace_outdated_pods(ctx, &ns, &name, &sts).await?;
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
    announce(ctx, job, &mut st, &step, &children, &observed).await;

    let report = match step.transition {
        Transition::Steady => report.as_ref().and_then(|r| r.as_ref().ok()),
        _ => None,
    };
    let status = status::running(
        job,
        &st,
        &plan,
        children.workers,
        &observed,
        &Report {
            job: report,
            blocked: None,
        },
    );
    announce_job_state(ctx, job, &status, report).await;
    patch_status(&jobs, &name, &status).await?;
    // Owned objects trigger reconciles on change; running jobs are polled for their status,
    // and the periodic reconcile catches drift.
    Ok(Action::requeue(match replicas(&sts) {
        0 => Duration::from_secs(300),
        _ => ctx.poll_interval,
    }))
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
