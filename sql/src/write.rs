//! Parallel Hive-partitioned Parquet writes (`COPY … PARTITIONED BY`).
//!
//! DataFusion's `DataSinkExec` requires a single input partition: it demuxes
//! the whole result by partition value itself. On a Ballista cluster that
//! makes the write one task, fed by a shuffle of every output row, while the
//! other slots idle (a 92-day churn chunk spent 2.7 s of 9 s there).
//!
//! [`SluiceQueryPlanner`] plans as DataFusion does, then replaces a
//! partitioned Parquet `DataSinkExec` with a [`ParallelSinkExec`] over the
//! same rows hash-partitioned by the partition columns: every partition runs
//! the same sink on its own rows, and all rows of one partition value reach
//! one writer, so each folder (`…/feature_date=D/`) gets one file, as with a
//! single writer (the sink draws a fresh write id per call, so names never
//! collide).
//!
//! ```text
//!  DataSinkExec (1 task)                 ParallelSinkExec (N tasks)
//!    CoalescePartitionsExec ─ shuffle      RepartitionExec Hash(feature_date, N) ─ shuffle
//!      plan (N partitions)                   plan (N partitions)
//! ```
//!
//! Writing without the shuffle (each plan partition writing its own rows)
//! was measured first: N files per folder, and the 2000-user churn backfill
//! took 6.2 s instead of 3.3 s (file opens in the write and the chunk check).
//!
//! Each partition returns one `count` row; the counts add up to what
//! `DataSinkExec` would have returned. Only partitioned writes without a sort
//! requirement are replaced: a single-file target must stay one writer.
//!
//! On a cluster the node travels to executors through [`SluiceCodec`], which
//! wraps Ballista's physical codec (registered on the scheduler and on every
//! executor). It carries the sink as a `DataSinkExec` over an empty input, so
//! every sink option (compression, per-column encodings) is encoded by
//! DataFusion's own protobuf code.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::file_format::parquet::ParquetSink;
use datafusion::datasource::physical_plan::FileSink;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{
    ChildrenPropertiesMode, ReplaceChildrenOptions, execute_input_stream,
};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, SendableRecordBatchStream,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::StreamExt;

/// Plans like DataFusion, then makes partitioned Parquet writes parallel.
#[derive(Debug, Default)]
pub struct SluiceQueryPlanner;

#[async_trait]
impl QueryPlanner for SluiceQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan =
            DefaultPhysicalPlanner::default().create_physical_plan(logical_plan, session).await?;
        parallel_writes(plan)
    }
}

/// Replaces every partitioned Parquet `DataSinkExec` (without a required
/// sort order) by a [`ParallelSinkExec`] over the sink's input, dropping a
/// `CoalescePartitionsExec` put there only to satisfy the single-partition
/// requirement.
pub fn parallel_writes(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(sink) = node.downcast_ref::<DataSinkExec>() else {
            return Ok(Transformed::no(node));
        };
        let partitioned = sink
            .sink()
            .downcast_ref::<ParquetSink>()
            .is_some_and(|p| !p.config().table_partition_cols.is_empty());
        if !partitioned || sink.sort_order().is_some() {
            return Ok(Transformed::no(node));
        }
        let mut input = Arc::clone(sink.input());
        if let Some(coalesce) = input.downcast_ref::<CoalescePartitionsExec>() {
            input = Arc::clone(coalesce.input());
        }
        // Rebuilding a `DataSinkExec` with a new child shares its sink.
        let template = Arc::clone(&node).replace_children(
            vec![Arc::new(EmptyExec::new(input.schema()))],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?;
        // Every row of a partition value goes to one writer: one file per
        // partition folder, as a single writer would produce.
        let keys = partition_keys(template.as_ref(), &input.schema())?;
        let partitions = input.output_partitioning().partition_count().max(1);
        let input: Arc<dyn ExecutionPlan> = match shared_shuffle(&input, &keys)? {
            Some(shared) => shared,
            None => {
                Arc::new(RepartitionExec::try_new(input, Partitioning::Hash(keys, partitions))?)
            }
        };
        Ok(Transformed::yes(Arc::new(ParallelSinkExec::try_new(input, template)?)))
    })
    .map(|t| t.data)
}

