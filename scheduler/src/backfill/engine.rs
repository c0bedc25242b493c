//! How a backfill's runner runs its statements: as jobs of the leader's own
//! Ballista scheduler, submitted in process (the runner holds their job ids
//! and cancels them directly), or with plain DataFusion for
//! `sluice backfill --local`.

use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::client::BallistaClient;
use ballista_core::serde::protobuf::{JobStatus, PartitionLocation, SuccessfulJob, job_status};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use sluice_proto::ErrorClass;
use sluice_sql::job::backfill::Failure;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::Scheduler;

/// The jobs of one chunk attempt, for stopping them.
pub type JobIds = Arc<Mutex<Vec<String>>>;

/// Runs a backfill's statements.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A context to plan the backfill's statements in, `settings` applied.
    ///
    /// # Errors
    /// A setting the engine refuses.
    async fn session(
        &self,
        name: &str,
        settings: &[(String, String)],
    ) -> Result<SessionContext, Failure>;

    /// Runs `sql` to completion as job `job_name`; returns its rows.
    /// Job ids go into `jobs` as they are submitted.
    ///
    /// # Errors
    /// The job's failure, with its class and whether a retry can help.
    async fn run(
        &self,
        ctx: &SessionContext,
        job_name: &str,
        sql: &str,
        jobs: &JobIds,
    ) -> Result<Vec<RecordBatch>, Failure>;

    /// Stops `job_id` and waits (bounded) until nothing of it runs.
    async fn cancel(&self, job_id: &str);
}

/// Buffer for a job's status stream.
const STATUS_BUFFER: usize = 16;

/// The leader's Ballista scheduler.
pub struct ClusterEngine {
    pub scheduler: Arc<Scheduler>,
    /// The scheduler's cluster credentials, for fetching results from executors.
    pub tls: Option<sluice_proto::tls::ClusterTls>,
    /// Where finished jobs' graphs are read for their stage spans.
    pub job_state: Option<Arc<dyn ballista_scheduler::cluster::JobState>>,
}

fn failure_of_text(text: &str) -> Failure {
    match sluice_proto::remote_error::find_in(text) {
        Some(remote) => {
            let e = sluice_sql::remote_error::decode(&remote);
            Failure::new(
                remote.error_class(),
                remote.retryable,
                sluice_sql::session::clean_df_message(&e),
            )
        }
        None => Failure::new(ErrorClass::Internal, false, text.to_string()),
    }
}

#[async_trait]
impl Engine for ClusterEngine {
    async fn session(
        &self,
        name: &str,
        settings: &[(String, String)],
    ) -> Result<SessionContext, Failure> {
        let mut config = sluice_sql::session::cluster_session_config();
        sluice_sql::session::apply_settings(&mut config, settings)
            .map_err(|e| Failure::new(ErrorClass::User, false, e.to_string()))?;
        let ctx = self
            .scheduler
            .state
            .session_manager
            .create_or_update_session(name, &config)
            .await
            .map_err(|e| Failure::new(ErrorClass::Internal, false, e.to_string()))?;
        // Planned here, as Flight SQL queries are: uncorrelated scalar
        // subqueries become joins.
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .optimizer
            .enable_physical_uncorrelated_scalar_subquery = false;
        Ok(SessionContext::new_with_state(ctx.state()))
    }

    async fn run(
        &self,
        ctx: &SessionContext,
        job_name: &str,
        sql: &str,
        jobs: &JobIds,
    ) -> Result<Vec<RecordBatch>, Failure> {
        let df_failure = |e: datafusion::error::DataFusionError| Failure::of_datafusion(&e);
        let plan = ctx.state().create_logical_plan(sql).await.map_err(df_failure)?;
        // Shapes Ballista's adaptive planner gets wrong run on its static one.
        let hazard = if sluice_sql::options::of_session(ctx).static_for_adaptive_hazards {
            sluice_sql::cluster_plan::adaptive_hazard(
                &ctx.state().optimize(&plan).map_err(df_failure)?,
            )
            .map_err(df_failure)?
        } else {
            None
        };
        let mut state = ctx.state();
        if hazard.is_some() {
            state
                .config_mut()
                .options_mut()
                .set(ballista_core::config::BALLISTA_ADAPTIVE_PLANNER_ENABLED, "false")
                .map_err(df_failure)?;
        }
        // The job's span (under the chunk's); executors put their task spans
        // under it through the job's settings.
        let span = tracing::info_span!("job", name = %job_name, job_id = tracing::field::Empty);
        let traceparent = sluice_proto::logging::traces::traceparent(&span);
        if !traceparent.is_empty() {
            state
                .config_mut()
                .options_mut()
                .set("sluice.trace.parent", &traceparent)
                .map_err(df_failure)?;
        }
        let job_ctx = Arc::new(SessionContext::new_with_state(state));
        let (subscriber, mut statuses) = tokio::sync::mpsc::channel::<JobStatus>(STATUS_BUFFER);
        let job_id = self
            .scheduler
            .submit_job(job_name, job_ctx, &plan, Some(subscriber))
            .instrument(span.clone())
            .await
            .map_err(|e| failure_of_text(&e.to_string()))?;
        span.record("job_id", job_id.to_string());
        jobs.lock().await.push(job_id.to_string());
        while let Some(status) = statuses.recv().instrument(span.clone()).await {
            match status.status {
                Some(job_status::Status::Successful(SuccessfulJob {
                    partition_location, ..
                })) => {
                    self.record_stages(&job_id, &traceparent).await;
                    return fetch_all(&self.scheduler, self.tls.as_ref(), partition_location)
                        .instrument(span)
                        .await;
                }
                Some(job_status::Status::Failed(failed)) => {
                    let mut failure = failure_of_text(&failed.error);
                    failure.message = format!("job {job_id} failed: {}", failure.message);
                    return Err(failure);
                }
                _ => continue,
            }
        }
        Err(Failure::new(
            ErrorClass::External,
            true,
            format!("job {job_id} ended without reporting a final status"),
        ))
    }

