//! The Sluice executor: Ballista's executor run as a library inside a
//! process Sluice controls.
//!
//! An executor registers with the scheduler, receives tasks (push mode),
//! runs them with DataFusion and serves its shuffle output over Arrow Flight.
//! It never depends on the scheduler crate; both share `sluice-sql` for the
//! session configuration, so `sluice.*` and `s3.*` settings sent by clients
//! are understood here.

pub mod drain;
pub mod engine;
pub mod error;
pub mod follow;
pub mod handoff;
pub mod metrics;
pub mod serving;
pub mod taskport;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::ArrowFlightServerProvider;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::flight_service::BallistaFlightService;
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use sluice_proto::HostPort;
use sluice_proto::logging::LogFormat;
use sluice_proto::tls::{ClusterTls, Role};
use tokio::task::JoinHandle;

pub use error::{Error, Result};

/// The executor process's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExecutorConfig {
    /// The scheduler to register with.
    pub scheduler: HostPort,
    /// Address of the Arrow Flight (shuffle) service; port 0 picks a free port.
    pub bind: HostPort,
    /// Port of the task-launch gRPC service; 0 picks a free port.
    pub grpc_port: u16,
    /// Host the scheduler and other executors use to reach this one
    /// (default: the bind host, or 127.0.0.1 for a wildcard bind).
    pub advertise_host: Option<String>,
    /// Shuffle and spill files go here (default: a fresh temp folder).
    pub work_dir: Option<PathBuf>,
    /// Task slots advertised to the scheduler; 0 means the number of CPUs.
    pub vcores: usize,
    /// Memory for query execution (spills above it), e.g. `2GiB`; default:
    /// 70% of the host's or cgroup's memory.
    pub memory_limit: Option<ByteSize>,
    pub log_format: LogFormat,
    pub heartbeat_interval_seconds: u64,
    /// How long to keep retrying the scheduler at start before giving up.
    pub scheduler_connect_timeout_seconds: u16,
    /// The cluster's CA, this executor's certificate and key (PEM): mutual
    /// TLS to the scheduler, on the Flight port and for shuffle fetches.
    pub cluster_ca: Option<PathBuf>,
    pub cluster_cert: Option<PathBuf>,
    pub cluster_key: Option<PathBuf>,
    /// Serve Prometheus `/metrics` on this port of the bind host (0: a free
    /// port); none: no metrics server.
    pub metrics_port: Option<u16>,
    /// On SIGTERM, exit within this many seconds: finish running tasks,
    /// move shuffle output to peers, hand the rest back.
    pub drain_deadline_seconds: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            scheduler: HostPort::new("127.0.0.1", 50050),
            bind: HostPort::new("127.0.0.1", 50051),
            grpc_port: 0,
            advertise_host: None,
            work_dir: None,
            vcores: 0,
            memory_limit: None,
            log_format: LogFormat::Text,
            heartbeat_interval_seconds: 5,
            scheduler_connect_timeout_seconds: 20,
            cluster_ca: None,
            cluster_cert: None,
            cluster_key: None,
            metrics_port: None,
            drain_deadline_seconds: drain::DEFAULT_DEADLINE_SECONDS,
        }
    }
}

/// An executor running in this process.
pub struct RunningExecutor {
    pub id: String,
    /// The advertised Arrow Flight address.
    pub flight: HostPort,
    pub grpc_port: u16,
    /// Task slots it advertises.
    pub vcores: usize,
    /// Where its shuffle output is.
    pub work_dir: PathBuf,
    scheduler: HostPort,
    tls: Option<ClusterTls>,
    /// The work folder, when it is a temporary one (removed on drop).
    _temp: Option<Arc<tempfile::TempDir>>,
    task: JoinHandle<ballista_core::error::Result<()>>,
}

impl RunningExecutor {
    /// Waits until the executor stops (SIGTERM/Ctrl-C, a stop request, or an
    /// error such as an unreachable scheduler).
    ///
    /// # Errors
    /// [`Error::Executor`] with Ballista's reason.
    pub async fn wait(self) -> Result<()> {
        let scheduler = self.flight.clone();
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(Error::from_ballista(source, &scheduler)),
            Err(e) => Err(Error::Stopped { reason: e.to_string() }),
        }
    }

    pub fn abort(&self) {
        self.task.abort();
    }

    /// What draining this executor needs.
    pub fn drainer(&self) -> drain::Drainer {
        drain::Drainer {
            executor_id: self.id.clone(),
            scheduler: self.scheduler.clone(),
            tls: self.tls.clone(),
            work_dir: self.work_dir.clone(),
        }
    }

    /// The temporary work folder, kept alive by the caller after `wait`.
    pub fn temp_dir(&self) -> Option<Arc<tempfile::TempDir>> {
        self._temp.clone()
    }

    /// A handle that stops the executor's task.
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }
}

