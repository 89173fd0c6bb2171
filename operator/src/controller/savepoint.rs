//! Savepoints the operator takes of running workers: the stop-with-savepoint a change in
//! `savepoint` mode needs, and the one `savepointTriggerNonce` asks for.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use streamjob_crds::spec::{StreamJob, StreamJobStatus, UpgradeStatus};
use tracing::info;

use super::context::{Context, DEPLOYING, Error, SAVEPOINTING, key};
use super::events::{inform, patch_status, warn_event};
use super::upgrade::{BLOCKED_ADVICE, replicas};
use crate::control::{ControlError, JobReport, RunState, Target};
use crate::resources::Run;

/// The savepoint a change of running workers in savepoint mode restores from: `Ok(Ok(path))`,
/// or `Ok(Err(why))` when it cannot be had now. Records `upgrade` in the status before it
/// stops the workers, and the savepoint's path before anything else happens.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn savepoint_for_change(
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

/// `savepointTriggerNonce`: a savepoint of the running job (it keeps running).
pub(crate) async fn take_requested_savepoint(
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
