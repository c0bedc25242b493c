//! `sluice-executor`: a Sluice executor process.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use bytesize::ByteSize;
use clap::Parser;
use sluice_executor::ExecutorConfig;
use sluice_proto::HostPort;
use sluice_proto::logging::{self, LogFormat};

/// A Sluice executor: runs tasks handed out by the scheduler and serves shuffle data over Arrow Flight.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-executor",
    version,
    after_help = "Examples:\n  sluice-executor --scheduler 127.0.0.1:50050 --bind 127.0.0.1:0\n  sluice-executor --scheduler sched:50050 --bind 0.0.0.0:50051 --advertise-host 10.0.0.7 \\\n      --work-dir /var/lib/sluice --vcores 8 --memory-limit 16GiB\n\nOn start it prints `sluice-executor listening on HOST:PORT` (the Arrow Flight address)."
)]
struct Args {
    /// The scheduler to register with.
    #[arg(
        long,
        env = "SLUICE_SCHEDULER",
        value_name = "HOST:PORT",
        conflicts_with = "etcd_endpoints"
    )]
    scheduler: Option<HostPort>,
    /// Find the leader scheduler in etcd instead of --scheduler, and follow it
    /// when leadership moves; membership is kept under an etcd lease.
    #[arg(long, env = "SLUICE_ETCD_ENDPOINTS", value_name = "URL[,URL]")]
    etcd_endpoints: Option<String>,
    /// Cluster name (the etcd key prefix) with --etcd-endpoints.
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "NAME", default_value = "default")]
    cluster: String,
    /// TTL of the membership lease: an executor silent this long is declared lost.
    #[arg(long, value_name = "SECONDS", default_value_t = sluice_proto::etcd::DEFAULT_LEASE_TTL_SECONDS)]
    lease_ttl_seconds: u64,
    /// How long to retry an unreachable etcd at start before exiting.
    #[arg(long, value_name = "SECONDS", default_value_t = sluice_proto::etcd::DEFAULT_CONNECT_TIMEOUT.as_secs())]
    etcd_connect_timeout_seconds: u64,
    /// Arrow Flight (shuffle) address; port 0 picks a free port.
    #[arg(long, env = "SLUICE_BIND", value_name = "HOST:PORT")]
    bind: Option<HostPort>,
    /// Port of the task-launch gRPC service (default: a free port).
    #[arg(long, value_name = "PORT")]
    grpc_port: Option<u16>,
    /// Host other processes use to reach this executor.
    #[arg(long, env = "SLUICE_ADVERTISE_HOST", value_name = "HOST")]
    advertise_host: Option<String>,
    /// Folder for shuffle and spill files (default: a temp folder).
    #[arg(long, env = "SLUICE_WORK_DIR", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Task slots; 0 = number of CPUs.
    #[arg(long, env = "SLUICE_VCORES", value_name = "N")]
    vcores: Option<usize>,
    /// Execution memory (spills above it), e.g. 512MiB or 2GiB.
    #[arg(long, env = "SLUICE_MEMORY_LIMIT", value_name = "SIZE")]
    memory_limit: Option<ByteSize>,
    /// Seconds between heartbeats to the scheduler; keep it well inside the
    /// scheduler's `--executor-timeout-seconds`.
    #[arg(long, value_name = "SECONDS")]
    heartbeat_interval_seconds: Option<u64>,
    /// Log line format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_name = "text|json")]
    log_format: Option<LogFormat>,
    /// The cluster's CA certificate (PEM): with --cluster-cert and
    /// --cluster-key, mutual TLS to the scheduler and other executors; the
    /// executor then pulls its tasks and opens no task port.
    #[arg(long, env = "SLUICE_CLUSTER_CA", value_name = "FILE")]
    cluster_ca: Option<PathBuf>,
    /// This executor's cluster certificate (PEM, role executor).
    #[arg(long, env = "SLUICE_CLUSTER_CERT", value_name = "FILE")]
    cluster_cert: Option<PathBuf>,
    /// This executor's private key (PEM, mode 0600).
    #[arg(long, env = "SLUICE_CLUSTER_KEY", value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`) on this port of the bind
    /// host; 0 picks a free port (printed as `sluice-executor metrics
    /// listening on HOST:PORT`).
    #[arg(long, env = "SLUICE_METRICS_PORT", value_name = "PORT")]
    metrics_port: Option<u16>,
    /// CA of etcd's certificate (PEM), for https:// endpoints of an etcd
    /// with its own CA. Without it, https:// endpoints use the cluster
    /// certificates (--cluster-ca …).
    #[arg(long, env = "SLUICE_ETCD_CA", value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth, with --etcd-ca.
    #[arg(long, env = "SLUICE_ETCD_CERT", value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600).
    #[arg(long, env = "SLUICE_ETCD_KEY", value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// On SIGTERM (a spot notice, a scale-in), exit 0 within this many
    /// seconds: take no new task, finish running ones, move finished shuffle
    /// output to a live peer, hand the rest back. Keep it inside the
    /// notice (and the pod's termination grace period).
    #[arg(long, env = "SLUICE_DRAIN_DEADLINE_SECONDS", value_name = "SECONDS")]
    drain_deadline: Option<u64>,
    /// TOML config file with the same keys in kebab-case (e.g. `memory-limit = "2GiB"`).
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Membership through etcd, when asked for.
struct Follow {
    target: sluice_proto::etcd::EtcdTarget,
    /// `--etcd-ca`, `--etcd-cert`, `--etcd-key`: applied to `target` once
    /// the cluster credentials are known ([`Follow::with_tls`]).
    etcd_files: [Option<PathBuf>; 3],
    ttl: std::time::Duration,
    connect_timeout: std::time::Duration,
}

