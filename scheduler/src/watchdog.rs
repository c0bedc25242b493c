//! A guard that no job waits forever.
//!
//! Ballista updates a job's graph when a task reports; if that update fails
//! (the adaptive planner's re-planning rejects the plan it made,
//! `SanityCheckPlan`; task metrics of a different shape), the event loop
//! only logs the error. The task is already marked successful, its stage
//! stays `Running` with nothing left to run, and the client polls a job that
//! will never end. DataFusion's sqllogictest corpus hit this with windows
//! and sorts over unions of constant rows (`tests/tests/corpus.rs`).
//!
//! Every [`WATCH_INTERVAL`] the watchdog looks at each running job's graph.
//! A job is **stalled** when it is not finished, yet no task is running, none
//! is waiting for a slot and no stage is resolved and waiting to start: in a
//! healthy job one of those always holds outside the graph's lock (a job
//! waiting for executors has resolved stages; a stage waiting for its
//! inputs has running input tasks). A job stalled with the same
//! bookkeeping for [`WatchdogConfig::stall_after`] is failed with an error
//! that says so, and cancelled a little later (so its client reads the error
//! before the job is evicted; Ballista's cancel overwrites the message).
//!
//! [`decide`] is the pure decision (observations in, jobs to fail out),
//! tested without a cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballista_core::serde::protobuf::job_status;
use ballista_scheduler::cluster::JobState;
use ballista_scheduler::state::execution_graph::ExecutionGraph;
use ballista_scheduler::state::execution_stage::ExecutionStage;

use crate::Scheduler;

/// How often running jobs are looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// How long a failed job stays listed with its error before it is cancelled
/// (and its client, which polls every 50 ms, has read the error).
pub const CANCEL_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// A job stalled this long is failed.
    pub stall_after: Duration,
}

/// The bookkeeping of a stalled job: while it stays the same the job makes
/// no progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// Each stage's id and state, sorted by id.
    pub stages: Vec<(usize, &'static str)>,
}

