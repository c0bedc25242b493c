//! Executor-loss recovery that Ballista 55 gets wrong, fixed from the
//! scheduler's [`ClusterState`] seam.
//!
//! When an executor dies, Ballista resets the tasks it ran, reruns the map
//! tasks whose shuffle output it held, and rolls running stages that read
//! that output back to `UnResolved`. Two things then go wrong, both
//! reproduced by `tests/tests/skew.rs` (an executor SIGKILLed mid-job):
//!
//! 1. **Leaked vcores.** Tasks of a rolled-back stage still running on a
//!    *surviving* executor report to a stage that no longer knows them; the
//!    refund is 0 and the executor's vcores are gone for good. With few vcores
//!    per executor the job never gets a slot again and stalls.
//! 2. **Rows read twice.** A rolled-back stage reruns *every* task when it
//!    runs again, but the stages reading it keep the shuffle locations of its
//!    first attempt's tasks that ran elsewhere and add the rerun's. Readers
//!    then read some map outputs twice (counts 14% too high in the test).
//!
//! [`RecoveringClusterState`] wraps any [`ClusterState`]:
//!
//! * it keeps its own copy of each executor's free vcores and, whenever
//!   vcores are returned or tasks bound, returns `total − free − vcores of
//!   tasks the job graphs count as running` (vcores held by no task); refunds
//!   are capped at the executor's total, so a stale refund cannot
//!   oversubscribe it;
//! * before binding tasks of a newly running stage, it keeps only the input
//!   shuffle locations written by a task that the input stage still counts
//!   as successful (task id and executor), once each.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use ballista_core::JobId;
use ballista_core::error::Result;
use ballista_core::execution_plans::ShuffleReaderExec;
use ballista_core::serde::protobuf::{ExecutorHeartbeat, task_status};
use ballista_core::serde::scheduler::{ExecutorData, ExecutorMetadata, PartitionLocation};
use ballista_scheduler::cluster::{
    BoundTask, ClusterState, ClusterStateEventStream, ExecutorSlot, JobState,
};
use ballista_scheduler::config::TaskDistributionPolicy;
use ballista_scheduler::state::execution_graph::ExecutionGraph;
use ballista_scheduler::state::execution_stage::RunningStage;
use ballista_scheduler::state::task_manager::JobInfoCache;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_plan::ExecutionPlan;

type ActiveJobs = Arc<HashMap<JobId, JobInfoCache>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Budget {
    total: u32,
    free: u32,
}

#[derive(Default)]
struct Books {
    budgets: HashMap<String, Budget>,
    /// Bumped on every bind: a reconciliation that saw the graphs before a
    /// bind must not compare them with free vcores after it.
    binds: u64,
    /// The running jobs handed to the latest bind (their graphs are shared,
    /// so running tasks stay current; a job that started later has run no
    /// task before the next bind hands over a new snapshot).
    jobs: Option<ActiveJobs>,
    /// Running stages whose inputs were already checked:
    /// (job, stage, attempt, plan address).
    checked: HashSet<(JobId, usize, usize, usize)>,
}

/// Executors whose etcd lease expired: lost for good, whatever they say.
///
/// Ballista only notices a silent executor when its heartbeat is older than
/// `executor_timeout_seconds`. With etcd membership the lease is the
/// authority: [`RecoveringClusterState`] reports a lost executor's heartbeat
/// as ancient, so Ballista's reaper removes it on its next round (its tasks
/// rescheduled, its shuffle output recomputed), and refuses its heartbeats and
/// re-registration afterwards (a frozen executor that wakes up must rejoin
/// under a new id; its late task reports are ignored by Ballista's dead-executor
/// check).
#[derive(Debug, Clone, Default)]
pub struct LostExecutors {
    lost: Arc<Mutex<HashSet<String>>>,
    /// Draining executors: their lease ending is a planned exit, not a loss
    /// (see `drain`).
    spared: Arc<Mutex<HashSet<String>>>,
}

