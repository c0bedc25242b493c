//! Draining executors (spot notices, scale-in) without recomputing their
//! finished work.
//!
//! Ballista 55 treats a stopping executor as lost at once: its `ExecutorStopped`
//! call removes it, every stage whose shuffle output it held is run again, and
//! with the adaptive planner the whole job is resubmitted. Sluice instead:
//!
//! 1. **Begin** (the executor's call on SIGTERM, or its `Terminating`
//!    heartbeat, whichever comes first): the executor is *draining*. No task
//!    is bound to it (push: left out of the binding; pull: its free slots
//!    read as 0), its `ExecutorStopped` call is answered without removing it,
//!    and its heartbeat is kept fresh until its deadline (plus
//!    [`OVERRUN_GRACE_MS`]).
//! 2. **Plan**: once its running tasks are done (or its deadline nears), the
//!    executor offers its stage outputs; [`plan_moves`] decides which go to
//!    which live peer, and in what order, within the time left.
//! 3. The executor streams each output to its peer (`ShuffleHandoff.Put`),
//!    which stores it under its own work folder at the same relative paths.
//! 4. **Finish**: when every output still needed moved, the executor becomes a
//!    *ghost*: Ballista still counts it registered (so nothing is reset), and
//!    before tasks are bound, readers' shuffle locations on the ghost are
//!    pointed at the peer holding the copy ([`redirect_jobs`]; result
//!    locations in job statuses likewise). Tasks it still counted as running
//!    are handed back (failed as retryable, not counted). When no job that
//!    was running at the time is left, the ghost is released and Ballista
//!    removes it. When something needed did not move, the executor is
//!    declared lost and Ballista's recovery recomputes (the job completes).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ballista_core::execution_plans::ShuffleReaderExec;
use ballista_core::serde::scheduler::{ExecutorMetadata, PartitionLocation};
use ballista_scheduler::state::execution_stage::RunningStage;
use ballista_scheduler::state::task_manager::JobInfoCache;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_plan::ExecutionPlan;

use crate::recovery::LostExecutors;

/// How long past its announced deadline a draining executor that has not
/// finished is still kept; then it is declared lost.
pub const OVERRUN_GRACE_MS: u64 = 10_000;

/// Deadline assumed for an executor that said `Terminating` but has not
/// called Begin (yet).
pub const DEFAULT_DRAIN_MS: u64 = 30_000;

/// The handoff rate [`plan_moves`] counts on per peer (bytes per second):
/// conservative for executors in one zone (a spot node has ≥ 1 Gbit/s).
pub const HANDOFF_BYTES_PER_SECOND: u64 = 50 * 1024 * 1024;

fn now_ms() -> u64 {
    sluice_proto::etcd::now_ms()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Draining,
    /// Its outputs moved; readers are pointed at the peers.
    Ghost,
    /// Left to Ballista's recovery (recompute) or released: reported dead.
    Gone,
}

#[derive(Debug, Clone)]
struct Entry {
    deadline_ms: u64,
    reason: String,
    phase: Phase,
    /// Planned targets: (job, stage) → peer.
    planned: HashMap<(String, u32), ExecutorMetadata>,
    /// The plan covered every output a running job needs.
    plan_complete: bool,
    /// Moved outputs: (job, stage) → peer holding the copy.
    moved: HashMap<(String, u32), ExecutorMetadata>,
    /// Jobs running when it became a ghost: released once none is.
    jobs: HashSet<String>,
}

#[derive(Debug, Default)]
struct State {
    executors: HashMap<String, Entry>,
    /// Administrators' drain requests not yet seen by the executor.
    requested: HashMap<String, String>,
    /// (job, stage) that ran a partition again (lost output recomputed,
    /// or a stage attempt after the first).
    reran: HashSet<(String, u32)>,
    /// (job, stage, input partition) completed by some task.
    done: HashSet<(String, u32, usize)>,
    counters: Counters,
}

/// Totals since the scheduler started (`/metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub drains_started: u64,
    /// Drains that moved every needed output.
    pub drains_moved: u64,
    /// Drains left to recompute.
    pub drains_recomputed: u64,
    pub outputs_moved: u64,
    pub tasks_handed_back: u64,
    /// Stage attempts after the first (a stage run again, for any reason).
    pub stage_reruns: u64,
    /// Successful tasks of those attempts: recomputed work.
    pub rerun_tasks: u64,
}

