//! Draining this executor within a deadline (spot notice, scale-in): see
//! `proto/sluice/v1/drain.proto` for the exchange with the scheduler.
//!
//! On SIGTERM Ballista's executor stops asking for work, tells the scheduler
//! it is terminating and waits for its running tasks (with no limit). Sluice
//! bounds that wait by the deadline less a reserve for moving output, then
//! offers its shuffle output to the scheduler, sends what the plan says to
//! the peers, reports, and returns well before the deadline: the process
//! exits 0 inside the notice.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_proto::HostPort;
use sluice_proto::pb::{self, drain_service_client::DrainServiceClient};
use sluice_proto::tls::ClusterTls;

use crate::handoff;

/// Default `--drain-deadline`: inside a 30 s notice (GCP, Azure; AWS gives 2 min).
pub const DEFAULT_DEADLINE_SECONDS: u64 = 25;

/// How long the Flight port must be quiet before a drained executor exits.
const QUIET: Duration = Duration::from_millis(1500);

/// Kept between the end of the drain and the deadline (exit, log flush).
const EXIT_MARGIN: Duration = Duration::from_millis(750);

/// Time reserved at the end of the deadline for moving output: a fifth of
/// it, at least 2 s, at most half.
pub fn move_reserve(deadline: Duration) -> Duration {
    (deadline / 5).max(Duration::from_secs(2)).min(deadline / 2)
}

/// What the executor needs to drain.
#[derive(Clone)]
pub struct Drainer {
    pub executor_id: String,
    pub scheduler: HostPort,
    pub tls: Option<ClusterTls>,
    pub work_dir: PathBuf,
}

/// How a drain went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Running tasks finished before the move reserve.
    pub tasks_finished: bool,
    pub outputs_offered: usize,
    pub outputs_moved: usize,
    pub bytes_moved: u64,
    pub handed_back: u32,
    /// The scheduler recomputes what this executor held.
    pub recompute: bool,
    pub elapsed: Duration,
    /// Problems met (the drain still ends before the deadline).
    pub problems: Vec<String>,
}

impl Outcome {
    pub fn summary(&self) -> String {
        format!(
            "sluice-executor drained in {} ms: running tasks {}, {} of {} stage outputs moved to peers ({} bytes), {} tasks handed back, recompute={}{}",
            self.elapsed.as_millis(),
            if self.tasks_finished { "finished" } else { "not finished by the move reserve" },
            self.outputs_moved,
            self.outputs_offered,
            self.bytes_moved,
            self.handed_back,
            self.recompute,
            if self.problems.is_empty() {
                String::new()
            } else {
                format!("; problems: {}", self.problems.join("; "))
            }
        )
    }
}

fn now_ms() -> u64 {
    sluice_proto::etcd::now_ms()
}

impl Drainer {
    async fn client(&self) -> Result<DrainServiceClient<tonic::transport::Channel>, String> {
        Ok(DrainServiceClient::new(handoff::channel(&self.scheduler, self.tls.as_ref()).await?))
    }