impl ExecutorConfig {
    /// The cluster TLS credentials, when configured.
    ///
    /// # Errors
    /// [`Error::Tls`] naming the option or file at fault, or a certificate
    /// that is not an executor's.
    pub fn cluster_tls(&self) -> Result<Option<ClusterTls>> {
        let tls = ClusterTls::from_options(
            self.cluster_ca.as_deref(),
            self.cluster_cert.as_deref(),
            self.cluster_key.as_deref(),
        )
        .map_err(|e| Error::Tls { reason: e.to_string() })?;
        if let Some(tls) = &tls
            && tls.identity().role != Role::Executor
        {
            return Err(Error::Tls {
                reason: format!(
                    "--cluster-cert is a {} certificate; an executor needs an executor one",
                    tls.identity()
                ),
            });
        }
        Ok(tls)
    }
}

/// The executor's Flight port: Ballista's Arrow Flight service (shuffle and
/// result fetches) and Sluice's shuffle handoff (drains), over the cluster's
/// mutual TLS when there is one (only holders of a cluster certificate may
/// read or hand off).
///
/// It keeps serving after Ballista's executor stops (its shutdown signal is
/// not followed): a draining executor's output stays readable until it has
/// moved, and the process's exit ends the server.
///
/// It binds `address` (the configured bind address), not the one Ballista
/// passes, which is Ballista's internal bind host under cluster TLS.
fn flight_service(
    tls: Option<ClusterTls>,
    address: std::net::SocketAddr,
) -> Arc<ArrowFlightServerProvider> {
    let defaults = ExecutorProcessConfig::default();
    let (max_encoding, max_decoding) = (
        defaults.grpc_max_encoding_message_size as usize,
        defaults.grpc_max_decoding_message_size as usize,
    );
    Arc::new(move |work_dir, _ballista_address, _shutdown, grpc_config| {
        let tls = tls.as_ref().map(ClusterTls::tonic_server);
        tokio::spawn(async move {
            let mut server = ballista_core::utils::create_grpc_server(&grpc_config);
            if let Some(tls) = tls {
                server = server
                    .tls_config(tls)
                    .map_err(ballista_core::error::BallistaError::TonicError)?;
            }
            tracing::info!(%address, "arrow flight server listening");
            let handoff = sluice_proto::pb::shuffle_handoff_server::ShuffleHandoffServer::new(
                handoff::HandoffService::new(work_dir.clone()),
            )
            .max_decoding_message_size(max_decoding);
            let service = FlightServiceServer::new(serving::TrackedFlight::new(
                BallistaFlightService::new(work_dir),
            ))
            .max_decoding_message_size(max_decoding)
            .max_encoding_message_size(max_encoding);
            server
                .add_service(service)
                .add_service(handoff)
                .serve(address)
                .await
                .map_err(ballista_core::error::BallistaError::TonicError)
        })
    })
}

/// The address of the TLS task port: the bind address, or for a wildcard
/// bind the advertised host's (Ballista's plain server takes the same port
/// on a loopback address, which a wildcard bind would cover).
fn task_port_ip(bind_host: &str, advertise_host: &str) -> std::io::Result<std::net::IpAddr> {
    let host = match bind_host {
        "0.0.0.0" | "::" | "[::]" => advertise_host,
        other => other,
    };
    std::net::ToSocketAddrs::to_socket_addrs(&(host, 0))?
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| std::io::Error::other(format!("{host} resolves to no address")))
}

/// A port that was free a moment ago on `host`. Ballista's executor binds
/// its ports itself, so port 0 is resolved here first.
fn free_port(host: &str) -> std::io::Result<u16> {
    Ok(TcpListener::bind((host, 0))?.local_addr()?.port())
}