/// One redirect: readers of `stage`'s output of `job` written by `ghost`
/// read from `to` instead.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub ghost: String,
    pub job: String,
    pub stage: u32,
    pub to: ExecutorMetadata,
}

/// The drains the scheduler knows of; shared by the gRPC guard, the cluster
/// state and the drain service.
#[derive(Debug, Clone, Default)]
pub struct Drains {
    state: Arc<Mutex<State>>,
    lost: LostExecutors,
    /// Per-peer handoff rate plans count on (bytes/s; 0: the default).
    rate: u64,
}

impl Drains {
    pub fn new(lost: LostExecutors, bytes_per_second: u64) -> Self {
        Self { state: Arc::default(), lost, rate: bytes_per_second }
    }

    fn rate(&self) -> u64 {
        if self.rate == 0 { HANDOFF_BYTES_PER_SECOND } else { self.rate }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts (or updates the deadline of) a drain; true when it is new.
    pub fn begin(&self, id: &str, deadline_ms: u64, reason: &str) -> bool {
        let mut state = self.state();
        state.requested.remove(id);
        if let Some(entry) = state.executors.get_mut(id) {
            if entry.phase == Phase::Draining && deadline_ms > 0 {
                entry.deadline_ms = deadline_ms;
            }
            return false;
        }
        state.executors.insert(
            id.to_string(),
            Entry {
                deadline_ms: if deadline_ms == 0 {
                    now_ms() + DEFAULT_DRAIN_MS
                } else {
                    deadline_ms
                },
                reason: reason.to_string(),
                phase: Phase::Draining,
                planned: HashMap::new(),
                plan_complete: false,
                moved: HashMap::new(),
                jobs: HashSet::new(),
            },
        );
        state.counters.drains_started += 1;
        drop(state);
        // Its etcd lease ends when it exits: that is not a loss.
        self.lost.spare(id);
        tracing::info!(executor_id = id, reason, "executor draining: no new tasks");
        true
    }

    /// Whether no task may be bound to `id` (draining, a ghost, or gone).
    pub fn excluded(&self, id: &str) -> bool {
        self.state().executors.contains_key(id)
    }

    pub fn is_draining(&self, id: &str) -> bool {
        self.state().executors.get(id).is_some_and(|e| e.phase == Phase::Draining)
    }

    /// How to report `id`'s heartbeat: `None` as it is, `Some(true)` fresh
    /// and active, `Some(false)` long dead (Ballista's reaper removes it).
    pub fn heartbeat(&self, id: &str) -> Option<bool> {
        let mut state = self.state();
        let entry = state.executors.get_mut(id)?;
        Some(match entry.phase {
            Phase::Draining if now_ms() > entry.deadline_ms + OVERRUN_GRACE_MS => {
                tracing::warn!(
                    executor_id = id,
                    "draining executor did not finish by its deadline; declaring it lost"
                );
                entry.phase = Phase::Gone;
                state.counters.drains_recomputed += 1;
                drop(state);
                self.lost.unspare(id);
                self.lost.mark(id);
                false
            }
            Phase::Draining | Phase::Ghost => true,
            Phase::Gone => false,
        })
    }

    /// Ids of executors that are draining or ghosts, with why.
    pub fn draining(&self) -> Vec<(String, String)> {
        let state = self.state();
        let mut ids: Vec<(String, String)> = state
            .executors
            .iter()
            .filter(|(_, e)| e.phase != Phase::Gone)
            .map(|(id, e)| (id.clone(), e.reason.clone()))
            .collect();
        ids.sort();
        ids
    }

    pub fn counters(&self) -> Counters {
        self.state().counters
    }

    /// An administrator asks `id` to drain; false when it already is.
    pub fn request(&self, id: &str, reason: &str) -> bool {
        let mut state = self.state();
        if state.executors.contains_key(id) {
            return false;
        }
        state.requested.insert(id.to_string(), reason.to_string());
        true
    }

    /// Whether an administrator asked `id` to drain (and why).
    pub fn requested(&self, id: &str) -> Option<String> {
        self.state().requested.get(id).cloned()
    }

    fn set_planned(
        &self,
        id: &str,
        planned: HashMap<(String, u32), ExecutorMetadata>,
        complete: bool,
    ) {
        if let Some(entry) = self.state().executors.get_mut(id) {
            entry.planned = planned;
            entry.plan_complete = complete;
        }
    }

    /// Records what moved. With every needed output moved, the executor
    /// becomes a ghost (true); else it is declared lost (false).
    pub fn finish(
        &self,
        id: &str,
        moved: &[(String, u32, String)],
        complete: bool,
        running_jobs: HashSet<String>,
    ) -> bool {
        let mut state = self.state();
        let Some(entry) = state.executors.get_mut(id) else { return false };
        let mut kept = HashMap::new();
        for (job, stage, to) in moved {
            if let Some(target) = entry.planned.get(&(job.clone(), *stage))
                && target.id == *to
            {
                kept.insert((job.clone(), *stage), target.clone());
            }
        }
        let ghost = complete && !kept.is_empty();
        let n = kept.len() as u64;
        if ghost {
            entry.phase = Phase::Ghost;
            entry.moved = kept;
            entry.jobs = running_jobs;
            state.counters.drains_moved += 1;
            state.counters.outputs_moved += n;
        } else if complete {
            // Nothing it held is needed: simply gone.
            entry.phase = Phase::Gone;
        } else {
            entry.phase = Phase::Gone;
            state.counters.drains_recomputed += 1;
        }
        drop(state);
        if !ghost {
            self.lost.unspare(id);
            self.lost.mark(id);
        }
        ghost
    }

    /// Ballista removed `id`: a finished drain's record is dropped.
    pub fn forget(&self, id: &str) {
        let mut state = self.state();
        if state.executors.get(id).is_some_and(|e| e.phase == Phase::Gone) {
            state.executors.remove(id);
        }
    }

    pub fn count_handed_back(&self, n: u64) {
        self.state().counters.tasks_handed_back += n;
    }

    /// Releases ghosts none of whose jobs is still running.
    pub fn release_finished(&self, running: &HashSet<String>) {
        let mut state = self.state();
        for (id, entry) in &mut state.executors {
            if entry.phase == Phase::Ghost && entry.jobs.is_disjoint(running) {
                tracing::info!(executor_id = %id, "drained executor released: no job reads its outputs any more");
                entry.phase = Phase::Gone;
            }
        }
    }

    /// The redirects in force.
    pub fn redirects(&self) -> Vec<Redirect> {
        let state = self.state();
        state
            .executors
            .iter()
            .filter(|(_, e)| e.phase == Phase::Ghost)
            .flat_map(|(ghost, e)| {
                e.moved.iter().map(|((job, stage), to)| Redirect {
                    ghost: ghost.clone(),
                    job: job.clone(),
                    stage: *stage,
                    to: to.clone(),
                })
            })
            .collect()
    }

    /// Counts a successful task: recomputed when a task of the same stage
    /// had completed one of its input partitions already, or when it
    /// belongs to a stage attempt after the first (`sluice_drain_events_total`
    /// `stage_reruns` and `rerun_tasks`).
    pub fn record_success(&self, job: &str, stage: u32, attempt: u32, partitions: &[usize]) {
        let mut state = self.state();
        if state.done.len() > 1_000_000 {
            // Bounded: the oldest jobs' partitions go first (coarsely: all).
            state.done.clear();
        }
        let mut again = attempt > 0;
        for p in partitions {
            if !state.done.insert((job.to_string(), stage, *p)) {
                again = true;
            }
        }
        if !again {
            return;
        }
        state.counters.rerun_tasks += 1;
        if state.reran.insert((job.to_string(), stage)) {
            state.counters.stage_reruns += 1;
            tracing::warn!(
                job,
                stage,
                attempt,
                "stage running again: partitions it had completed are computed again"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The decision: which outputs move where, in what order, within the deadline.

/// A stage output offered by a draining executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub job: String,
    pub stage: u32,
    pub bytes: u64,
    /// A running job may still read it.
    pub needed: bool,
}

/// A live executor that can take outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    /// Bytes already assigned to it by other drains (spreads load).
    pub assigned_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub job: String,
    pub stage: u32,
    pub bytes: u64,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MovePlan {
    /// In sending order.
    pub moves: Vec<Move>,
    /// Outputs not moved, with why.
    pub skipped: Vec<(String, u32, String)>,
    /// Every needed output is in `moves`: the executor's work survives it.
    pub complete: bool,
    /// Estimated seconds the moves take (the slowest peer's share).
    pub estimated: Duration,
}

/// Which outputs to move, to which peer, in what order, within `budget`.
///
/// - Outputs no running job needs are skipped (nothing reads them again).
/// - Needed outputs go to peers largest first, each to the peer with the
///   least bytes so far (longest-processing-time-first: peers receive in
///   parallel, so the slowest peer's share bounds the time). Within a peer,
///   outputs are sent in that order.
/// - Moves must fit in `budget` at `bytes_per_second` per peer; if the
///   needed outputs cannot all move in time (or no peer is left), nothing
///   moves: Ballista's recovery recomputes what the executor held anyway, so
///   a partial move would be wasted time inside a short notice.
pub fn plan_moves(
    candidates: &[Candidate],
    peers: &[Peer],
    budget: Duration,
    bytes_per_second: u64,
) -> MovePlan {
    let mut plan = MovePlan { complete: true, ..MovePlan::default() };
    let mut needed: Vec<&Candidate> = Vec::new();
    for c in candidates {
        if c.needed {
            needed.push(c);
        } else {
            plan.skipped.push((c.job.clone(), c.stage, "no running job reads it".into()));
        }
    }
    if needed.is_empty() {
        return plan;
    }
    fn skip_all(plan: &mut MovePlan, needed: &[&Candidate], why: &str) {
        plan.complete = false;
        for c in needed {
            plan.skipped.push((c.job.clone(), c.stage, why.to_string()));
        }
    }
    if peers.is_empty() {
        skip_all(&mut plan, &needed, "no live executor to take it");
        return plan;
    }
    needed
        .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.job.cmp(&b.job)).then(a.stage.cmp(&b.stage)));
    let mut load: Vec<(u64, &str, u64)> =
        peers.iter().map(|p| (p.assigned_bytes, p.id.as_str(), 0u64)).collect();
    let mut moves = Vec::new();
    for c in &needed {
        let Some(slot) = load.iter_mut().min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1))) else {
            break;
        };
        slot.0 += c.bytes;
        slot.2 += c.bytes;
        moves.push(Move {
            job: c.job.clone(),
            stage: c.stage,
            bytes: c.bytes,
            to: slot.1.to_string(),
        });
    }
    let slowest = load.iter().map(|l| l.2).max().unwrap_or(0);
    let rate = bytes_per_second.max(1);
    let estimated = Duration::from_millis(slowest.saturating_mul(1000) / rate);
    if estimated > budget {
        skip_all(
            &mut plan,
            &needed,
            &format!(
                "moving {slowest} bytes to one peer takes ~{:.1} s, {:.1} s left",
                estimated.as_secs_f64(),
                budget.as_secs_f64()
            ),
        );
        return plan;
    }
    plan.moves = moves;
    plan.estimated = estimated;
    plan
}

