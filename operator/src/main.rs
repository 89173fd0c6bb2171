//! `streamjob-operator`: the controller process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use streamjob_operator::control::GrpcJobControl;
use streamjob_operator::controller::{self, Context};
use streamjob_operator::leader::{Elector, Timing};
use streamjob_operator::metrics::{self, Metrics};
use streamjob_operator::resources::Defaults;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    name = "streamjob-operator",
    version,
    about = "Reconciles StreamJob resources into worker StatefulSets"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Namespaces to watch (repeat or comma-separate); all namespaces when empty.
    #[arg(
        long = "namespace",
        env = "STREAMJOB_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Worker image for jobs that set no `spec.image`.
    #[arg(long, env = "STREAMJOB_WORKER_IMAGE", default_value = concat!("ghcr.io/streamjob/streamjob:", env!("CARGO_PKG_VERSION")))]
    worker_image: String,
    /// imagePullPolicy of worker containers (Kubernetes default when unset).
    #[arg(long, env = "STREAMJOB_IMAGE_PULL_POLICY")]
    image_pull_policy: Option<String>,
    /// Worker container resources (JSON ResourceRequirements, e.g.
    /// `{"requests":{"cpu":"500m","memory":"512Mi"}}`) for jobs that set no `spec.resources`.
    #[arg(long, env = "STREAMJOB_WORKER_RESOURCES", value_parser = parse_resources)]
    worker_resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "STREAMJOB_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "STREAMJOB_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Elect a leader with a Lease so several replicas are safe.
    #[arg(long, env = "STREAMJOB_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, default_value = "streamjob-operator")]
    lease_name: String,
    /// Seconds between status reads (GetStatus on worker 0) of a running job.
    #[arg(long, env = "STREAMJOB_STATUS_POLL_SECONDS", default_value_t = 30)]
    status_poll_seconds: u64,
    /// Longest wait, in seconds, for a savepoint to complete.
    #[arg(
        long,
        env = "STREAMJOB_SAVEPOINT_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    savepoint_timeout_seconds: u64,
    /// Most worker pods one job may have: a job whose plan needs more is not deployed (its
    /// status says why). Guards the cluster against a typo like `parallelism: 20000`.
    #[arg(long, env = "STREAMJOB_MAX_WORKERS_PER_JOB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_workers_per_job: u32,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print the objects the operator would create for a StreamJob manifest (offline, like
    /// `helm template`): ConfigMap, Service, StatefulSet, PodDisruptionBudget, token Secret.
    Render {
        file: std::path::PathBuf,
        /// Namespace to render into when the manifest sets none.
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

fn render(file: &std::path::Path, namespace: &str, defaults: &Defaults) -> Result<()> {
    use streamjob_crds::validate::{parse_job, validate_job};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut job = parse_job(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if let Err(errors) = validate_job(&job) {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::bail!("{} is invalid:\n  {}", file.display(), list.join("\n  "));
    }
    // Owner references need a uid; the API server assigns the real one.
    job.metadata
        .namespace
        .get_or_insert_with(|| namespace.to_string());
    job.metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    let plan = streamjob_crds::graph::to_logical_graph(&job).plan()?;
    let children = streamjob_operator::resources::children(&job, &plan, defaults)
        .map_err(anyhow::Error::msg)?;
    let token = streamjob_operator::resources::token_secret(&job, "<generated>");
    print!(
        "{}",
        streamjob_operator::resources::to_yaml(&children, Some(&token))
    );
    Ok(())
}

fn parse_resources(s: &str) -> Result<k8s_openapi::api::core::v1::ResourceRequirements, String> {
    serde_json::from_str(s).map_err(|e| format!("not a JSON ResourceRequirements: {e}"))
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STREAMJOB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: pod logs stay plain text.
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let defaults = Defaults {
        worker_image: args.worker_image.clone(),
        image_pull_policy: args.image_pull_policy.clone(),
        worker_resources: args.worker_resources.clone(),
    };
    if let Some(Command::Render { file, namespace }) = &args.command {
        return render(file, namespace, &defaults);
    }
    init_tracing(&args.log_format);
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or kubeconfig)")?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    let server = metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(listener, server).await {
            error!(error = %e, "metrics server");
        }
    });

    let elector = match args.leader_election {
        true => {
            let identity = std::env::var("POD_NAME")
                .unwrap_or_else(|_| format!("streamjob-operator-{}", std::process::id()));
            let elector = Elector::new(
                client.clone(),
                &args.lease_namespace,
                &args.lease_name,
                &identity,
                Timing::default(),
            );
            info!(%identity, "waiting to become the leader");
            tokio::select! {
                _ = elector.acquire() => {}
                _ = shutdown_signal() => {
                    info!("shutting down before becoming the leader");
                    return Ok(());
                }
            }
            info!("became the leader");
            Some(elector)
        }
        false => None,
    };
    metrics.set_leader(true);
    let control = GrpcJobControl {
        savepoint_timeout: Duration::from_secs(args.savepoint_timeout_seconds),
        ..GrpcJobControl::default()
    };
    let ctx = Arc::new(
        Context::new(client, defaults, metrics.clone())
            .with_control(Arc::new(control))
            .with_max_workers_per_job(args.max_workers_per_job)
            .with_poll_interval(Duration::from_secs(args.status_poll_seconds.max(1))),
    );
    info!(namespaces = ?args.namespaces, "controller started");
    match &elector {
        Some(elector) => {
            tokio::select! {
                // The controller stops on SIGTERM/SIGINT (after its running reconciles).
                _ = controller::run(ctx, args.namespaces) => {}
                lost = elector.keep() => {
                    // Another replica may act now: stop at once rather than race it.
                    error!(reason = %lost, "lost the leadership; exiting");
                    std::process::exit(1);
                }
            }
            metrics.set_leader(false);
            match elector.release().await {
                Ok(()) => info!("released the leader lease"),
                Err(e) => error!(error = %e, "cannot release the leader lease"),
            }
        }
        None => controller::run(ctx, args.namespaces).await,
    }
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
