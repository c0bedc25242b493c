//! The Sluice scheduler: Ballista's scheduler run as a library inside a
//! process Sluice controls (configuration, port binding, logging, shutdown).
//!
//! ```text
//!   sluice sql ──gRPC──► SchedulerServer (Ballista) ──push tasks──► executors
//!                         ▲ job → stages → tasks; AQE; broadcast joins
//!                         └── sessions built by sluice_sql::session
//! ```
//!
//! [`start`] binds the listener first, so port 0 works and the advertised
//! endpoint always equals the address actually listened on (executors call
//! back on it; a mismatch hangs jobs).

pub mod backfill;
pub mod config;
pub mod drain;
pub mod error;
pub mod flight_sql;
mod gate;
pub mod guard;
pub mod ha;
mod listener;
pub mod load;
pub mod recovery;
pub mod scaler;
pub mod watchdog;

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use sluice_proto::HostPort;
use sluice_proto::tls::ClusterTls;
use sluice_sql::catalog::FileCatalog;
use sluice_sql::roots::DataRoots;
use tokio::task::JoinHandle;

pub use config::SchedulerProcessConfig;
pub use error::{Error, Result};

/// A scheduler serving in this process.
pub struct RunningScheduler {
    /// The address the listener is bound to.
    pub local_addr: SocketAddr,
    /// The address executors and clients are told to use.
    pub endpoint: HostPort,
    task: JoinHandle<std::io::Result<()>>,
    /// The Flight SQL endpoint, when `flight_sql_bind` is set.
    pub flight_sql: Option<flight_sql::RunningFlightSql>,
    /// Ballista's scheduler.
    pub scheduler: Arc<Scheduler>,
    /// The backfills this scheduler runs (`BackfillService`).
    pub backfills: Arc<backfill::Hub>,
    /// Executors draining (see `drain`).
    pub drains: drain::Drains,
    watchdog: JoinHandle<()>,
}

/// Ballista's scheduler with DataFusion's plan encodings.
pub type Scheduler =
    ballista_scheduler::scheduler_server::SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

impl RunningScheduler {
    /// Waits until the server stops (it only stops on error).
    ///
    /// # Errors
    /// The server's error, or [`Error::Stopped`] if its task panicked.
    pub async fn wait(self) -> Result<()> {
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Stopped { reason: e.to_string() }),
            Err(e) => Err(Error::Stopped { reason: e.to_string() }),
        }
    }

    /// Stops serving (used by embedded clusters on exit).
    pub fn abort(&self) {
        self.task.abort();
        self.watchdog.abort();
        if let Some(flight) = &self.flight_sql {
            flight.task.abort();
        }
    }
}

/// Builds Ballista's scheduler configuration from Sluice's.
fn ballista_config(
    config: &SchedulerProcessConfig,
    endpoint: &HostPort,
    catalog: Option<&FileCatalog>,
    roots: &DataRoots,
    tls: Option<&ClusterTls>,
) -> SchedulerConfig {
    let session_builder: ballista_scheduler::SessionBuilder =
        Arc::new(sluice_sql::session::scheduler_session_builder(catalog.cloned(), roots.clone()));
    SchedulerConfig {
        scheduler_id: format!("sluice-scheduler-{}", endpoint),
        bind_host: config.bind.host.clone(),
        external_host: endpoint.host.clone(),
        bind_port: endpoint.port,
        // Under cluster TLS executors serve their task port behind TLS
        // (`sluice_executor::taskport`), reached through the endpoint override.
        scheduling_policy: TaskSchedulingPolicy::PushStaged,
        override_create_grpc_client_endpoint: tls.map(sluice_sql::session::endpoint_override),
        executor_timeout_seconds: config.executor_timeout_seconds,
        expire_dead_executor_interval_seconds: config.expire_dead_executor_interval_seconds,
        executor_termination_grace_period: config.executor_termination_grace_period_seconds,
        no_executors_grace_period_seconds: config.executor_timeout_seconds,
        finished_job_data_clean_up_interval_seconds: config.finished_job_data_clean_up_seconds,
        min_ready_executors: config.min_ready_executors,
        task_max_failures: config.task_max_failures,
        stage_max_failures: config.stage_max_failures,
        event_log_dir: config.event_log_dir.clone(),
        override_config_producer: Some(Arc::new(sluice_sql::session::cluster_session_config)),
        override_session_builder: Some(session_builder),
        override_physical_codec: Some(Arc::new(sluice_sql::write::SluiceCodec::default())),
        // In-memory tables sent inside clients' plans (`sluice_sql::inline`).
        override_logical_codec: Some(Arc::new(sluice_sql::inline::SluiceLogicalCodec::default())),
        ..SchedulerConfig::default()
    }
}

/// Binds the scheduler's port and starts serving in the background.
///
/// # Errors
/// [`Error::Bind`] when the address cannot be bound; [`Error::Server`] when
/// Ballista rejects the configuration.
pub async fn start(config: &SchedulerProcessConfig) -> Result<RunningScheduler> {
    let (listener, local_addr) = bind(&config.bind).await?;
    start_on(
        config,
        listener,
        local_addr,
        recovery::LostExecutors::default(),
        backfill::Store::memory(),
    )
    .await
}

