//! The scheduler process's configuration.
//!
//! Layers, later wins: built-in defaults → `--config FILE` (TOML, kebab-case
//! keys, unknown keys rejected) → `SLUICE_*` environment variables and flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_proto::HostPort;
use sluice_proto::logging::LogFormat;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SchedulerProcessConfig {
    /// Address to listen on (gRPC, REST, Flight). Port 0 picks a free port.
    pub bind: HostPort,
    /// Address executors and clients should use, when it differs from `bind`
    /// (a wildcard bind, NAT, Kubernetes services).
    pub advertise: Option<HostPort>,
    pub log_format: LogFormat,
    /// An executor silent for this long is declared lost and its work redone.
    pub executor_timeout_seconds: u64,
    pub expire_dead_executor_interval_seconds: u64,
    /// How long a stopping executor may finish its running tasks.
    pub executor_termination_grace_period_seconds: u64,
    /// How long a finished job's results stay fetchable on executors.
    pub finished_job_data_clean_up_seconds: u64,
    /// `/readyz` is ready once this many executors are registered.
    pub min_ready_executors: usize,
    pub task_max_failures: usize,
    pub stage_max_failures: usize,
    /// A job with no task running or waiting for this long, yet not
    /// finished, is failed rather than left waiting (see `watchdog`).
    pub job_stall_timeout_seconds: u64,
    /// The handoff rate a drain plan counts on per peer (bytes per second):
    /// outputs that cannot all move in the time left at this rate are
    /// recomputed instead (see `drain::plan_moves`).
    pub drain_handoff_bytes_per_second: u64,
    /// Writes Ballista's per-job event log (JSON lines) here when set.
    pub event_log_dir: Option<String>,
    /// Serve Arrow Flight SQL for clients on this address (a port of its
    /// own; the scheduler port stays cluster-internal).
    pub flight_sql_bind: Option<HostPort>,
    /// Bearer tokens for Flight SQL: `TOKEN [read|admin]` per line.
    pub auth_token_file: Option<PathBuf>,
    /// Serve Flight SQL without tokens on a non-loopback address.
    pub allow_anonymous: bool,
    /// TLS certificate and key (PEM) for Flight SQL.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// The cluster's CA, this scheduler's certificate and key (PEM): mutual
    /// TLS on the scheduler port and to executors (`sluice cluster certs`).
    pub cluster_ca: Option<PathBuf>,
    pub cluster_cert: Option<PathBuf>,
    pub cluster_key: Option<PathBuf>,
    /// Folders queries may read (repeatable); none means unrestricted.
    pub data_roots: Vec<PathBuf>,
    /// The persistent table catalog (a JSON file).
    pub catalog: Option<PathBuf>,
    /// Where cluster membership and leadership live.
    pub state: StateBackend,
    /// etcd endpoints for `state = "etcd"`: `URL[,URL]`.
    pub etcd_endpoints: Option<String>,
    /// The cluster's name: its key prefix in etcd (several clusters can share one etcd).
    pub cluster: String,
    /// TTL of this scheduler's etcd lease: a dead leader is replaced within it.
    pub lease_ttl_seconds: u64,
    /// How long to retry an unreachable etcd at start before exiting.
    pub etcd_connect_timeout_seconds: u64,
    /// TLS to etcd with its own CA (`https://` endpoints): the CA of etcd's
    /// certificate, and this scheduler's client certificate and key for
    /// etcd's `--client-cert-auth`. Without them, `https://` endpoints use
    /// the cluster certificates (`cluster-ca` …).
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
}

/// Where the scheduler keeps cluster membership and leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StateBackend {
    /// In this process only: one scheduler, no failover (the embedded default).
    #[default]
    Memory,
    /// In etcd: executors under leases, one elected leader, standbys take over.
    Etcd,
}