// ---------------------------------------------------------------------------
// Pointing readers at the copies.

type ActiveJobs = Arc<HashMap<ballista_core::JobId, JobInfoCache>>;

/// Points the shuffle locations of running stages that read a moved output
/// at the peer holding it. Returns how many locations changed.
pub async fn redirect_jobs(jobs: &ActiveJobs, redirects: &[Redirect]) -> usize {
    if redirects.is_empty() {
        return 0;
    }
    let mut changed = 0;
    for (job_id, job) in jobs.iter() {
        let mine: Vec<&Redirect> = redirects.iter().filter(|r| r.job == job_id.as_str()).collect();
        if mine.is_empty() {
            continue;
        }
        let mut graph = job.execution_graph.write().await;
        let mut seen = Vec::new();
        while let Some(stage) = graph.fetch_running_stage(&seen) {
            seen.push(stage.stage_id);
            match redirect_stage(stage, &mine) {
                Ok(n) => changed += n,
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "could not redirect a stage's shuffle inputs")
                }
            }
        }
    }
    changed
}

fn redirect_location(location: &mut PartitionLocation, redirects: &[&Redirect]) -> bool {
    let stage = location.partition_id.stage_id as u32;
    let Some(r) =
        redirects.iter().find(|r| r.ghost == location.executor_meta.id && r.stage == stage)
    else {
        return false;
    };
    if location.executor_meta.host == r.to.host && location.executor_meta.port == r.to.port {
        return false;
    }
    // The id stays the ghost's: Ballista's bookkeeping (which task wrote
    // what) is unchanged; only where the bytes are fetched from moves.
    location.executor_meta.host = r.to.host.clone();
    location.executor_meta.port = r.to.port;
    location.executor_meta.grpc_port = r.to.grpc_port;
    true
}

