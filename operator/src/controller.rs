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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use streamjob_crds::graph::to_logical_graph;
use streamjob_crds::plan::PhysicalPlan;
use streamjob_crds::spec::{
    JobState, Phase, SnapshotInfo, StreamJob, StreamJobStatus, UpgradeMode, UpgradeStatus,
};
use streamjob_crds::validate::validate_job;
use tracing::{Instrument as _, info, info_span, warn};

use crate::control::{ControlError, GrpcJobControl, JobControl, JobReport, RunState, Target};
use crate::metrics::Metrics;
use crate::resources::{self, Children, Defaults, Run};
use crate::status::{self, Observed, Report};

/// Field manager of every object the operator applies.
pub const MANAGER: &str = "streamjob-operator";
/// Finalizer of jobs that take a savepoint when deleted (`savepointOnDeletion` with a stateful
/// `upgradeMode`).
pub const FINALIZER: &str = "streamjob.dev/savepoint";
/// `status.upgrade.step` values.
pub const SAVEPOINTING: &str = "savepointing";
pub const DEPLOYING: &str = "deploying";
/// A deleted job gets this many stop-with-savepoint attempts, and none once this long has
/// passed since its deletion (also after an operator restart, which forgets the attempts):
/// a job whose workers cannot answer must not stay undeletable.
pub const DELETION_SAVEPOINT_ATTEMPTS: u32 = 3;
pub const DELETION_SAVEPOINT_DEADLINE: Duration = Duration::from_secs(600);
/// A job's report is reused for this long: our own status patch triggers the next reconcile at
/// once, which must not poll again (and find a newer checkpoint, and patch again...).
const REPORT_TTL: Duration = Duration::from_secs(5);
/// An event with the same reason and note as the last one of its job is published again only
/// after this long.
const EVENT_REPEAT_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot create a job token: {0}")]
    Token(std::io::Error),
    /// A savepoint the operator needs failed; retried with the same backoff.
    #[error("{0}")]
    Savepoint(String),
}

type Key = (String, String);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// Who publishes the events.
    pub reporter: Reporter,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    /// Savepoints and status of the jobs (worker 0's JobControl service).
    pub control: Arc<dyn JobControl>,
    /// How often a running job's status is read.
    pub poll_interval: Duration,
    /// Consecutive failures per job, for backoff.
    failures: Mutex<HashMap<Key, u32>>,
    /// Failed deletion savepoints per job.
    deletion_attempts: Mutex<HashMap<Key, u32>>,
    /// The last report of each job, and when it came.
    reports: Mutex<HashMap<Key, (Instant, JobReport)>>,
    /// The last note of each job and event reason, and when it was published.
    recent_events: Mutex<HashMap<(Key, String), (String, Instant)>>,
}