/// Whether `plan`'s partitions are exactly hash partitions by `keys`.
fn hash_partitioned_by(plan: &Arc<dyn ExecutionPlan>, keys: &[Arc<dyn PhysicalExpr>]) -> bool {
    plan.output_partitioning().partition_count() > 1
        && plan.output_partitioning().satisfaction(
            &Distribution::KeyPartitioned(keys.to_vec()),
            plan.equivalence_properties(),
            false,
        ) == datafusion::physical_expr::PartitioningSatisfaction::Exact
}

/// `input` arranged so that the write needs no shuffle of its own, if it
/// can be: it is already hash-partitioned by the partition columns, or the
/// shuffle of a final aggregation beneath, grouped by the partition column
/// among others, can hash by that column alone (rows of one group share
/// its value, so they still meet in one partition) and the partitioning
/// reaches the write: a grouping by the partition column and others just
/// before the write (`… GROUP BY id, day` written `PARTITIONED BY (day)`)
/// then needs one shuffle, not two. Ballista's adaptive planner re-forms
/// every exchange with its own rules, so on a cluster this holds for static
/// plans (`ballista.planner.adaptive.enabled=false`) and local runs.
fn shared_shuffle(
    input: &Arc<dyn ExecutionPlan>,
    keys: &[Arc<dyn PhysicalExpr>],
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if hash_partitioned_by(input, keys) {
        return Ok(Some(Arc::clone(input)));
    }
    // Shuffles under final aggregations, by more than one expression.
    let mut candidates: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    input.apply(|node| {
        if let Some(agg) = node.downcast_ref::<AggregateExec>()
            && *agg.mode() == AggregateMode::FinalPartitioned
            && let Some(shuffle) = agg.input().downcast_ref::<RepartitionExec>()
            && let Partitioning::Hash(exprs, _) = shuffle.partitioning()
            && exprs.len() > 1
        {
            candidates.push(Arc::clone(agg.input()));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    for candidate in candidates {
        let Some(shuffle) = candidate.downcast_ref::<RepartitionExec>() else { continue };
        let Partitioning::Hash(exprs, n) = shuffle.partitioning().clone() else { continue };
        for expr in exprs {
            let narrower: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
                Arc::clone(shuffle.input()),
                Partitioning::Hash(vec![expr], n),
            )?);
            let rewritten = Arc::clone(input)
                .transform_down(|node| {
                    Ok(if Arc::ptr_eq(&node, &candidate) {
                        Transformed::new(Arc::clone(&narrower), true, TreeNodeRecursion::Jump)
                    } else {
                        Transformed::no(node)
                    })
                })?
                .data;
            if hash_partitioned_by(&rewritten, keys) {
                return Ok(Some(rewritten));
            }
        }
    }
    Ok(None)
}

/// The sink's partition columns (`PARTITIONED BY`) as expressions over
/// `schema`.
fn partition_keys(
    template: &dyn ExecutionPlan,
    schema: &Schema,
) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    let Some(parquet) = sink_of(template).downcast_ref::<ParquetSink>() else {
        return Err(DataFusionError::Internal(
            "ParallelSinkExec writes through a ParquetSink".to_string(),
        ));
    };
    parquet
        .config()
        .table_partition_cols
        .iter()
        .map(|(name, _)| datafusion::physical_expr::expressions::col(name, schema))
        .collect()
}

/// Runs one sink on every input partition, each writing its own files.
/// Its input is hash-partitioned by the partition columns, so each
/// partition folder gets its files from one writer.
#[derive(Debug)]
pub struct ParallelSinkExec {
    input: Arc<dyn ExecutionPlan>,
    /// A `DataSinkExec` over an empty input: holds the sink and is what the
    /// codec serializes.
    template: Arc<dyn ExecutionPlan>,
    /// The partition columns, which the input must be hash-partitioned by.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    properties: Arc<PlanProperties>,
}