fn redirect_stage(
    stage: &mut RunningStage,
    redirects: &[&Redirect],
) -> datafusion::error::Result<usize> {
    let mut changed = 0;
    for output in stage.inputs.values_mut() {
        for locations in output.partition_locations.values_mut() {
            for l in locations.iter_mut() {
                changed += usize::from(redirect_location(l, redirects));
            }
        }
    }
    let plan = Arc::clone(&stage.plan).transform_up(|node| {
        let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() else {
            return Ok(Transformed::no(node));
        };
        let mut fixed = reader.clone();
        let mut n = 0;
        for locations in &mut fixed.partition {
            for l in locations.iter_mut() {
                n += usize::from(redirect_location(l, redirects));
            }
        }
        if n == 0 {
            return Ok(Transformed::no(node));
        }
        changed += n;
        Ok(Transformed::yes(Arc::new(fixed) as Arc<dyn ExecutionPlan>))
    })?;
    if plan.transformed {
        stage.plan = plan.data;
    }
    Ok(changed)
}

/// Points result locations in a job status at the peers holding them.
pub fn redirect_status(
    status: &mut ballista_core::serde::protobuf::GetJobStatusResult,
    redirects: &[Redirect],
) {
    use ballista_core::serde::protobuf::job_status::Status;
    let Some(job) = status.status.as_mut() else { return };
    let job_id = job.job_id.clone();
    let Some(Status::Successful(done)) = job.status.as_mut() else { return };
    for location in &mut done.partition_location {
        let (Some(meta), Some(pid)) =
            (location.executor_meta.as_mut(), location.partition_id.as_ref())
        else {
            continue;
        };
        if let Some(r) = redirects
            .iter()
            .find(|r| r.job == job_id && r.ghost == meta.id && r.stage == pid.stage_id)
        {
            meta.host = r.to.host.clone();
            meta.port = u32::from(r.to.port);
            meta.grpc_port = u32::from(r.to.grpc_port);
        }
    }
}

