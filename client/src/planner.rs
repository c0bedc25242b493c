//! The client's query planner on a cluster: Ballista's (the statement runs
//! as a distributed job) with the parts of a session that live in the
//! client kept there.
//!
//! - **Tables of the client's session travel with the plan.** In-memory
//!   tables are encoded into the plan by `sluice_sql::inline`; a table the
//!   plan encoding does not know (a table function such as
//!   `generate_series`, a streaming table) is read here first and travels as
//!   an in-memory table. A table larger than
//!   `sluice.memory_tables.inline_max_bytes` is written as Parquet files
//!   under `sluice.memory_tables.stage_url` for the executors to read
//!   (see [`stage`]).
//! - **`INSERT` into an in-memory table** runs its `SELECT` on the cluster
//!   and appends the rows here, to the client's table (Ballista would plan
//!   the insert on the scheduler, into the scheduler's copy of the table).
//! - **`COPY`** keeps its options and a relative target is the client's
//!   path (`sluice_sql::copy`).
//! - **Results keep the plan's types** ([`PlanTypesExec`]): the Flight
//!   fetch of a job's result turns dictionaries into their values and
//!   `LargeList` into `List`.
//! - **Uncorrelated scalar subqueries** run first, as jobs of their own,
//!   and their values go into the plan ([`ClientPlanner::scalar_subqueries`]).
//! - **A statement over an unbounded stream** (`CREATE UNBOUNDED EXTERNAL
//!   TABLE`) is planned and run here, by DataFusion: Ballista's stages need
//!   bounded inputs.
//! - **An empty relation** (`SELECT … WHERE false` once optimized) is
//!   planned here with its schema: Ballista answers it with a zero-column
//!   plan.

use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::config::BallistaConfig;
use ballista_core::planner::BallistaQueryPlanner;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::source_as_provider;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, TableScan, WriteOp};
use datafusion::physical_plan::{ExecutionPlan, collect_partitioned};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::protobuf::LogicalPlanNode;
use sluice_sql::inline::{SluiceLogicalCodec, memtable_partitions, size_of};

/// See the module docs.
pub struct ClientPlanner {
    remote: BallistaQueryPlanner<LogicalPlanNode>,
    local: DefaultPhysicalPlanner,
    codec: Arc<SluiceLogicalCodec>,
}

impl std::fmt::Debug for ClientPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPlanner").finish_non_exhaustive()
    }
}

impl ClientPlanner {
    /// A planner submitting to the scheduler at `scheduler_url`
    /// (`df://host:port`).
    pub fn new(
        scheduler_url: String,
        config: BallistaConfig,
        codec: Arc<SluiceLogicalCodec>,
    ) -> Self {
        let remote = BallistaQueryPlanner::with_extension(
            scheduler_url,
            config,
            Arc::clone(&codec) as Arc<dyn LogicalExtensionCodec>,
        );
        Self { remote, local: DefaultPhysicalPlanner::default(), codec }
    }
}