impl Context {
    pub fn new(client: Client, defaults: Defaults, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            reporter,
            client,
            defaults,
            metrics,
            control: Arc::new(GrpcJobControl::default()),
            poll_interval: Duration::from_secs(30),
            failures: Mutex::new(HashMap::new()),
            deletion_attempts: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
            recent_events: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the JobControl client (tests script the jobs' answers with it).
    pub fn with_control(mut self, control: Arc<dyn JobControl>) -> Self {
        self.control = control;
        self
    }

    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    fn forget_report(&self, key: &Key) {
        self.reports.lock().unwrap().remove(key);
    }

    /// Drops what is kept about a deleted job.
    fn forget(&self, key: &Key) {
        self.forget_report(key);
        self.deletion_attempts.lock().unwrap().remove(key);
        self.recent_events
            .lock()
            .unwrap()
            .retain(|(job, _), _| job != key);
    }
}

fn key(job: &StreamJob) -> Key {
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

/// Deletes the worker pods of an older pod template, all at once, so the StatefulSet
/// (`updateStrategy: OnDelete`) recreates them from the current one. Only once the StatefulSet
/// controller has seen the current template: a pod deleted earlier could come back old.
async fn replace_outdated_pods(
    ctx: &Context,
    ns: &str,
    job: &str,
    sts: &StatefulSet,
) -> Result<(), Error> {
    let Some(status) = &sts.status else {
        return Ok(());
    };
    let current = status.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    let outdated = status.replicas > status.updated_replicas.unwrap_or(0);
    let Some(revision) = status
        .update_revision
        .as_deref()
        .filter(|_| current && outdated)
    else {
        return Ok(());
    };
    let mut selector: Vec<String> = resources::selector(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    selector.push(format!("controller-revision-hash!={revision}"));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&selector.join(",")),
    )
    .await?;
    info!(
        outdated = status.replicas - status.updated_replicas.unwrap_or(0),
        revision, "replacing worker pods of an older template"
    );
    Ok(())
}

fn replicas(sts: &StatefulSet) -> i32 {
    sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn template_annotation<'a>(sts: &'a StatefulSet, name: &str) -> Option<&'a str> {
    sts.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

/// Why the StatefulSet is (re)applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Create,
    /// Same run, same pods (or still no pods).
    Steady,
    /// New pods for a spec change (`restart_only`: for a new `restartNonce` alone).
    Upgrade {
        restart_only: bool,
    },
    Suspend,
    Resume,
}

#[derive(Debug)]
struct Step {
    run: Run,
    transition: Transition,
    /// The savepoint the change took (or restores), for events and `status.upgrade`.
    savepoint: Option<String>,
}

enum Next {
    Apply(Step),
    /// The savepoint the change needs failed: nothing is applied.
    Blocked(String),
}

/// Advice that goes with every blocked change.
const BLOCKED_ADVICE: &str = "the old workers keep running and the savepoint is retried with \
     backoff; to change without a savepoint set upgradeMode: last-state (restores the latest \
     checkpoint) or stateless (starts empty)";

/// Decides the run the StatefulSet gets (see the module docs), taking the savepoint a change
/// in savepoint mode needs.
async fn next_run(
    ctx: &Context,
    job: &StreamJob,
    jobs: &Api<StreamJob>,
    target: &Target,
    st: &mut StreamJobStatus,
    before: Option<&StatefulSet>,
    report: &Option<Result<JobReport, ControlError>>,
) -> Result<Next, Error> {
    let Some(sts) = before else {
        return Ok(Next::Apply(Step {
            run: Run::fresh(job),
            transition: Transition::Create,
            savepoint: None,
        }));
    };
    // A StatefulSet from before runs existed gets a fresh one.
    let current = Run::of(sts).unwrap_or_else(|| Run::fresh(job));
    let running = replicas(sts) > 0;
    let want_running = job.spec.state == JobState::Running;
    let spec_changed = template_annotation(sts, resources::SPEC_HASH_ANNOTATION)
        != Some(&resources::spec_hash(job));
    let restart =
        job.spec.restart_nonce.is_some() && job.spec.restart_nonce != current.restart_nonce;
    let nonce = job.spec.restart_nonce.or(current.restart_nonce);
    let same = Run {
        restart_nonce: nonce,
        ..current.clone()
    };
    let fresh = Run {
        restart_nonce: nonce,
        ..Run::fresh(job)
    };
    let mode = job.spec.upgrade_mode;
    let generation = job.metadata.generation.unwrap_or(0);
    let step = |run, transition, savepoint| {
        Next::Apply(Step {
            run,
            transition,
            savepoint,
        })
    };
    Ok(match (running, want_running) {
        (true, true) if !spec_changed && !restart => step(same, Transition::Steady, None),
        (true, true) => {
            let transition = Transition::Upgrade {
                restart_only: !spec_changed,
            };
            match mode {
                UpgradeMode::Stateless => step(fresh, transition, None),
                UpgradeMode::LastState => step(same, transition, None),
                UpgradeMode::Savepoint => {
                    let what = match spec_changed {
                        true => format!("the upgrade to generation {generation}"),
                        false => format!("the restart for restartNonce {}", nonce.unwrap_or(0)),
                    };
                    match savepoint_for_change(ctx, job, jobs, target, st, &current, report, &what)
                        .await?
                    {
                        Ok(path) => step(
                            Run {
                                restore_from: Some(path.clone()),
                                ..fresh
                            },
                            transition,
                            Some(path),
                        ),
                        Err(why) => Next::Blocked(why),
                    }
                }
            }
        }
        (true, false) => match mode {
            UpgradeMode::Savepoint => {
                match savepoint_for_change(
                    ctx,
                    job,
                    jobs,
                    target,
                    st,
                    &current,
                    report,
                    "the suspend",
                )
                .await?
                {
                    // The scaled-down template names the run a resume starts.
                    Ok(path) => step(
                        Run {
                            restore_from: Some(path.clone()),
                            ..fresh
                        },
                        Transition::Suspend,
                        Some(path),
                    ),
                    Err(why) => Next::Blocked(why),
                }
            }
            UpgradeMode::LastState | UpgradeMode::Stateless => {
                step(same, Transition::Suspend, None)
            }
        },
        (false, true) => match mode {
            UpgradeMode::Stateless => step(fresh, Transition::Resume, None),
            UpgradeMode::LastState | UpgradeMode::Savepoint => {
                let savepoint = same.restore_from.clone();
                step(same, Transition::Resume, savepoint)
            }
        },
        (false, false) => step(same, Transition::Steady, None),
    })
}

/// The savepoint a change of running workers in savepoint mode restores from: `Ok(Ok(path))`,
/// or `Ok(Err(why))` when it cannot be had now. Records `upgrade` in the status before it
/// stops the workers, and the savepoint's path before anything else happens.
#[allow(clippy::too_many_arguments)]
async fn savepoint_for_change(
    ctx: &Context,
    job: &StreamJob,
    jobs: &Api<StreamJob>,
    target: &Target,
    st: &mut StreamJobStatus,
    current: &Run,
    report: &Option<Result<JobReport, ControlError>>,
    what: &str,
) -> Result<Result<String, String>, Error> {
    let generation = job.metadata.generation.unwrap_or(0);
    // Taken already, and the StatefulSet does not restore it yet: the operator stopped (or an
    // API call failed) between the savepoint and the apply. The old workers have stopped.
    if let Some(u) = &st.upgrade
        && u.step == DEPLOYING
        && let Some(path) = &u.savepoint_path
        && current.restore_from.as_ref() != Some(path)
    {
        return Ok(Ok(path.clone()));
    }
    st.upgrade = Some(UpgradeStatus {
        step: SAVEPOINTING.into(),
        target_generation: generation,
        savepoint_path: None,
    });
    match report {
        // Nothing runs any more (a bounded job, or our own stop-with-savepoint whose answer
        // was lost): the final snapshot is the state to carry over.
        Some(Ok(r)) if r.state == RunState::Finished => {
            return Ok(match r.latest_snapshot() {
                Some(s) => Ok(s.path.clone()),
                None => Err(format!(
                    "{what} needs a savepoint, but the job finished without a checkpoint or \
                     savepoint to restore; {BLOCKED_ADVICE}"
                )),
            });
        }
        Some(Ok(r)) if r.state == RunState::Failed => {
            return Ok(Err(format!(
                "{what} needs a savepoint, but the job failed ({}); {BLOCKED_ADVICE}",
                r.failure.as_deref().unwrap_or("no cause reported")
            )));
        }
        Some(Err(e)) => {
            return Ok(Err(format!(
                "{what} needs a savepoint, but {e}; {BLOCKED_ADVICE}"
            )));
        }
        _ => {}
    }
    patch_status(jobs, &job.name_any(), st).await?;
    ctx.forget_report(&key(job));
    info!(what, "stop-with-savepoint");
    match ctx.control.trigger_savepoint(target, true).await {
        Ok(savepoint) => {
            st.last_savepoint = Some(savepoint.info());
            st.upgrade = Some(UpgradeStatus {
                step: DEPLOYING.into(),
                target_generation: generation,
                savepoint_path: Some(savepoint.path.clone()),
            });
            patch_status(jobs, &job.name_any(), st).await?;
            let note = format!("stop-with-savepoint for {what}: {}", savepoint.path);
            inform(
                ctx,
                job,
                EventType::Normal,
                "SavepointTaken",
                "Savepoint",
                &note,
            )
            .await;
            Ok(Ok(savepoint.path))
        }
        Err(e) => Ok(Err(format!(
            "stop-with-savepoint for {what} failed: {e}; {BLOCKED_ADVICE}"
        ))),
    }
}

/// A change that waits for its savepoint: the old workers and their objects stay as they are;
/// the failure is reported and the reconcile fails, for a retry with backoff.
async fn blocked(
    ctx: &Context,
    job: &StreamJob,
    jobs: &Api<StreamJob>,
    plan: &PhysicalPlan,
    before: &StatefulSet,
    st: &mut StreamJobStatus,
    why: String,
) -> Result<Action, Error> {
    st.last_failure = Some(why.clone());
    warn_event(ctx, job, "SavepointFailed", "Savepoint", &why).await;
    let mut status = status::running(
        job,
        st,
        plan,
        replicas(before),
        &Observed::from_statefulset(before),
        &Report {
            job: None,
            blocked: Some(&why),
        },
    );
    // The old workers still run the old plan.
    status.plan = st.plan.clone();
    patch_status(jobs, &job.name_any(), &status).await?;
    Err(Error::Savepoint(why))
}

/// Events for the step just applied, and the end of an upgrade.
async fn announce(
    ctx: &Context,
    job: &StreamJob,
    st: &mut StreamJobStatus,
    step: &Step,
    children: &Children,
    observed: &Observed,
) {
    let generation = job.metadata.generation.unwrap_or(0);
    let run = &step.run;
    let mode = serde_json::to_value(job.spec.upgrade_mode)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let starts = match (&run.restore_from, job.spec.upgrade_mode) {
        (Some(p), UpgradeMode::Savepoint) if step.savepoint.is_some() => format!("restores {p}"),
        (_, UpgradeMode::LastState | UpgradeMode::Savepoint) => format!(
            "restores the latest checkpoint of run {} (or what the run started from)",
            run.id
        ),
        (_, UpgradeMode::Stateless) => "starts from empty state".to_string(),
    };
    if matches!(step.transition, Transition::Create | Transition::Resume) {
        st.upgrade = None;
    }
    let (reason, action, note) = match step.transition {
        Transition::Create => (
            "Created",
            "Create",
            format!(
                "created StatefulSet {} with {} worker(s), run {}",
                children.stateful_set.name_any(),
                replicas(&children.stateful_set),
                run.id
            ),
        ),
        Transition::Upgrade { restart_only } => {
            st.upgrade = Some(UpgradeStatus {
                step: DEPLOYING.into(),
                target_generation: generation,
                savepoint_path: step.savepoint.clone(),
            });
            let starts = match job.spec.upgrade_mode {
                UpgradeMode::LastState => format!(
                    "the new pods restore the latest checkpoint of run {}",
                    run.id
                ),
                _ => format!("new run {} {starts}", run.id),
            };
            match restart_only {
                true => (
                    "Restarted",
                    "Restart",
                    format!(
                        "restarting the workers for restartNonce {} ({mode}): {starts}",
                        run.restart_nonce.unwrap_or(0)
                    ),
                ),
                false => (
                    "UpgradeStarted",
                    "Upgrade",
                    format!(
                        "rolling generation {generation} onto {} worker(s) ({mode}): {starts}",
                        children.workers
                    ),
                ),
            }
        }
        Transition::Suspend => {
            st.upgrade = None;
            let resume = match (&step.savepoint, job.spec.upgrade_mode) {
                (Some(p), _) => format!("after savepoint {p}; resuming restores it"),
                (None, UpgradeMode::Stateless) => "resuming starts from empty state".into(),
                (None, _) => format!("resuming restores the latest checkpoint of run {}", run.id),
            };
            (
                "Suspended",
                "Suspend",
                format!("suspended: workers scaled to 0 ({mode}), {resume}"),
            )
        }
        Transition::Resume => (
            "Resumed",
            "Resume",
            format!(
                "resumed with {} worker(s) ({mode}): run {} {starts}",
                children.workers, run.id
            ),
        ),
        Transition::Steady => {
            let Some(upgrade) = st.upgrade.clone() else {
                return;
            };
            let (reason, note) = if upgrade.step != DEPLOYING {
                (
                    "UpgradeCancelled",
                    "the spec matches the running workers again: no upgrade needed".to_string(),
                )
            } else if observed.rolled_out && observed.ready >= children.workers {
                (
                    "UpgradeFinished",
                    format!(
                        "generation {}: {}/{} workers of run {} ready",
                        upgrade.target_generation, observed.ready, children.workers, run.id
                    ),
                )
            } else {
                return;
            };
            st.upgrade = None;
            (reason, "Upgrade", note)
        }
    };
    inform(ctx, job, EventType::Normal, reason, action, &note).await;
}

/// JobFinished and JobFailed events when the job reports the change.
async fn announce_job_state(
    ctx: &Context,
    job: &StreamJob,
    status: &StreamJobStatus,
    report: Option<&JobReport>,
) {
    let Some(report) = report else { return };
    let before = job.status.as_ref().and_then(|s| s.phase);
    let (type_, reason, note) = match (status.phase, &report.state) {
        (Some(Phase::Finished), RunState::Finished) if before != Some(Phase::Finished) => (
            EventType::Normal,
            "JobFinished",
            match report.latest_snapshot() {
                Some(s) => format!("every source ended; final snapshot {}", s.path),
                None => "every source ended".to_string(),
            },
        ),
        (Some(Phase::Failed), RunState::Failed) if before != Some(Phase::Failed) => (
            EventType::Warning,
            "JobFailed",
            format!(
                "the job failed after {} restart(s): {}",
                report.restarts,
                report.failure.as_deref().unwrap_or("no cause reported")
            ),
        ),
        _ => return,
    };
    inform(ctx, job, type_, reason, "Observe", &note).await;
}

/// The job's own report, reused for [`REPORT_TTL`].
async fn job_report(
    ctx: &Context,
    job: &StreamJob,
    target: &Target,
) -> Result<JobReport, ControlError> {
    let key = key(job);
    if let Some((at, report)) = ctx.reports.lock().unwrap().get(&key)
        && at.elapsed() < REPORT_TTL
    {
        return Ok(report.clone());
    }
    let report = ctx.control.status(target).await;
    match &report {
        Ok(r) => {
            ctx.reports
                .lock()
                .unwrap()
                .insert(key, (Instant::now(), r.clone()));
        }
        Err(e) => {
            info!(error = %e, "no job status");
            ctx.forget_report(&key);
        }
    }
    report
}

/// The report's checkpoint and savepoint history into the status; `restoredFrom` too unless
/// a change is under way (the report may still come from the old pods).
fn merge_report(st: &mut StreamJobStatus, r: &JobReport, restored_from: bool) {
    if let Some(c) = &r.last_checkpoint {
        st.last_checkpoint = Some(c.info());
    }
    if let Some(s) = &r.last_savepoint {
        let s = s.info();
        if newer(&s, st.last_savepoint.as_ref()) {
            st.last_savepoint = Some(s);
        }
    }
    if restored_from {
        st.restored_from = r.restored_from.clone();
    }
    if let Some(f) = &r.failure {
        st.last_failure = Some(f.clone());
    }
}

/// Whether `a` completed after `b` (a savepoint the operator took for an upgrade is newer
/// than anything the new run reports until it takes one itself).
fn newer(a: &SnapshotInfo, b: Option<&SnapshotInfo>) -> bool {
    let Some(b) = b else { return true };
    match (a.time.parse::<Timestamp>(), b.time.parse::<Timestamp>()) {
        (Ok(ta), Ok(tb)) => ta > tb,
        _ => a.path != b.path,
    }
}

/// `savepointTriggerNonce`: a savepoint of the running job (it keeps running).
async fn take_requested_savepoint(
    ctx: &Context,
    job: &StreamJob,
    jobs: &Api<StreamJob>,
    target: &Target,
    st: &mut StreamJobStatus,
    before: Option<&StatefulSet>,
) -> Result<(), Error> {
    let Some(nonce) = job.spec.savepoint_trigger_nonce else {
        return Ok(());
    };
    if st.observed_savepoint_trigger_nonce == Some(nonce) {
        return Ok(());
    }
    let Some(sts) = before else {
        // A new job: nothing to take a savepoint of; the nonce it was created with is seen.
        st.observed_savepoint_trigger_nonce = Some(nonce);
        return Ok(());
    };
    if st.upgrade.is_some() {
        // Taken once the change in progress is done, of the new workers.
        return Ok(());
    }
    let result = match replicas(sts) {
        0 => Err("the job is suspended: no workers run".to_string()),
        _ => ctx
            .control
            .trigger_savepoint(target, false)
            .await
            .map_err(|e| e.to_string()),
    };
    st.observed_savepoint_trigger_nonce = Some(nonce);
    ctx.forget_report(&key(job));
    match result {
        Ok(savepoint) => {
            st.last_savepoint = Some(savepoint.info());
            let note = format!(
                "savepoint for savepointTriggerNonce {nonce}: {}",
                savepoint.path
            );
            inform(
                ctx,
                job,
                EventType::Normal,
                "SavepointTaken",
                "Savepoint",
                &note,
            )
            .await;
        }
        Err(e) => {
            let note = format!("savepoint for savepointTriggerNonce {nonce} failed: {e}");
            st.last_failure = Some(note.clone());
            warn_event(ctx, job, "SavepointFailed", "Savepoint", &note).await;
        }
    }
    // Recorded at once: a later failure of this reconcile must not take it again.
    patch_status(jobs, &job.name_any(), st).await
}

/// Whether the job needs the deletion savepoint finalizer.
fn wants_finalizer(job: &StreamJob) -> bool {
    job.spec.savepoint_on_deletion && job.spec.upgrade_mode != UpgradeMode::Stateless
}

/// Adds or removes [`FINALIZER`] as `savepointOnDeletion` and `upgradeMode` say (a merge patch
/// of the whole list, guarded by the resourceVersion, so other finalizers are kept).
async fn sync_finalizer(job: &StreamJob, jobs: &Api<StreamJob>) -> Result<(), Error> {
    let has = job.finalizers().iter().any(|f| f == FINALIZER);
    match (wants_finalizer(job), has) {
        (true, false) => {
            let mut list = job.finalizers().to_vec();
            list.push(FINALIZER.into());
            set_finalizers(job, jobs, list).await
        }
        (false, true) => remove_finalizer(job, jobs).await,
        _ => Ok(()),
    }
}

async fn remove_finalizer(job: &StreamJob, jobs: &Api<StreamJob>) -> Result<(), Error> {
    let list = job
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    match set_finalizers(job, jobs, list).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => Ok(()),
        other => other,
    }
}