// ---------------------------------------------------------------------------
// The service.

use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpc;
use ballista_core::serde::protobuf::{
    FailedTask, IoError, TaskStatus, UpdateTaskStatusParams, failed_task, task_status,
};
use ballista_scheduler::state::execution_stage::ExecutionStage;
use sluice_proto::pb;
use tonic::{Request, Response, Status};

use crate::guard::GuardedScheduler;

/// `sluice.v1.DrainService` on the scheduler port.
#[derive(Clone)]
pub struct DrainGrpc {
    pub guard: GuardedScheduler,
    pub drains: Drains,
}

impl DrainGrpc {
    fn scheduler(&self) -> &crate::Scheduler {
        self.guard.scheduler()
    }

    async fn running_jobs(&self) -> HashSet<String> {
        self.scheduler()
            .state
            .task_manager
            .get_running_job_cache()
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// Live executors that can take outputs (not draining, not `except`).
    async fn peers(&self, except: &str) -> Vec<ExecutorMetadata> {
        let state = &self.scheduler().state;
        // Alive: a heartbeat within the executor timeout.
        let threshold =
            ballista_core::utils::get_time_before(state.config.executor_timeout_seconds);
        let mut peers: Vec<ExecutorMetadata> = state
            .executor_manager
            .get_executors_state()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(meta, beat, _)| {
                meta.id != except
                    && !self.drains.excluded(&meta.id)
                    && !self.drains.lost.contains(&meta.id)
                    && beat.is_some_and(|b| b.as_secs() > threshold)
            })
            .map(|(meta, _, _)| meta)
            .collect();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        peers
    }