impl LostExecutors {
    /// Declares `executor_id` lost, unless it is draining; true when newly lost.
    pub fn mark(&self, executor_id: &str) -> bool {
        if self.spared.lock().unwrap_or_else(PoisonError::into_inner).contains(executor_id) {
            return false;
        }
        self.lost.lock().unwrap_or_else(PoisonError::into_inner).insert(executor_id.to_string())
    }

    pub fn contains(&self, executor_id: &str) -> bool {
        self.lost.lock().unwrap_or_else(PoisonError::into_inner).contains(executor_id)
    }

    pub(crate) fn spare(&self, executor_id: &str) {
        self.spared.lock().unwrap_or_else(PoisonError::into_inner).insert(executor_id.to_string());
    }

    pub(crate) fn unspare(&self, executor_id: &str) {
        self.spared.lock().unwrap_or_else(PoisonError::into_inner).remove(executor_id);
    }

    fn refuse(&self, executor_id: &str) -> Result<()> {
        if self.contains(executor_id) {
            return Err(ballista_core::error::BallistaError::General(format!(
                "executor {executor_id} was declared lost (its etcd lease expired); \
                 restart it so it rejoins under a new id"
            )));
        }
        Ok(())
    }
}

/// A [`ClusterState`] that repairs what an executor loss leaves behind.
pub struct RecoveringClusterState {
    inner: Arc<dyn ClusterState>,
    /// Where job status changes are published (to clients waiting on a job).
    jobs: Arc<dyn JobState>,
    books: Mutex<Books>,
    lost: LostExecutors,
    drains: crate::drain::Drains,
}