/// What one look at a job's graph shows: `None` when the job is making
/// progress (or finished), its stall otherwise.
pub fn observe(graph: &dyn ExecutionGraph) -> Option<Stall> {
    let running = matches!(graph.status().status, Some(job_status::Status::Running(_)));
    if !running || graph.available_tasks() > 0 || !graph.running_tasks().is_empty() {
        return None;
    }
    let mut stages: Vec<(usize, &'static str)> = graph
        .stages()
        .iter()
        .map(|(id, s)| {
            let state = match s {
                ExecutionStage::UnResolved(_) => "unresolved",
                ExecutionStage::Resolved(_) => "resolved",
                ExecutionStage::Running(_) => "running",
                ExecutionStage::Successful(_) => "successful",
                ExecutionStage::Failed(_) => "failed",
            };
            (*id, state)
        })
        .collect();
    if stages.iter().any(|(_, s)| *s == "resolved") {
        return None;
    }
    stages.sort_unstable();
    Some(Stall { stages })
}

/// Since when each stalled job has been stalled the same way.
#[derive(Debug, Default)]
pub struct Watch {
    since: HashMap<String, (Stall, Instant)>,
}

/// Folds one round of observations (`job id → stall`, for every running
/// job) into `watch`; returns the jobs stalled the same way for at least
/// `stall_after` at `now`, each with how long.
pub fn decide(
    watch: &mut Watch,
    observed: HashMap<String, Option<Stall>>,
    now: Instant,
    stall_after: Duration,
) -> Vec<(String, Duration)> {
    watch.since.retain(|job, _| matches!(observed.get(job), Some(Some(_))));
    let mut stalled = Vec::new();
    for (job, stall) in observed {
        let Some(stall) = stall else { continue };
        let since = match watch.since.get(&job) {
            Some((seen, since)) if *seen == stall => *since,
            _ => {
                watch.since.insert(job.clone(), (stall, now));
                now
            }
        };
        let held = now.saturating_duration_since(since);
        if held >= stall_after {
            stalled.push((job, held));
        }
    }
    stalled.sort();
    stalled
}

/// The error a stalled job fails with.
pub fn stall_message(job: &str, held: Duration, stall: &Stall) -> String {
    let stages: Vec<String> = stall.stages.iter().map(|(id, s)| format!("{id}: {s}")).collect();
    format!(
        "job {job} stopped making progress: no task has run or waited for {}s while the job is \
         unfinished (stages {}). Its bookkeeping is inconsistent, so the scheduler failed it \
         instead of letting it wait forever; the scheduler log names the cause (search for the \
         job id). Running the query again will likely stall again: please report it.",
        held.as_secs(),
        stages.join(", ")
    )
}

/// Runs the watchdog until the process ends.
pub fn spawn(
    server: Arc<Scheduler>,
    job_state: Arc<dyn JobState>,
    config: WatchdogConfig,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut watch = Watch::default();
        let mut ticker = tokio::time::interval(WATCH_INTERVAL);
        loop {
            ticker.tick().await;
            let jobs = server.state.task_manager.get_running_job_cache();
            let mut observed = HashMap::new();
            for (id, info) in jobs.iter() {
                let graph = info.execution_graph.read().await;
                observed.insert(id.to_string(), observe(&**graph));
            }
            for (job, held) in decide(&mut watch, observed, Instant::now(), config.stall_after) {
                let Some(info) = jobs.iter().find(|(id, _)| id.to_string() == job).map(|(_, i)| i)
                else {
                    continue;
                };
                let snapshot = {
                    let mut graph = info.execution_graph.write().await;
                    // Looked at again under the lock: it may have moved on.
                    let Some(stall) = observe(&**graph) else { continue };
                    let message = stall_message(&job, held, &stall);
                    tracing::error!(job_id = %job, "{message}");
                    graph.abort_running(message);
                    graph.cloned()
                };
                let Some(id) = jobs.keys().find(|id| id.to_string() == job).cloned() else {
                    continue;
                };
                if let Err(e) = job_state.save_job(&id, &snapshot).await {
                    tracing::warn!(job_id = %job, error = %e, "saving the stalled job's failure");
                }
                watch.since.remove(&job);
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    tokio::time::sleep(CANCEL_AFTER).await;
                    if let Err(e) = server.cancel_job(id).await {
                        tracing::warn!(job_id = %job, error = %e, "cancelling the stalled job");
                    }
                });
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall(states: &[&'static str]) -> Option<Stall> {
        Some(Stall { stages: states.iter().copied().enumerate().collect() })
    }

    fn round(jobs: &[(&str, Option<Stall>)]) -> HashMap<String, Option<Stall>> {
        jobs.iter().map(|(j, s)| (j.to_string(), s.clone())).collect()
    }

    #[test]
    fn a_job_stalled_the_same_way_long_enough_is_failed() {
        let mut watch = Watch::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        let stuck = stall(&["successful", "running", "unresolved"]);
        assert!(decide(&mut watch, round(&[("a", stuck.clone())]), t0, after).is_empty());
        assert!(
            decide(&mut watch, round(&[("a", stuck.clone())]), t0 + Duration::from_secs(29), after)
                .is_empty()
        );
        let failed =
            decide(&mut watch, round(&[("a", stuck)]), t0 + Duration::from_secs(31), after);
        assert_eq!(failed, vec![("a".to_string(), Duration::from_secs(31))]);
    }

    #[test]
    fn progress_or_a_changed_stall_restarts_the_clock() {
        let mut watch = Watch::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        let s = |n| t0 + Duration::from_secs(n);
        decide(&mut watch, round(&[("a", stall(&["running", "unresolved"]))]), s(0), after);
        // A task ran in between: not stalled this round.
        decide(&mut watch, round(&[("a", None)]), s(20), after);
        assert!(
            decide(&mut watch, round(&[("a", stall(&["running", "unresolved"]))]), s(40), after)
                .is_empty()
        );
        // The stages moved on: a different stall, a new clock.
        assert!(
            decide(&mut watch, round(&[("a", stall(&["successful", "running"]))]), s(65), after)
                .is_empty()
        );
        assert_eq!(
            decide(&mut watch, round(&[("a", stall(&["successful", "running"]))]), s(96), after)
                .len(),
            1
        );
    }

    #[test]
    fn finished_jobs_are_forgotten() {
        let mut watch = Watch::default();
        let t0 = Instant::now();
        decide(&mut watch, round(&[("a", stall(&["running"]))]), t0, Duration::from_secs(1));
        decide(&mut watch, HashMap::new(), t0, Duration::from_secs(1));
        assert!(watch.since.is_empty());
    }
}
