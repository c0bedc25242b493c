//! `sluice-scheduler`: the Sluice scheduler process.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_proto::HostPort;
use sluice_proto::logging::{self, LogFormat};
use sluice_scheduler::SchedulerProcessConfig;

/// The Sluice scheduler: plans SQL jobs into stages and hands tasks to executors.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-scheduler",
    version,
    after_help = "Examples:\n  sluice-scheduler --bind 127.0.0.1:50050\n  sluice-scheduler --bind 127.0.0.1:0 --log-format json   # port 0: prints the port it picked\n  sluice-scheduler --config scheduler.toml\n\nOn start it prints `sluice-scheduler listening on HOST:PORT`."
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "SLUICE_BIND", value_name = "HOST:PORT")]
    bind: Option<HostPort>,
    /// Address executors and clients use to reach this scheduler (default: the bind address).
    #[arg(long, env = "SLUICE_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<HostPort>,
    /// Log line format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_name = "text|json")]
    log_format: Option<LogFormat>,
    /// TOML config file (kebab-case keys, e.g. `executor-timeout-seconds = 30`).
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds without a heartbeat before an executor is declared lost.
    #[arg(long, value_name = "SECONDS")]
    executor_timeout_seconds: Option<u64>,
    /// Executors needed before /readyz reports ready.
    #[arg(long, value_name = "N")]
    min_ready_executors: Option<usize>,
    /// Seconds an unfinished job may go with no task running or waiting
    /// before it is failed rather than left waiting forever (default 30).
    #[arg(long, value_name = "SECONDS")]
    job_stall_timeout_seconds: Option<u64>,
    /// Per-peer rate a draining executor's handoff is planned at (bytes/s,
    /// default 52428800 = 50 MiB/s): output that cannot all move in the time
    /// left at this rate is recomputed instead. Set it to what one executor
    /// can send another in your network.
    #[arg(long, value_name = "BYTES_PER_SECOND")]
    drain_handoff_bytes_per_second: Option<u64>,
    /// Directory for Ballista's per-job event logs.
    #[arg(long, value_name = "DIR")]
    event_log_dir: Option<String>,
    /// Serve Arrow Flight SQL for clients on this address (its own port; prints
    /// `flight-sql listening on HOST:PORT`). Keep the scheduler port itself
    /// on the cluster network.
    #[arg(long, env = "SLUICE_FLIGHT_SQL_BIND", value_name = "HOST:PORT")]
    flight_sql_bind: Option<HostPort>,
    /// Bearer tokens for Flight SQL, one `TOKEN [read|admin]` per line.
    #[arg(long, env = "SLUICE_AUTH_TOKEN_FILE", value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// Allow Flight SQL without tokens on a non-loopback address.
    #[arg(long)]
    allow_anonymous: bool,
    /// TLS certificate (PEM) for Flight SQL.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for Flight SQL.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): with --cluster-cert and
    /// --cluster-key, mutual TLS on the scheduler port and to executors.
    /// Mint a development set with `sluice cluster certs --out DIR`.
    #[arg(long, env = "SLUICE_CLUSTER_CA", value_name = "FILE")]
    cluster_ca: Option<PathBuf>,
    /// This scheduler's cluster certificate (PEM, role scheduler).
    #[arg(long, env = "SLUICE_CLUSTER_CERT", value_name = "FILE")]
    cluster_cert: Option<PathBuf>,
    /// This scheduler's private key (PEM, mode 0600).
    #[arg(long, env = "SLUICE_CLUSTER_KEY", value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// A folder queries may read; repeat for several. None: unrestricted.
    #[arg(long = "data-root", value_name = "DIR")]
    data_roots: Vec<PathBuf>,
    /// The persistent table catalog (JSON file; created on first register).
    #[arg(long, env = "SLUICE_CATALOG", value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// Where membership and leadership live: memory (one scheduler) or etcd
    /// (several; one elected leader, standbys take over).
    #[arg(long, env = "SLUICE_STATE", value_name = "memory|etcd")]
    state: Option<sluice_scheduler::config::StateBackend>,
    /// etcd endpoints, e.g. http://10.0.0.5:2379,http://10.0.0.6:2379 (with --state etcd).
    #[arg(long, env = "SLUICE_ETCD_ENDPOINTS", value_name = "URL[,URL]")]
    etcd_endpoints: Option<String>,
    /// Cluster name: the key prefix in etcd, so several clusters can share one etcd.
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "NAME")]
    cluster: Option<String>,
    /// TTL of this scheduler's etcd lease: a dead leader is replaced within it
    /// (default 20).
    #[arg(long, value_name = "SECONDS")]
    lease_ttl_seconds: Option<u64>,
    /// How long to retry an unreachable etcd at start before exiting (default 30).
    #[arg(long, value_name = "SECONDS")]
    etcd_connect_timeout_seconds: Option<u64>,
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
}

