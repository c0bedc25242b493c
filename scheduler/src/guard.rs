//! Ballista's scheduler gRPC service behind checks on what executors send.
//!
//! Ballista trusts executor messages: a task status with an out-of-range
//! task id indexes past a stage's task list, and a registration without its
//! specification is unwrapped, in the scheduler's event loop or handler. A
//! panicked event loop leaves a leader that holds its etcd lease but
//! schedules nothing, so no standby takes over. Any registered executor may
//! also report any task's status, poisoning another job's results.
//!
//! [`GuardedScheduler`] implements Ballista's `SchedulerGrpc` by delegating
//! to it after checking every executor message:
//!
//! - registrations and poll requests carry an id, a host, ports in range, a
//!   specification and OS info, else the call is refused (`InvalidArgument`);
//! - a task status is kept only if it has a status and names a task that
//!   the scheduler's graph shows running *on the reporting executor*; the
//!   others are dropped with a warning (a late report from an executor whose
//!   task was moved is dropped the same way, as Ballista would);
//! - with cluster TLS, an executor id is bound to the certificate that first
//!   used it; a call naming it with another certificate (another executor
//!   reporting, or stopping it) is refused (`PermissionDenied`).
//!
//! Client calls pass through unchanged (the gate checks their token).
//! Should a panic still happen inside Ballista's scheduler, the process
//! exits (see `exit_on_scheduler_panic`) so that a standby takes over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ConnectInfo;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpc;
use ballista_core::serde::protobuf::{
    CancelJobParams, CancelJobResult, CleanJobDataParams, CleanJobDataResult,
    CreateUpdateSessionParams, CreateUpdateSessionResult, ExecuteQueryParams, ExecuteQueryResult,
    ExecutorRegistration, ExecutorStoppedParams, ExecutorStoppedResult, GetJobMetricsParams,
    GetJobMetricsResult, GetJobStatusParams, GetJobStatusResult, HeartBeatParams, HeartBeatResult,
    PollWorkParams, PollWorkResult, RegisterExecutorParams, RegisterExecutorResult,
    RemoveSessionParams, RemoveSessionResult, TaskStatus, UpdateTaskStatusParams,
    UpdateTaskStatusResult,
};
use tonic::{Request, Response, Status};

use crate::Scheduler;
use crate::listener::Peer;

/// Ballista's scheduler service with executor messages checked first.
#[derive(Clone)]
pub struct GuardedScheduler {
    inner: Scheduler,
    /// Executor id → the certificate name that first used it (cluster TLS only).
    bindings: Arc<Mutex<HashMap<String, String>>>,
    cluster_tls: bool,
    drains: crate::drain::Drains,
}

impl GuardedScheduler {
    pub fn new(inner: Scheduler, cluster_tls: bool, drains: crate::drain::Drains) -> Self {
        Self { inner, bindings: Arc::default(), cluster_tls, drains }
    }

    pub(crate) fn scheduler(&self) -> &Scheduler {
        &self.inner
    }