impl RecoveringClusterState {
    pub fn new(
        inner: Arc<dyn ClusterState>,
        jobs: Arc<dyn JobState>,
        lost: LostExecutors,
        drains: crate::drain::Drains,
    ) -> Self {
        Self { inner, jobs, books: Mutex::new(Books::default()), lost, drains }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns leaked vcores of `executors` (all when `None`).
    async fn reconcile(&self, executors: Option<&HashSet<String>>) -> Result<()> {
        let (binds, jobs) = {
            let books = self.books();
            (books.binds, books.jobs.clone())
        };
        let Some(jobs) = jobs else { return Ok(()) };
        let running = running_vcores(&jobs).await;
        let leaks: Vec<ExecutorSlot> = {
            let mut books = self.books();
            if books.binds != binds {
                return Ok(());
            }
            books
                .budgets
                .iter_mut()
                .filter(|(id, _)| executors.is_none_or(|only| only.contains(*id)))
                .filter_map(|(id, budget)| {
                    let held = running.get(id).copied().unwrap_or(0);
                    let leaked = budget.total.saturating_sub(budget.free).saturating_sub(held);
                    (leaked > 0).then(|| {
                        budget.free += leaked;
                        (id.clone(), leaked)
                    })
                })
                .collect()
        };
        for (executor, leaked) in &leaks {
            tracing::warn!(
                executor = %executor,
                vcores = leaked,
                "returning vcores held by no running task (a task of a rolled-back stage)"
            );
        }
        if leaks.is_empty() { Ok(()) } else { self.inner.unbind_tasks(leaks).await }
    }
}

impl RecoveringClusterState {
    /// Drops stale input locations from stages about to run their tasks.
    async fn repair_stage_inputs(&self, jobs: &ActiveJobs) {
        let mut checked = std::mem::take(&mut self.books().checked);
        checked.retain(|(job, ..)| jobs.contains_key(job));
        for (job_id, job) in jobs.iter() {
            let mut graph = job.execution_graph.write().await;
            let written = successful_outputs(graph.as_ref());
            let mut seen = Vec::new();
            while let Some(stage) = graph.fetch_running_stage(&seen) {
                seen.push(stage.stage_id);
                let key = |stage: &RunningStage| {
                    let plan = Arc::as_ptr(&stage.plan).cast::<()>() as usize;
                    (job_id.clone(), stage.stage_id, stage.stage_attempt_num, plan)
                };
                if checked.contains(&key(stage)) {
                    continue;
                }
                match drop_stale_inputs(stage, &written) {
                    Ok(0) => {}
                    Ok(dropped) => tracing::warn!(
                        job = %job_id,
                        stage = stage.stage_id,
                        dropped,
                        "dropped shuffle locations of map tasks that were rerun after an executor loss"
                    ),
                    Err(e) => tracing::error!(
                        job = %job_id,
                        stage = stage.stage_id,
                        error = %e,
                        "could not check the stage's shuffle inputs"
                    ),
                }
                checked.insert(key(stage));
            }
        }
        self.books().checked = checked;
    }
}

/// The start of the error a stalled adaptive job fails with; clients
/// resubmit the job when they see it.
pub const ADAPTIVE_JOB_LOST_INPUT: &str = "job stopped after an executor loss";

/// Fails adaptive jobs that an executor loss left unable to finish.
///
/// When an executor holding a finished stage's shuffle output is lost,
/// Ballista 55's adaptive graph reruns that stage and rolls its running
/// readers back to `UnResolved`, but never resolves them again (its planner
/// has already dropped the rerun stage's output bookkeeping), so the job
/// stays `Running` forever. An `UnResolved` stage appears in an adaptive
/// graph only through such a rollback. Instead of hanging, the job fails at
/// once with [`ADAPTIVE_JOB_LOST_INPUT`], a retryable error: Sluice's client
/// resubmits it (queries, backfill chunks). The static planner
/// (`ballista.planner.adaptive.enabled=false`) reruns just the lost stages.
impl RecoveringClusterState {
    async fn fail_stalled_adaptive_jobs(&self, jobs: &ActiveJobs) {
        use ballista_core::serde::protobuf::job_status;
        use ballista_scheduler::state::execution_stage::ExecutionStage;
        for (job_id, job) in jobs.iter() {
            let mut graph = job.execution_graph.write().await;
            let running = matches!(graph.status().status, Some(job_status::Status::Running(_)));
            if !running || graph.physical_plan().name() != "AdaptiveDatafusionExec" {
                continue;
            }
            let mut stuck: Vec<usize> = graph
                .stages()
                .iter()
                .filter(|(_, stage)| matches!(stage, ExecutionStage::UnResolved(_)))
                .map(|(id, _)| *id)
                .collect();
            if stuck.is_empty() {
                continue;
            }
            stuck.sort_unstable();
            let message = format!(
                "{ADAPTIVE_JOB_LOST_INPUT}: stage(s) {stuck:?} lost their input with the executor and \
             Ballista's adaptive planner cannot resume them; resubmit the job (Sluice's client does), \
             or set ballista.planner.adaptive.enabled=false to rerun only the lost stages"
            );
            // Typed for whoever reads the failure: external, worth a retry.
            let remote = sluice_proto::pb::RemoteError {
                layers: vec![sluice_proto::pb::ErrorLayer {
                    kind: sluice_proto::pb::ErrorKind::Execution as i32,
                    message: message.clone(),
                    arrow_kind: 0,
                }],
                class: sluice_proto::pb::ErrorClass::External as i32,
                retryable: true,
                origin: "scheduler".into(),
            };
            let message = format!("{message} {}", sluice_proto::remote_error::to_text(&remote));
            let tasks = graph.abort_running(message);
            tracing::warn!(
                job = %job_id,
                ?stuck,
                running_tasks = tasks.len(),
                "failed an adaptive job that an executor loss left unable to finish"
            );
            // Tells the client waiting on the job (its status stream).
            if let Err(e) = self.jobs.save_job(job_id, &graph).await {
                tracing::error!(job = %job_id, error = %e, "could not publish the job's failure");
            }
        }
    }
}

/// Per stage, the (task id, executor) of each task it counts as successful:
/// the only writers of shuffle output its readers may use.
fn successful_outputs(graph: &dyn ExecutionGraph) -> HashMap<usize, HashSet<(usize, String)>> {
    graph
        .stages()
        .iter()
        .filter_map(|(id, stage)| {
            let tasks = stage.task_infos()?;
            let written = tasks
                .iter()
                .filter_map(|t| match &t.task_status {
                    task_status::Status::Successful(done) => {
                        Some((t.task_id, done.executor_id.clone()))
                    }
                    _ => None,
                })
                .collect();
            Some((*id, written))
        })
        .collect()
}

/// Keeps, in `stage`'s inputs and in its plan's shuffle readers, only
/// locations written by a task in `written`, once each. Ballista names a
/// location's map partition after the task that wrote it. An input with no
/// valid location at all is left alone (nothing to tell stale from fresh).
/// Returns how many locations it dropped from the plan.
fn drop_stale_inputs(
    stage: &mut RunningStage,
    written: &HashMap<usize, HashSet<(usize, String)>>,
) -> datafusion::error::Result<usize> {
    let usable = |input: usize, locations: &[PartitionLocation]| {
        written.get(&input).is_some_and(|tasks| {
            locations
                .iter()
                .any(|l| tasks.contains(&(l.map_partition_id, l.executor_meta.id.clone())))
        })
    };
    for (input, output) in &mut stage.inputs {
        let all: Vec<PartitionLocation> =
            output.partition_locations.values().flatten().cloned().collect();
        if !usable(*input, &all) {
            continue;
        }
        for locations in output.partition_locations.values_mut() {
            keep_written(locations, &written[input]);
        }
    }
    let mut dropped = 0;
    let plan = Arc::clone(&stage.plan).transform_up(|node| {
        let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() else {
            return Ok(Transformed::no(node));
        };
        let all: Vec<PartitionLocation> = reader.partition.iter().flatten().cloned().collect();
        if !usable(reader.stage_id, &all) {
            return Ok(Transformed::no(node));
        }
        let mut fixed = reader.clone();
        let before = dropped;
        for locations in &mut fixed.partition {
            dropped += keep_written(locations, &written[&reader.stage_id]);
        }
        if dropped == before {
            return Ok(Transformed::no(node));
        }
        Ok(Transformed::yes(Arc::new(fixed) as Arc<dyn ExecutionPlan>))
    })?;
    if plan.transformed {
        stage.plan = plan.data;
    }
    Ok(dropped)
}

/// Keeps locations written by a task in `written`, the first of each
/// (output partition, task, executor); returns how many it removed.
fn keep_written(
    locations: &mut Vec<PartitionLocation>,
    written: &HashSet<(usize, String)>,
) -> usize {
    let before = locations.len();
    let mut seen = HashSet::new();
    locations.retain(|l| {
        let writer = (l.map_partition_id, l.executor_meta.id.clone());
        written.contains(&writer) && seen.insert((l.partition_id.partition_id, writer))
    });
    before - locations.len()
}

impl RecoveringClusterState {
    /// A lost executor's heartbeat reads as older than any timeout (the
    /// reaper removes it next round); a draining one's (and a drained one
    /// whose outputs are still read) as fresh and active, so that Ballista
    /// neither removes it (resetting what it wrote) nor counts it stopping.
    fn adjust(&self, id: &str, beat: &mut ExecutorHeartbeat) {
        if self.lost.contains(id) {
            beat.timestamp = 0;
            return;
        }
        match self.drains.heartbeat(id) {
            None => {}
            Some(true) => {
                beat.timestamp = ballista_scheduler::scheduler_server::timestamp_secs();
                beat.status = Some(ballista_core::serde::protobuf::ExecutorStatus {
                    status: Some(ballista_core::serde::protobuf::executor_status::Status::Active(
                        String::new(),
                    )),
                });
            }
            Some(false) => beat.timestamp = 0,
        }
    }
}

/// Vcores of every task the graphs count as running, per executor.
async fn running_vcores(jobs: &ActiveJobs) -> HashMap<String, u32> {
    let mut held: HashMap<String, u32> = HashMap::new();
    for job in jobs.values() {
        let graph = job.execution_graph.read().await;
        for task in graph.running_tasks() {
            let vcores = graph.task_vcores(task.stage_id, task.task_id).unwrap_or(1);
            *held.entry(task.executor_id).or_default() += vcores;
        }
    }
    held
}

#[async_trait::async_trait]
impl ClusterState for RecoveringClusterState {
    async fn init(&self) -> Result<()> {
        self.inner.init().await
    }

