//! The `streamjob` command line.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use streamjob::{Collector, DataStream, StreamExecutionEnvironment};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Text counted when no input is given.
const EMBEDDED_TEXT: &str = include_str!("../data/wordcount.txt");

#[derive(Parser)]
#[command(
    name = "streamjob",
    version,
    about = "Flink's DataStream model in Rust, native on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Streaming word count written with the Rust DataStream API: prints a running count for
    /// every word as it arrives (Flink's classic example).
    Wordcount {
        /// Read lines from a text file or a directory of files (bounded).
        #[arg(long, conflicts_with = "socket")]
        file: Option<PathBuf>,
        /// Read lines from a TCP server, e.g. `localhost:9999` after `nc -lk 9999`.
        #[arg(long)]
        socket: Option<String>,
        /// Default parallelism of the job.
        #[arg(long, short, default_value_t = 1)]
        parallelism: u32,
        /// Print the plan instead of running the job.
        #[arg(long)]
        explain: bool,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STREAMJOB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> Result<()> {
    init_tracing();
    match Cli::parse().command {
        Command::Wordcount {
            file,
            socket,
            parallelism,
            explain,
        } => wordcount(file, socket, parallelism, explain),
    }
}

fn wordcount(
    file: Option<PathBuf>,
    socket: Option<String>,
    parallelism: u32,
    explain: bool,
) -> Result<()> {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(parallelism);
    let lines: DataStream<String> = match (file, socket) {
        (Some(path), _) => env.read_text_file(path),
        (None, Some(addr)) => {
            let (host, port) = addr.rsplit_once(':').context("--socket takes HOST:PORT")?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("bad port in --socket {addr}"))?;
            env.socket_text_stream(host, port)
        }
        (None, None) => env.from_collection(
            EMBEDDED_TEXT
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>(),
        ),
    };
    lines
        .flat_map(|line: String, out: &mut Collector<'_, (String, u64)>| {
            for word in line.to_lowercase().split_whitespace() {
                out.collect((word.to_string(), 1));
            }
        })
        .name("tokenize")
        .key_by_ref(|(word, _): &(String, u64)| word.as_str())
        .reduce(|(word, a), (_, b)| (word, a + b))
        .name("count")
        .print()
        .name("print");
    if explain {
        print!("{}", env.plan("wordcount")?.explain());
        return Ok(());
    }
    if parallelism == 0 {
        bail!("--parallelism must be at least 1");
    }
    env.execute("wordcount")?;
    Ok(())
}
