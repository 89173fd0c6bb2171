//! Nexmark queries on the built-in generator, printed to stdout.
//!
//! Usage: cargo run --release -p streamjob-worker --example nexmark -- QUERY [EVENTS] [PARALLELISM]
//! QUERY is q0, q1, q2, q5 or q7; EVENTS defaults to 100000 (at 10000 events per second of
//! event time), PARALLELISM to 1.

use streamjob::StreamExecutionEnvironment;
use streamjob::connectors::nexmark::{GeneratorConfig, NexmarkSource, queries};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let query = args.next().unwrap_or_else(|| "q0".into());
    let events: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let parallelism: u32 = args.next().map_or(Ok(1), |a| a.parse())?;

    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(parallelism);
    let config = GeneratorConfig {
        events: Some(events),
        ..GeneratorConfig::default()
    };
    let source = env.from_source(NexmarkSource::new(config), "nexmark");
    match query.as_str() {
        "q0" => {
            queries::q0(&source).print();
        }
        "q1" => {
            queries::q1(&source).print();
        }
        "q2" => {
            queries::q2(&source).print();
        }
        "q5" => {
            queries::q5(&source).print();
        }
        "q7" => {
            queries::q7(&source).print();
        }
        other => anyhow::bail!("unknown query '{other}': use q0, q1, q2, q5 or q7"),
    }
    env.execute(&format!("nexmark {query}"))?;
    Ok(())
}