    async fn cancel(&self, job_id: &str) {
        let id = ballista_core::JobId::from(job_id);
        if let Err(e) = self.scheduler.cancel_job(id.clone()).await {
            tracing::warn!(job = %job_id, error = %e, "cannot cancel a chunk job");
        }
        // Wait until none of its tasks can still write.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            let running = match self.scheduler.state.task_manager.get_job_status(&id).await {
                Ok(Some(status)) => {
                    matches!(
                        status.status,
                        Some(job_status::Status::Queued(_) | job_status::Status::Running(_)) | None
                    )
                }
                _ => false,
            };
            if !running {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

impl ClusterEngine {
    /// Stage spans of a finished job, under its span `traceparent`: each
    /// stage from its first task's launch to its last task's end, as the
    /// job's graph recorded them (nothing when traces are off).
    async fn record_stages(&self, job_id: &ballista_core::JobId, traceparent: &str) {
        use ballista_scheduler::state::execution_stage::ExecutionStage;
        let Some(job_state) = &self.job_state else { return };
        if traceparent.is_empty() {
            return;
        }
        let graph = match job_state.get_execution_graph(job_id).await {
            Ok(Some(g)) => g,
            _ => return,
        };
        let ms = |t: u128| {
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(t).unwrap_or(0))
        };
        for (id, stage) in graph.stages() {
            let ExecutionStage::Successful(stage) = stage else { continue };
            let start = stage.task_infos.iter().map(|t| t.launch_time).filter(|t| *t > 0).min();
            let end = stage.task_infos.iter().map(|t| t.finish_time).max();
            let (Some(start), Some(end)) = (start, end) else { continue };
            sluice_proto::logging::traces::record_past_span(
                traceparent,
                format!("stage {id}"),
                ms(start),
                ms(end),
                vec![
                    ("job_id", job_id.to_string()),
                    ("stage_id", id.to_string()),
                    ("tasks", stage.task_infos.len().to_string()),
                    ("attempt", stage.stage_attempt_num.to_string()),
                ],
            );
        }
    }
}

/// Reads a finished job's result partitions from the executors holding
/// them. A partition that yields fewer rows than its executor reported
/// (a stream an executor shutting down ended early) is an error, never a
/// short result.
async fn fetch_all(
    scheduler: &Scheduler,
    tls: Option<&sluice_proto::tls::ClusterTls>,
    locations: Vec<PartitionLocation>,
) -> Result<Vec<RecordBatch>, Failure> {
    let max_message = scheduler.state.config.grpc_server_max_decoding_message_size as usize;
    let customize = tls.map(|tls| {
        Arc::new(ballista_core::extension::BallistaConfigGrpcEndpoint::new(
            sluice_sql::session::endpoint_override(tls),
        ))
    });
    let mut out = Vec::new();
    for location in locations {
        let lost = |what: String| Failure::new(ErrorClass::External, true, what);
        let layout = location.layout();
        let Some(meta) = location.executor_meta.clone() else {
            return Err(Failure::new(
                ErrorClass::Internal,
                false,
                "a result partition without its executor",
            ));
        };
        let Some(partition_id) = location.partition_id.clone() else {
            return Err(Failure::new(
                ErrorClass::Internal,
                false,
                "a result partition without its id",
            ));
        };
        let port = u16::try_from(meta.port)
            .map_err(|_| lost(format!("executor {} port {}", meta.id, meta.port)))?;
        let mut client = BallistaClient::try_new(
            &meta.host,
            port,
            max_message,
            false,
            customize.clone(),
            3,
            200,
            0,
            0,
        )
        .await
        .map_err(|e| {
            lost(format!(
                "cannot reach executor {} at {}:{} for a result: {e}",
                meta.id, meta.host, port
            ))
        })?;
        let stream = client
            .fetch_partition(&meta.id, &partition_id.clone().into(), location.file_id, layout, true)
            .await
            .map_err(|e| lost(format!("fetching a result from executor {}: {e}", meta.id)))?;
        let batches: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| lost(format!("reading a result from executor {}: {e}", meta.id)))?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if let Some(stats) = &location.partition_stats
            && stats.num_rows >= 0
            && rows as i64 != stats.num_rows
        {
            return Err(lost(format!(
                "result partition {} of executor {} gave {rows} of its {} rows (the executor went away?)",
                partition_id.partition_id, meta.id, stats.num_rows
            )));
        }
        out.extend(batches);
    }
    Ok(out)
}

/// Plain DataFusion in this process (`sluice backfill --local`).
pub struct LocalEngine {
    pub ctx: SessionContext,
}

#[async_trait]
impl Engine for LocalEngine {
    async fn session(
        &self,
        _name: &str,
        _settings: &[(String, String)],
    ) -> Result<SessionContext, Failure> {
        Ok(self.ctx.clone())
    }

    async fn run(
        &self,
        ctx: &SessionContext,
        _job_name: &str,
        sql: &str,
        _jobs: &JobIds,
    ) -> Result<Vec<RecordBatch>, Failure> {
        let df = ctx.sql(sql).await.map_err(|e| Failure::of_datafusion(&e))?;
        df.collect().await.map_err(|e| Failure::of_datafusion(&e))
    }

    async fn cancel(&self, _job_id: &str) {}
}