#[async_trait]
impl QueryPlanner for ClientPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match logical_plan {
            LogicalPlan::EmptyRelation(_) => {
                self.local.create_physical_plan(logical_plan, session).await
            }
            LogicalPlan::Dml(DmlStatement { target, op: WriteOp::Insert(op), input, .. })
                if source_as_provider(target)?.is::<MemTable>() =>
            {
                let table = source_as_provider(target)?;
                let rows = self.create_physical_plan(input, session).await?;
                table.insert_into(session, rows, *op).await
            }
            // The client's catalog answers DESCRIBE.
            LogicalPlan::DescribeTable(_) => {
                self.local.create_physical_plan(logical_plan, session).await
            }
            // EXPLAIN reads no table: nothing to ship.
            LogicalPlan::Explain(_) => {
                self.remote.create_physical_plan(logical_plan, session).await
            }
            // A stream is read by this process: Ballista's stages need
            // bounded inputs. DataFusion plans and runs the statement here.
            _ if reads_a_stream(logical_plan)? => {
                self.local.create_physical_plan(logical_plan, session).await
            }
            _ => {
                // DataFusion cannot plan a LIMIT/OFFSET by a subquery; the
                // subquery must not be evaluated into a literal first.
                if has_subquery_limit(logical_plan)? {
                    self.local.create_physical_plan(logical_plan, session).await?;
                }
                let plan = self.scalar_subqueries(logical_plan.clone(), session).await?;
                let mut staged = Vec::new();
                let plan = self.client_tables(plan, session, &mut staged).await?;
                // COPY keeps its options and its target means the client's path.
                let plan = sluice_sql::copy::for_cluster(plan)?;
                // What the plan encoding would change (Float16 literals,
                // empty relations' columns).
                let plan = sluice_sql::cluster_plan::for_the_wire(plan)?;
                self.encodable(&plan, session).await?;
                let hazard = if sluice_options(session).static_for_adaptive_hazards {
                    sluice_sql::cluster_plan::adaptive_hazard(&plan)?
                } else {
                    None
                };
                let remote = self.remote.create_physical_plan(&plan, session).await?;
                Ok(Arc::new(
                    PlanTypesExec::new(remote).with_static_planner(hazard).with_staged(staged),
                ))
            }
        }
    }
}