impl ParallelSinkExec {
    /// A parallel write of `input` through the sink of `template`, a
    /// `DataSinkExec` (whose own input is ignored).
    ///
    /// # Errors
    /// When `template` is not a `DataSinkExec`.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        template: Arc<dyn ExecutionPlan>,
    ) -> Result<Self> {
        if !template.is::<DataSinkExec>() {
            return Err(DataFusionError::Internal(format!(
                "ParallelSinkExec: expected a DataSinkExec template, got {}",
                template.name()
            )));
        }
        let partitions = input.output_partitioning().partition_count().max(1);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(partitions),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        let keys = partition_keys(template.as_ref(), &input.schema())?;
        Ok(Self { input, template, keys, properties: Arc::new(properties) })
    }

    /// The sink every partition writes through.
    fn sink(&self) -> &dyn DataSink {
        sink_of(self.template.as_ref())
    }
}

/// The sink of a template checked by [`ParallelSinkExec::try_new`].
fn sink_of(template: &dyn ExecutionPlan) -> &dyn DataSink {
    match template.downcast_ref::<DataSinkExec>() {
        Some(exec) => exec.sink(),
        None => unreachable!("ParallelSinkExec::try_new checks the template"),
    }
}

impl DisplayAs for ParallelSinkExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "ParallelSinkExec: partitions={}, sink=",
                    self.properties.partitioning.partition_count()
                )?;
                self.sink().fmt_as(t, f)
            }
            DisplayFormatType::TreeRender => self.sink().fmt_as(t, f),
        }
    }
}

impl ExecutionPlan for ParallelSinkExec {
    fn name(&self) -> &'static str {
        "ParallelSinkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::KeyPartitioned(self.keys.clone())]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|c| {
            DataFusionError::Internal(format!("ParallelSinkExec takes 1 child, got {}", c.len()))
        })?;
        Ok(Arc::new(Self::try_new(input, Arc::clone(&self.template))?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let sink_schema = Arc::clone(self.sink().schema());
        let data = execute_input_stream(
            Arc::clone(&self.input),
            sink_schema,
            partition,
            Arc::clone(&context),
        )?;
        let template = Arc::clone(&self.template);
        let stream = futures::stream::once(async move {
            let count = sink_of(template.as_ref()).write_all(data, &context).await?;
            count_batch(count)
        })
        .boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(count_schema(), stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.sink().metrics()
    }
}

fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]))
}

fn count_batch(count: u64) -> Result<RecordBatch> {
    let column: ArrayRef = Arc::new(UInt64Array::from(vec![count]));
    Ok(RecordBatch::try_new(count_schema(), vec![column])?)
}

/// Ballista's physical codec plus [`ParallelSinkExec`], recursive
/// queries ([`crate::recursive`]) and single-task joins
/// ([`crate::single_task`]). Register it on the
/// scheduler and every executor (`override_physical_codec`).
#[derive(Debug, Default)]
pub struct SluiceCodec {
    inner: BallistaPhysicalExtensionCodec,
}

/// Marks a buffer as Sluice's (Ballista's messages are protobuf, which never
/// start with these bytes: field 0 is invalid).
const PARALLEL_SINK_TAG: &[u8] = b"\0sluice.parallel_sink.v1\0";