impl Default for SchedulerProcessConfig {
    fn default() -> Self {
        Self {
            bind: HostPort::new("127.0.0.1", 50050),
            advertise: None,
            log_format: LogFormat::Text,
            executor_timeout_seconds: 60,
            expire_dead_executor_interval_seconds: 5,
            executor_termination_grace_period_seconds: 30,
            finished_job_data_clean_up_seconds: 300,
            min_ready_executors: 1,
            task_max_failures: 4,
            stage_max_failures: 4,
            job_stall_timeout_seconds: 30,
            drain_handoff_bytes_per_second: crate::drain::HANDOFF_BYTES_PER_SECOND,
            event_log_dir: None,
            flight_sql_bind: None,
            auth_token_file: None,
            allow_anonymous: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            cluster_ca: None,
            cluster_cert: None,
            cluster_key: None,
            data_roots: Vec::new(),
            catalog: None,
            state: StateBackend::Memory,
            etcd_endpoints: None,
            cluster: "default".to_string(),
            lease_ttl_seconds: sluice_proto::etcd::DEFAULT_LEASE_TTL_SECONDS,
            etcd_connect_timeout_seconds: sluice_proto::etcd::DEFAULT_CONNECT_TIMEOUT.as_secs(),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
        }
    }
}

impl SchedulerProcessConfig {
    /// The etcd target when `state = "etcd"`.
    ///
    /// # Errors
    /// [`Error::ConfigFile`] when etcd is chosen without endpoints or with a
    /// bad endpoint or cluster name.
    pub fn etcd_target(&self) -> Result<Option<sluice_proto::etcd::EtcdTarget>> {
        if self.state == StateBackend::Memory {
            return Ok(None);
        }
        let Some(endpoints) = &self.etcd_endpoints else {
            return Err(Error::ConfigFile {
                path: "--state etcd".into(),
                reason: "needs --etcd-endpoints URL[,URL]".into(),
            });
        };
        if self.lease_ttl_seconds < 2 {
            return Err(Error::ConfigFile {
                path: "--lease-ttl-seconds".into(),
                reason: "must be at least 2".into(),
            });
        }
        let cluster_tls = self.cluster_tls()?;
        let err = |e: sluice_proto::etcd::EtcdError| Error::ConfigFile {
            path: "--etcd-endpoints/--cluster/--etcd-*".into(),
            reason: e.to_string(),
        };
        let tls = sluice_proto::etcd::EtcdTls::resolve(
            endpoints,
            self.etcd_ca.as_deref(),
            self.etcd_cert.as_deref(),
            self.etcd_key.as_deref(),
            cluster_tls.as_ref(),
        )
        .map_err(err)?;
        sluice_proto::etcd::EtcdTarget::parse(endpoints, &self.cluster)
            .and_then(|t| t.with_tls(tls))
            .map(Some)
            .map_err(err)
    }

    /// The cluster TLS credentials, when configured.
    ///
    /// # Errors
    /// [`Error::ConfigFile`] naming the option or file at fault.
    pub fn cluster_tls(&self) -> Result<Option<sluice_proto::tls::ClusterTls>> {
        let tls = sluice_proto::tls::ClusterTls::from_options(
            self.cluster_ca.as_deref(),
            self.cluster_cert.as_deref(),
            self.cluster_key.as_deref(),
        )
        .map_err(|e| Error::ConfigFile { path: "--cluster-*".into(), reason: e.to_string() })?;
        if let Some(tls) = &tls
            && tls.identity().role != sluice_proto::tls::Role::Scheduler
        {
            return Err(Error::ConfigFile {
                path: "--cluster-cert".into(),
                reason: format!(
                    "is a {} certificate; the scheduler needs a scheduler one",
                    tls.identity()
                ),
            });
        }
        Ok(tls)
    }

    /// Reads a TOML config file over the defaults.
    ///
    /// # Errors
    /// [`Error::ConfigFile`] naming the file and, for a bad key or value, the
    /// line and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| Error::ConfigFile {
            path: path.display().to_string(),
            reason: e.to_string().trim().replace('\n', " "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile_dir();
        let good = dir.join("good.toml");
        std::fs::write(&good, "bind = \"0.0.0.0:7000\"\nexecutor-timeout-seconds = 20\n")
            .expect("write");
        let cfg = SchedulerProcessConfig::from_file(&good).expect("valid");
        assert_eq!(cfg.bind, HostPort::new("0.0.0.0", 7000));
        assert_eq!(cfg.executor_timeout_seconds, 20);
        assert_eq!(cfg.task_max_failures, 4);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "bind = \"0.0.0.0:7000\"\nexecutor-timeout = 20\n").expect("write");
        let err = SchedulerProcessConfig::from_file(&bad).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("bad.toml") && msg.contains("executor-timeout"), "{msg}");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-sched-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }
}