    /// Counts recomputation: a successful task whose input partitions a
    /// task of the same stage already completed (a map output lost and run
    /// again), and stage attempts after the first.
    fn record_outcome(
        &self,
        graph: &dyn ballista_scheduler::state::execution_graph::ExecutionGraph,
        status: &TaskStatus,
    ) {
        use ballista_core::serde::protobuf::task_status::Status as S;
        use ballista_scheduler::state::execution_stage::ExecutionStage;
        if !matches!(status.status, Some(S::Successful(_))) {
            return;
        }
        let partitions = match graph.stages().get(&(status.stage_id as usize)) {
            Some(ExecutionStage::Running(stage)) => stage
                .task_infos
                .get(status.task_id as usize)
                .map(|t| t.global_input_partition_ids.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        self.drains.record_success(
            &status.job_id,
            status.stage_id,
            status.stage_attempt_num,
            &partitions,
        );
    }

    /// Before tasks are handed out: readers of drained executors' outputs
    /// read from the peers holding the copies; finished ghosts are released.
    async fn redirect(&self) {
        let jobs = self.inner.state.task_manager.get_running_job_cache();
        let redirects = self.drains.redirects();
        if !redirects.is_empty() {
            crate::drain::redirect_jobs(&jobs, &redirects).await;
            self.drains.release_finished(&jobs.keys().map(|k| k.to_string()).collect());
        }
    }

    /// With cluster TLS: the caller's certificate must be an executor's and
    /// `executor_id` must be bound to it (binding it on first use).
    pub(crate) fn authorize<T>(
        &self,
        request: &Request<T>,
        executor_id: &str,
    ) -> Result<(), Status> {
        if !self.cluster_tls {
            return Ok(());
        }
        let identity = request
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .and_then(|info| info.0.identity.clone())
            .ok_or_else(|| Status::unauthenticated("executor calls need a cluster certificate"))?;
        if identity.role != sluice_proto::tls::Role::Executor {
            return Err(Status::permission_denied(format!(
                "executor calls need an executor certificate, not a {} one",
                identity.role
            )));
        }
        let mut bindings = self.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bound =
            bindings.entry(executor_id.to_string()).or_insert_with(|| identity.name.clone());
        if *bound != identity.name {
            tracing::warn!(
                executor_id, certificate = %identity.name, bound_to = %bound,
                "refused an executor call made with another executor's id"
            );
            return Err(Status::permission_denied(format!(
                "executor {executor_id} belongs to certificate {bound:?}, not {:?}",
                identity.name
            )));
        }
        Ok(())
    }

    /// The statuses of tasks the scheduler shows running on `executor_id`.
    async fn assigned(&self, executor_id: &str, statuses: Vec<TaskStatus>) -> Vec<TaskStatus> {
        if statuses.is_empty() {
            return statuses;
        }
        let jobs = self.inner.state.task_manager.get_running_job_cache();
        let mut kept = Vec::with_capacity(statuses.len());
        for status in statuses {
            let ok = match (&status.status, jobs.get(status.job_id.as_str())) {
                (Some(_), Some(job)) => {
                    let graph = job.execution_graph.read().await;
                    let running = graph.running_tasks().iter().any(|t| {
                        t.task_id == status.task_id as usize
                            && t.stage_id == status.stage_id as usize
                            && t.executor_id == executor_id
                    });
                    if running {
                        self.record_outcome(graph.as_ref(), &status);
                    }
                    running
                }
                _ => false,
            };
            if ok {
                kept.push(status);
            } else {
                tracing::warn!(
                    executor_id, job_id = %status.job_id, stage_id = status.stage_id,
                    task_id = status.task_id, has_status = status.status.is_some(),
                    "ignored a task status: not a task running on that executor"
                );
            }
        }
        kept
    }
}

/// Checks a registration before Ballista unwraps its fields.
fn valid_registration(
    meta: Option<&ExecutorRegistration>,
) -> Result<&ExecutorRegistration, Status> {
    let bad = |what: &str| Err(Status::invalid_argument(format!("executor registration: {what}")));
    let Some(meta) = meta else { return bad("metadata missing") };
    if meta.id.is_empty() || meta.id.len() > 256 {
        return bad("id empty or longer than 256 bytes");
    }
    match &meta.host {
        Some(h) if !h.is_empty() && h.len() <= 255 => {}
        _ => return bad("host missing"),
    }
    if meta.port == 0 || meta.port > u32::from(u16::MAX) || meta.grpc_port > u32::from(u16::MAX) {
        return bad("port out of range");
    }
    if meta.specification.is_none() {
        return bad("specification missing");
    }
    if meta.os_info.is_none() {
        return bad("os_info missing");
    }
    Ok(meta)
}

#[tonic::async_trait]
impl SchedulerGrpc for GuardedScheduler {
    async fn poll_work(
        &self,
        request: Request<PollWorkParams>,
    ) -> Result<Response<PollWorkResult>, Status> {
        let id = valid_registration(request.get_ref().metadata.as_ref())?.id.clone();
        self.authorize(&request, &id)?;
        let mut request = request;
        let statuses = std::mem::take(&mut request.get_mut().task_status);
        let statuses = self.assigned(&id, statuses).await;
        request.get_mut().task_status = statuses;
        if self.drains.excluded(&id) {
            // Draining: report its statuses, take no new task.
            request.get_mut().num_free_vcores = 0;
        }
        self.redirect().await;
        self.inner.poll_work(request).await
    }

    async fn register_executor(
        &self,
        request: Request<RegisterExecutorParams>,
    ) -> Result<Response<RegisterExecutorResult>, Status> {
        let id = valid_registration(request.get_ref().metadata.as_ref())?.id.clone();
        self.authorize(&request, &id)?;
        self.inner.register_executor(request).await
    }

    async fn heart_beat_from_executor(
        &self,
        request: Request<HeartBeatParams>,
    ) -> Result<Response<HeartBeatResult>, Status> {
        let params = request.get_ref();
        let meta = valid_registration(params.metadata.as_ref())?;
        if meta.id != params.executor_id {
            return Err(Status::invalid_argument("heartbeat: metadata names another executor"));
        }
        let id = params.executor_id.clone();
        self.authorize(&request, &id)?;
        let terminating = matches!(
            params.status.as_ref().and_then(|s| s.status.as_ref()),
            Some(ballista_core::serde::protobuf::executor_status::Status::Terminating(_))
        );
        if terminating {
            // Ballista's executor says this first on SIGTERM: drain it
            // (its own Begin call, with its deadline, may come before or after).
            self.drains.begin(&id, 0, "stopping (Terminating heartbeat)");
        }
        self.inner.heart_beat_from_executor(request).await
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusParams>,
    ) -> Result<Response<UpdateTaskStatusResult>, Status> {
        let id = request.get_ref().executor_id.clone();
        self.authorize(&request, &id)?;
        let mut request = request;
        let statuses = std::mem::take(&mut request.get_mut().task_status);
        let statuses = self.assigned(&id, statuses).await;
        request.get_mut().task_status = statuses;
        let response = self.inner.update_task_status(request).await;
        // Push mode: tasks were just freed or bound; keep readers pointed right.
        self.redirect().await;
        response
    }

    async fn executor_stopped(
        &self,
        request: Request<ExecutorStoppedParams>,
    ) -> Result<Response<ExecutorStoppedResult>, Status> {
        let id = request.get_ref().executor_id.clone();
        self.authorize(&request, &id)?;
        if self.drains.excluded(&id) {
            // A draining executor is removed when its drain ends, not now:
            // removing it would recompute every output it holds.
            tracing::info!(executor_id = %id, "executor stopping: draining it instead of removing it");
            return Ok(Response::new(ExecutorStoppedResult {}));
        }
        self.inner.executor_stopped(request).await
    }

    async fn create_update_session(
        &self,
        request: Request<CreateUpdateSessionParams>,
    ) -> Result<Response<CreateUpdateSessionResult>, Status> {
        self.inner.create_update_session(request).await
    }

    async fn remove_session(
        &self,
        request: Request<RemoveSessionParams>,
    ) -> Result<Response<RemoveSessionResult>, Status> {
        self.inner.remove_session(request).await
    }

    type ExecuteQueryPushStream = <Scheduler as SchedulerGrpc>::ExecuteQueryPushStream;

    async fn execute_query_push(
        &self,
        request: Request<ExecuteQueryParams>,
    ) -> Result<Response<Self::ExecuteQueryPushStream>, Status> {
        self.inner.execute_query_push(request).await
    }

    async fn execute_query(
        &self,
        request: Request<ExecuteQueryParams>,
    ) -> Result<Response<ExecuteQueryResult>, Status> {
        self.inner.execute_query(request).await
    }

    async fn get_job_status(
        &self,
        request: Request<GetJobStatusParams>,
    ) -> Result<Response<GetJobStatusResult>, Status> {
        let mut response = self.inner.get_job_status(request).await?;
        let redirects = self.drains.redirects();
        if !redirects.is_empty() {
            crate::drain::redirect_status(response.get_mut(), &redirects);
        }
        Ok(response)
    }

    async fn get_job_metrics(
        &self,
        request: Request<GetJobMetricsParams>,
    ) -> Result<Response<GetJobMetricsResult>, Status> {
        self.inner.get_job_metrics(request).await
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobParams>,
    ) -> Result<Response<CancelJobResult>, Status> {
        SchedulerGrpc::cancel_job(&self.inner, request).await
    }

    async fn clean_job_data(
        &self,
        request: Request<CleanJobDataParams>,
    ) -> Result<Response<CleanJobDataResult>, Status> {
        self.inner.clean_job_data(request).await
    }
}

/// Exits the process when code of Ballista's scheduler panics: its event
/// loop runs in a task whose panic Tokio would swallow, leaving a scheduler
/// that answers calls (and keeps its etcd lease) but schedules nothing. A
/// process that exits is replaced by a standby, or restarted by its
/// supervisor. Panics elsewhere keep the default behaviour.
pub fn exit_on_scheduler_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let in_scheduler = info.location().is_some_and(|l| {
            let file = l.file();
            file.contains("ballista-scheduler") || file.contains("ballista_scheduler")
        });
        if in_scheduler {
            eprintln!("error: Ballista's scheduler panicked; exiting so that a standby takes over");
            std::process::exit(70);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballista_core::serde::protobuf::{
        ExecutorOperatingSystemSpecification, ExecutorSpecification,
    };

    fn registration() -> ExecutorRegistration {
        ExecutorRegistration {
            id: "e1".into(),
            host: Some("10.0.0.7".into()),
            port: 50051,
            grpc_port: 0,
            specification: Some(ExecutorSpecification::default()),
            os_info: Some(ExecutorOperatingSystemSpecification::default()),
            ..Default::default()
        }
    }

    #[test]
    fn registrations_missing_what_ballista_unwraps_are_refused() {
        assert!(valid_registration(Some(&registration())).is_ok());
        assert!(valid_registration(None).is_err());
        for broken in [
            ExecutorRegistration { specification: None, ..registration() },
            ExecutorRegistration { os_info: None, ..registration() },
            ExecutorRegistration { host: None, ..registration() },
            ExecutorRegistration { port: 70_000, ..registration() },
            ExecutorRegistration { id: String::new(), ..registration() },
        ] {
            let err = valid_registration(Some(&broken)).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{broken:?}");
        }
    }
}
