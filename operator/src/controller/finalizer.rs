//! Deletion: the [`FINALIZER`] of jobs that take a savepoint when deleted, and that savepoint.
//!
//! kube-runtime's `finalizer` helper is not used: it puts its finalizer on every object, and
//! ours belongs only on jobs that want a deletion savepoint (`savepointOnDeletion` with a
//! stateful `upgradeMode`), so that a stateless job stays deletable when no operator runs;
//! and its cleanup cannot give up, while a deletion savepoint is bounded in attempts and time.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use streamjob_crds::spec::{StreamJob, UpgradeMode};

use super::children::token_of;
use super::context::{
    Context, DELETION_SAVEPOINT_ATTEMPTS, DELETION_SAVEPOINT_DEADLINE, Error, FINALIZER, MANAGER,
    key,
};
use super::events::{inform, warn_event};
use super::upgrade::replicas;
use crate::control::{RunState, Target};
use crate::resources;

/// Whether the job needs the deletion savepoint finalizer.
pub(crate) fn wants_finalizer(job: &StreamJob) -> bool {
    job.spec.savepoint_on_deletion && job.spec.upgrade_mode != UpgradeMode::Stateless
}

/// Adds or removes [`FINALIZER`] as `savepointOnDeletion` and `upgradeMode` say (a merge patch
/// of the whole list, guarded by the resourceVersion, so other finalizers are kept).
pub(crate) async fn sync_finalizer(job: &StreamJob, jobs: &Api<StreamJob>) -> Result<(), Error> {
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

pub(crate) async fn remove_finalizer(job: &StreamJob, jobs: &Api<StreamJob>) -> Result<(), Error> {
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

pub(crate) async fn set_finalizers(
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
pub(crate) async fn finalize(
    job: &StreamJob,
    ctx: &Context,
    jobs: &Api<StreamJob>,
) -> Result<Action, Error> {
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
pub(crate) async fn deletion_savepoint(
    job: &StreamJob,
    ctx: &Context,
) -> Result<Option<String>, Error> {
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
