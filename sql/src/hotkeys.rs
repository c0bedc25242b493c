//! Hot-key detection for the join salting rewrite (`sluice_sql::skew`).
//!
//! A key is hot when it holds more than `sluice.skew.hot_key_share` of the
//! rows of a join's left input. The shares come from a sample read in the
//! client: the first rows of [`SAMPLE_PARTITIONS`] of the input's partitions
//! (file byte ranges, evenly spaced), [`SAMPLE_ROWS`] in all, read with
//! plain DataFusion within [`SAMPLE_BUDGET`]. That reads a few row groups of one column instead of
//! submitting a job that counts every row on the cluster (a job costs its
//! stages' scheduling even on small inputs). When the sample comes out
//! smaller than [`MIN_SAMPLE_ROWS`] without reading the whole input (a very
//! selective filter, slow storage), or the input cannot be planned in the
//! client, the keys are counted on the cluster instead.
//!
//! A sample can miss a key that is hot only in parts of the input it did not
//! read; that costs balance, never correctness: salting is correct for any
//! set of keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, WindowFunctionDefinition, col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;

type Result<T> = datafusion::error::Result<T>;

/// Rows the sample reads in all, spread evenly over the partitions it reads.
pub const SAMPLE_ROWS: usize = 1 << 18;
/// Partitions (file byte ranges) the sample reads at most, evenly spaced
/// over the input's: each costs opening a file and decoding a row group of
/// the key column, whatever the rows taken from it.
pub const SAMPLE_PARTITIONS: usize = 8;
/// Time the sample may take before it is cut short.
pub const SAMPLE_BUDGET: Duration = Duration::from_secs(2);
/// A cut-short sample smaller than this is not trusted.
pub const MIN_SAMPLE_ROWS: usize = 100_000;
/// The heaviest keys considered per join.
const TOP: usize = 16;

/// How the shares were measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// From a sample of this many rows (the whole input when it is smaller).
    Sample { rows: usize, partitions: usize },
    /// Every row counted by a job on the cluster.
    Counted,
}

impl std::fmt::Display for Detection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Detection::Sample { rows, partitions } => write!(
                f,
                "shares from a sample of {rows} rows (the first rows of {partitions} input partitions)"
            ),
            Detection::Counted => write!(f, "shares from counting every row (a job on the engine)"),
        }
    }
}

/// The hot keys of `key` over `left` with their share of its rows, heaviest
/// first, and how they were measured.
///
/// # Errors
/// A failing count job on the cluster.
pub async fn hot_keys(
    ctx: &SessionContext,
    left: &LogicalPlan,
    key: &Expr,
    share: f64,
) -> Result<(Vec<(ScalarValue, f64)>, Detection)> {
    match sample(ctx, left, key).await {
        Ok(Some((batches, partitions))) => {
            let rows = batches.iter().map(RecordBatch::num_rows).sum();
            // An empty input has no hot key (and no batch to read a schema from).
            if rows == 0 {
                return Ok((Vec::new(), Detection::Sample { rows, partitions }));
            }
            let local = SessionContext::new();
            let df = local.read_batches(batches)?;
            let top = top_keys(df, col("__k")).await?;
            Ok((hot_of(&top, share)?, Detection::Sample { rows, partitions }))
        }
        Ok(None) => counted(ctx, left, key, share).await,
        Err(e) => {
            tracing::debug!(error = %e, "hot-key sample not possible in the client; counting on the cluster");
            counted(ctx, left, key, share).await
        }
    }
}

async fn counted(
    ctx: &SessionContext,
    left: &LogicalPlan,
    key: &Expr,
    share: f64,
) -> Result<(Vec<(ScalarValue, f64)>, Detection)> {
    let df = DataFrame::new(ctx.state(), left.clone());
    let top = top_keys(df, key.clone()).await?;
    Ok((hot_of(&top, share)?, Detection::Counted))
}

/// One job: the key counts, their total (a window over the groups) and the
/// [`TOP`] largest: `(key, __n, __total)`.
async fn top_keys(df: DataFrame, key: Expr) -> Result<Vec<RecordBatch>> {
    let total_over_groups = Expr::WindowFunction(Box::new(WindowFunction::new(
        WindowFunctionDefinition::AggregateUDF(sum_udaf()),
        vec![col("__n")],
    )))
    .alias("__total");
    df.aggregate(vec![key], vec![count(lit(1)).alias("__n")])
        .and_then(|d| d.window(vec![total_over_groups]))
        .and_then(|d| d.sort(vec![col("__n").sort(false, true)]))
        .and_then(|d| d.limit(0, Some(TOP)))?
        .collect()
        .await
}