impl ClientPlanner {
    /// Checks that `plan` can be sent to the scheduler. When it cannot, the
    /// error is the one single-process DataFusion gives for it if it gives
    /// one (a plan it cannot run either: "Unsupported LIMIT expression",
    /// an unsupported lateral join, ...), else a clear one.
    ///
    /// # Errors
    /// As above.
    async fn encodable(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<()> {
        let encoding = datafusion_proto::logical_plan::AsLogicalPlan::try_from_logical_plan(
            plan,
            self.codec.as_ref(),
        );
        let encoding = match encoding {
            Ok(node) => return fits_a_message(&node, session),
            Err(e) => e,
        };
        if let Some(state) =
            session.as_any().downcast_ref::<datafusion::execution::context::SessionState>()
        {
            let local =
                datafusion::execution::SessionStateBuilder::new_from_existing(state.clone())
                    .with_query_planner(Arc::new(LocalPlanner))
                    .build();
            local.create_physical_plan(plan).await?;
        }
        Err(DataFusionError::NotImplemented(format!(
            "this statement cannot be sent to the cluster: {}",
            sluice_sql::session::clean_df_message(&encoding)
        )))
    }

    /// `plan` with each uncorrelated scalar subquery replaced by its value,
    /// computed first by a job of its own (as Spark does). DataFusion plans
    /// such a subquery as a `ScalarSubqueryExec` around the whole plan,
    /// which a distributed plan splits apart ("ScalarSubqueryExpr can only
    /// be deserialized as part of a surrounding ScalarSubqueryExec"), and
    /// Ballista turns that planning off, leaving subqueries in a join
    /// condition unplannable.
    ///
    /// # Errors
    /// A subquery that returns more than one row, as DataFusion reports it.
    async fn scalar_subqueries(
        &self,
        plan: LogicalPlan,
        session: &dyn Session,
    ) -> Result<LogicalPlan> {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        use datafusion::logical_expr::Expr;
        use datafusion::logical_expr::expr_rewriter::NamePreserver;

        let mut found: Vec<datafusion::logical_expr::Subquery> = Vec::new();
        plan.apply_with_subqueries(|node| {
            node.apply_expressions(|e| {
                e.apply(|e| {
                    if let Expr::ScalarSubquery(sq) = e
                        && sq.outer_ref_columns.is_empty()
                        && !found.contains(sq)
                    {
                        found.push(sq.clone());
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        if found.is_empty() {
            return Ok(plan);
        }
        let mut values = Vec::with_capacity(found.len());
        for sq in &found {
            let exec = Box::pin(self.create_physical_plan(&sq.subquery, session)).await?;
            let batches = datafusion::physical_plan::collect(exec, session.task_ctx()).await?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            if rows > 1 {
                return Err(DataFusionError::Execution(
                    "Scalar subquery returned more than one row".to_string(),
                ));
            }
            let field = sq.subquery.schema().field(0).clone();
            let value = match batches.iter().find(|b| b.num_rows() > 0) {
                Some(b) => datafusion::common::ScalarValue::try_from_array(b.column(0), 0)?,
                None => datafusion::common::ScalarValue::try_from(field.data_type())?,
            };
            values.push(value);
        }
        plan.transform_up_with_subqueries(|node| {
            let names = NamePreserver::new(&node);
            node.map_expressions(|expr| {
                let saved = names.save(&expr);
                let rewritten = expr.transform_up(|e| match &e {
                    Expr::ScalarSubquery(sq) => match found.iter().position(|f| f == sq) {
                        Some(i) => Ok(Transformed::yes(Expr::Literal(values[i].clone(), None))),
                        None => Ok(Transformed::no(e)),
                    },
                    _ => Ok(Transformed::no(e)),
                })?;
                Ok(if rewritten.transformed {
                    Transformed::yes(saved.restore(rewritten.data))
                } else {
                    rewritten
                })
            })
        })
        .map(|t| t.data)
    }

    /// `plan` with every scan of a client-side table the cluster cannot
    /// read as it is replaced by one it can (see the module docs).
    async fn client_tables(
        &self,
        plan: LogicalPlan,
        session: &dyn Session,
        staged: &mut Vec<StagedFolder>,
    ) -> Result<LogicalPlan> {
        let opts = sluice_options(session);
        // Collect the scans first: the rewrite itself cannot await.
        let mut replacements = Vec::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                replacements.push(scan.clone());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })?;
        let mut ready = Vec::new();
        for scan in replacements {
            let provider = source_as_provider(&scan.source)?;
            if let Some(replacement) =
                self.readable(&scan, provider, session, &opts, staged).await?
            {
                ready.push((scan, replacement));
            }
        }
        if ready.is_empty() {
            return Ok(plan);
        }
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else { return Ok(Transformed::no(node)) };
            let Some((_, replacement)) = ready.iter().find(|(s, _)| s == scan) else {
                return Ok(Transformed::no(node));
            };
            let source = datafusion::datasource::provider_as_source(Arc::clone(replacement));
            if scan.filters.is_empty() {
                return Ok(Transformed::yes(LogicalPlan::TableScan(TableScan {
                    source,
                    ..scan.clone()
                })));
            }
            // Filters the original provider took as exact (a partition
            // column's) are no longer above the scan, and the replacement
            // applies none: they are put back above a scan of every column,
            // then the scan's columns and row limit.
            let mut builder = datafusion::logical_expr::LogicalPlanBuilder::scan(
                scan.table_name.clone(),
                source,
                None,
            )?;
            if let Some(predicate) =
                datafusion::logical_expr::utils::conjunction(scan.filters.clone())
            {
                builder = builder.filter(predicate)?;
            }
            let columns = scan.projected_schema.iter().map(|(q, f)| {
                datafusion::logical_expr::Expr::Column(datafusion::common::Column::new(
                    q.cloned(),
                    f.name(),
                ))
            });
            builder = builder.project(columns)?;
            if let Some(fetch) = scan.fetch {
                builder = builder.limit(0, Some(fetch))?;
            }
            Ok(Transformed::yes(builder.build()?))
        })
        .map(|t| t.data)
    }

    /// A provider the cluster can read in place of `provider`, or `None`
    /// when it can read `provider` itself.
    async fn readable(
        &self,
        scan: &TableScan,
        provider: Arc<dyn TableProvider>,
        session: &dyn Session,
        opts: &sluice_sql::options::SluiceOptions,
        staged: &mut Vec<StagedFolder>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        // A recursive query's work table is the query's own, planned with it.
        if provider.is::<datafusion::datasource::cte_worktable::CteWorkTable>() {
            return Ok(None);
        }
        // Encoded by datafusion-proto itself, never through the codec.
        if provider.is::<datafusion::datasource::listing::ListingTable>()
            || provider.is::<datafusion::datasource::view::ViewTable>()
        {
            return Ok(None);
        }
        let partitions = if let Some(mem) = provider.downcast_ref::<MemTable>() {
            memtable_partitions(mem)?
        } else {
            let mut probe = Vec::new();
            if self
                .codec
                .try_encode_table_provider(&scan.table_name, Arc::clone(&provider), &mut probe)
                .is_ok()
            {
                return Ok(None);
            }
            // Read it here: the cluster gets its rows.
            let exec = provider.scan(session, None, &[], None).await?;
            if datafusion::physical_plan::ExecutionPlanProperties::boundedness(&exec).is_unbounded()
            {
                return Err(DataFusionError::NotImplemented(format!(
                    "the unbounded table {} cannot be read by the cluster: Ballista's \
                     stages need bounded inputs",
                    scan.table_name
                )));
            }
            collect_partitioned(exec, session.task_ctx()).await?
        };
        let size = size_of(&partitions);
        if size <= opts.inline_max_bytes {
            if provider.is::<MemTable>() {
                return Ok(None);
            }
            return Ok(Some(Arc::new(MemTable::try_new(provider.schema(), partitions)?)));
        }
        if opts.stage_url.is_empty() {
            let kind =
                if provider.is::<MemTable>() { "in-memory table" } else { "client-side table" };
            return Err(DataFusionError::Plan(format!(
                "the {kind} {} holds {size} bytes, more than \
                 sluice.memory_tables.inline_max_bytes ({}) that travel inside a plan; \
                 set sluice.memory_tables.stage_url to a folder or s3:// prefix every \
                 executor can read (it is written there for the query), or raise the limit",
                scan.table_name, opts.inline_max_bytes
            )));
        }
        let (table, folder) =
            stage(session, &opts.stage_url, provider.schema(), partitions).await?;
        staged.push(folder);
        Ok(Some(table))
    }
}

/// Room left in a job submission for its settings and names.
const SUBMISSION_OVERHEAD: usize = 256 * 1024;

/// Checks that the encoded plan `node` fits the gRPC message the scheduler
/// accepts (`ballista.client.grpc_max_message_size`, the scheduler's own
/// limit by default): a larger submission was cut by the transport with an
/// unclear "h2 protocol error".
fn fits_a_message(node: &LogicalPlanNode, session: &dyn Session) -> Result<()> {
    use prost::Message as _;
    let limit = session
        .config_options()
        .extensions
        .get::<BallistaConfig>()
        .cloned()
        .unwrap_or_default()
        .grpc_client_max_message_size();
    let size = node.encoded_len() + SUBMISSION_OVERHEAD;
    if size <= limit {
        return Ok(());
    }
    Err(DataFusionError::Plan(format!(
        "the query's plan is {size} bytes with the in-memory tables it carries, more than the \
         {limit} bytes a job submission may hold (ballista.client.grpc_max_message_size, the \
         scheduler's limit); lower sluice.memory_tables.inline_max_bytes so larger tables are \
         staged, and set sluice.memory_tables.stage_url to a folder or s3:// prefix every \
         executor can read"
    )))
}

/// Whether `plan` scans an unbounded stream (`CREATE UNBOUNDED EXTERNAL
/// TABLE`, a FIFO).
fn reads_a_stream(plan: &LogicalPlan) -> Result<bool> {
    any_node(plan, |node| {
        Ok(match node {
            LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)?
                .is::<datafusion::datasource::stream::StreamTable>(),
            _ => false,
        })
    })
}

/// Whether a `LIMIT` or `OFFSET` of `plan` is not a constant.
fn has_subquery_limit(plan: &LogicalPlan) -> Result<bool> {
    use datafusion::logical_expr::{FetchType, SkipType};
    any_node(plan, |node| {
        Ok(match node {
            LogicalPlan::Limit(limit) => {
                matches!(limit.get_fetch_type(), Ok(FetchType::UnsupportedExpr))
                    || matches!(limit.get_skip_type(), Ok(SkipType::UnsupportedExpr))
            }
            _ => false,
        })
    })
}

/// Whether `f` holds for a node of `plan` or of its subqueries.
fn any_node(plan: &LogicalPlan, mut f: impl FnMut(&LogicalPlan) -> Result<bool>) -> Result<bool> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        found = f(node)?;
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    Ok(found)
}

/// The session's `sluice.*` options (defaults when not registered).
fn sluice_options(session: &dyn Session) -> sluice_sql::options::SluiceOptions {
    session
        .config_options()
        .extensions
        .get::<sluice_sql::options::SluiceOptions>()
        .cloned()
        .unwrap_or_default()
}

/// A folder of staged Parquet files, removed once the query that reads it
/// is done ([`PlanTypesExec`]).
#[derive(Debug, Clone)]
pub struct StagedFolder {
    store: Arc<dyn datafusion::object_store::ObjectStore>,
    prefix: datafusion::object_store::path::Path,
}

impl StagedFolder {
    /// Deletes every file under the folder; failures are logged (the files
    /// are the query's copy of a client table, nothing else refers to them).
    pub async fn remove(self) {
        use futures::{StreamExt, TryStreamExt};
        let listed = self.store.list(Some(&self.prefix)).map_ok(|m| m.location).boxed();
        let deleted: Vec<_> = self.store.delete_stream(listed).collect().await;
        for result in deleted {
            if let Err(e) = result {
                tracing::warn!(folder = %self.prefix, error = %e, "a staged file was not removed");
            }
        }
    }
}

/// Writes `partitions` as Parquet files (one per partition) under a fresh
/// folder of `stage_url` and returns a table reading them, and the folder.
///
/// # Errors
/// When the store cannot be written.
pub async fn stage(
    session: &dyn Session,
    stage_url: &str,
    schema: datafusion::arrow::datatypes::SchemaRef,
    partitions: Vec<Vec<datafusion::arrow::record_batch::RecordBatch>>,
) -> Result<(Arc<dyn TableProvider>, StagedFolder)> {
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };
    use datafusion::object_store::buffered::BufWriter;
    use datafusion::parquet::arrow::AsyncArrowWriter;

    let folder =
        format!("{}/sluice-memtable-{}/", stage_url.trim_end_matches('/'), uuid::Uuid::new_v4());
    let url = ListingTableUrl::parse(&folder)?;
    let store = session.runtime_env().object_store(&url)?;
    for (i, batches) in partitions.iter().enumerate() {
        let path = url.prefix().clone().join(format!("part-{i}.parquet"));
        let mut writer = AsyncArrowWriter::try_new(
            BufWriter::new(Arc::clone(&store), path),
            Arc::clone(&schema),
            None,
        )?;
        for b in batches {
            writer.write(b).await?;
        }
        writer.close().await?;
    }
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let folder = StagedFolder { store, prefix: url.prefix().clone() };
    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(schema);
    Ok((Arc::new(ListingTable::try_new(config)?), folder))
}

/// Removes staged folders when a result stream is dropped before its end.
struct RemoveOnDrop(Option<Vec<StagedFolder>>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Some(folders) = self.0.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for folder in folders {
                    folder.remove().await;
                }
            });
        }
    }
}