fn follow_from(args: &Args) -> Result<Option<Follow>, String> {
    let Some(endpoints) = &args.etcd_endpoints else { return Ok(None) };
    if args.lease_ttl_seconds < 2 {
        return Err("--lease-ttl-seconds must be at least 2".to_string());
    }
    let target = sluice_proto::etcd::EtcdTarget::parse(endpoints, &args.cluster)
        .map_err(|e| e.to_string())?;
    Ok(Some(Follow {
        target,
        etcd_files: [args.etcd_ca.clone(), args.etcd_cert.clone(), args.etcd_key.clone()],
        ttl: std::time::Duration::from_secs(args.lease_ttl_seconds),
        connect_timeout: std::time::Duration::from_secs(args.etcd_connect_timeout_seconds.max(1)),
    }))
}

impl Follow {
    /// The TLS to etcd: `--etcd-*` files, else the cluster certificates for
    /// `https://` endpoints.
    fn with_tls(mut self, cluster: Option<&sluice_proto::tls::ClusterTls>) -> Result<Self, String> {
        let [ca, cert, key] = &self.etcd_files;
        let tls = sluice_proto::etcd::EtcdTls::resolve(
            &self.target.endpoints_label(),
            ca.as_deref(),
            cert.as_deref(),
            key.as_deref(),
            cluster,
        )
        .map_err(|e| e.to_string())?;
        self.target = self.target.with_tls(tls).map_err(|e| e.to_string())?;
        Ok(self)
    }
}

fn config_from(args: Args) -> Result<ExecutorConfig, String> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("config file {}: {e}", path.display()))?;
            toml::from_str::<ExecutorConfig>(&text).map_err(|e| {
                format!(
                    "config file {}: {}",
                    path.display(),
                    e.to_string().trim().replace('\n', " ")
                )
            })?
        }
        None => ExecutorConfig::default(),
    };
    if let Some(v) = args.scheduler {
        if v.port == 0 {
            return Err("--scheduler needs the scheduler's real port, not 0".to_string());
        }
        config.scheduler = v;
    }
    if let Some(v) = args.bind {
        config.bind = v;
    }
    if let Some(v) = args.grpc_port {
        config.grpc_port = v;
    }
    if let Some(v) = args.advertise_host {
        config.advertise_host = Some(v);
    }
    if let Some(v) = args.work_dir {
        config.work_dir = Some(v);
    }
    if let Some(v) = args.metrics_port {
        config.metrics_port = Some(v);
    }
    if let Some(v) = args.vcores {
        config.vcores = v;
    }
    if let Some(v) = args.memory_limit {
        config.memory_limit = Some(v);
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    if let Some(v) = args.cluster_ca {
        config.cluster_ca = Some(v);
    }
    if let Some(v) = args.cluster_cert {
        config.cluster_cert = Some(v);
    }
    if let Some(v) = args.cluster_key {
        config.cluster_key = Some(v);
    }
    if let Some(v) = args.drain_deadline {
        if v == 0 {
            return Err("--drain-deadline must be at least 1 second".to_string());
        }
        config.drain_deadline_seconds = v;
    }
    if let Some(v) = args.heartbeat_interval_seconds {
        if v == 0 {
            return Err("--heartbeat-interval-seconds must be at least 1".to_string());
        }
        config.heartbeat_interval_seconds = v;
    }
    Ok(config)
}