/// The address executors and clients are told to use for a listener on
/// `local_addr`.
pub fn endpoint_for(config: &SchedulerProcessConfig, local_addr: SocketAddr) -> HostPort {
    match &config.advertise {
        Some(a) if a.port != 0 => a.clone(),
        Some(a) => HostPort::new(a.host.clone(), local_addr.port()),
        None => HostPort::new(advertised_host(&config.bind.host), local_addr.port()),
    }
}

/// Starts serving on an already bound listener; executors in `lost` are
/// treated as gone (see [`recovery::LostExecutors`]). Backfill records live
/// in `backfills`; every running one is resumed.
///
/// # Errors
/// As [`start`].
pub async fn start_on(
    config: &SchedulerProcessConfig,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    lost: recovery::LostExecutors,
    backfills: backfill::Store,
) -> Result<RunningScheduler> {
    let endpoint = endpoint_for(config, local_addr);
    let roots = DataRoots::new(&config.data_roots)
        .map_err(|e| Error::ConfigFile { path: "--data-root".into(), reason: e.to_string() })?;
    let catalog = config.catalog.as_ref().map(FileCatalog::new);
    if let Some(catalog) = &catalog {
        // Fail now, not on the first query, when the file is unreadable.
        catalog.list().map_err(|e| Error::ConfigFile {
            path: catalog.path().display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let tokens = match &config.auth_token_file {
        Some(path) => Some(flight_sql::Tokens::from_file(path)?),
        None => None,
    };
    let tls = config.cluster_tls()?;
    if tokens.is_some() && tls.is_none() && !is_loopback(&local_addr) {
        return Err(Error::ConfigFile {
            path: "--auth-token-file".into(),
            reason: format!(
                "the scheduler port {local_addr} is not a loopback address and has no cluster \
                 TLS: tokens would cross the network in cleartext; add --cluster-ca, \
                 --cluster-cert and --cluster-key, or bind to 127.0.0.1"
            ),
        });
    }
    let ballista = ballista_config(config, &endpoint, catalog.as_ref(), &roots, tls.as_ref());
    ballista.validate().map_err(|source| Error::Server { source })?;
    let cluster = BallistaCluster::new_from_config(&ballista)
        .await
        .map_err(|source| Error::Server { source })?;
    let drains = drain::Drains::new(lost.clone(), config.drain_handoff_bytes_per_second);
    let cluster = BallistaCluster::new(
        Arc::new(recovery::RecoveringClusterState::new(
            cluster.cluster_state(),
            cluster.job_state(),
            lost,
            drains.clone(),
        )),
        cluster.job_state(),
    );
    let job_state = cluster.job_state();
    let engine_job_state = Arc::clone(&job_state);
    let server = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(ballista))
        .await
        .map_err(|source| Error::Server { source })?;
    let watchdog = watchdog::spawn(
        Arc::new(server.clone()),
        job_state,
        watchdog::WatchdogConfig {
            stall_after: std::time::Duration::from_secs(config.job_stall_timeout_seconds),
        },
    );
    tracing::info!(%local_addr, %endpoint, "scheduler serving");
    let flight_sql = match &config.flight_sql_bind {
        Some(bind) => {
            let flight = flight_sql::FlightSqlConfig {
                bind: bind.clone(),
                tokens: tokens.clone(),
                allow_anonymous: config.allow_anonymous,
                tls_cert: config.tls_cert.clone(),
                tls_key: config.tls_key.clone(),
                tls_client_ca: config.tls_client_ca.clone(),
                data_roots: roots,
                catalog,
                cluster_tls: tls.clone(),
            };
            Some(flight_sql::serve(&flight, Arc::new(server.clone())).await?)
        }
        None => None,
    };
    let scheduler = Arc::new(server.clone());
    let hub = backfill::Hub::new(
        Arc::new(backfill::ClusterEngine {
            scheduler: Arc::clone(&scheduler),
            tls: tls.clone(),
            job_state: Some(engine_job_state),
        }),
        backfills,
        format!("scheduler-{endpoint}"),
    );
    let resume = Arc::clone(&hub);
    tokio::spawn(async move { resume.resume_all().await });
    let load = load::LoadSource {
        scheduler: Arc::clone(&scheduler),
        hub: Arc::clone(&hub),
        metrics: Arc::new(
            load::Metrics::new()
                .map_err(|e| Error::ConfigFile { path: "metrics".into(), reason: e.to_string() })?,
        ),
        drains: drains.clone(),
    };
    let task = tokio::spawn(gate::serve(
        listener,
        server,
        tokens,
        tls,
        backfill::grpc_service(Arc::clone(&hub)),
        load.clone(),
        drains.clone(),
    ));
    Ok(RunningScheduler {
        drains,
        local_addr,
        endpoint,
        task,
        flight_sql,
        scheduler,
        backfills: hub,
        watchdog,
    })
}

/// Binds `addr` (port 0 picks a free port); returns the listener and the
/// address it got.
///
/// # Errors
/// [`Error::Bind`] naming the address.
pub(crate) async fn bind(addr: &HostPort) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let bind_error = |source| Error::Bind { addr: addr.clone(), source };
    let listener =
        tokio::net::TcpListener::bind((addr.host.as_str(), addr.port)).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local_addr))
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The host to advertise when only a bind address is given: a wildcard bind
/// is reachable on loopback, anything else as written.
pub fn advertised_host(bind_host: &str) -> String {
    match bind_host {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1".to_string(),
        other => other.to_string(),
    }
}