    /// Fails, as retryable and not counted, the tasks the graphs still show
    /// running on `id`: Ballista runs them elsewhere.
    async fn hand_back(&self, id: &str) -> u32 {
        let jobs = self.scheduler().state.task_manager.get_running_job_cache();
        let mut statuses = Vec::new();
        for (job_id, job) in jobs.iter() {
            let graph = job.execution_graph.read().await;
            for task in graph.running_tasks().into_iter().filter(|t| t.executor_id == id) {
                let attempt = match graph.stages().get(&task.stage_id) {
                    Some(ExecutionStage::Running(stage)) => stage.stage_attempt_num,
                    _ => continue,
                };
                statuses.push(TaskStatus {
                    task_id: task.task_id as u32,
                    job_id: job_id.to_string(),
                    stage_id: task.stage_id as u32,
                    stage_attempt_num: attempt as u32,
                    launch_time: 0,
                    start_exec_time: 0,
                    end_exec_time: 0,
                    metrics: vec![],
                    status: Some(task_status::Status::Failed(FailedTask {
                        error: format!("executor {id} drained before the task finished"),
                        retryable: true,
                        count_to_failures: false,
                        failed_reason: Some(failed_task::FailedReason::IoError(IoError {})),
                    })),
                });
            }
        }
        let n = statuses.len() as u32;
        if n == 0 {
            return 0;
        }
        let request = Request::new(UpdateTaskStatusParams {
            executor_id: id.to_string(),
            task_status: statuses,
        });
        if let Err(e) = SchedulerGrpc::update_task_status(self.scheduler(), request).await {
            tracing::error!(executor_id = id, error = %e, "could not hand back a drained executor's tasks");
            return 0;
        }
        self.drains.count_handed_back(u64::from(n));
        n
    }
}

