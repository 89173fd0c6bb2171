//! The Prometheus (OpenMetrics text) view of [`JobMetrics`], produced at scrape time by a
//! prometheus-client collector: nothing is copied into metric objects while the job runs.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::exchange::ChannelSnapshot;
use super::{Direction, JobMetrics, TaskSnapshot, global};

pub(super) type Labels = Vec<(&'static str, String)>;

/// The collector over the process's registry.
#[derive(Debug)]
struct Job;

pub(super) fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut f = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, m) in samples {
        m.encode(f.encode_family(&labels)?)?;
    }
    Ok(())
}

fn task_labels(job: &str, t: &TaskSnapshot) -> Labels {
    vec![
        ("job", job.to_string()),
        ("operator", t.operator.clone()),
        ("subtask", t.subtask.to_string()),
    ]
}

impl Collector for Job {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m: &JobMetrics = global();
        let job = m.job_name();
        let tasks = m.snapshots();
        let per_task = |f: fn(&TaskSnapshot) -> u64| {
            tasks
                .iter()
                .map(|t| (task_labels(&job, t), ConstCounter::new(f(t))))
                .collect::<Vec<_>>()
        };
        let per_task_secs = |f: fn(&TaskSnapshot) -> f64| {
            tasks
                .iter()
                .map(|t| (task_labels(&job, t), ConstCounter::new(f(t))))
                .collect::<Vec<_>>()
        };
        let counter = MetricType::Counter;
        family(
            &mut enc,
            "records_in",
            "Records that entered the chain headed by this operator (read by a source or received)",
            None,
            counter,
            per_task(|t| t.records_in),
        )?;
        family(
            &mut enc,
            "records_out",
            "Records the chain headed by this operator sent downstream or wrote to its sink",
            None,
            counter,
            per_task(|t| t.records_out),
        )?;
        family(
            &mut enc,
            "task_busy",
            "Time the task spent processing (neither idle nor backpressured)",
            Some(Unit::Seconds),
            counter,
            per_task_secs(|t| t.busy_seconds),
        )?;
        family(
            &mut enc,
            "task_idle",
            "Time the task waited for input",
            Some(Unit::Seconds),
            counter,
            per_task_secs(|t| t.idle_seconds),
        )?;
        family(
            &mut enc,
            "task_backpressured",
            "Time the task waited for room in a downstream channel",
            Some(Unit::Seconds),
            counter,
            per_task_secs(|t| t.backpressured_seconds),
        )?;
        family(
            &mut enc,
            "task_input_watermark",
            "Current input watermark of the task (event time, ms since the epoch); absent before the first",
            None,
            MetricType::Gauge,
            tasks.iter().filter_map(|t| {
                t.watermark
                    .map(|w| (task_labels(&job, t), ConstGauge::new(w)))
            }),
        )?;
        let per_task_gauge = |f: fn(&TaskSnapshot) -> Option<f64>| {
            tasks
                .iter()
                .filter_map(|t| f(t).map(|v| (task_labels(&job, t), ConstGauge::new(v))))
                .collect::<Vec<_>>()
        };
        let gauge = MetricType::Gauge;
        let bytes = Some(Unit::Bytes);
        let seconds = Some(Unit::Seconds);
        for (name, help, unit, samples) in [
            (
                "task_input",
                "Bytes into the task: read by its source (file and socket bytes, Kafka keys \
                 and payloads), and received from other workers (in-process hand-overs count \
                 none)",
                bytes.clone(),
                per_task(|t| t.bytes_in),
            ),
            (
                "task_output",
                "Bytes out of the task: written by its sink (file bytes, Kafka keys and \
                 payloads), and sent to other workers over the exchange (encoded batches)",
                bytes.clone(),
                per_task(|t| t.bytes_out),
            ),
            (
                "source_read",
                "Bytes a source read from its input (file and socket bytes, Kafka keys and \
                 payloads)",
                bytes.clone(),
                per_task(|t| t.source_bytes_read),
            ),
            (
                "checkpoint_alignments",
                "Checkpoint barriers aligned at the task's input gate",
                None,
                per_task(|t| t.alignments),
            ),
        ] {
            family(&mut enc, name, help, unit, counter, samples)?;
        }
        family(
            &mut enc,
            "checkpoint_alignment",
            "Time inputs of the task were blocked aligning checkpoint barriers",
            seconds.clone(),
            counter,
            per_task_secs(|t| t.alignment_seconds),
        )?;
        for (name, help, unit, samples) in [
            (
                "checkpoint_alignment_last",
                "Time the last aligned barrier kept inputs of the task blocked",
                seconds.clone(),
                per_task_gauge(|t| Some(t.alignment_last_seconds)),
            ),
            (
                "task_event_time_lag",
                "Wall clock minus the task's input watermark; absent without a watermark",
                seconds.clone(),
                per_task_gauge(|t| t.event_time_lag_seconds),
            ),
            (
                "task_input_queue_batches",
                "Batches waiting in the task's input channels (sampled every 64 batches it takes)",
                None,
                per_task_gauge(|t| Some(t.queued_batches as f64)),
            ),
            (
                "source_input_size",
                "Size of a bounded source's input (its share of the files)",
                bytes.clone(),
                per_task_gauge(|t| t.source_total_bytes.map(|b| b as f64)),
            ),
            (
                "source_input_records",
                "Records of a bounded collection source",
                None,
                per_task_gauge(|t| t.source_total_records.map(|r| r as f64)),
            ),
        ] {
            family(&mut enc, name, help, unit, gauge, samples)?;
        }
        let channels = m.channel_snapshots();
        let channel_labels = |c: &ChannelSnapshot| -> Labels {
            vec![
                ("job", job.clone()),
                ("from_operator", c.from_operator.clone()),
                ("from_subtask", c.from.to_string()),
                ("to_operator", c.to_operator.clone()),
                ("to_subtask", c.to.to_string()),
                ("peer", c.peer.to_string()),
            ]
        };
        let per_channel = |d: Direction, f: fn(&ChannelSnapshot) -> u64| {
            channels
                .iter()
                .filter(|c| c.direction == d)
                .map(|c| (channel_labels(c), ConstCounter::new(f(c))))
                .collect::<Vec<_>>()
        };
        for (name, help, unit, samples) in [
            (
                "exchange_sent",
                "Bytes of encoded batches sent to the peer worker on this channel",
                bytes.clone(),
                per_channel(Direction::Sent, |c| c.bytes),
            ),
            (
                "exchange_sent_batches",
                "Batches sent to the peer worker on this channel",
                None,
                per_channel(Direction::Sent, |c| c.batches),
            ),
            (
                "exchange_received",
                "Bytes of encoded batches received from the peer worker on this channel",
                bytes.clone(),
                per_channel(Direction::Received, |c| c.bytes),
            ),
            (
                "exchange_received_batches",
                "Batches received from the peer worker on this channel",
                None,
                per_channel(Direction::Received, |c| c.batches),
            ),
        ] {
            family(&mut enc, name, help, unit, counter, samples)?;
        }
        family(
            &mut enc,
            "exchange_credits_outstanding",
            "Batches the receiver granted that the sender has not used yet (0: the sender waits)",
            None,
            gauge,
            channels
                .iter()
                .filter(|c| c.direction == Direction::Sent)
                .map(|c| (channel_labels(c), ConstGauge::new(c.credits as i64))),
        )?;
        let job_only = || vec![("job", job.clone())];
        let c = &m.checkpoints;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "checkpoints_triggered",
                "Checkpoints triggered",
                load(&c.triggered),
            ),
            (
                "checkpoints_completed",
                "Checkpoints completed",
                load(&c.completed),
            ),
            ("checkpoints_failed", "Checkpoints failed", load(&c.failed)),
            (
                "restarts",
                "Times the job restarted after a failure",
                m.restarts.load(Ordering::Relaxed),
            ),
            (
                "records_skipped",
                "Records dropped by an onError: skip policy",
                m.on_error_counts().0,
            ),
            (
                "records_dead_lettered",
                "Records sent to the dead-letter output by an onError policy",
                m.on_error_counts().1,
            ),
        ] {
            family(
                &mut enc,
                name,
                help,
                None,
                counter,
                [(job_only(), ConstCounter::new(value))],
            )?;
        }
        let last = |ms: u64| ms as f64 / 1000.0;
        for (name, help, unit, value) in [
            (
                "checkpoint_last_duration",
                "Duration of the last completed checkpoint",
                Some(Unit::Seconds),
                last(load(&c.last_duration_ms)),
            ),
            (
                "checkpoint_last_size",
                "State size of the last completed checkpoint",
                Some(Unit::Bytes),
                load(&c.last_size_bytes) as f64,
            ),
            (
                "checkpoint_last_completed_id",
                "Id of the last completed checkpoint",
                None,
                load(&c.last_completed_id) as f64,
            ),
            (
                "checkpoint_last_completed_timestamp",
                "When the last checkpoint completed (Unix time)",
                Some(Unit::Seconds),
                last(load(&c.last_completed_ms)),
            ),
            (
                "job_start_timestamp",
                "When this process started the job (Unix time)",
                Some(Unit::Seconds),
                last(m.started_ms),
            ),
        ] {
            family(
                &mut enc,
                name,
                help,
                unit,
                gauge,
                [(job_only(), ConstGauge::new(value))],
            )?;
        }
        super::kafka::encode(&mut enc, &job)?;
        Ok(())
    }
}

/// The Prometheus text exposition of the process's job metrics.
pub fn render() -> String {
    let mut registry = Registry::with_prefix("streamjob");
    registry.register_collector(Box::new(Job));
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &registry)
        .expect("writing to a String cannot fail");
    s
}