/// DataFusion's own physical planner (for [`ClientPlanner::encodable`]).
#[derive(Debug)]
struct LocalPlanner;

#[async_trait]
impl QueryPlanner for LocalPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::default().create_physical_plan(logical_plan, session).await
    }
}

/// A cluster result as the plan typed it.
///
/// Ballista fetches a job's result partitions through the executors'
/// Arrow Flight `do_get`, whose encoder (arrow-flight's
/// `FlightDataEncoder`) sends dictionary columns as their values and
/// declares `LargeList` columns as `List`: a `Dictionary(Int8, Utf8)` column
/// came back as `Utf8` and `CREATE TABLE … AS` over it failed ("Mismatch
/// between schema and batches"). Both casts back are lossless, so each batch
/// is cast to the schema the plan promises when its types differ, and given
/// the plan's fields (the shuffle files declare every column nullable).
#[derive(Debug)]
pub struct PlanTypesExec {
    input: Arc<dyn ExecutionPlan>,
    /// Why the job must run on Ballista's static planner, if it must
    /// (`sluice_sql::cluster_plan::adaptive_hazard`).
    static_planner: Option<String>,
    /// Folders staged for the job, removed when its result has been read
    /// (or its stream dropped).
    staged: Vec<StagedFolder>,
}

impl PlanTypesExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input, static_planner: None, staged: Vec::new() }
    }

    /// The job is submitted with `ballista.planner.adaptive.enabled=false`
    /// when `reason` is given.
    pub fn with_static_planner(mut self, reason: Option<String>) -> Self {
        self.static_planner = reason;
        self
    }

    /// `folders` are removed once the result is read.
    pub fn with_staged(mut self, folders: Vec<StagedFolder>) -> Self {
        self.staged = folders;
        self
    }
}