fn valid_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 256 {
        return Err(Status::invalid_argument("executor_id: empty or longer than 256 bytes"));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::drain_service_server::DrainService for DrainGrpc {
    async fn begin(
        &self,
        request: Request<pb::BeginDrainRequest>,
    ) -> Result<Response<pb::BeginDrainResponse>, Status> {
        let id = request.get_ref().executor_id.clone();
        valid_id(&id)?;
        self.guard.authorize(&request, &id)?;
        let r = request.into_inner();
        self.drains.begin(
            &id,
            r.deadline_ms,
            if r.reason.is_empty() { "drain" } else { &r.reason },
        );
        Ok(Response::new(pb::BeginDrainResponse {}))
    }

    async fn plan(
        &self,
        request: Request<pb::DrainOffer>,
    ) -> Result<Response<pb::DrainPlan>, Status> {
        let id = request.get_ref().executor_id.clone();
        valid_id(&id)?;
        self.guard.authorize(&request, &id)?;
        if !self.drains.is_draining(&id) {
            return Err(Status::failed_precondition(format!(
                "executor {id} is not draining: call Begin first (or it was declared lost)"
            )));
        }
        let offer = request.into_inner();
        let running = self.running_jobs().await;
        let candidates: Vec<Candidate> = offer
            .outputs
            .iter()
            .map(|o| Candidate {
                job: o.job_id.clone(),
                stage: o.stage_id,
                bytes: o.bytes,
                needed: running.contains(&o.job_id),
            })
            .collect();
        let peers = self.peers(&id).await;
        let peer_list: Vec<Peer> =
            peers.iter().map(|p| Peer { id: p.id.clone(), assigned_bytes: 0 }).collect();
        let decided = plan_moves(
            &candidates,
            &peer_list,
            Duration::from_millis(offer.budget_ms),
            self.drains.rate(),
        );
        let by_id: HashMap<&str, &ExecutorMetadata> =
            peers.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut planned = HashMap::new();
        let mut moves = Vec::new();
        for m in &decided.moves {
            let Some(meta) = by_id.get(m.to.as_str()) else { continue };
            planned.insert((m.job.clone(), m.stage), (*meta).clone());
            moves.push(pb::PlannedMove {
                job_id: m.job.clone(),
                stage_id: m.stage,
                target: Some(pb::HandoffTarget {
                    executor_id: meta.id.clone(),
                    host: meta.host.clone(),
                    port: u32::from(meta.port),
                }),
            });
        }
        tracing::info!(
            executor_id = %id,
            offered = offer.outputs.len(),
            moves = moves.len(),
            complete = decided.complete,
            estimated_ms = decided.estimated.as_millis() as u64,
            "drain plan"
        );
        self.drains.set_planned(&id, planned, decided.complete);
        Ok(Response::new(pb::DrainPlan {
            moves,
            skipped: decided
                .skipped
                .iter()
                .map(|(job, stage, why)| format!("job {job} stage {stage}: {why}"))
                .collect(),
        }))
    }

    async fn finish(
        &self,
        request: Request<pb::FinishDrainRequest>,
    ) -> Result<Response<pb::FinishDrainResponse>, Status> {
        let id = request.get_ref().executor_id.clone();
        valid_id(&id)?;
        self.guard.authorize(&request, &id)?;
        if !self.drains.is_draining(&id) {
            return Err(Status::failed_precondition(format!("executor {id} is not draining")));
        }
        let r = request.into_inner();
        let moved: Vec<(String, u32, String)> = r
            .moved
            .iter()
            .map(|m| (m.job_id.clone(), m.stage_id, m.to_executor_id.clone()))
            .collect();
        // Complete: every planned output arrived, none failed, and every
        // output a running job needs was planned.
        let running = self.running_jobs().await;
        let complete = r.failed.is_empty() && self.drains.planned_all_moved(&id, &moved);
        let ghost = self.drains.finish(&id, &moved, complete, running);
        let handed_back = if ghost { self.hand_back(&id).await } else { 0 };
        let redirected = if ghost { moved.len() as u32 } else { 0 };
        tracing::info!(
            executor_id = %id, ghost, redirected, handed_back, failed = r.failed.len(),
            "drain finished"
        );
        Ok(Response::new(pb::FinishDrainResponse { handed_back, redirected, recompute: !complete }))
    }

    async fn check(
        &self,
        request: Request<pb::CheckDrainRequest>,
    ) -> Result<Response<pb::CheckDrainResponse>, Status> {
        let id = request.get_ref().executor_id.clone();
        valid_id(&id)?;
        self.guard.authorize(&request, &id)?;
        let reason = self.drains.requested(&id);
        Ok(Response::new(pb::CheckDrainResponse {
            drain: reason.is_some(),
            reason: reason.unwrap_or_default(),
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainExecutorRequest>,
    ) -> Result<Response<pb::DrainExecutorResponse>, Status> {
        let id = request.into_inner().executor_id;
        valid_id(&id)?;
        let known =
            self.scheduler().state.executor_manager.get_executor_metadata(&id).await.is_ok();
        if !known {
            return Err(Status::not_found(format!(
                "no executor {id} is registered with this scheduler"
            )));
        }
        let fresh = self.drains.request(&id, "requested by an administrator");
        Ok(Response::new(pb::DrainExecutorResponse { already: !fresh }))
    }
}

impl Drains {
    /// Whether every planned output of `id` is in `moved` (to its planned peer).
    fn planned_all_moved(&self, id: &str, moved: &[(String, u32, String)]) -> bool {
        let state = self.state();
        let Some(entry) = state.executors.get(id) else { return false };
        if !entry.plan_complete {
            return false;
        }
        let got: HashSet<(&str, u32, &str)> =
            moved.iter().map(|(j, s, t)| (j.as_str(), *s, t.as_str())).collect();
        entry
            .planned
            .iter()
            .all(|((job, stage), to)| got.contains(&(job.as_str(), *stage, to.id.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(job: &str, stage: u32, bytes: u64, needed: bool) -> Candidate {
        Candidate { job: job.into(), stage, bytes, needed }
    }

    fn peer(id: &str, assigned: u64) -> Peer {
        Peer { id: id.into(), assigned_bytes: assigned }
    }

    #[test]
    fn moves_needed_outputs_largest_first_to_the_least_loaded_peer() {
        let plan = plan_moves(
            &[
                c("j1", 1, 100, true),
                c("j1", 2, 300, true),
                c("j2", 1, 200, true),
                c("old", 1, 999, false),
            ],
            &[peer("b", 0), peer("a", 0)],
            Duration::from_secs(10),
            1000,
        );
        assert!(plan.complete);
        let order: Vec<(&str, u32, &str)> =
            plan.moves.iter().map(|m| (m.job.as_str(), m.stage, m.to.as_str())).collect();
        // 300 → a (tie on load broken by id), 200 → b, 100 → b (200 < 300).
        assert_eq!(order, vec![("j1", 2, "a"), ("j2", 1, "b"), ("j1", 1, "b")]);
        assert_eq!(
            plan.skipped,
            vec![("old".to_string(), 1, "no running job reads it".to_string())]
        );
        // The slowest peer's share: 300 bytes at 1000 B/s.
        assert_eq!(plan.estimated, Duration::from_millis(300));
    }

    #[test]
    fn peers_already_receiving_get_less() {
        let plan = plan_moves(
            &[c("j", 1, 50, true)],
            &[peer("a", 1_000), peer("b", 10)],
            Duration::from_secs(1),
            1_000_000,
        );
        assert_eq!(plan.moves[0].to, "b");
    }

    #[test]
    fn nothing_moves_when_it_cannot_all_move_in_time() {
        let plan = plan_moves(
            &[c("j", 1, 10_000, true), c("j", 2, 10, true)],
            &[peer("a", 0)],
            Duration::from_secs(1),
            1_000,
        );
        assert!(!plan.complete);
        assert!(plan.moves.is_empty());
        assert_eq!(plan.skipped.len(), 2);
        assert!(plan.skipped[0].2.contains("takes ~10.0 s, 1.0 s left"), "{:?}", plan.skipped);
    }

    #[test]
    fn no_peer_means_recompute_and_no_need_means_nothing_to_do() {
        let none = plan_moves(&[c("j", 1, 1, true)], &[], Duration::from_secs(9), 1);
        assert!(!none.complete);
        assert!(none.skipped[0].2.contains("no live executor"));
        let idle = plan_moves(&[c("j", 1, 1, false)], &[], Duration::ZERO, 1);
        assert!(idle.complete, "an executor whose outputs nobody needs just leaves");
        assert!(idle.moves.is_empty());
    }

    #[test]
    fn a_drain_becomes_a_ghost_only_with_everything_planned_moved() {
        let drains = Drains::default();
        assert!(drains.begin("e1", now_ms() + 60_000, "SIGTERM"));
        assert!(!drains.begin("e1", 0, "SIGTERM"), "a second Begin is the same drain");
        assert!(drains.excluded("e1"));
        assert_eq!(drains.heartbeat("e1"), Some(true));
        assert_eq!(drains.heartbeat("other"), None);
        let meta = |id: &str| ExecutorMetadata {
            id: id.into(),
            host: "10.0.0.2".into(),
            port: 7000,
            grpc_port: 7001,
            specification: ballista_core::serde::scheduler::ExecutorSpecification { vcores: 2 },
            os_info: Default::default(),
        };
        let right = [("j".to_string(), 1, "e2".to_string())];
        assert!(!drains.planned_all_moved("e1", &right), "no plan yet: nothing is complete");
        drains.set_planned("e1", HashMap::from([(("j".to_string(), 1), meta("e2"))]), true);
        let wrong = [("j".to_string(), 1, "e3".to_string())];
        assert!(!drains.planned_all_moved("e1", &wrong));
        assert!(drains.planned_all_moved("e1", &right));
        assert!(drains.finish("e1", &right, true, HashSet::from(["j".to_string()])));
        let r = drains.redirects();
        assert_eq!((r.len(), r[0].to.host.as_str(), r[0].to.port), (1, "10.0.0.2", 7000));
        assert_eq!(drains.heartbeat("e1"), Some(true), "a ghost stays while its jobs run");
        drains.release_finished(&HashSet::new());
        assert_eq!(drains.heartbeat("e1"), Some(false), "released: Ballista removes it");
        assert!(drains.redirects().is_empty());
    }

    #[test]
    fn a_partition_completed_twice_is_counted_recomputed() {
        let drains = Drains::default();
        drains.record_success("j", 1, 0, &[0, 1]);
        drains.record_success("j", 1, 0, &[2]);
        drains.record_success("j", 2, 0, &[0]);
        assert_eq!(drains.counters().rerun_tasks, 0, "first completions");
        drains.record_success("j", 1, 0, &[1]);
        drains.record_success("j", 1, 0, &[0]);
        drains.record_success("j", 3, 1, &[0]);
        let c = drains.counters();
        assert_eq!((c.rerun_tasks, c.stage_reruns), (3, 2), "{c:?}");
    }

    #[test]
    fn a_drain_past_its_deadline_is_lost() {
        let lost = LostExecutors::default();
        let drains = Drains::new(lost.clone(), 0);
        drains.begin("e1", 1, "SIGTERM");
        assert_eq!(drains.heartbeat("e1"), Some(false));
        assert!(lost.contains("e1"));
        assert_eq!(drains.counters().drains_recomputed, 1);
    }
}