fn config_from(args: Args) -> Result<SchedulerProcessConfig, sluice_scheduler::Error> {
    let mut config = match &args.config {
        Some(path) => SchedulerProcessConfig::from_file(path)?,
        None => SchedulerProcessConfig::default(),
    };
    if let Some(v) = args.bind {
        config.bind = v;
    }
    if let Some(v) = args.advertise {
        config.advertise = Some(v);
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    if let Some(v) = args.executor_timeout_seconds {
        config.executor_timeout_seconds = v;
    }
    if let Some(v) = args.min_ready_executors {
        config.min_ready_executors = v;
    }
    if let Some(v) = args.job_stall_timeout_seconds {
        config.job_stall_timeout_seconds = v;
    }
    if let Some(v) = args.drain_handoff_bytes_per_second {
        if v == 0 {
            return Err(sluice_scheduler::Error::ConfigFile {
                path: "--drain-handoff-bytes-per-second".into(),
                reason: "must be at least 1".into(),
            });
        }
        config.drain_handoff_bytes_per_second = v;
    }
    if let Some(v) = args.event_log_dir {
        config.event_log_dir = Some(v);
    }
    if let Some(v) = args.flight_sql_bind {
        config.flight_sql_bind = Some(v);
    }
    if let Some(v) = args.auth_token_file {
        config.auth_token_file = Some(v);
    }
    config.allow_anonymous |= args.allow_anonymous;
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
        config.tls_key = args.tls_key;
    }
    if let Some(v) = args.tls_client_ca {
        config.tls_client_ca = Some(v);
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
    if let Some(v) = args.etcd_ca {
        config.etcd_ca = Some(v);
    }
    if let Some(v) = args.etcd_cert {
        config.etcd_cert = Some(v);
    }
    if let Some(v) = args.etcd_key {
        config.etcd_key = Some(v);
    }
    if !args.data_roots.is_empty() {
        config.data_roots = args.data_roots;
    }
    if let Some(v) = args.catalog {
        config.catalog = Some(v);
    }
    if let Some(v) = args.state {
        config.state = v;
    }
    if let Some(v) = args.etcd_endpoints {
        config.etcd_endpoints = Some(v);
        // Endpoints alone mean etcd, unless a state was chosen explicitly.
        if args.state.is_none() {
            config.state = sluice_scheduler::config::StateBackend::Etcd;
        }
    }
    if let Some(v) = args.cluster {
        config.cluster = v;
    }
    if let Some(v) = args.lease_ttl_seconds {
        config.lease_ttl_seconds = v;
    }
    if let Some(v) = args.etcd_connect_timeout_seconds {
        config.etcd_connect_timeout_seconds = v;
    }
    config.etcd_target()?;
    config.cluster_tls()?;
    Ok(config)
}

fn main() -> ExitCode {
    sluice_proto::block_on_main(run())
}

async fn run() -> ExitCode {
    let args = Args::parse();
    let config = match config_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.class().exit_code() as u8);
        }
    };
    logging::init_service(config.log_format, logging::DEFAULT_FILTER, "sluice-scheduler");
    sluice_scheduler::guard::exit_on_scheduler_panic();
    match config.etcd_target() {
        Ok(Some(target)) => return run_ha(&config, target).await,
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.class().exit_code() as u8);
        }
    }
    let running = match sluice_scheduler::start(&config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.class().exit_code() as u8);
        }
    };
    println!("sluice-scheduler listening on {}", running.endpoint);
    if let Some(flight) = &running.flight_sql {
        println!("flight-sql listening on {}", flight.local_addr);
    }
    tokio::select! {
        result = running.wait() => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.class().exit_code() as u8)
            }
        },
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            ExitCode::SUCCESS
        }
    }
}

/// `--state etcd`: campaign, lead or stand by, until SIGTERM/Ctrl-C (which
/// hands leadership over at once).
async fn run_ha(
    config: &SchedulerProcessConfig,
    target: sluice_proto::etcd::EtcdTarget,
) -> ExitCode {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let announce = |addresses: &sluice_scheduler::ha::Addresses| {
        println!("sluice-scheduler listening on {}", addresses.endpoint);
        if let Some(flight) = &addresses.flight_sql {
            println!("flight-sql listening on {flight}");
        }
    };
    match sluice_scheduler::ha::run(config, target, shutdown, announce).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.class().exit_code() as u8)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
