//! What a running job says about itself (`GetStatus` of worker 0), and how it goes into the
//! status.

use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use streamjob_crds::spec::{SnapshotInfo, StreamJob, StreamJobStatus};
use tracing::info;

use super::context::{Context, REPORT_TTL, key};
use crate::control::{ControlError, JobReport, Target};

/// The job's own report, reused for [`REPORT_TTL`].
pub(crate) async fn job_report(
    ctx: &Context,
    job: &StreamJob,
    target: &Target,
    workers: u32,
) -> Result<JobReport, ControlError> {
    let key = key(job);
    if let Some((at, report)) = ctx.reports.lock().unwrap().get(&key)
        && at.elapsed() < REPORT_TTL
    {
        return Ok(report.clone());
    }
    let mut report = ctx.control.status(target).await;
    if let Ok(r) = &mut report {
        r.metrics = ctx.control.rates(target, workers).await;
    }
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
pub(crate) fn merge_report(st: &mut StreamJobStatus, r: &JobReport, restored_from: bool) {
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
    st.restarts = Some(r.restarts);
    if let Some(m) = &r.metrics {
        st.records_in_per_second = Some(m.records_in_per_second);
        st.records_out_per_second = Some(m.records_out_per_second);
        st.kafka_lag = m.kafka_lag;
    }
}

/// Whether `a` completed after `b` (a savepoint the operator took for an upgrade is newer
/// than anything the new run reports until it takes one itself).
pub(crate) fn newer(a: &SnapshotInfo, b: Option<&SnapshotInfo>) -> bool {
    let Some(b) = b else { return true };
    match (a.time.parse::<Timestamp>(), b.time.parse::<Timestamp>()) {
        (Ok(ta), Ok(tb)) => ta > tb,
        _ => a.path != b.path,
    }
}
