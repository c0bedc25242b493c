//! The executor's Prometheus metrics, served on `--metrics-port`.
//!
//! ```text
//!   SluiceStageExec::execute_query_stage ─► tasks running (gauge), task durations (histogram),
//!                                           tasks by outcome, shuffle bytes written
//!                                           (the partitions' sizes it reports)
//!   ... then the task's plan metrics     ─► shuffle bytes read (ShuffleReaderExec
//!                                           decoded_bytes, local and remote), spill bytes
//! ```

use std::sync::OnceLock;

use datafusion::physical_plan::metrics::MetricsSet;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The executor's metrics (one set per process).
pub struct ExecutorMetrics {
    registry: Registry,
    pub slots: IntGauge,
    pub tasks_running: IntGauge,
    pub tasks: IntCounterVec,
    pub task_seconds: Histogram,
    pub shuffle_written_bytes: IntCounter,
    pub shuffle_read_bytes: IntCounter,
    pub spilled_bytes: IntCounter,
}

impl ExecutorMetrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("sluice_executor".into()), None)?;
        let m = Self {
            slots: IntGauge::new("slots", "Task slots of this executor.")?,
            tasks_running: IntGauge::new("tasks_running", "Tasks running on this executor.")?,
            tasks: IntCounterVec::new(
                Opts::new("tasks_total", "Tasks this executor finished, by outcome."),
                &["outcome"],
            )?,
            task_seconds: Histogram::with_opts(
                HistogramOpts::new("task_duration_seconds", "Wall time of each task.").buckets(
                    vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
                ),
            )?,
            shuffle_written_bytes: IntCounter::new(
                "shuffle_written_bytes_total",
                "Bytes of shuffle output this executor's tasks wrote.",
            )?,
            shuffle_read_bytes: IntCounter::new(
                "shuffle_read_bytes_total",
                "Bytes of shuffle input this executor's tasks read (local and fetched).",
            )?,
            spilled_bytes: IntCounter::new(
                "spilled_bytes_total",
                "Bytes this executor's operators spilled to disk.",
            )?,
            registry,
        };
        m.registry.register(Box::new(m.slots.clone()))?;
        m.registry.register(Box::new(m.tasks_running.clone()))?;
        m.registry.register(Box::new(m.tasks.clone()))?;
        m.registry.register(Box::new(m.task_seconds.clone()))?;
        m.registry.register(Box::new(m.shuffle_written_bytes.clone()))?;
        m.registry.register(Box::new(m.shuffle_read_bytes.clone()))?;
        m.registry.register(Box::new(m.spilled_bytes.clone()))?;
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    /// Adds a finished task's plan metrics (shuffle reads, spills).
    pub fn record_plan(&self, sets: &[MetricsSet]) {
        for set in sets {
            if let Some(v) = set.sum_by_name("decoded_bytes") {
                self.shuffle_read_bytes.inc_by(v.as_usize() as u64);
            }
            if let Some(v) = set.spilled_bytes() {
                self.spilled_bytes.inc_by(v as u64);
            }
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics not encoded");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// This process's metrics (`None` only if the registry refused them, which
/// a name clash in this file would cause).
pub fn global() -> Option<&'static ExecutorMetrics> {
    static METRICS: OnceLock<Option<ExecutorMetrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| match ExecutorMetrics::new() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "executor metrics not registered");
                None
            }
        })
        .as_ref()
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub fn serve(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    use axum::http::header;
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            let text = global().map(ExecutorMetrics::render).unwrap_or_default();
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
                .into_response()
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    })
}

/// Counts a task around its run.
pub struct TaskTimer {
    started: std::time::Instant,
    metrics: Option<&'static ExecutorMetrics>,
}

impl TaskTimer {
    pub fn start() -> Self {
        let metrics = global();
        if let Some(m) = metrics {
            m.tasks_running.inc();
        }
        Self { started: std::time::Instant::now(), metrics }
    }

    /// The task ended with `outcome`, having written `shuffle_bytes`.
    pub fn finish(self, ok: bool, shuffle_bytes: u64) {
        if let Some(m) = self.metrics {
            m.task_seconds.observe(self.started.elapsed().as_secs_f64());
            m.tasks.with_label_values(&[if ok { "succeeded" } else { "failed" }]).inc();
            m.shuffle_written_bytes.inc_by(shuffle_bytes);
        }
    }
}

impl Drop for TaskTimer {
    fn drop(&mut self) {
        if let Some(m) = self.metrics {
            m.tasks_running.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_counted_and_rendered() {
        let m = global().expect("metrics");
        m.slots.set(2);
        {
            let t = TaskTimer::start();
            assert_eq!(m.tasks_running.get(), 1);
            t.finish(true, 1234);
        }
        assert_eq!(m.tasks_running.get(), 0);
        let text = m.render();
        for line in [
            "sluice_executor_slots 2",
            "sluice_executor_tasks_running 0",
            "sluice_executor_tasks_total{outcome=\"succeeded\"} 1",
            "sluice_executor_shuffle_written_bytes_total 1234",
            "sluice_executor_task_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