impl PhysicalExtensionCodec for SluiceCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(plan) = crate::recursive::try_decode(buf, inputs)? {
            return Ok(plan);
        }
        if let Some(plan) = crate::typed::try_decode(buf, inputs)? {
            return Ok(plan);
        }
        if let Some(body) = buf.strip_prefix(crate::single_task::IN_PROCESS_TAG) {
            let inner = physical_plan_from_bytes_with_extension_codec(body, ctx, self)?;
            return Ok(Arc::new(crate::single_task::InProcessExec::new(inner)));
        }
        if let Some(body) = buf.strip_prefix(crate::single_task::SINGLE_TASK_JOIN_TAG) {
            let template = physical_plan_from_bytes_with_extension_codec(body, ctx, self)?;
            return Ok(Arc::new(crate::single_task::SingleTaskJoinExec::from_template(
                template, inputs,
            )?));
        }
        let Some(body) = buf.strip_prefix(PARALLEL_SINK_TAG) else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let [input] = inputs else {
            return Err(DataFusionError::Internal(format!(
                "ParallelSinkExec takes 1 input, got {}",
                inputs.len()
            )));
        };
        let template = physical_plan_from_bytes_with_extension_codec(body, ctx, self)?;
        Ok(Arc::new(ParallelSinkExec::try_new(Arc::clone(input), template)?))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if crate::recursive::try_encode(&node, buf)? || crate::typed::try_encode(&node, buf)? {
            return Ok(());
        }
        if let Some(exec) = node.downcast_ref::<crate::single_task::InProcessExec>() {
            let body = physical_plan_to_bytes_with_extension_codec(Arc::clone(exec.inner()), self)?;
            buf.extend_from_slice(crate::single_task::IN_PROCESS_TAG);
            buf.extend_from_slice(&body);
            return Ok(());
        }
        if let Some(exec) = node.downcast_ref::<crate::single_task::SingleTaskJoinExec>() {
            let body = physical_plan_to_bytes_with_extension_codec(exec.template()?, self)?;
            buf.extend_from_slice(crate::single_task::SINGLE_TASK_JOIN_TAG);
            buf.extend_from_slice(&body);
            return Ok(());
        }
        let Some(exec) = node.downcast_ref::<ParallelSinkExec>() else {
            return self.inner.try_encode(node, buf, proto_converter);
        };
        let body = physical_plan_to_bytes_with_extension_codec(Arc::clone(&exec.template), self)?;
        buf.extend_from_slice(PARALLEL_SINK_TAG);
        buf.extend_from_slice(&body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

    use super::*;
    use crate::session::client_state;

    /// 4 partitions of rows over 3 partition values.
    async fn context() -> Result<SessionContext> {
        let config = SessionConfig::new().with_target_partitions(4);
        let ctx = SessionContext::new_with_state(client_state(config)?);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("day", DataType::Utf8, false),
        ]));
        let mut batches = Vec::new();
        for part in 0..4i64 {
            let ids: Vec<i64> = (0..100).map(|i| part * 100 + i).collect();
            let days: Vec<String> = ids.iter().map(|i| format!("2024-01-0{}", i % 3 + 1)).collect();
            batches.push(vec![RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(days))],
            )?]);
        }
        let table = datafusion::datasource::MemTable::try_new(schema, batches)?;
        ctx.register_table("t", Arc::new(table))?;
        Ok(ctx)
    }

    /// The rows written under `dir`, after checking that every day's folder
    /// got one file (all rows of a day reached one writer).
    async fn written_by_day(
        ctx: &SessionContext,
        dir: &std::path::Path,
    ) -> Result<datafusion::dataframe::DataFrame> {
        for day in 1..=3 {
            let folder = dir.join(format!("day=2024-01-0{day}"));
            let files = std::fs::read_dir(&folder)
                .map_err(|e| DataFusionError::External(Box::new(e)))?
                .count();
            assert_eq!(files, 1, "{}", folder.display());
        }
        ctx.read_parquet(
            format!("{}/", dir.display()),
            ParquetReadOptions::default()
                .table_partition_cols(vec![("day".into(), DataType::Utf8)]),
        )
        .await
    }

    fn copy_sql(dir: &std::path::Path) -> String {
        format!(
            "COPY (SELECT id, day FROM t) TO '{}/' STORED AS PARQUET PARTITIONED BY (day)",
            dir.display()
        )
    }

    #[tokio::test]
    async fn partitioned_copy_writes_every_partition_in_parallel() -> Result<()> {
        let ctx = context().await?;
        let dir = tempfile::tempdir().map_err(|e| DataFusionError::External(Box::new(e)))?;
        let plan = ctx.sql(&copy_sql(dir.path())).await?.create_physical_plan().await?;
        let shown = displayable(plan.as_ref()).indent(false).to_string();
        assert!(shown.starts_with("ParallelSinkExec: partitions=4"), "{shown}");
        assert!(!shown.contains("CoalescePartitionsExec"), "{shown}");
        assert!(shown.contains("RepartitionExec: partitioning=Hash([day@1], 4)"), "{shown}");

        let counts = collect(plan, ctx.task_ctx()).await?;
        let total: u64 = counts
            .iter()
            .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
            .flat_map(|a| a.values().iter().copied())
            .sum();
        assert_eq!(total, 400);
        let back = written_by_day(&ctx, dir.path())
            .await?
            .select_columns(&["id", "day"])?
            .sort(vec![datafusion::prelude::col("id").sort(true, false)])?
            .collect()
            .await?;
        let expected = ctx.sql("SELECT id, day FROM t ORDER BY id").await?.collect().await?;
        assert_eq!(
            pretty_format_batches(&back)?.to_string(),
            pretty_format_batches(&expected)?.to_string()
        );
        Ok(())
    }

    /// A grouping by (id, day) written partitioned by day: its shuffle hashes
    /// by day alone and serves the write too (no second one), and the rows
    /// written are the query's.
    #[tokio::test]
    async fn a_grouping_by_the_partition_column_shares_its_shuffle_with_the_write() -> Result<()> {
        let ctx = context().await?;
        let dir = tempfile::tempdir().map_err(|e| DataFusionError::External(Box::new(e)))?;
        let query = "SELECT id, day, sum(v) AS v FROM \
                     (SELECT id % 7 AS id, day, id AS v FROM t) GROUP BY id, day";
        let sql = format!(
            "COPY ({query}) TO '{}/' STORED AS PARQUET PARTITIONED BY (day)",
            dir.path().display()
        );
        let plan = ctx.sql(&sql).await?.create_physical_plan().await?;
        let shown = displayable(plan.as_ref()).indent(false).to_string();
        assert_eq!(shown.matches("RepartitionExec: partitioning=Hash(").count(), 1, "{shown}");
        assert!(shown.contains("RepartitionExec: partitioning=Hash([day@"), "{shown}");
        assert!(
            shown.contains("AggregateExec: mode=FinalPartitioned, gby=[id@0 as id, day@1 as day]"),
            "{shown}"
        );
        collect(plan, ctx.task_ctx()).await?;
        let back = written_by_day(&ctx, dir.path()).await?;
        ctx.register_table("back", back.into_view())?;
        let order = " ORDER BY day, id";
        let got = ctx.sql(&format!("SELECT id, day, v FROM back{order}")).await?.collect().await?;
        let expected = ctx.sql(&format!("{query}{order}")).await?.collect().await?;
        assert_eq!(
            pretty_format_batches(&got)?.to_string(),
            pretty_format_batches(&expected)?.to_string()
        );
        Ok(())
    }

    #[tokio::test]
    async fn unpartitioned_copy_keeps_a_single_writer() -> Result<()> {
        let ctx = context().await?;
        let dir = tempfile::tempdir().map_err(|e| DataFusionError::External(Box::new(e)))?;
        let sql = format!("COPY (SELECT id FROM t) TO '{}/one.parquet'", dir.path().display());
        let plan = ctx.sql(&sql).await?.create_physical_plan().await?;
        let shown = displayable(plan.as_ref()).indent(false).to_string();
        assert!(shown.starts_with("DataSinkExec"), "{shown}");
        Ok(())
    }

    #[tokio::test]
    async fn codec_round_trips_the_parallel_sink() -> Result<()> {
        let ctx = context().await?;
        let dir = tempfile::tempdir().map_err(|e| DataFusionError::External(Box::new(e)))?;
        let plan = ctx.sql(&copy_sql(dir.path())).await?.create_physical_plan().await?;
        let codec = SluiceCodec::default();
        let bytes = physical_plan_to_bytes_with_extension_codec(Arc::clone(&plan), &codec)?;
        let back = physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec)?;
        assert!(back.is::<ParallelSinkExec>());
        assert_eq!(
            displayable(back.as_ref()).indent(true).to_string(),
            displayable(plan.as_ref()).indent(true).to_string()
        );
        Ok(())
    }
}
