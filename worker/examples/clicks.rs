//! Clicks per user per minute in event time, with late clicks to a side output: the Rust
//! twin of manifests/examples/clicks-per-minute.yaml (same clicks, same results).
//!
//! Usage: cargo run -p streamjob-worker --example clicks

use std::time::Duration;

use serde::{Deserialize, Serialize};
use streamjob::StreamExecutionEnvironment;
use streamjob::api::watermark::WatermarkStrategy;
use streamjob::api::windows::{
    AggregateFunction, OutputTag, TumblingEventTimeWindows, WindowContext,
};
use streamjob::{Collector, DataStream};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Click {
    user: String,
    url: String,
    /// Event time, ms since the epoch.
    ts: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserMinute {
    user: String,
    minute: i64,
    clicks: u64,
}

struct Count;

impl AggregateFunction<Click> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: Click, acc: &mut u64) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

fn clicks() -> Vec<Click> {
    [
        ("alice", "/home", 1700000045000),
        ("bob", "/home", 1700000052000),
        ("alice", "/cart", 1700000080000),
        ("alice", "/pay", 1700000098000),
        ("bob", "/shop", 1700000102000),
        ("alice", "/home", 1700000099000),
        ("bob", "/cart", 1700000110000),
        ("alice", "/help", 1700000090000),
        ("alice", "/home", 1700000130000),
        ("bob", "/pay", 1700000165000),
        ("carol", "/home", 1700000170000),
        ("bob", "/shop", 1700000159000),
    ]
    .into_iter()
    .map(|(user, url, ts)| Click {
        user: user.into(),
        url: url.into(),
        ts,
    })
    .collect()
}

fn main() -> anyhow::Result<()> {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    let late_clicks = OutputTag::<Click>::new("late-clicks");
    let clicks: DataStream<Click> = env
        .from_collection(clicks())
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_secs(5))
                .with_timestamp_assigner(|c: &Click, _| c.ts)
                // A watermark after every click, so which clicks are late does not depend on timing.
                .with_watermark_per_record(),
        )
        // One subtask, like the collection source: over two, the window's watermark would
        // be the minimum of two channels, and which clicks are late would depend on timing.
        .set_parallelism(1);
    let per_minute = clicks
        .key_by(|c: &Click| c.user.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_secs(60)))
        .side_output_late_data(&late_clicks)
        .aggregate_with_process(
            Count,
            |user: &String,
             ctx: &WindowContext,
             clicks: u64,
             out: &mut Collector<'_, UserMinute>| {
                out.collect(UserMinute {
                    user: user.clone(),
                    minute: ctx.window.start,
                    clicks,
                })
            },
        );
    per_minute.print();
    per_minute
        .get_side_output(&late_clicks)
        .map(|c: Click| format!("late: {c:?}"))
        .print();
    env.execute("clicks per minute")?;
    Ok(())
}