    async fn bind_schedulable_tasks(
        &self,
        distribution: TaskDistributionPolicy,
        active_jobs: ActiveJobs,
        executors: Option<HashSet<String>>,
    ) -> Result<Vec<BoundTask>> {
        self.books().jobs = Some(active_jobs.clone());
        self.fail_stalled_adaptive_jobs(&active_jobs).await;
        self.repair_stage_inputs(&active_jobs).await;
        crate::drain::redirect_jobs(&active_jobs, &self.drains.redirects()).await;
        self.drains.release_finished(&active_jobs.keys().map(|k| k.to_string()).collect());
        self.reconcile(executors.as_ref()).await?;
        // No task goes to a draining executor.
        let executors = {
            let all = match executors {
                Some(set) => set,
                None => self.inner.executor_heartbeats().into_keys().collect(),
            };
            let kept: HashSet<String> =
                all.iter().filter(|id| !self.drains.excluded(id)).cloned().collect();
            Some(kept)
        };
        let bound = self.inner.bind_schedulable_tasks(distribution, active_jobs, executors).await?;
        let mut books = self.books();
        books.binds += 1;
        for (executor, task) in &bound {
            if let Some(budget) = books.budgets.get_mut(executor) {
                budget.free = budget.free.saturating_sub(task.vcores_consumed);
            }
        }
        Ok(bound)
    }

