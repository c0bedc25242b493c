//! The executor's execution engine: Ballista's default engine with fixes
//! at its edges.
//!
//! 1. **Errors keep their type.** Ballista turns a failed task into the
//!    text of its `{:?}` form, which reaches the client wrapped twice. A
//!    failed stage's error is replaced by one carrying a `RemoteError`
//!    ([`sluice_sql::remote_error::carry`]), which the client decodes back
//!    into DataFusion's own error. Errors Ballista acts on (retryable IO,
//!    fetch failures, cancellation) pass unchanged.
//! 2. **Stage metrics count the same nodes in every task.** The scheduler
//!    restricts each task's plan to its partitions; a `UnionExec` child the
//!    task does not own becomes a 0-partition in-memory scan
//!    (`ballista-scheduler` `task_builder.rs`, "restrict_plan_to_partitions"),
//!    which reports metrics where the node it replaced (`PlaceholderRowExec`,
//!    `EmptyExec`) reports none. Tasks of one stage then report different
//!    numbers of metric sets, the scheduler rejects the status update
//!    ("task metrics array size 7 does not equal with the stage metrics array
//!    size 8") after marking the task successful, and the job never ends.
//!    Here a `PlaceholderRowExec` or `EmptyExec` reports an empty metric set
//!    where it stands, as its stub does, so every task of a stage reports
//!    one set per node whichever union children it owns.
//! 3. **Window inputs are sorted as their operator expects.** A window's
//!    input is planned on the scheduler with every ordering its equivalence
//!    properties give, constants included (`… WHERE a = 1` makes `PARTITION
//!    BY a` need no sort). A stage's plan decoded on an executor reads a
//!    shuffle that declares no ordering, so the window finds its partition
//!    keys unordered: "Expects PARTITION BY expression to be ordered", or
//!    partitions split wrongly. Where that happens a sort by the partition
//!    and order keys is put under the window ([`sorted_window_inputs`]); it
//!    changes nothing when the rows are constant, which is how it arises.
//! 4. **CSV sinks write dates and timestamps.** `datafusion-proto` encodes an
//!    unset CSV writer format as `""` and decodes it as the format `""`, so
//!    a `COPY … STORED AS CSV` run on an executor wrote every date, time and
//!    timestamp as an empty field (read back as NULL: wrong answers). An
//!    empty format is put back to unset ([`csv_sinks_with_default_formats`]).
//!
//! 5. **Shuffle reads keep their types.** A partition fetched from another
//!    executor over Arrow Flight arrives with dictionaries as their values;
//!    each shuffle read is cast back to its declared schema
//!    ([`typed_shuffle_reads`], [`sluice_sql::typed`]).
//!
//! 6. **A dictionary of dictionaries crosses a shuffle** as a dictionary of
//!    the inner values, which Arrow IPC can encode, and is cast back where
//!    it is read ([`ipc_stage_output`]).
//!
//! Ballista's engine pools its shuffle-fetch clients in a private type, so
//! this module has its own pool ([`ClientPool`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballista_core::JobId;
use ballista_core::client::BallistaClient;
use ballista_core::client_pool::{BallistaClientPool, PooledClient};
use ballista_core::extension::BallistaConfigGrpcEndpoint;
use ballista_core::serde::protobuf::{
    RuntimeStatsReport, ShuffleWritePartition, TaskColumnStats, WindowStateReport,
};
use ballista_core::utils::GrpcClientConfig;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use datafusion::arrow::compute::SortOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::prelude::SessionConfig;

/// How long an idle shuffle-fetch connection is kept.
const CLIENT_IDLE: Duration = Duration::from_secs(30);

/// [`DefaultExecutionEngine`] with typed errors and consistent metrics.
pub struct SluiceExecutionEngine {
    inner: DefaultExecutionEngine,
}

impl Default for SluiceExecutionEngine {
    fn default() -> Self {
        Self { inner: DefaultExecutionEngine::with_client_pool(Arc::new(ClientPool::default())) }
    }
}

