//! Which run the workers' StatefulSet gets (see the module docs of [`super`]): creation,
//! upgrades by `upgradeMode`, suspend and resume, and the events that announce each.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use streamjob_crds::plan::PhysicalPlan;
use streamjob_crds::spec::{
    JobState, Phase, StreamJob, StreamJobStatus, UpgradeMode, UpgradeStatus,
};

use super::context::{Context, DEPLOYING, Error};
use super::events::{inform, patch_status, publish, warn_event};
use super::savepoint::savepoint_for_change;
use crate::control::{ControlError, JobReport, RunState, Target};
use crate::resources::{self, Children, Run};
use crate::status::{self, Observed, Report};

pub(crate) fn replicas(sts: &StatefulSet) -> i32 {
    sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

pub(crate) fn template_annotation<'a>(sts: &'a StatefulSet, name: &str) -> Option<&'a str> {
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
pub(crate) enum Transition {
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
pub(crate) struct Step {
    pub(crate) run: Run,
    pub(crate) transition: Transition,
    /// The savepoint the change took (or restores), for events and `status.upgrade`.
    pub(crate) savepoint: Option<String>,
}

pub(crate) enum Next {
    Apply(Step),
    /// The savepoint the change needs failed: nothing is applied.
    Blocked(String),
}

/// Why a change of running workers in savepoint mode needs no savepoint: no worker is ready,
/// worker 0 does not answer, and no checkpoint of the run is known, so the job never produced
/// state (its pods never started, e.g. a bad image) and insisting on a savepoint would block
/// the very change that fixes it. `None` when a savepoint is needed (or was taken already).
pub(crate) fn no_state_to_save(
    st: &StreamJobStatus,
    sts: &StatefulSet,
    current: &Run,
    report: &Option<Result<JobReport, ControlError>>,
) -> Option<String> {
    let taken = st
        .upgrade
        .as_ref()
        .is_some_and(|u| u.step == DEPLOYING && u.savepoint_path.is_some());
    let checkpointed = st
        .last_checkpoint
        .as_ref()
        .is_some_and(|c| c.path.contains(&format!("/{}/", current.id)));
    let ready = Observed::from_statefulset(sts).ready;
    match report {
        Some(Err(e)) if ready == 0 && !taken && !checkpointed => Some(format!(
            "no worker of run {} is ready, no checkpoint of it is known and {e}",
            current.id
        )),
        _ => None,
    }
}

/// Announces a savepoint-mode change that goes ahead without a savepoint.
async fn skip_savepoint(
    ctx: &Context,
    job: &StreamJob,
    st: &mut StreamJobStatus,
    what: &str,
    why: &str,
    current: &Run,
) {
    st.upgrade = None;
    let starts = match &current.restore_from {
        Some(p) => format!("else from {p}, where the run started"),
        None => "else from empty state, where the run started".into(),
    };
    let note = format!(
        "{what} proceeds without a savepoint: the job never produced state ({why}); the new \
         pods restore the latest checkpoint of run {} if one exists, {starts}",
        current.id
    );
    publish(
        ctx,
        job,
        EventType::Warning,
        "SavepointSkipped",
        "Savepoint",
        &note,
    )
    .await;
}

/// Advice that goes with every blocked change.
pub(crate) const BLOCKED_ADVICE: &str = "the old workers keep running and the savepoint is retried with \
     backoff; to change without a savepoint set upgradeMode: last-state (restores the latest \
     checkpoint) or stateless (starts empty)";

/// Decides the run the StatefulSet gets (see the module docs), taking the savepoint a change
/// in savepoint mode needs.
pub(crate) async fn next_run(
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
                    if let Some(why) = no_state_to_save(st, sts, &current, report) {
                        skip_savepoint(ctx, job, st, &what, &why, &current).await;
                        return Ok(step(same, transition, None));
                    }
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
                if let Some(why) = no_state_to_save(st, sts, &current, report) {
                    skip_savepoint(ctx, job, st, "the suspend", &why, &current).await;
                    return Ok(step(same, Transition::Suspend, None));
                }
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

/// A change that waits for its savepoint: the old workers and their objects stay as they are;
/// the failure is reported and the reconcile fails, for a retry with backoff.
pub(crate) async fn blocked(
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
            deployment: None,
        },
    );
    // The old workers still run the old plan.
    status.plan = st.plan.clone();
    patch_status(jobs, &job.name_any(), &status).await?;
    Err(Error::Savepoint(why))
}

/// Events for the step just applied, and the end of an upgrade.
pub(crate) async fn announce(
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
pub(crate) async fn announce_job_state(
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
