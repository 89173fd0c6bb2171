//! StreamJob status: phase, standard conditions (with observedGeneration and transition
//! times that only move when a condition's status changes), workers and the plan summary.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use streamjob_crds::plan::PhysicalPlan;
use streamjob_crds::spec::{JobState, Phase, PlanStatus, StreamJob, StreamJobStatus};

use crate::control::{JobReport, RunState};

/// What the StatefulSet reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub ready: i32,
    /// The StatefulSet controller has seen the latest spec and every pod runs it.
    pub rolled_out: bool,
}

impl Observed {
    pub fn from_statefulset(sts: &StatefulSet) -> Self {
        let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let generation = sts.metadata.generation.unwrap_or(0);
        let Some(s) = &sts.status else {
            return Observed::default();
        };
        let current = s.observed_generation.unwrap_or(0) >= generation;
        Observed {
            ready: s.ready_replicas.unwrap_or(0),
            rolled_out: current && s.updated_replicas.unwrap_or(0) >= want && s.replicas == want,
        }
    }
}

fn condition(job: &StreamJob, type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the status stays the same.
    let last = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: job.metadata.generation,
        last_transition_time: last.unwrap_or_else(|| Time(Timestamp::now())),
    }
}

/// Status of a job the validator rejected: nothing else is touched.
pub fn invalid(job: &StreamJob, errors: &[String]) -> StreamJobStatus {
    rejected(job, "InvalidSpec", "the spec is invalid", errors)
}

/// Status of a job the operator will not deploy as specified (`reason`: `InvalidSpec`,
/// `WorkerLimitExceeded`, `UnknownFields`): workers of an earlier spec keep running.
pub fn rejected(job: &StreamJob, reason: &str, what: &str, errors: &[String]) -> StreamJobStatus {
    let message = match reason {
        "InvalidSpec" => format!("invalid spec: {}", errors.join("; ")),
        _ => format!("{what}: {}", errors.join("; ")),
    };
    let prev = job.status.clone().unwrap_or_default();
    StreamJobStatus {
        phase: Some(Phase::Failed),
        conditions: vec![
            condition(job, "SpecValid", false, reason, &errors.join("\n")),
            condition(job, "Ready", false, reason, what),
            condition(
                job,
                "Progressing",
                false,
                reason,
                "waiting for a spec the operator can deploy",
            ),
            condition(job, "Degraded", true, reason, what),
        ],
        observed_generation: job.metadata.generation,
        // Workers of an earlier valid spec keep running; report what is known.
        ready_workers: prev.ready_workers,
        desired_workers: prev.desired_workers,
        plan: prev.plan.clone(),
        message: Some(message),
        // Checkpoint and savepoint history stays as the running workers reported it.
        ..prev
    }
}

fn plan_status(plan: &PhysicalPlan) -> PlanStatus {
    let summary = plan
        .chains
        .iter()
        .map(|c| {
            let names: Vec<&str> = c
                .nodes
                .iter()
                .map(|&n| plan.nodes[n].name.as_str())
                .collect();
            format!("{} (x{})", names.join(" -> "), c.parallelism)
        })
        .collect::<Vec<_>>()
        .join(" | ");
    PlanStatus {
        chains: plan.chains.len() as u32,
        slots: plan.slots_needed(),
        fingerprint: format!("{:016x}", plan.fingerprint()),
        summary: Some(summary),
    }
}

/// What a reconcile learned beyond the StatefulSet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report<'a> {
    /// The job's own answer (`GetStatus` of worker 0) about the workers that run now.
    pub job: Option<&'a JobReport>,
    /// Why a change waits: the savepoint it needs failed, so the old workers keep running.
    pub blocked: Option<&'a str>,
    /// Why worker pods cannot be created or started (image pull errors, crash loops, the
    /// StatefulSet's FailedCreate events), when some are missing or not ready.
    pub deployment: Option<&'a str>,
}

/// Status of a job one of whose children the API server refused: the conditions say which
/// and why; the rest (workers, plan, history) stays as it was.
pub fn child_rejected(job: &StreamJob, base: &StreamJobStatus, message: &str) -> StreamJobStatus {
    let prev = job.status.clone().unwrap_or_default();
    let reason = "ChildRejected";
    StreamJobStatus {
        conditions: vec![
            condition(job, "SpecValid", true, "Valid", "the spec is valid"),
            condition(job, "Ready", false, reason, message),
            condition(job, "Progressing", false, reason, message),
            condition(job, "Degraded", true, reason, message),
        ],
        phase: Some(prev.phase.unwrap_or(Phase::Pending)),
        observed_generation: job.metadata.generation,
        message: Some(message.to_string()),
        last_failure: Some(message.to_string()),
        ..base.clone()
    }
}