impl ExecutionEngine for SluiceExecutionEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        let plan = csv_sinks_with_default_formats(sorted_window_inputs(plan)?)?;
        let plan = ipc_stage_output(typed_shuffle_reads(plan)?)?;
        tracing::debug!(
            job = %job_id, stage_id, task_id,
            plan = %datafusion::physical_plan::displayable(plan.as_ref()).indent(true),
            "stage plan on this executor"
        );
        let slots = metric_slots(plan.as_ref());
        let trace_parent = config
            .options()
            .extensions
            .get::<sluice_sql::options::SluiceOptions>()
            .map(|o| o.trace_parent.clone())
            .unwrap_or_default();
        let trace = (!trace_parent.is_empty()).then(|| TaskTrace {
            parent: trace_parent,
            job_id: job_id.to_string(),
            stage_id,
        });
        let inner = self
            .inner
            .create_query_stage_exec(
                job_id,
                stage_id,
                task_id,
                global_output_partition_ids,
                plan,
                work_dir,
                config,
            )
            .map_err(|e| sluice_sql::remote_error::carry(e, "executor"))?;
        Ok(Arc::new(SluiceStageExec { inner, slots, trace }))
    }
}

/// `builder` with every empty date/time format unset (see the module docs).
fn default_empty_formats(
    builder: &datafusion::arrow::csv::WriterBuilder,
) -> datafusion::arrow::csv::WriterBuilder {
    use datafusion::arrow::csv::WriterBuilder;
    let mut out = WriterBuilder::new()
        .with_header(builder.header())
        .with_delimiter(builder.delimiter())
        .with_quote(builder.quote())
        .with_escape(builder.escape())
        .with_double_quote(builder.double_quote())
        .with_null(builder.null().to_string())
        .with_quote_style(builder.quote_style())
        .with_ignore_leading_whitespace(builder.ignore_leading_whitespace())
        .with_ignore_trailing_whitespace(builder.ignore_trailing_whitespace())
        .with_line_terminator(builder.line_terminator().clone());
    let set = |f: Option<&str>| f.filter(|f| !f.is_empty()).map(str::to_string);
    if let Some(f) = set(builder.date_format()) {
        out = out.with_date_format(f);
    }
    if let Some(f) = set(builder.datetime_format()) {
        out = out.with_datetime_format(f);
    }
    if let Some(f) = set(builder.time_format()) {
        out = out.with_time_format(f);
    }
    if let Some(f) = set(builder.timestamp_format()) {
        out = out.with_timestamp_format(f);
    }
    if let Some(f) = set(builder.timestamp_tz_format()) {
        out = out.with_timestamp_tz_format(f);
    }
    out
}