/// The keys of `top` above `share` of the total, with their shares.
fn hot_of(top: &[RecordBatch], share: f64) -> Result<Vec<(ScalarValue, f64)>> {
    let as_i64 = |a: &ArrayRef| -> Result<ArrayRef> {
        Ok(datafusion::arrow::compute::cast(a, &DataType::Int64)?)
    };
    let mut total = 0i64;
    for b in top {
        let t = as_i64(b.column(2))?;
        if let Some(t) = t.as_any().downcast_ref::<Int64Array>() {
            total = total.max(t.iter().flatten().max().unwrap_or(0));
        }
    }
    let mut keys = Vec::new();
    if total == 0 {
        return Ok(keys);
    }
    for b in top {
        let n = as_i64(b.column(1))?;
        let n = n
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("hot-key count is not an integer".into()))?;
        for i in 0..b.num_rows() {
            if b.column(0).is_valid(i) && n.value(i) as f64 > share * total as f64 {
                keys.push((
                    ScalarValue::try_from_array(b.column(0), i)?,
                    n.value(i) as f64 / total as f64,
                ));
            }
        }
    }
    Ok(keys)
}

/// The key column of the first rows of up to [`SAMPLE_PARTITIONS`]
/// partitions of `left`, planned and read in this process, and how many
/// partitions were read; `None` when the
/// budget ran out before [`MIN_SAMPLE_ROWS`] rows unless every partition
/// was read to its end.
async fn sample(
    ctx: &SessionContext,
    left: &LogicalPlan,
    key: &Expr,
) -> std::result::Result<Option<(Vec<RecordBatch>, usize)>, DataFusionError> {
    let plan =
        LogicalPlanBuilder::from(left.clone()).project(vec![key.clone().alias("__k")])?.build()?;
    let state = ctx.state();
    // Plain DataFusion: the session's own planner would send it to the cluster.
    let physical: Arc<dyn ExecutionPlan> =
        DefaultPhysicalPlanner::default().create_physical_plan(&plan, &state).await?;
    let partitions = physical.properties().output_partitioning().partition_count().max(1);
    let spaced: Vec<usize> = if partitions <= SAMPLE_PARTITIONS {
        (0..partitions).collect()
    } else {
        (0..SAMPLE_PARTITIONS).map(|k| k * partitions / SAMPLE_PARTITIONS).collect()
    };
    let deadline = tokio::time::Instant::from_std(Instant::now() + SAMPLE_BUDGET);
    let mut sampled = spaced.len();
    let mut read = read_partitions(&physical, &state, spaced, SAMPLE_ROWS, deadline).await?;
    // The partitions read all ended early: the input is small, read it all.
    if sampled < partitions && read.iter().all(|r| r.2) {
        read = read_partitions(&physical, &state, (0..partitions).collect(), SAMPLE_ROWS, deadline)
            .await?;
        sampled = partitions;
    }
    let rows: usize = read.iter().map(|r| r.1).sum();
    // Read to its end: every partition read, and each one to its end.
    let whole = sampled == partitions && read.iter().all(|r| r.2);
    if !whole && rows < MIN_SAMPLE_ROWS.min(SAMPLE_ROWS) {
        let budget = SAMPLE_BUDGET.as_secs_f64();
        tracing::info!(rows, budget, "hot-key sample too small; counting on the cluster");
        return Ok(None);
    }
    Ok(Some((read.into_iter().flat_map(|r| r.0).collect(), sampled)))
}

/// Up to `rows` rows in all from the start of each of `partitions` of
/// `physical`, read concurrently until `deadline`: each partition's batches,
/// row count and whether it ended.
async fn read_partitions(
    physical: &Arc<dyn ExecutionPlan>,
    state: &datafusion::execution::SessionState,
    partitions: Vec<usize>,
    rows: usize,
    deadline: tokio::time::Instant,
) -> std::result::Result<Vec<(Vec<RecordBatch>, usize, bool)>, DataFusionError> {
    let per_partition = rows.div_ceil(partitions.len().max(1));
    let task_ctx = state.task_ctx();
    let reads = partitions.into_iter().map(|i| {
        let physical = physical.clone();
        let task_ctx = task_ctx.clone();
        async move {
            let mut stream = physical.execute(i, task_ctx)?;
            let (mut out, mut rows, mut complete) = (Vec::new(), 0usize, false);
            while rows < per_partition {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => break,
                    Ok(None) => {
                        complete = true;
                        break;
                    }
                    Ok(Some(batch)) => {
                        let batch = batch?;
                        let take = (per_partition - rows).min(batch.num_rows());
                        rows += take;
                        out.push(batch.slice(0, take));
                    }
                }
            }
            Ok::<_, DataFusionError>((out, rows, complete))
        }
    });
    futures::future::try_join_all(reads).await
}
