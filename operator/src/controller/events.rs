//! Events of a job (deduplicated warnings) and its status patch.

use std::time::Instant;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource};
use streamjob_crds::spec::StreamJob;
use tracing::{info, warn};

use super::context::{Context, EVENT_REPEAT_AFTER, Error, MANAGER, key};

/// Logs `note` and publishes it as an event of the job (of any type: a failed job is news,
/// not an operator problem).
pub(crate) async fn inform(
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
pub(crate) async fn warn_event(
    ctx: &Context,
    job: &StreamJob,
    reason: &str,
    action: &str,
    note: &str,
) {
    warn!("{note}");
    publish(ctx, job, EventType::Warning, reason, action, note).await;
}

pub(crate) async fn publish(
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

pub(crate) async fn patch_status(
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