    async fn unbind_tasks(&self, executor_slots: Vec<ExecutorSlot>) -> Result<()> {
        let (capped, touched) = {
            let mut books = self.books();
            let mut touched = HashSet::new();
            let capped: Vec<ExecutorSlot> = executor_slots
                .into_iter()
                .map(|(executor, vcores)| {
                    let vcores = match books.budgets.get_mut(&executor) {
                        Some(budget) => {
                            let refund = vcores.min(budget.total - budget.free);
                            budget.free += refund;
                            refund
                        }
                        None => vcores,
                    };
                    touched.insert(executor.clone());
                    (executor, vcores)
                })
                .collect();
            (capped, touched)
        };
        self.inner.unbind_tasks(capped).await?;
        self.reconcile(Some(&touched)).await
    }

    async fn register_executor(
        &self,
        metadata: ExecutorMetadata,
        spec: ExecutorData,
    ) -> Result<()> {
        let id = spec.executor_id.clone();
        self.lost.refuse(&id)?;
        let budget = Budget {
            total: spec.total_vcores.max(spec.available_vcores),
            free: spec.available_vcores,
        };
        self.inner.register_executor(metadata, spec).await?;
        self.books().budgets.insert(id, budget);
        Ok(())
    }

    async fn save_executor_metadata(&self, metadata: ExecutorMetadata) -> Result<()> {
        self.inner.save_executor_metadata(metadata).await
    }

    async fn get_executor_metadata(&self, executor_id: &str) -> Result<ExecutorMetadata> {
        self.inner.get_executor_metadata(executor_id).await
    }

    async fn registered_executor_metadata(&self) -> Vec<ExecutorMetadata> {
        self.inner.registered_executor_metadata().await
    }

    async fn save_executor_heartbeat(&self, heartbeat: ExecutorHeartbeat) -> Result<()> {
        self.lost.refuse(&heartbeat.executor_id)?;
        self.inner.save_executor_heartbeat(heartbeat).await
    }

    async fn remove_executor(&self, executor_id: &str) -> Result<()> {
        self.books().budgets.remove(executor_id);
        self.drains.forget(executor_id);
        self.inner.remove_executor(executor_id).await
    }

    fn executor_heartbeats(&self) -> HashMap<String, ExecutorHeartbeat> {
        let mut beats = self.inner.executor_heartbeats();
        for (id, beat) in beats.iter_mut() {
            self.adjust(id, beat);
        }
        beats
    }

    fn get_executor_heartbeat(&self, executor_id: &str) -> Option<ExecutorHeartbeat> {
        let mut beat = self.inner.get_executor_heartbeat(executor_id)?;
        self.adjust(executor_id, &mut beat);
        Some(beat)
    }

    async fn cluster_state_events(&self) -> Result<ClusterStateEventStream> {
        self.inner.cluster_state_events().await
    }
}