    /// Drains: tells the scheduler, waits for `tasks` (Ballista's executor
    /// finishing its running tasks) until the move reserve, moves output,
    /// reports. Returns before `deadline` from now.
    /// `stop` stops Ballista's executor once the scheduler knows.
    pub async fn run<F>(
        &self,
        deadline: Duration,
        reason: &str,
        stop: impl FnOnce(),
        tasks: F,
    ) -> Outcome
    where
        F: std::future::Future,
    {
        let started = Instant::now();
        let end = started + deadline.saturating_sub(EXIT_MARGIN);
        let deadline_ms = now_ms() + deadline.as_millis() as u64;
        let mut outcome = Outcome::default();
        tracing::info!(deadline = ?deadline, reason, "draining: no new tasks, finishing running ones");
        let mut client = match tokio::time::timeout_at(end.into(), self.client()).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                outcome.problems.push(format!("scheduler unreachable: {e}"));
                None
            }
            Err(_) => None,
        };
        if let Some(c) = client.as_mut() {
            let begin = pb::BeginDrainRequest {
                executor_id: self.executor_id.clone(),
                deadline_ms,
                reason: reason.to_string(),
            };
            if let Err(e) = tokio::time::timeout_at(end.into(), c.begin(begin))
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("begin"))
                .and_then(|r| r)
            {
                outcome.problems.push(format!("Begin: {}", e.message()));
            }
        }
        // The scheduler binds no new task to it now; let launches under way
        // land, then stop Ballista's executor (it stops asking for work and
        // waits for its running tasks).
        tokio::time::sleep(LAUNCH_SETTLE.min(deadline / 10)).await;
        stop();
        let reserve = move_reserve(deadline);
        let tasks_until = (started + deadline.saturating_sub(reserve)).max(started);
        outcome.tasks_finished = tokio::time::timeout_at(tasks_until.into(), tasks).await.is_ok();
        if let Some(c) = client.as_mut() {
            self.hand_off(c, end, &mut outcome).await;
        } else {
            outcome.recompute = true;
        }
        // Readers handed this executor's address before the scheduler
        // pointed them at the peers may still be fetching: keep serving
        // until the Flight port has been quiet for a while (or the deadline).
        let activity = crate::serving::Activity::global();
        while Instant::now() < end && !activity.idle_for(QUIET) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        outcome.elapsed = started.elapsed();
        outcome
    }

    async fn hand_off(
        &self,
        client: &mut DrainServiceClient<tonic::transport::Channel>,
        end: Instant,
        outcome: &mut Outcome,
    ) {
        let outputs = handoff::scan(&self.work_dir);
        outcome.outputs_offered = outputs.len();
        let budget = end.saturating_duration_since(Instant::now());
        let offer = pb::DrainOffer {
            executor_id: self.executor_id.clone(),
            outputs: outputs.clone(),
            budget_ms: budget.as_millis() as u64,
        };
        let plan = match tokio::time::timeout_at(end.into(), client.plan(offer)).await {
            Ok(Ok(plan)) => plan.into_inner(),
            Ok(Err(e)) => {
                outcome.problems.push(format!("Plan: {}", e.message()));
                outcome.recompute = true;
                return;
            }
            Err(_) => {
                outcome.problems.push("Plan: no answer before the deadline".into());
                outcome.recompute = true;
                return;
            }
        };
        for s in &plan.skipped {
            tracing::info!(skipped = %s, "output not moved");
        }
        // Peers receive in parallel; each peer's outputs go in plan order.
        let mut by_target: Vec<(pb::HandoffTarget, Vec<pb::StageOutput>)> = Vec::new();
        for m in &plan.moves {
            let Some(target) = &m.target else { continue };
            let Some(output) =
                outputs.iter().find(|o| o.job_id == m.job_id && o.stage_id == m.stage_id)
            else {
                continue;
            };
            match by_target.iter_mut().find(|(t, _)| t.executor_id == target.executor_id) {
                Some((_, list)) => list.push(output.clone()),
                None => by_target.push((target.clone(), vec![output.clone()])),
            }
        }
        let sends = by_target.into_iter().map(|(target, list)| {
            let me = self.clone();
            async move {
                let to =
                    HostPort::new(target.host.clone(), u16::try_from(target.port).unwrap_or(0));
                let mut results = Vec::new();
                for output in list {
                    let r =
                        handoff::send(&to, me.tls.as_ref(), &me.executor_id, &output, &me.work_dir)
                            .await;
                    results.push((output, target.executor_id.clone(), r));
                }
                results
            }
        });
        let mut moved = Vec::new();
        let mut failed = Vec::new();
        match tokio::time::timeout_at(end.into(), futures::future::join_all(sends)).await {
            Ok(all) => {
                for (output, to, r) in all.into_iter().flatten() {
                    match r {
                        Ok((_, bytes)) => {
                            outcome.outputs_moved += 1;
                            outcome.bytes_moved += bytes;
                            moved.push(pb::MovedOutput {
                                job_id: output.job_id.clone(),
                                stage_id: output.stage_id,
                                to_executor_id: to,
                            });
                        }
                        Err(e) => failed
                            .push(format!("job {} stage {}: {e}", output.job_id, output.stage_id)),
                    }
                }
            }
            Err(_) => failed.push("moves did not finish before the deadline".into()),
        }
        outcome.problems.extend(failed.iter().cloned());
        let finish =
            pb::FinishDrainRequest { executor_id: self.executor_id.clone(), moved, failed };
        match tokio::time::timeout_at(end.into(), client.finish(finish)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                outcome.handed_back = reply.handed_back;
                outcome.recompute = reply.recompute;
            }
            Ok(Err(e)) => {
                outcome.problems.push(format!("Finish: {}", e.message()));
                outcome.recompute = true;
            }
            Err(_) => {
                outcome.problems.push("Finish: no answer before the deadline".into());
                outcome.recompute = true;
            }
        }
    }
}