/// Status of a valid job: `base` (run, snapshots, upgrade) with the phase, conditions and
/// workers from the StatefulSet, the job's own report and a blocked change.
pub fn running(
    job: &StreamJob,
    base: &StreamJobStatus,
    plan: &PhysicalPlan,
    workers: i32,
    o: &Observed,
    report: &Report<'_>,
) -> StreamJobStatus {
    let suspended = job.spec.state == JobState::Suspended && report.blocked.is_none();
    let desired = if suspended { 0 } else { workers };
    let valid = condition(job, "SpecValid", true, "Valid", "the spec is valid");
    let all_ready = o.ready >= desired && o.rolled_out;
    let upgrading = base.upgrade.as_ref().map(|u| u.target_generation);
    let four = |phase: Phase,
                ready: (bool, &str),
                progressing: (bool, &str),
                degraded: (bool, &str),
                msg: String| {
        (
            phase,
            vec![
                valid.clone(),
                condition(job, "Ready", ready.0, ready.1, &msg),
                condition(job, "Progressing", progressing.0, progressing.1, &msg),
                condition(job, "Degraded", degraded.0, degraded.1, &msg),
            ],
            msg,
        )
    };
    let (phase, conditions, message) = if let Some(why) = report.blocked {
        // The old workers keep running: their phase, with the reason nothing moves.
        let phase = if all_ready {
            Phase::Running
        } else {
            Phase::Deploying
        };
        four(
            phase,
            (
                all_ready,
                if all_ready {
                    "AllWorkersReady"
                } else {
                    "WorkersNotReady"
                },
            ),
            (false, "SavepointFailed"),
            (true, "SavepointFailed"),
            why.to_string(),
        )
    } else if let Some(cause) = report.deployment.filter(|_| !suspended && !all_ready) {
        four(
            Phase::Deploying,
            (false, "DeploymentFailed"),
            (false, "DeploymentFailed"),
            (true, "DeploymentFailed"),
            format!("{}/{desired} workers ready: {cause}", o.ready.min(desired)),
        )
    } else if suspended {
        let msg = if o.ready > 0 {
            format!("suspending: {} worker(s) still running", o.ready)
        } else {
            "suspended: no workers run".to_string()
        };
        four(
            Phase::Suspended,
            (false, "Suspended"),
            (o.ready > 0, "Suspended"),
            (false, "Suspended"),
            msg,
        )
    } else if let Some(r) = report.job.filter(|_| all_ready && upgrading.is_none()) {
        let cause = r.failure.as_deref().unwrap_or("no cause reported");
        match &r.state {
            RunState::Finished => four(
                Phase::Finished,
                (false, "Finished"),
                (false, "Finished"),
                (false, "Finished"),
                "finished: every source ended; the workers idle".into(),
            ),
            RunState::Failed => four(
                Phase::Failed,
                (false, "JobFailed"),
                (false, "JobFailed"),
                (true, "JobFailed"),
                format!("the job failed after {} restart(s): {cause}", r.restarts),
            ),
            RunState::Restarting => four(
                Phase::Deploying,
                (false, "Restarting"),
                (true, "Restarting"),
                (true, "Restarting"),
                format!(
                    "restarting after a failure ({} so far): {cause}",
                    r.restarts
                ),
            ),
            RunState::Running | RunState::Other(_) => four(
                Phase::Running,
                (true, "AllWorkersReady"),
                (false, "RolloutComplete"),
                (false, "AllWorkersReady"),
                format!("{desired}/{desired} workers ready"),
            ),
        }
    } else if all_ready && upgrading.is_none() {
        four(
            Phase::Running,
            (true, "AllWorkersReady"),
            (false, "RolloutComplete"),
            (false, "AllWorkersReady"),
            format!("{desired}/{desired} workers ready"),
        )
    } else {
        let ready = format!("{}/{desired} workers ready", o.ready.min(desired));
        let (reason, msg) = match &base.upgrade {
            Some(u) => (
                "Upgrading",
                format!("upgrading to generation {}: {ready}", u.target_generation),
            ),
            None => ("RollingOut", ready),
        };
        four(
            Phase::Deploying,
            (false, "WorkersNotReady"),
            (true, reason),
            (false, reason),
            msg,
        )
    };
    StreamJobStatus {
        phase: Some(phase),
        conditions,
        observed_generation: job.metadata.generation,
        ready_workers: Some(o.ready),
        desired_workers: Some(desired),
        plan: Some(plan_status(plan)),
        message: Some(message),
        ..base.clone()
    }
}