/// Every CSV sink of `plan` with its empty formats unset (see the module docs).
fn csv_sinks_with_default_formats(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::datasource::file_format::csv::CsvSink;
    use datafusion::datasource::physical_plan::FileSink as _;
    use datafusion::datasource::sink::DataSinkExec;
    plan.transform_up(|node| {
        let Some(exec) = node.downcast_ref::<DataSinkExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(csv) = exec.sink().downcast_ref::<CsvSink>() else {
            return Ok(Transformed::no(node));
        };
        let mut options = csv.writer_options().clone();
        options.writer_options = default_empty_formats(&options.writer_options);
        let sink = CsvSink::new(csv.config().clone(), options);
        Ok(Transformed::yes(Arc::new(DataSinkExec::new(
            Arc::clone(exec.input()),
            Arc::new(sink),
            exec.sort_order().clone(),
        )) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// Whether a window over `input` with partition keys `partition_by` finds
/// them ordered as its mode needs (see the module docs).
fn window_input_ordered(
    plan: &dyn ExecutionPlan,
) -> Option<(
    Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
    Vec<PhysicalSortExpr>,
    Arc<dyn ExecutionPlan>,
)> {
    if let Some(w) = plan.downcast_ref::<BoundedWindowAggExec>() {
        let exprs = w.window_expr();
        let first = exprs.first()?;
        if w.partition_by_sort_keys().is_ok() {
            return None;
        }
        return Some((
            first.partition_by().to_vec(),
            first.order_by().to_vec(),
            Arc::clone(w.input()),
        ));
    }
    if let Some(w) = plan.downcast_ref::<WindowAggExec>() {
        let first = w.window_expr().first()?;
        let ordered = w.partition_by_sort_keys().map(|k| k.len()).unwrap_or(0);
        if ordered >= first.partition_by().len() {
            return None;
        }
        return Some((
            first.partition_by().to_vec(),
            first.order_by().to_vec(),
            Arc::clone(w.input()),
        ));
    }
    None
}

/// Puts a sort by the partition and order keys under every window whose
/// decoded input does not give it the ordering it was planned with.
fn sorted_window_inputs(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some((partition_by, order_by, input)) = window_input_ordered(node.as_ref()) else {
            return Ok(Transformed::no(node));
        };
        let mut keys: Vec<PhysicalSortExpr> = partition_by
            .into_iter()
            .map(|e| {
                PhysicalSortExpr::new(e, SortOptions { descending: false, nulls_first: false })
            })
            .collect();
        keys.extend(order_by);
        let Some(ordering) = LexOrdering::new(keys) else { return Ok(Transformed::no(node)) };
        let sorted: Arc<dyn ExecutionPlan> =
            Arc::new(SortExec::new(ordering, input).with_preserve_partitioning(true));
        Ok(Transformed::yes(node.replace_children(
            vec![sorted],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?))
    })
    .map(|t| t.data)
}

/// Every shuffle read in the types the plan declares
/// ([`sluice_sql::typed`]): a partition fetched from another executor
/// arrives with its dictionaries hydrated.
fn typed_shuffle_reads(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        use ballista_core::execution_plans::{RangeShuffleReaderExec, ShuffleReaderExec};
        if node.is::<ShuffleReaderExec>() || node.is::<RangeShuffleReaderExec>() {
            Ok(Transformed::yes(Arc::new(sluice_sql::typed::TypedExec::new(node))))
        } else {
            Ok(Transformed::no(node))
        }
    })
    .map(|t| t.data)
}

/// The stage's output in types Arrow IPC can encode: the shuffle writer at
/// the root writes IPC files, which cannot hold a dictionary of
/// dictionaries; readers and the client cast back ([`sluice_sql::typed`]).
fn ipc_stage_output(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let [input] = plan.children()[..] else { return Ok(plan) };
    let Some(flat) = sluice_sql::typed::TypedExec::for_ipc(Arc::clone(input)) else {
        return Ok(plan);
    };
    plan.replace_children(
        vec![Arc::new(flat)],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
}

/// What each node of a plan contributes to the task's metric list, in the
/// order Ballista's `collect_plan_metrics` visits them (pre-order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The node reports its own metric set.
    Reported,
    /// A `PlaceholderRowExec` or `EmptyExec`: reports none, but its
    /// partition-restriction stub would report one.
    Silent,
}

fn metric_slots(plan: &dyn ExecutionPlan) -> Vec<Slot> {
    fn walk(plan: &dyn ExecutionPlan, out: &mut Vec<Slot>) {
        if plan.metrics().is_some() {
            out.push(Slot::Reported);
        } else if plan.is::<PlaceholderRowExec>() || plan.is::<EmptyExec>() {
            out.push(Slot::Silent);
        }
        for child in plan.children() {
            walk(child.as_ref(), out);
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

/// The reported metric sets with an empty set at each silent slot; the
/// reported sets unchanged when they do not fit the slots.
fn with_silent_slots(metrics: Vec<MetricsSet>, slots: &[Slot]) -> Vec<MetricsSet> {
    let reported = slots.iter().filter(|s| **s == Slot::Reported).count();
    if metrics.len() != reported || reported == slots.len() {
        return metrics;
    }
    let mut metrics = metrics.into_iter();
    slots
        .iter()
        .map(|slot| match slot {
            Slot::Reported => metrics.next().unwrap_or_default(),
            Slot::Silent => MetricsSet::new(),
        })
        .collect()
}

struct SluiceStageExec {
    inner: Arc<dyn QueryStageExecutor>,
    slots: Vec<Slot>,
    /// Where the task's span goes (`sluice.trace.parent` of the job).
    trace: Option<TaskTrace>,
}

struct TaskTrace {
    parent: String,
    job_id: String,
    stage_id: usize,
}

impl fmt::Debug for SluiceStageExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for SluiceStageExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for SluiceStageExec {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> Result<Vec<ShuffleWritePartition>> {
        let timer = crate::metrics::TaskTimer::start();
        let run = self.inner.execute_query_stage(task_id, context);
        let result = match &self.trace {
            Some(t) => {
                let span = tracing::info_span!(
                    "task",
                    job_id = %t.job_id,
                    stage_id = t.stage_id,
                    task_id,
                );
                sluice_proto::logging::traces::set_parent(&span, &t.parent);
                tracing::Instrument::instrument(run, span).await
            }
            None => run.await,
        };
        let written = result
            .as_ref()
            .map(|parts| parts.iter().map(|p| p.num_bytes).sum::<u64>())
            .unwrap_or_default();
        timer.finish(result.is_ok(), written);
        if let Some(m) = crate::metrics::global() {
            m.record_plan(&self.inner.collect_plan_metrics());
        }
        result.map_err(|e| sluice_sql::remote_error::carry(e, "executor"))
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        with_silent_slots(self.inner.collect_plan_metrics(), &self.slots)
    }

    fn collect_runtime_stats_reports(&self) -> Vec<RuntimeStatsReport> {
        self.inner.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(&self) -> Result<Vec<WindowStateReport>> {
        self.inner.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<TaskColumnStats> {
        self.inner.collect_column_stats()
    }
}

type PoolKey = (String, u16, GrpcClientConfig);

/// Idle shuffle-fetch clients by executor address; a client goes back to
/// the pool when its fetch is done and is dropped after [`CLIENT_IDLE`].
#[derive(Default)]
pub struct ClientPool {
    idle: Arc<Mutex<HashMap<PoolKey, Vec<(BallistaClient, Instant)>>>>,
}

impl fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientPool").finish_non_exhaustive()
    }
}

fn evict(idle: &mut HashMap<PoolKey, Vec<(BallistaClient, Instant)>>) {
    idle.retain(|_, clients| {
        clients.retain(|(_, since)| since.elapsed() < CLIENT_IDLE);
        !clients.is_empty()
    });
}

#[async_trait::async_trait]
impl BallistaClientPool for ClientPool {
    async fn acquire(
        &self,
        host: &str,
        port: u16,
        config: &GrpcClientConfig,
        customize_endpoint: Option<Arc<BallistaConfigGrpcEndpoint>>,
    ) -> ballista_core::error::Result<PooledClient> {
        let key: PoolKey = (host.to_string(), port, config.clone());
        let cached = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            evict(&mut idle);
            idle.get_mut(&key).and_then(Vec::pop).map(|(c, _)| c)
        };
        let client = match cached {
            Some(c) => c,
            None => {
                BallistaClient::try_new(
                    host,
                    port,
                    config.max_message_size,
                    config.use_tls,
                    customize_endpoint,
                    config.io_retries_times,
                    config.io_retry_wait_time_ms,
                    config.initial_connection_window_size,
                    config.initial_stream_window_size,
                )
                .await?
            }
        };
        let idle = Arc::clone(&self.idle);
        Ok(PooledClient::new(
            client,
            Box::new(move |c| {
                let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.entry(key).or_default().push((c, Instant::now()));
            }),
        ))
    }

    async fn evict_idle(&self) {
        evict(&mut self.idle.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::physical_plan::union::UnionExec;

    fn stub() -> Arc<dyn ExecutionPlan> {
        let config =
            MemorySourceConfig::try_new(&[], Arc::new(Schema::empty()), None).expect("stub");
        DataSourceExec::from_data_source(config)
    }

    fn placeholder() -> Arc<dyn ExecutionPlan> {
        Arc::new(PlaceholderRowExec::new(Arc::new(Schema::empty())))
    }

    fn count(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let reported = ballista_core::utils::collect_plan_metrics(plan.as_ref()).len();
        with_silent_slots(vec![MetricsSet::new(); reported], &metric_slots(plan.as_ref())).len()
    }

    #[test]
    fn every_task_of_a_union_stage_reports_as_many_metric_sets() {
        // `SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3` restricted to
        // two tasks: one owns the first child, the other the next two.
        let first = UnionExec::try_new(vec![placeholder(), stub(), stub()]).expect("union");
        let rest = UnionExec::try_new(vec![stub(), placeholder(), placeholder()]).expect("union");
        assert_ne!(
            ballista_core::utils::collect_plan_metrics(first.as_ref()).len(),
            ballista_core::utils::collect_plan_metrics(rest.as_ref()).len(),
            "Ballista's own count differs (the bug)"
        );
        assert_eq!(count(&first), 4);
        assert_eq!(count(&rest), 4);
    }

    #[test]
    fn metrics_are_kept_when_they_do_not_fit_the_plan() {
        let slots = [Slot::Reported, Slot::Silent];
        let metrics = vec![MetricsSet::new(), MetricsSet::new()];
        assert_eq!(with_silent_slots(metrics, &slots).len(), 2);
    }
}