async fn set_finalizers(
    job: &StreamJob,
    jobs: &Api<StreamJob>,
    list: Vec<String>,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "metadata": {"finalizers": list, "resourceVersion": job.resource_version()}
    });
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    jobs.patch(&job.name_any(), &params, &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A deleted job: with [`FINALIZER`], stop the running workers with a savepoint (events say
/// where it is, or why there is none), then let Kubernetes delete the job and, through the
/// owner references, its children.
///
/// Deletion is never blocked for good: a job whose savepoint fails gets
/// [`DELETION_SAVEPOINT_ATTEMPTS`] tries (with the reconcile backoff in between, 5 s then
/// 10 s) and none once [`DELETION_SAVEPOINT_DEADLINE`] has passed since it was deleted (the
/// deadline survives an operator restart, the attempt count does not); then a warning event
/// names the latest checkpoint known and the finalizer goes. One attempt waits at most the
/// client's savepoint timeout, so the longest wait is the deadline plus that timeout.
async fn finalize(job: &StreamJob, ctx: &Context, jobs: &Api<StreamJob>) -> Result<Action, Error> {
    if !job.finalizers().iter().any(|f| f == FINALIZER) {
        // Children carry owner references: the garbage collector deletes them.
        ctx.forget(&key(job));
        return Ok(Action::await_change());
    }
    if wants_finalizer(job)
        && let Some(retry) = deletion_savepoint(job, ctx).await?
    {
        return Err(Error::Savepoint(retry));
    }
    remove_finalizer(job, jobs).await?;
    ctx.forget(&key(job));
    Ok(Action::await_change())
}

/// The deletion savepoint; `Some(why)` to retry.
async fn deletion_savepoint(job: &StreamJob, ctx: &Context) -> Result<Option<String>, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let running = sts_api
        .get_opt(&resources::statefulset_name(&name))
        .await?
        .is_some_and(|s| replicas(&s) > 0);
    if !running {
        // Suspended (in savepoint mode that took its savepoint) or never deployed.
        return Ok(None);
    }
    let latest = job
        .status
        .as_ref()
        .and_then(|s| s.last_checkpoint.as_ref())
        .map_or("none known".to_string(), |c| c.path.clone());
    let give_up =
        |why: String| format!("{why}; deleting without a savepoint (latest checkpoint: {latest})");
    let deleted = job
        .meta()
        .deletion_timestamp
        .as_ref()
        .map_or(Timestamp::now(), |t| t.0);
    let elapsed = Timestamp::now().duration_since(deleted);
    if elapsed.as_secs() >= DELETION_SAVEPOINT_DEADLINE.as_secs() as i64 {
        let note = give_up(format!(
            "no savepoint {} s after the deletion",
            DELETION_SAVEPOINT_DEADLINE.as_secs()
        ));
        warn_event(ctx, job, "SavepointFailed", "Delete", &note).await;
        return Ok(None);
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let token = secrets
        .get_opt(&resources::token_secret_name(&name))
        .await?
        .and_then(|s| token_of(&s))
        .unwrap_or_default();
    let target = Target {
        namespace: ns,
        job: name,
        token,
    };
    let result = match ctx.control.status(&target).await {
        Ok(r) if r.state == RunState::Finished || r.state == RunState::Failed => {
            let (type_, note) = match r.state {
                RunState::Finished => (
                    EventType::Normal,
                    format!(
                        "no savepoint before deletion: the job had finished (final snapshot: {})",
                        r.latest_snapshot().map_or("none", |s| s.path.as_str())
                    ),
                ),
                _ => (
                    EventType::Warning,
                    format!(
                        "no savepoint before deletion: the job had failed (latest checkpoint: {})",
                        r.last_checkpoint
                            .as_ref()
                            .map_or("none", |s| s.path.as_str())
                    ),
                ),
            };
            inform(ctx, job, type_, "SavepointSkipped", "Delete", &note).await;
            return Ok(None);
        }
        Ok(_) => ctx.control.trigger_savepoint(&target, true).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(savepoint) => {
            let note = format!("savepoint before deletion: {}", savepoint.path);
            inform(
                ctx,
                job,
                EventType::Normal,
                "SavepointTaken",
                "Delete",
                &note,
            )
            .await;
            Ok(None)
        }
        Err(e) => {
            let attempt = {
                let mut attempts = ctx.deletion_attempts.lock().unwrap();
                let n = attempts.entry(key(job)).or_insert(0);
                *n += 1;
                *n
            };
            let why = format!(
                "stop-with-savepoint before deletion failed (attempt {attempt} of \
                 {DELETION_SAVEPOINT_ATTEMPTS}): {e}"
            );
            let (note, retry) = match attempt >= DELETION_SAVEPOINT_ATTEMPTS {
                true => (give_up(why), false),
                false => (format!("{why}; retrying"), true),
            };
            warn_event(ctx, job, "SavepointFailed", "Delete", &note).await;
            Ok(retry.then_some(note))
        }
    }
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

/// Creates the job's exchange token Secret once (a random 128-bit token) and returns the
/// token (the bearer of the job control calls; empty if the Secret holds none).
async fn ensure_token(ctx: &Context, job: &StreamJob, ns: &str) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = resources::token_secret_name(&job.name_any());
    if let Some(secret) = api.get_opt(&name).await? {
        return Ok(token_of(&secret).unwrap_or_default());
    }
    let token = random_token().map_err(Error::Token)?;
    match api
        .create(
            &PostParams::default(),
            &resources::token_secret(job, &token),
        )
        .await
    {
        Ok(_) => Ok(token),
        // Another reconcile created it first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api
            .get_opt(&name)
            .await?
            .and_then(|s| token_of(&s))
            .unwrap_or_default()),
        Err(e) => Err(e.into()),
    }
}

/// The token in a job's Secret.
fn token_of(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref().and_then(|d| d.get("token"));
    match data {
        Some(bytes) => String::from_utf8(bytes.0.clone()).ok(),
        None => secret
            .string_data
            .as_ref()
            .and_then(|d| d.get("token").cloned()),
    }
}

fn random_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Logs `note` and publishes it as an event of the job (of any type: a failed job is news,
/// not an operator problem).
async fn inform(
    ctx: &Context,
    job: &StreamJob,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    info!("{note}");
    publish(ctx, job, type_, reason, action, note).await;
}

/// Logs `note` as a warning and publishes it as a Warning event of the job.
async fn warn_event(ctx: &Context, job: &StreamJob, reason: &str, action: &str, note: &str) {
    warn!("{note}");
    publish(ctx, job, EventType::Warning, reason, action, note).await;
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
    // The same warning again soon (a blocked upgrade retried with backoff) is not repeated;
    // transitions always are.
    let recent = (key(job), reason.to_string());
    if type_ == EventType::Warning {
        let mut events = ctx.recent_events.lock().unwrap();
        if let Some((last, at)) = events.get(&recent)
            && *last == note
            && at.elapsed() < EVENT_REPEAT_AFTER
        {
            return;
        }
        events.insert(recent, (note.clone(), Instant::now()));
    }
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    // A recorder per event: kube's Recorder folds events of the same reason into one series
    // and keeps the first note, and each note here matters (a savepoint's path, attempt n).
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    // Events are best effort: failing to record one must not fail the reconcile.
    if let Err(e) = recorder.publish(&ev, &job.object_ref(&())).await {
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
