//! An embedded cluster: one scheduler and N executors inside this process,
//! talking gRPC and Arrow Flight over loopback exactly as separate processes
//! would. It is what `--standalone` and `sluice demo` run on, so a first
//! command needs nothing but the `sluice` binary.

use std::time::Duration;

use sluice_executor::{ExecutorConfig, RunningExecutor};
use sluice_proto::HostPort;
use sluice_scheduler::{RunningScheduler, SchedulerProcessConfig};

use crate::error::{Error, Result};

/// A scheduler plus executors serving in this process; stopped on drop.
pub struct EmbeddedCluster {
    scheduler: RunningScheduler,
    executors: Vec<RunningExecutor>,
    _work_dir: tempfile::TempDir,
}

impl EmbeddedCluster {
    /// Starts a scheduler and `executors` executors with `vcores` slots each
    /// on free loopback ports, and waits until all executors are registered.
    ///
    /// # Errors
    /// [`Error::Embedded`] when a part fails to start or the executors do
    /// not register within 60 s.
    pub async fn start(executors: usize, vcores: usize) -> Result<Self> {
        let embedded = |message: String| Error::Embedded { message };
        let work_dir = tempfile::Builder::new()
            .prefix("sluice-embedded-")
            .tempdir()
            .map_err(|e| embedded(format!("cannot create a work dir: {e}")))?;
        let scheduler_config = SchedulerProcessConfig {
            bind: HostPort::new("127.0.0.1", 0),
            min_ready_executors: executors,
            ..SchedulerProcessConfig::default()
        };
        let scheduler = sluice_scheduler::start(&scheduler_config)
            .await
            .map_err(|e| embedded(e.to_string()))?;
        let mut running = Vec::with_capacity(executors);
        for i in 0..executors {
            let config = ExecutorConfig {
                scheduler: scheduler.endpoint.clone(),
                bind: HostPort::new("127.0.0.1", 0),
                work_dir: Some(work_dir.path().join(format!("executor-{i}"))),
                vcores,
                ..ExecutorConfig::default()
            };
            running
                .push(sluice_executor::start(&config).await.map_err(|e| embedded(e.to_string()))?);
        }
        let addr = scheduler.endpoint.to_string();
        crate::http::wait_ready_with(&addr, None, Duration::from_secs(60))
            .await
            .map_err(|e| embedded(e.to_string()))?;
        Ok(Self { scheduler, executors: running, _work_dir: work_dir })
    }

    /// The scheduler's address.
    pub fn scheduler(&self) -> &HostPort {
        &self.scheduler.endpoint
    }

    /// The executors' Arrow Flight addresses.
    pub fn executor_addresses(&self) -> Vec<HostPort> {
        self.executors.iter().map(|e| e.flight.clone()).collect()
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        for e in &self.executors {
            e.abort();
        }
        self.scheduler.abort();
    }
}
