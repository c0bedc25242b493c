//! The cluster's load, read from the leader's Ballista state and backfill
//! records, as `/metrics` (Prometheus text) and the KEDA scaler report it.
//!
//! ```text
//!   executors, slots ◄── executor registry (vcores of every live executor)
//!   running tasks    ◄── running jobs' graphs: tasks bound to an executor
//!   pending tasks    ◄── running jobs' graphs: runnable tasks waiting for a slot
//!                        + one per queued job (not planned into tasks yet)
//!   backfills        ◄── backfill records: running ones, dates committed / total
//! ```
//!
//! [`desired_executors`] is the scaling decision, tested on its own.

use std::sync::Arc;

use ballista_core::serde::protobuf::job_status;
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use sluice_proto::pb;

use crate::Scheduler;
use crate::backfill::Hub;

/// One reading of the cluster's load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    /// Live executors that take tasks (draining ones are not counted).
    pub executors: u64,
    /// Executors draining, or drained while running jobs still read their
    /// outputs from peers: they take no task.
    pub executors_draining: u64,
    pub slots_total: u64,
    pub tasks_running: u64,
    pub tasks_pending: u64,
    pub jobs_queued: u64,
    pub jobs_running: u64,
    pub backfills_running: u64,
    /// Over running backfills.
    pub backfill_dates_committed: u64,
    pub backfill_dates_total: u64,
}

impl Load {
    pub fn slots_free(&self) -> u64 {
        self.slots_total.saturating_sub(self.tasks_running)
    }
}

/// Reads the load now.
pub async fn read(scheduler: &Scheduler, hub: &Hub, drains: &crate::drain::Drains) -> Load {
    let mut load = Load::default();
    if let Ok(executors) = scheduler.state.executor_manager.get_executors_state().await {
        for (meta, _, _) in &executors {
            if drains.excluded(&meta.id) {
                load.executors_draining += 1;
            } else {
                load.executors += 1;
                load.slots_total += u64::from(meta.specification.vcores);
            }
        }
    }
    let jobs = scheduler.state.task_manager.get_running_job_cache();
    for (_, info) in jobs.iter() {
        let graph = info.execution_graph.read().await;
        if !matches!(graph.status().status, Some(job_status::Status::Running(_))) {
            continue;
        }
        load.tasks_running += graph.running_tasks().len() as u64;
        load.tasks_pending += graph.available_tasks() as u64;
    }
    load.jobs_queued = scheduler.pending_job_number() as u64;
    load.jobs_running = scheduler.running_job_number() as u64;
    load.tasks_pending += load.jobs_queued;
    if let Ok(records) = hub.list().await {
        for r in records.iter().filter(|r| r.state() == pb::BackfillState::Running) {
            load.backfills_running += 1;
            load.backfill_dates_committed += u64::from(r.dates_committed);
            load.backfill_dates_total += u64::from(r.dates_total);
        }
    }
    load
}

/// How many executors the work in `load` wants, with `slots_per_executor`
/// slots each: every running and pending task a slot, rounded up; at least
/// one while a backfill runs (between two of its jobs no task may exist);
/// zero when idle.
pub fn desired_executors(load: &Load, slots_per_executor: u64) -> u64 {
    let tasks = load.tasks_running + load.tasks_pending;
    let wanted = tasks.div_ceil(slots_per_executor.max(1));
    if load.backfills_running > 0 { wanted.max(1) } else { wanted }
}

/// Whether there is work at all (KEDA scales from and to zero on it).
pub fn active(load: &Load) -> bool {
    desired_executors(load, 1) > 0
}

/// Slots per executor when the scaler's metadata does not say: the live
/// executors' average, else 1.
pub fn slots_per_executor(load: &Load) -> u64 {
    if load.executors == 0 { 1 } else { (load.slots_total / load.executors).max(1) }
}

/// The Prometheus registry behind `/metrics`.
pub struct Metrics {
    registry: Registry,
    executors: IntGauge,
    draining: IntGauge,
    drain_events: IntCounterVec,
    slots: IntGaugeVec,
    tasks: IntGaugeVec,
    jobs: IntGaugeVec,
    jobs_total: IntCounterVec,
    backfills_running: IntGauge,
    backfill_dates: IntGaugeVec,
    desired: IntGauge,
}