/// Starts an executor in the background of this process.
///
/// # Errors
/// [`Error::Bind`] when no port can be found on the bind host,
/// [`Error::InvalidConfig`] for a config Ballista rejects.
pub async fn start(config: &ExecutorConfig) -> Result<RunningExecutor> {
    let tls = config.cluster_tls()?;
    let host = config.bind.host.clone();
    let bind_err = |source| Error::Bind { addr: config.bind.clone(), source };
    let port =
        if config.bind.port == 0 { free_port(&host).map_err(bind_err)? } else { config.bind.port };
    let grpc_port = if config.grpc_port == 0 && tls.is_none() {
        free_port(&host).map_err(bind_err)?
    } else {
        config.grpc_port
    };
    // The work folder is known here (not left to Ballista) so that a drain
    // can find the shuffle output in it.
    let (work_path, temp) = match &config.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|source| Error::WorkDir { path: dir.clone(), source })?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("sluice-executor-")
                .tempdir()
                .map_err(|source| Error::WorkDir { path: std::env::temp_dir(), source })?;
            (temp.path().to_path_buf(), Some(Arc::new(temp)))
        }
    };
    let advertise_host = config.advertise_host.clone().unwrap_or_else(|| match host.as_str() {
        "0.0.0.0" | "::" => "127.0.0.1".to_string(),
        other => other.to_string(),
    });
    let work_dir = Some(work_path.to_string_lossy().into_owned());
    let spill_dir = Some(work_path.clone());
    let runtime_producer: ballista_core::RuntimeProducer = Arc::new(move |session_config| {
        sluice_sql::session::runtime_env(session_config, spill_dir.as_deref())
    });
    let vcores = if config.vcores == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        config.vcores
    };
    let flight_address = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(bind_err)?
        .next()
        .ok_or_else(|| bind_err(std::io::Error::other("the bind host resolves to no address")))?;
    // Under cluster TLS Ballista's plain task server binds loopback only,
    // behind Sluice's TLS task port (`taskport`) on the advertised port.
    let (ballista_host, task_port) = match &tls {
        Some(tls) => {
            let public = task_port_ip(&host, &advertise_host).map_err(bind_err)?;
            let listener = TcpListener::bind((public, config.grpc_port)).map_err(bind_err)?;
            let grpc_port = listener.local_addr().map_err(bind_err)?.port();
            let internal = taskport::internal_host(public);
            // Serves until the process ends.
            taskport::serve(listener, tls, (internal, grpc_port).into()).map_err(bind_err)?;
            (internal.to_string(), grpc_port)
        }
        None => (host.clone(), grpc_port),
    };
    let grpc_port = task_port;
    let process_config = ExecutorProcessConfig {
        bind_host: ballista_host,
        external_host: Some(advertise_host.clone()),
        port,
        grpc_port,
        scheduler_host: config.scheduler.host.clone(),
        scheduler_port: config.scheduler.port,
        scheduler_connect_timeout_seconds: config.scheduler_connect_timeout_seconds,
        vcores,
        task_scheduling_policy: TaskSchedulingPolicy::PushStaged,
        override_create_grpc_client_endpoint: tls
            .as_ref()
            .map(sluice_sql::session::endpoint_override),
        override_arrow_flight_service: Some(flight_service(tls.clone(), flight_address)),
        work_dir,
        executor_heartbeat_interval_seconds: config.heartbeat_interval_seconds,
        memory_pool_size: config.memory_limit.map(|b| b.as_u64()),
        override_config_producer: Some({
            let tls = tls.clone();
            Arc::new(move || {
                sluice_sql::session::with_cluster_tls(
                    sluice_sql::session::cluster_session_config(),
                    tls.as_ref(),
                )
            })
        }),
        override_runtime_producer: Some(runtime_producer),
        // Decodes Sluice's plan nodes (the parallel partitioned write).
        override_physical_codec: Some(Arc::new(sluice_sql::write::SluiceCodec::default())),
        // Plans name Sluice's functions (e.g. the backfill's feature tiles).
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(
            &sluice_sql::session::scheduler_session_state(
                sluice_sql::session::cluster_session_config(),
            )
            .map_err(|e| Error::InvalidConfig {
                source: ballista_core::error::BallistaError::DataFusionError(Box::new(e)),
            })?,
        ))),
        // Typed errors and consistent stage metrics (see `engine`).
        override_execution_engine: Some(Arc::new(engine::SluiceExecutionEngine::default())),
        ..ExecutorProcessConfig::default()
    };
    process_config.validate().map_err(|source| Error::InvalidConfig { source })?;
    let id = process_config.executor_id.clone();
    tracing::info!(executor_id = %id, flight_port = port, grpc_port, vcores, "executor starting");
    let task = tokio::spawn(start_executor_process(Arc::new(process_config)));
    let running = RunningExecutor {
        id,
        flight: HostPort::new(advertise_host, port),
        grpc_port,
        vcores,
        work_dir: work_path,
        scheduler: config.scheduler.clone(),
        tls,
        _temp: temp,
        task,
    };
    tokio::spawn(drain::watch_requests(running.drainer()));
    Ok(running)
}
