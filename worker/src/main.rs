//! The `streamjob` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use streamjob::crds::graph::to_logical_graph;
use streamjob::crds::spec::StreamJob;
use streamjob::crds::validate::{parse_job, validate_job};
use streamjob::declarative::{SpecError, build_job};
use streamjob::error::JobError;
use streamjob::runtime::restart::{Final, RestartStrategy, Restarts};
use streamjob::{Collector, DataStream, StreamExecutionEnvironment};

mod commands;

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

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanFormat {
    Text,
    Dot,
    Mermaid,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a StreamJob manifest in this process (all subtasks local). Relative file paths in
    /// the job are resolved against the manifest's directory.
    Run {
        /// StreamJob manifest (YAML).
        file: PathBuf,
        /// Run as a local mini-cluster of this many `streamjob worker` processes on loopback,
        /// shuffling over gRPC, instead of in this process.
        #[arg(long)]
        workers: Option<u32>,
        /// Slots per worker with --workers (default: spread the subtasks evenly).
        #[arg(long, requires = "workers")]
        slots: Option<u32>,
        #[command(flatten)]
        restore: commands::worker::RestoreArgs,
        /// Port of the live job page and /metrics on 127.0.0.1 (0: any free port), or `off`.
        #[arg(long, default_value = "8081")]
        web_port: streamjob::web::WebPort,
        /// No progress line or periodic rate on stderr (the summary at the end stays).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Take a savepoint of a running distributed job through worker 0's job control API
    /// (needs STREAMJOB_TOKEN); prints the savepoint's path.
    Savepoint {
        /// Worker 0's `host:port`.
        #[arg(long)]
        address: String,
        /// Stop the job right after the savepoint (stop-with-savepoint).
        #[arg(long)]
        stop: bool,
        /// Directory for the savepoint; default: the job's savepoint directory.
        #[arg(long)]
        directory: Option<String>,
    },
    /// Print the run and checkpoint state of a running distributed job (JSON).
    Status {
        /// Worker 0's `host:port`.
        #[arg(long)]
        address: String,
    },
    /// Run one worker of a distributed StreamJob (the pod entrypoint): this worker's slots,
    /// exchanging records with its peers over gRPC. Needs STREAMJOB_TOKEN.
    Worker(Box<commands::worker::WorkerArgs>),
    /// Print the physical plan of a StreamJob: chains, parallelism, partitioning.
    Plan {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
    },
    /// Check a StreamJob; prints every error with its path and exits non-zero if any.
    Validate { file: PathBuf },
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
    // Colour codes only on a terminal: pod logs and captured output stay plain text.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> std::process::ExitCode {
    commands::progress::mark_process_start();
    init_tracing();
    match dispatch(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // As a shell reports a process ended by a signal: 128 + its number.
            match e.downcast_ref::<commands::minicluster::Stopped>() {
                Some(stopped) => std::process::ExitCode::from(128 + stopped.0 as u8),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run {
            file,
            workers: Some(n),
            slots,
            restore,
            web_port,
            ..
        } => commands::minicluster::run(&file, n, slots, &restore, web_port),
        Command::Run {
            file,
            restore,
            web_port,
            quiet,
            ..
        } => {
            let web = web_port.0.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
            run(&file, None, &restore, web, quiet)
        }
        Command::Worker(args) => {
            commands::worker::die_with_parent()?;
            let web = args
                .metrics_port
                .0
                .map(|p| SocketAddr::from(([0, 0, 0, 0], p)));
            run(
                &args.file.clone(),
                Some((*args).clone()),
                &args.restore,
                web,
                true,
            )
        }
        Command::Savepoint {
            address,
            stop,
            directory,
        } => commands::control::savepoint(&address, stop, directory),
        Command::Status { address } => commands::control::status(&address),
        Command::Plan { file, format } => plan(&file, format),
        Command::Validate { file } => validate(&file),
        Command::Wordcount {
            file,
            socket,
            parallelism,
            explain,
        } => wordcount(file, socket, parallelism, explain),
    }
}

fn load(file: &Path) -> Result<StreamJob> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    parse_job(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn invalid(file: &Path, errors: &[streamjob::crds::validate::ValidationError]) -> anyhow::Error {
    let mut msg = format!(
        "{} is not a valid StreamJob ({} error(s)):",
        file.display(),
        errors.len()
    );
    for e in errors {
        msg.push_str(&format!("\n  {e}"));
    }
    anyhow::anyhow!(msg)
}

fn validate(file: &Path) -> Result<()> {
    let job = load(file)?;
    validate_job(&job).map_err(|errors| invalid(file, &errors))?;
    println!("{}: valid", file.display());
    Ok(())
}

fn plan(file: &Path, format: PlanFormat) -> Result<()> {
    let job = load(file)?;
    validate_job(&job).map_err(|errors| invalid(file, &errors))?;
    let plan = to_logical_graph(&job).plan()?;
    let text = match format {
        PlanFormat::Text => plan.explain(),
        PlanFormat::Dot => plan.to_dot(),
        PlanFormat::Mermaid => plan.to_mermaid(),
        PlanFormat::Json => serde_json::to_string_pretty(&plan)? + "\n",
    };
    // A closed pipe (`streamjob plan f | head`) is not an error.
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn run(
    file: &Path,
    worker: Option<commands::worker::WorkerArgs>,
    restore: &commands::worker::RestoreArgs,
    web: Option<SocketAddr>,
    quiet: bool,
) -> Result<()> {
    let job = load(file)?;
    let name = job.metadata.name.clone().unwrap_or_else(|| "job".into());
    let metrics = streamjob::runtime::metrics::global();
    // A busy port must not stop the job (local runs side by side, workers sharing a host).
    match web.map(streamjob::web::start) {
        // Only worker 0 has the job-wide page; the others' ports are for Prometheus.
        Some(Ok(at)) => {
            let line = match worker.as_ref().and_then(|w| w.index) {
                Some(i) if i > 0 => format!("worker {i} metrics: http://{at}/metrics\n"),
                _ => format!("job page and metrics: http://{at}/\n"),
            };
            // One write: workers sharing a stderr (a local mini-cluster) must not interleave
            // their lines, which tests and users read for the URL.
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        }
        Some(Err(e)) => eprintln!("warning: {e}; running without them"),
        None => {}
    }
    let progress = commands::progress::Progress::start(commands::progress::bounded(&job), quiet);
    let strategy = RestartStrategy::from_spec(&job.spec);
    let restarting = strategy != RestartStrategy::NoRestart;
    let mut restarts = Restarts::new(strategy);
    let outcome = restarts.run(
        |restarted| -> Result<_> {
            let env = StreamExecutionEnvironment::get_execution_environment();
            let base = file.parent().unwrap_or(Path::new("."));
            let counters = build_job(&env, &job, base).map_err(|e| match e {
                SpecError::Invalid(errors) => invalid(file, &errors),
                other => anyhow::anyhow!("{}: {other}", file.display()),
            })?;
            metrics.set_on_error_counters(counters.skipped.clone(), counters.dead_lettered.clone());
            env.configure_checkpointing(|c| {
                if restore.run_id.is_some() {
                    c.run_id.clone_from(&restore.run_id);
                }
                if restore.restore_from.is_some() {
                    c.restore_from.clone_from(&restore.restore_from);
                }
            });
            let result = match &worker {
                None => {
                    metrics.set_layout(env.plan(&name)?, 0, None);
                    env.execute(&name)?
                }
                Some(args) => {
                    let slots_needed = env.plan(&name)?.slots_needed();
                    let spec_hash = xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(&job.spec)?);
                    let mut cluster =
                        commands::worker::cluster_config(args, &name, slots_needed, spec_hash)?;
                    cluster.restarts = restarted;
                    metrics.set_layout(env.plan(&name)?, cluster.index, Some(cluster.slots));
                    if cluster.index == 0 {
                        streamjob::web::read_peers(streamjob::web::peer_addresses(
                            0,
                            &cluster.peers,
                            &args.peer_metrics,
                            args.metrics_port.0,
                        ));
                    }
                    env.execute_as_worker(&name, &cluster)?
                }
            };
            Ok((result, counters))
        },
        // Only a failure of the running job is worth a restart, not a job that cannot start.
        |e| {
            e.downcast_ref::<JobError>()
                .is_some_and(JobError::is_retryable)
        },
        |e, restart, delay| {
            metrics.failed(&format!("{e:#}"), true);
            tracing::warn!(error = %e, restart, ?delay, "job failed; restarting from the latest checkpoint");
            eprintln!("job '{name}' failed: {e}; restart {restart} in {delay:?}");
        },
    );
    let ((result, counters), restarts) = match outcome {
        Ok(r) => (r, restarts.total()),
        Err(Final { error, gave_up }) => {
            metrics.failed(&format!("{error:#}"), false);
            let e = match gave_up {
                Some(reason) if restarting => error.context(format!("not restarted: {reason}")),
                _ => error,
            };
            return Err(match &worker {
                Some(args) => e.context(format!(
                    "worker {} of job '{name}'",
                    args.index.map_or("?".into(), |i| i.to_string())
                )),
                None => e,
            });
        }
    };
    metrics.finished();
    let skipped = counters.skipped.load(std::sync::atomic::Ordering::Relaxed);
    let dead = counters
        .dead_lettered
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut summary = format!("skipped records: {skipped}, dead letters: {dead}");
    let discarded = counters.blackhole.get();
    if discarded > 0 {
        summary.push_str(&format!(", blackhole records: {discarded}"));
    }
    if result.bytes_sent > 0 {
        summary.push_str(&format!(", bytes sent to peers: {}", result.bytes_sent));
    }
    if restarts > 0 {
        summary.push_str(&format!(", restarts: {restarts}"));
    }
    eprintln!(
        "job '{name}' finished in {:.3}s ({summary})",
        result.duration.as_secs_f64()
    );
    if worker.is_none() {
        let line = progress.summary();
        drop(progress);
        eprintln!("{line}");
    }
    Ok(())
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