impl datafusion::physical_plan::DisplayAs for PlanTypesExec {
    fn fmt_as(
        &self,
        _t: datafusion::physical_plan::DisplayFormatType,
        f: &mut std::fmt::Formatter,
    ) -> std::fmt::Result {
        write!(f, "PlanTypesExec")
    }
}

impl ExecutionPlan for PlanTypesExec {
    fn name(&self) -> &str {
        "PlanTypesExec"
    }

    fn properties(&self) -> &Arc<datafusion::physical_plan::PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("PlanTypesExec needs its input".into()))?;
        Ok(Arc::new(Self {
            input,
            static_planner: self.static_planner.clone(),
            staged: self.staged.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
        use futures::StreamExt;
        let schema = self.input.schema();
        // The job's settings are the task context's session settings.
        use ballista_core::extension::SessionConfigExt;
        let context = match &self.static_planner {
            Some(reason) if context.session_config().ballista_adaptive_query_planner_enabled() => {
                tracing::debug!(%reason, "the job runs on Ballista's static planner");
                let mut config = context.session_config().clone();
                config
                    .options_mut()
                    .set(ballista_core::config::BALLISTA_ADAPTIVE_PLANNER_ENABLED, "false")?;
                Arc::new(datafusion::execution::TaskContext::new(
                    context.task_id(),
                    context.session_id(),
                    config,
                    context.scalar_functions().clone(),
                    context.higher_order_functions().clone(),
                    context.aggregate_functions().clone(),
                    context.window_functions().clone(),
                    context.runtime_env(),
                ))
            }
            _ => context,
        };
        let stream = self.input.execute(partition, context)?;
        let typed = Arc::clone(&schema);
        let stream =
            stream.map(move |b| b.and_then(|b| sluice_sql::typed::to_plan_types(b, &typed)));
        if self.staged.is_empty() {
            return Ok(Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                schema, stream,
            )));
        }
        // The job reads the staged files before its result is complete:
        // once the stream ends they go, or when it is dropped unfinished.
        let mut guard = RemoveOnDrop(Some(self.staged.clone()));
        let done = futures::stream::once(async move {
            if let Some(folders) = guard.0.take() {
                for folder in folders {
                    folder.remove().await;
                }
            }
            None
        })
        .filter_map(futures::future::ready);
        Ok(Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            schema,
            stream.map(Some).chain(done).filter_map(futures::future::ready),
        )))
    }
}