/// SIGTERM, taken from Ballista's executor.
///
/// Ballista's executor stops on SIGTERM at once: with no task running it
/// closes its task port while the scheduler may be launching a task it bound
/// a moment before (push mode), and the failed launch makes the scheduler
/// declare the executor lost, recomputing everything it wrote. So SIGTERM is
/// blocked in every thread ([`block_sigterm`], before the runtime starts) and
/// received by one thread with `sigwait`; the drain first tells the
/// scheduler (no task is bound to the executor from then on), lets launches
/// already under way land, and only then stops Ballista's executor with
/// SIGINT, which it handles as SIGTERM.
pub struct Sigterm(tokio::sync::watch::Receiver<bool>);

/// Blocks SIGTERM for this thread and every thread it starts later; call
/// first thing in `main`.
///
/// # Errors
/// The `pthread_sigmask` error.
pub fn block_sigterm() -> nix::Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None)
}

impl Sigterm {
    /// Starts the thread that waits for SIGTERM (blocked by [`block_sigterm`]).
    pub fn listen() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::thread::spawn(move || {
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGTERM);
            loop {
                match set.wait() {
                    Ok(nix::sys::signal::Signal::SIGTERM) => {
                        let _ = tx.send(true);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot wait for SIGTERM");
                        return;
                    }
                }
            }
        });
        Self(rx)
    }

    /// Resolves on SIGTERM.
    pub async fn received(&self) {
        let mut rx = self.0.clone();
        sluice_proto::until_true(&mut rx).await;
    }
}

/// Stops Ballista's executor the way it stops on SIGTERM (its handler for
/// Ctrl-C does the same).
pub fn stop_ballista() {
    if let Err(e) =
        nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGINT)
    {
        tracing::error!(error = %e, "could not stop Ballista's executor");
    }
}

/// How long launches bound before the scheduler heard of the drain get to
/// reach the executor before its task port closes.
const LAUNCH_SETTLE: Duration = Duration::from_millis(300);

/// Asks the scheduler every 2 s whether an administrator wants this
/// executor drained (`sluice executor drain ID`); when so, signals SIGTERM to
/// this process, which drains as on a spot notice.
pub async fn watch_requests(drainer: Drainer) {
    let mut client = None;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if client.is_none() {
            client = drainer.client().await.ok();
        }
        let Some(c) = client.as_mut() else { continue };
        match c.check(pb::CheckDrainRequest { executor_id: drainer.executor_id.clone() }).await {
            Ok(reply) if reply.get_ref().drain => {
                tracing::info!(reason = %reply.get_ref().reason, "drain requested by the scheduler");
                // Process-directed: the thread waiting for SIGTERM takes it.
                let me = nix::unistd::Pid::this();
                if let Err(e) = nix::sys::signal::kill(me, nix::sys::signal::Signal::SIGTERM) {
                    tracing::error!(error = %e, "could not signal this process to drain");
                }
                return;
            }
            Ok(_) => {}
            Err(_) => client = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_move_reserve_is_a_fifth_between_two_seconds_and_half() {
        assert_eq!(move_reserve(Duration::from_secs(25)), Duration::from_secs(5));
        assert_eq!(move_reserve(Duration::from_secs(5)), Duration::from_secs(2));
        assert_eq!(move_reserve(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(move_reserve(Duration::from_secs(120)), Duration::from_secs(24));
    }
}