fn main() -> ExitCode {
    // Before any thread starts: SIGTERM is taken by one thread and turned
    // into a drain (see `drain::Sigterm`).
    if let Err(e) = sluice_executor::drain::block_sigterm() {
        eprintln!("error: cannot block SIGTERM: {e}");
        return ExitCode::from(1);
    }
    sluice_proto::block_on_main(run())
}

async fn run() -> ExitCode {
    let args = Args::parse();
    let follow = match follow_from(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match config_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init_service(config.log_format, logging::DEFAULT_FILTER, "sluice-executor");
    let cluster_tls = match config.cluster_tls() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics = match config.metrics_port {
        None => None,
        Some(port) => {
            match tokio::net::TcpListener::bind((config.bind.host.as_str(), port)).await {
                Ok(listener) => {
                    let addr = listener.local_addr().ok();
                    sluice_executor::metrics::serve(listener);
                    addr
                }
                Err(e) => {
                    eprintln!("error: --metrics-port {port} on {}: {e}", config.bind.host);
                    return ExitCode::from(2);
                }
            }
        }
    };
    if let Some(follow) = follow {
        let follow = match follow.with_tls(cluster_tls.as_ref()) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        return run_following(&config, follow, metrics).await;
    }
    // Registered before the executor starts, so no signal is missed.
    let sigterm = sluice_executor::drain::Sigterm::listen();
    let stop = stop_signal(&sigterm);
    let running = match sluice_executor::start(&config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.class().exit_code() as u8);
        }
    };
    announce(&running, metrics);
    let drainer = running.drainer();
    let _work_dir = running.temp_dir();
    let mut wait = std::pin::pin!(running.wait());
    let result = tokio::select! {
        result = wait.as_mut() => result,
        () = stop => {
            // Ballista's executor saw the signal too: it stops taking tasks.
            // Drain within the deadline and exit 0.
            let deadline = std::time::Duration::from_secs(config.drain_deadline_seconds);
            let outcome = drainer
                .run(deadline, "SIGTERM", sluice_executor::drain::stop_ballista, wait.as_mut())
                .await;
            println!("{}", outcome.summary());
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.class().exit_code() as u8)
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
fn stop_signal(
    sigterm: &sluice_executor::drain::Sigterm,
) -> impl std::future::Future<Output = ()> + '_ {
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        tokio::select! { _ = ctrl_c => {}, () = sigterm.received() => {} }
    }
}

/// Prints the Flight address (first: the line test harnesses and scripts
/// read) and, the first time, the metrics address.
fn announce(running: &sluice_executor::RunningExecutor, metrics: Option<std::net::SocketAddr>) {
    println!("sluice-executor listening on {}", running.flight);
    if let Some(m) = sluice_executor::metrics::global() {
        m.slots.set(i64::try_from(running.vcores).unwrap_or(i64::MAX));
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    if let Some(addr) = metrics {
        ONCE.call_once(|| println!("sluice-executor metrics listening on {addr}"));
    }
}

/// `--etcd-endpoints`: follow the cluster's leader (see `sluice_executor::follow`).
async fn run_following(
    config: &ExecutorConfig,
    follow: Follow,
    metrics: Option<std::net::SocketAddr>,
) -> ExitCode {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let sigterm = sluice_executor::drain::Sigterm::listen();
    tokio::spawn(async move {
        // While a term runs, this starts its drain; between terms it stops
        // the wait for a leader.
        stop_signal(&sigterm).await;
        let _ = stop.send(true);
    });
    let announce = move |running: &sluice_executor::RunningExecutor| announce(running, metrics);
    match sluice_executor::follow::follow(
        config,
        follow.target,
        follow.ttl,
        follow.connect_timeout,
        shutdown,
        announce,
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.class().exit_code() as u8)
        }
    }
}