impl Metrics {
    /// # Errors
    /// A registration error from the prometheus crate (a name clash).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("sluice".into()), None)?;
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        let vec =
            |name: &str, help: &str, label: &str| IntGaugeVec::new(Opts::new(name, help), &[label]);
        let m = Self {
            executors: gauge(
                "executors_alive",
                "Executors registered with the leader that take tasks (draining ones excluded).",
            )?,
            draining: gauge(
                "executors_draining",
                "Executors draining (or drained, their outputs still read from peers): no task goes to them.",
            )?,
            drain_events: IntCounterVec::new(
                Opts::new(
                    "drain_events_total",
                    "Executor drains and what they saved or cost: started, moved (every needed output \
                     moved to a peer), recomputed (left to recovery), outputs_moved, tasks_handed_back, \
                     stage_reruns (stage attempts after the first, any cause), rerun_tasks (their successful tasks).",
                ),
                &["event"],
            )?,
            slots: vec("slots", "Task slots of the live executors, by state.", "state")?,
            tasks: vec("tasks", "Tasks of running jobs, by state.", "state")?,
            jobs: vec("jobs", "Jobs on the leader, by state.", "state")?,
            jobs_total: IntCounterVec::new(
                Opts::new(
                    "jobs_total",
                    "Jobs this scheduler submitted, completed, failed and cancelled (Ballista's counters).",
                ),
                &["state"],
            )?,
            backfills_running: gauge("backfills_running", "Backfills the leader is running.")?,
            backfill_dates: vec(
                "backfill_dates",
                "Feature dates of running backfills: committed and total.",
                "state",
            )?,
            desired: gauge(
                "executors_desired",
                "Executors the running and pending tasks want (what the KEDA scaler reports).",
            )?,
            registry,
        };
        m.registry.register(Box::new(m.executors.clone()))?;
        m.registry.register(Box::new(m.draining.clone()))?;
        m.registry.register(Box::new(m.drain_events.clone()))?;
        m.registry.register(Box::new(m.slots.clone()))?;
        m.registry.register(Box::new(m.tasks.clone()))?;
        m.registry.register(Box::new(m.jobs.clone()))?;
        m.registry.register(Box::new(m.jobs_total.clone()))?;
        m.registry.register(Box::new(m.backfills_running.clone()))?;
        m.registry.register(Box::new(m.backfill_dates.clone()))?;
        m.registry.register(Box::new(m.desired.clone()))?;
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    /// The text exposition of `load`.
    pub fn render(&self, load: &Load) -> String {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.executors.set(n(load.executors));
        self.draining.set(n(load.executors_draining));
        self.slots.with_label_values(&["total"]).set(n(load.slots_total));
        self.slots.with_label_values(&["free"]).set(n(load.slots_free()));
        self.tasks.with_label_values(&["running"]).set(n(load.tasks_running));
        self.tasks.with_label_values(&["pending"]).set(n(load.tasks_pending));
        self.jobs.with_label_values(&["queued"]).set(n(load.jobs_queued));
        self.jobs.with_label_values(&["running"]).set(n(load.jobs_running));
        self.sync_job_counters();
        self.backfills_running.set(n(load.backfills_running));
        self.backfill_dates.with_label_values(&["committed"]).set(n(load.backfill_dates_committed));
        self.backfill_dates.with_label_values(&["total"]).set(n(load.backfill_dates_total));
        self.desired.set(n(desired_executors(load, slots_per_executor(load))));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics not encoded");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Metrics {
    /// Ballista counts jobs by outcome in the default registry (served on its
    /// `/api/metrics`); they are carried over as `sluice_jobs_total{state}`.
    fn sync_job_counters(&self) {
        for family in prometheus::default_registry().gather() {
            let state = match family.name() {
                "job_submitted_total" => "submitted",
                "job_completed_total" => "completed",
                "job_failed_total" => "failed",
                "job_cancelled_total" => "cancelled",
                _ => continue,
            };
            let total = family.metric.first().map_or(0.0, |m| m.counter.value());
            let counter = self.jobs_total.with_label_values(&[state]);
            let seen = counter.get();
            let total = total.max(0.0) as u64;
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }
}

impl Metrics {
    /// Carries the drain totals over (counters only grow).
    pub fn sync_drains(&self, c: &crate::drain::Counters) {
        for (event, total) in [
            ("started", c.drains_started),
            ("moved", c.drains_moved),
            ("recomputed", c.drains_recomputed),
            ("outputs_moved", c.outputs_moved),
            ("tasks_handed_back", c.tasks_handed_back),
            ("stage_reruns", c.stage_reruns),
            ("rerun_tasks", c.rerun_tasks),
        ] {
            let counter = self.drain_events.with_label_values(&[event]);
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }
}

/// What `/metrics` and the scaler read from.
#[derive(Clone)]
pub struct LoadSource {
    pub scheduler: Arc<Scheduler>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub drains: crate::drain::Drains,
}

impl LoadSource {
    pub async fn read(&self) -> Load {
        self.metrics.sync_drains(&self.drains.counters());
        read(&self.scheduler, &self.hub, &self.drains).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_executors_cover_every_task_and_idle_is_zero() {
        let idle = Load::default();
        assert_eq!(desired_executors(&idle, 4), 0);
        assert!(!active(&idle));
        let busy = Load { tasks_running: 8, tasks_pending: 9, ..Load::default() };
        assert_eq!(desired_executors(&busy, 4), 5);
        assert_eq!(desired_executors(&busy, 0), 17, "a zero slot count counts as one");
        // Between two jobs of a backfill no task exists: keep one executor.
        let between = Load { backfills_running: 1, ..Load::default() };
        assert_eq!(desired_executors(&between, 4), 1);
        assert!(active(&between));
        let spe = Load { executors: 3, slots_total: 7, ..Load::default() };
        assert_eq!(slots_per_executor(&spe), 2);
        assert_eq!(slots_per_executor(&Load::default()), 1);
    }

    #[test]
    fn metrics_render_prometheus_text() {
        let m = Metrics::new().expect("registry");
        let text = m.render(&Load {
            executors: 2,
            executors_draining: 1,
            slots_total: 4,
            tasks_running: 3,
            tasks_pending: 5,
            backfills_running: 1,
            backfill_dates_committed: 6,
            backfill_dates_total: 30,
            ..Load::default()
        });
        for line in [
            "sluice_executors_alive 2",
            "sluice_executors_draining 1",
            "sluice_slots{state=\"free\"} 1",
            "sluice_tasks{state=\"pending\"} 5",
            "sluice_backfill_dates{state=\"total\"} 30",
            "sluice_executors_desired 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(text.contains("# TYPE sluice_tasks gauge"), "{text}");
    }
}
