//! The scheduler's query planner: plans the way single-process DataFusion
//! does, after rewriting the shapes that come out wrong once a plan is
//! serialized, split into stages and restricted per task.
//!
//! Each rewrite answers an upstream bug, found by DataFusion's own
//! sqllogictest corpus on the cluster (`tests/tests/corpus.rs`); the
//! reproductions are in `tests/README.md` ("Upstream bugs the corpus found"):
//!
//! 1. **An unbounded `LIMIT` arrives bounded.** datafusion-proto encodes a
//!    logical `Limit` without fetch as fetch `i64::MAX` and decodes it as
//!    `Some(i64::MAX)`. The optimizer then pushes `skip + i64::MAX` into
//!    scans and limits, and physical nodes that store a fetch as `u32`
//!    (`LocalLimitExec`, file scans, `CoalescePartitionsExec`) truncate it to
//!    0: `SELECT * FROM t OFFSET 1` returned no rows. Every fetch at or above
//!    `i64::MAX` means "no limit" and is removed ([`unbounded_fetches`]).
//! 2. **A `LIMIT` over `VALUES` is dropped.** The physical optimizer folds
//!    it into the in-memory scan's `fetch`, which Ballista's per-task plan
//!    restriction does not keep (`task_builder.rs`): `SELECT * FROM (VALUES
//!    (1),(2),(3)) LIMIT 1` returned 3 rows. The rows are cut in the plan
//!    instead ([`limited_values`]).
//! 3. **A window aggregate's `FILTER` is dropped.** The physical window
//!    expression's protobuf message has no filter field, so executors
//!    counted every row of `count(*) FILTER (WHERE x > 1) OVER ()`. For
//!    aggregates that ignore NULL inputs the filter moves into the
//!    argument: `agg(CASE WHEN p THEN x END) OVER w`; any other filtered
//!    window aggregate is refused with an error rather than answered wrong
//!    ([`window_filters`]).
//!
//! 4. **`IGNORE NULLS` of a window function is dropped** by the physical
//!    expression's encoding: `lag(a) IGNORE NULLS OVER w` is planned as the
//!    function `lag__ignore_nulls` ([`crate::udf::ignore_nulls`]), which
//!    always ignores nulls ([`window_ignore_nulls`]). Respecting nulls,
//!    they are planned as `lag__forward` and the like, which the sort
//!    optimizer may not reverse: the reversal flag is dropped by the same
//!    encoding, and `lag` over rows sorted the other way came back a `lead`.
//! 5. **Constant rows stall a job.** `SELECT 1 a UNION ALL SELECT 2 a`
//!    plans as a union of `PlaceholderRowExec`s. Their partition counts do
//!    not survive the plan encoding, Ballista restricts them per task by
//!    substituting other nodes, and the adaptive planner loses the ordering
//!    each constant row has once it puts an exchange above the union: a
//!    window or sort over such a union failed the scheduler's re-planning
//!    (`SanityCheckPlan`) and the job never finished. A union whose inputs
//!    are all constant rows becomes one `VALUES` list, planned as a single
//!    in-memory scan ([`constant_unions`]).
//!
//! 6. **A recursive query finds its work table empty.** Its recursive term
//!    reads what the previous iteration wrote, through a table shared in
//!    one process; a shuffle inside the term puts the reader in another
//!    stage ("Unexpected empty work table"), and Ballista's static planner
//!    gives each side of a join inside the term a stage of its own. A plan
//!    with a recursive query is planned in one partition and each recursive
//!    query runs whole inside one task ([`recursive_in_process`]).
//!
//! Two settings are overridden for the physical plan's encoding:
//! `Float16` literals the scheduler's optimizer folded from the client's
//! casts (see [`for_the_wire`]) are cast again, and
//! `datafusion.optimizer.enable_piecewise_merge_join` is off
//! (datafusion-proto has no message for `PiecewiseMergeJoinExec`; the join
//! is planned as a nested-loop join, with the same rows).
//!
//! 7. **A nested-loop join emitted its build rows once per task.** A
//!    join with no equality key that is `LEFT`, `FULL`, semi, anti or mark
//!    emits its build (left) rows after the probe side is done, from a
//!    record of matched rows that DataFusion shares between the join's
//!    partitions in one process. Split into tasks, each task kept its own
//!    record and emitted the rows again: `WHERE EXISTS (… OR EXISTS …)`
//!    returned every row two or four times, on both Ballista planners. Such
//!    a join runs as one task ([`single_task_nested_loop_joins`]).
//! 8. **A sort or window over a `UNION` stalled the adaptive planner.**
//!    Each branch is sorted and the branches merged; the exchange Ballista's
//!    adaptive planner puts above the union forgets the per-branch
//!    constants the merge order relies on, its re-planning after the first
//!    stage fails the plan (`SanityCheckPlan`) and the job never finished.
//!    Such a job runs on Ballista's static planner ([`adaptive_hazard`]; the
//!    client turns `ballista.planner.adaptive.enabled` off for that job).
//!    So does a sort by a dictionary column: the adaptive planner merges
//!    sorted partitions inside its range-shuffle reader, which fetches other
//!    executors' partitions over Arrow Flight with their dictionaries turned
//!    into values, and its merge failed ("RowConverter column schema
//!    mismatch"); the static planner's shuffle reads are cast back to their
//!    types on the executor. And a recursive query: the adaptive planner re-plans with the
//!    session's partition count and puts shuffles inside its recursive
//!    term (rewrite 6).
//!
//! Errors of planning are carried to the client as DataFusion raised them
//! ([`crate::remote_error`]).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::expr::{WindowFunction, WindowFunctionParams};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    Expr, Limit, LogicalPlan, Sort, TableScan, Values, WindowFunctionDefinition, lit, when,
};
use datafusion::physical_plan::ExecutionPlan;

use crate::write::SluiceQueryPlanner;

/// The scheduler's [`QueryPlanner`] (see the module docs).
#[derive(Debug, Default)]
pub struct ClusterQueryPlanner;

#[async_trait]
impl QueryPlanner for ClusterQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planned = async {
            let plan = crate::copy::restore(logical_plan.clone(), session)?;
            let plan = for_cluster(plan)?;
            // A recursive query's work table is shared in one process: its
            // recursive term must not be split into stages, so it is
            // planned in one partition (no shuffle inside it).
            let recursive =
                plan.exists(|p| Ok(matches!(p, LogicalPlan::RecursiveQuery(_)))).unwrap_or(false);
            let options = session.config_options();
            // datafusion-proto has no message for `PiecewiseMergeJoinExec`:
            // such joins are planned as nested-loop joins (same rows).
            let piecewise = options.optimizer.enable_piecewise_merge_join;
            let physical = match session
                .as_any()
                .downcast_ref::<datafusion::execution::context::SessionState>()
            {
                Some(state) if recursive || piecewise => {
                    let mut state = state.clone();
                    let options = state.config_mut().options_mut();
                    if recursive {
                        options.execution.target_partitions = 1;
                    }
                    options.optimizer.enable_piecewise_merge_join = false;
                    SluiceQueryPlanner.create_physical_plan(&plan, &state).await?
                }
                _ => SluiceQueryPlanner.create_physical_plan(&plan, session).await?,
            };
            let physical = single_task_nested_loop_joins(physical)?;
            if recursive { recursive_in_process(physical) } else { Ok(physical) }
        };
        planned.await.map_err(|e| crate::remote_error::carry(e, "scheduler"))
    }
}

/// The client's side, before a plan is encoded, for what datafusion-proto
/// would change:
///
/// - `Float16` literals become a cast of the same `Float32` value (a
///   `Float16` scalar is encoded as a `Float32` one, so `MIN` over
///   `arrow_cast(1, 'Float16')` came back as `Float32`; widening to
///   `Float32` is exact, so the cast gives the value back);
/// - an empty relation with columns (`… WHERE 1 = 0` once optimized)
///   becomes a limit 0 over one row of typed NULLs with the same columns:
///   the encoding keeps no schema for an empty relation, and the scheduler
///   failed on "No field named a";
/// - an aggregate over columns extracted from struct fields is named by an
///   alias ([`extracted_aggregate_names`]).
///
/// Output names are kept.
pub fn for_the_wire(plan: LogicalPlan) -> Result<LogicalPlan> {
    let plan = plan
        .transform_up_with_subqueries(|node| match &node {
            LogicalPlan::EmptyRelation(e)
                if !e.produce_one_row && !e.schema.fields().is_empty() =>
            {
                Ok(Transformed::yes(typed_empty(&e.schema)?))
            }
            _ => Ok(Transformed::no(node)),
        })?
        .data;
    let plan = extracted_aggregate_names(plan)?;
    wire_literals(plan)
}

/// Aggregates over columns DataFusion's optimizer extracted from struct
/// field accesses (`__datafusion_extracted_N`) keep their output names
/// through the plan encoding: decoded, the aggregate's name qualifies the
/// extracted columns (`sum(CASE WHEN t2.__datafusion_extracted_1 …)`) where
/// the projection above refers to it unqualified, and the scheduler could
/// not parse the plan ("No field named sum(CASE WHEN
/// __datafusion_extracted_1 …)"). Each such aggregate is given its name as
/// an alias.
fn extracted_aggregate_names(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::logical_expr::Aggregate;
    plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::Aggregate(agg) = &node else { return Ok(Transformed::no(node)) };
        let extracted =
            |e: &Expr| e.column_refs().iter().any(|c| c.name.starts_with("__datafusion_extracted"));
        if !agg.aggr_expr.iter().any(|e| !matches!(e, Expr::Alias(_)) && extracted(e)) {
            return Ok(Transformed::no(node));
        }
        let groups = agg.group_expr_len()?;
        let aggr_expr = agg
            .aggr_expr
            .iter()
            .enumerate()
            .map(|(i, e)| match e {
                Expr::Alias(_) => e.clone(),
                _ if extracted(e) => e.clone().alias(agg.schema.field(groups + i).name()),
                _ => e.clone(),
            })
            .collect();
        Ok(Transformed::yes(LogicalPlan::Aggregate(Aggregate::try_new(
            Arc::clone(&agg.input),
            agg.group_expr.clone(),
            aggr_expr,
        )?)))
    })
    .map(|t| t.data)
}

/// No rows, with `schema`'s columns (names, qualifiers, types).
fn typed_empty(schema: &datafusion::common::DFSchemaRef) -> Result<LogicalPlan> {
    use datafusion::logical_expr::{EmptyRelation, LogicalPlanBuilder};
    let one_row = LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: true,
        schema: Arc::new(datafusion::common::DFSchema::empty()),
    });
    let columns = schema
        .iter()
        .map(|(qualifier, field)| {
            let null = datafusion::common::ScalarValue::try_from(field.data_type())?;
            Ok(Expr::Literal(null, None).alias_qualified(qualifier.cloned(), field.name()))
        })
        .collect::<Result<Vec<_>>>()?;
    LogicalPlanBuilder::from(one_row).project(columns)?.limit(0, Some(0))?.build()
}

fn wire_literals(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::Cast;
    plan.transform_up_with_subqueries(|node| {
        let names = NamePreserver::new(&node);
        node.map_expressions(|expr| {
            let saved = names.save(&expr);
            let rewritten = expr.transform_up(|e| match e {
                Expr::Literal(ScalarValue::Float16(v), _) => {
                    Ok(Transformed::yes(Expr::Cast(Cast::new(
                        Box::new(lit(ScalarValue::Float32(v.map(f32::from)))),
                        datafusion::arrow::datatypes::DataType::Float16,
                    ))))
                }
                other => Ok(Transformed::no(other)),
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

/// All rewrites of the module docs, in order.
///
/// # Errors
/// A filtered window aggregate that cannot be rewritten.
pub fn for_cluster(plan: LogicalPlan) -> Result<LogicalPlan> {
    // The scheduler's optimizer folded the client's casts back into
    // `Float16` literals: cast again, for the physical plan's encoding.
    let plan = wire_literals(plan)?;
    let plan = unbounded_fetches(plan)?;
    let plan = constant_unions(plan)?;
    let plan = limited_values(plan)?;
    let plan = window_ignore_nulls(plan)?;
    window_filters(plan)
}

/// A fetch this large stands for "no limit" (see the module docs).
fn unbounded(fetch: Option<usize>) -> bool {
    fetch.is_some_and(|f| f >= i64::MAX as usize)
}

/// Rewrite 1: fetches at or above `i64::MAX` removed from limits, sorts and
/// scans (in subqueries too).
pub fn unbounded_fetches(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        Ok(match node {
            LogicalPlan::Limit(limit) => {
                let fetch = match limit.get_fetch_type()? {
                    datafusion::logical_expr::FetchType::Literal(f) => f,
                    datafusion::logical_expr::FetchType::UnsupportedExpr => {
                        return Ok(Transformed::no(LogicalPlan::Limit(limit)));
                    }
                };
                if !unbounded(fetch) {
                    return Ok(Transformed::no(LogicalPlan::Limit(limit)));
                }
                let skip = match limit.get_skip_type()? {
                    datafusion::logical_expr::SkipType::Literal(s) => s,
                    datafusion::logical_expr::SkipType::UnsupportedExpr => {
                        return Ok(Transformed::no(LogicalPlan::Limit(limit)));
                    }
                };
                if skip == 0 {
                    Transformed::yes(Arc::unwrap_or_clone(limit.input))
                } else {
                    Transformed::yes(LogicalPlan::Limit(Limit {
                        skip: Some(Box::new(lit(skip as i64))),
                        fetch: None,
                        input: limit.input,
                    }))
                }
            }
            LogicalPlan::Sort(sort) if unbounded(sort.fetch) => {
                Transformed::yes(LogicalPlan::Sort(Sort { fetch: None, ..sort }))
            }
            LogicalPlan::TableScan(scan) if unbounded(scan.fetch) => {
                Transformed::yes(LogicalPlan::TableScan(TableScan { fetch: None, ..scan }))
            }
            other => Transformed::no(other),
        })
    })
    .map(|t| t.data)
}

/// `values` cut to the rows `skip`/`fetch` select, under the nodes between
/// a limit and its values that pass rows through one for one.
fn cut_values(
    plan: &LogicalPlan,
    skip: usize,
    fetch: Option<usize>,
) -> Result<Option<LogicalPlan>> {
    match plan {
        LogicalPlan::Values(v) => {
            let end = fetch.map_or(v.values.len(), |f| skip.saturating_add(f)).min(v.values.len());
            let start = skip.min(end);
            Ok(Some(LogicalPlan::Values(Values {
                schema: Arc::clone(&v.schema),
                values: v.values[start..end].to_vec(),
            })))
        }
        LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => {
            let inputs = plan.inputs();
            let [input] = inputs.as_slice() else { return Ok(None) };
            // A projection with a volatile expression (random()) or a
            // set-returning one would still be one-for-one, but keep it
            // simple: only plain projections.
            if let LogicalPlan::Projection(p) = plan
                && p.expr.iter().any(|e| e.is_volatile())
            {
                return Ok(None);
            }
            match cut_values(input, skip, fetch)? {
                Some(cut) => Ok(Some(plan.with_new_exprs(plan.expressions(), vec![cut])?)),
                None => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// Rewrite 2: a literal limit over `VALUES` (through projections and
/// aliases) becomes the values it selects.
pub fn limited_values(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::Limit(limit) = &node else { return Ok(Transformed::no(node)) };
        let (
            datafusion::logical_expr::SkipType::Literal(skip),
            datafusion::logical_expr::FetchType::Literal(fetch),
        ) = (limit.get_skip_type()?, limit.get_fetch_type()?)
        else {
            return Ok(Transformed::no(node));
        };
        match cut_values(&limit.input, skip, fetch)? {
            Some(cut) => Ok(Transformed::yes(cut)),
            None => Ok(Transformed::no(node)),
        }
    })
    .map(|t| t.data)
}

/// Rewrite 4: window functions with `IGNORE NULLS` as their
/// `…__ignore_nulls` wrappers, named as before.
pub fn window_ignore_nulls(plan: LogicalPlan) -> Result<LogicalPlan> {
    use crate::udf::ignore_nulls::{IgnoreNulls, WRAPPED};
    use datafusion::logical_expr::expr::NullTreatment;
    plan.transform_up_with_subqueries(|node| {
        if !matches!(node, LogicalPlan::Window(_)) {
            return Ok(Transformed::no(node));
        }
        let names = NamePreserver::new(&node);
        node.map_expressions(|expr| {
            let saved = names.save(&expr);
            let rewritten = expr.transform_up(|e| {
                let Expr::WindowFunction(wf) = e else { return Ok(Transformed::no(e)) };
                let ignores = matches!(wf.params.null_treatment, Some(NullTreatment::IgnoreNulls));
                let WindowFunctionDefinition::WindowUDF(udwf) = &wf.fun else {
                    return Ok(Transformed::no(Expr::WindowFunction(wf)));
                };
                if !WRAPPED.contains(&udwf.name()) {
                    return Ok(Transformed::no(Expr::WindowFunction(wf)));
                }
                let wrapper = if ignores {
                    IgnoreNulls::new(Arc::clone(udwf))
                } else {
                    IgnoreNulls::forward(Arc::clone(udwf))
                };
                let wrapped = Arc::new(datafusion::logical_expr::WindowUDF::new_from_impl(wrapper));
                let WindowFunction { params, .. } = *wf;
                Ok(Transformed::yes(Expr::from(WindowFunction {
                    fun: WindowFunctionDefinition::WindowUDF(wrapped),
                    params,
                })))
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

/// The argument positions of an aggregate that a `FILTER` can move into
/// (as `CASE WHEN filter THEN arg END`), for aggregates that ignore rows
/// whose filtered arguments are NULL and give the same result for no rows
/// as for NULL rows only. `None`: not such an aggregate.
fn filter_arguments(name: &str, args: usize) -> Option<Vec<usize>> {
    let first = Some(vec![0]);
    match name {
        "count"
        | "sum"
        | "avg"
        | "mean"
        | "min"
        | "max"
        | "bool_and"
        | "bool_or"
        | "bit_and"
        | "bit_or"
        | "bit_xor"
        | "stddev"
        | "stddev_samp"
        | "stddev_pop"
        | "var"
        | "var_samp"
        | "var_sample"
        | "var_pop"
        | "var_population"
        | "variance"
        | "median"
        | "approx_distinct"
        | "approx_median"
        | "string_agg"
        | "approx_percentile_cont"
        | "approx_percentile_cont_with_weight"
        | "percentile_cont" => first,
        "corr" | "covar" | "covar_samp" | "covar_pop" | "regr_slope" | "regr_intercept"
        | "regr_count" | "regr_r2" | "regr_avgx" | "regr_avgy" | "regr_sxx" | "regr_syy"
        | "regr_sxy" => Some((0..args).collect()),
        _ => None,
    }
}

/// Rewrite 3: `agg(args) FILTER (WHERE p) OVER w` as
/// `agg(CASE WHEN p THEN arg END …) OVER w`, named as before.
pub fn window_filters(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        if !matches!(node, LogicalPlan::Window(_)) {
            return Ok(Transformed::no(node));
        }
        let names = NamePreserver::new(&node);
        node.map_expressions(|expr| {
            let saved = names.save(&expr);
            let rewritten = expr.transform_up(|e| {
                let Expr::WindowFunction(wf) = e else { return Ok(Transformed::no(e)) };
                if wf.params.filter.is_none() {
                    return Ok(Transformed::no(Expr::WindowFunction(wf)));
                }
                let WindowFunctionDefinition::AggregateUDF(udaf) = &wf.fun else {
                    return Ok(Transformed::no(Expr::WindowFunction(wf)));
                };
                let name = udaf.name().to_string();
                let Some(positions) = filter_arguments(&name, wf.params.args.len()) else {
                    return Err(DataFusionError::NotImplemented(format!(
                        "FILTER on the window aggregate {name} on a cluster (the filter of a \
                         window aggregate does not reach executors; count, sum, avg, min, max \
                         and the other aggregates that ignore NULLs are supported)"
                    )));
                };
                let WindowFunction { fun, params } = *wf;
                let WindowFunctionParams {
                    args,
                    partition_by,
                    order_by,
                    window_frame,
                    filter,
                    null_treatment,
                    distinct,
                } = params;
                let Some(filter) = filter else {
                    return Err(DataFusionError::Internal("window filter vanished".into()));
                };
                let args = args
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| {
                        if positions.contains(&i) {
                            when(filter.as_ref().clone(), a).end()
                        } else {
                            Ok(a)
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Transformed::yes(Expr::from(WindowFunction {
                    fun,
                    params: WindowFunctionParams {
                        args,
                        partition_by,
                        order_by,
                        window_frame,
                        filter: None,
                        null_treatment,
                        distinct,
                    },
                })))
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

/// The expressions of one constant row: a projection (under aliases)
/// of a one-row empty relation, with no column reference.
fn constant_row(plan: &LogicalPlan) -> Option<&[Expr]> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => constant_row(&a.input),
        LogicalPlan::Projection(p) => match p.input.as_ref() {
            LogicalPlan::EmptyRelation(e) if e.produce_one_row => {
                (p.expr.iter().all(|e| e.column_refs().is_empty())).then_some(p.expr.as_slice())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Rewrite 5: a union of constant rows as one `VALUES` list with the
/// union's schema (each value cast to its column's type).
pub fn constant_unions(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::Union(union) = &node else { return Ok(Transformed::no(node)) };
        let rows: Option<Vec<&[Expr]>> = union.inputs.iter().map(|i| constant_row(i)).collect();
        let Some(rows) = rows else { return Ok(Transformed::no(node)) };
        let fields = union.schema.fields();
        let mut values = Vec::with_capacity(rows.len());
        for row in rows {
            if row.len() != fields.len() {
                return Ok(Transformed::no(node));
            }
            let cells = row
                .iter()
                .zip(fields.iter())
                .map(|(e, f)| {
                    let e = match e {
                        Expr::Alias(a) => a.expr.as_ref().clone(),
                        other => other.clone(),
                    };
                    datafusion::logical_expr::cast(e, f.data_type().clone())
                })
                .collect();
            values.push(cells);
        }
        Ok(Transformed::yes(LogicalPlan::Values(Values {
            schema: Arc::clone(&union.schema),
            values,
        })))
    })
    .map(|t| t.data)
}

/// Rewrite 7: each nested-loop join that emits build rows at its end is
/// wrapped to run as one task ([`crate::single_task`]).
///
/// # Errors
/// Not expected: the wrapper takes any nested-loop join.
pub fn single_task_nested_loop_joins(
    plan: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    use crate::single_task::{SingleTaskJoinExec, emits_build_rows_at_end};
    use datafusion::physical_plan::ExecutionPlanProperties;
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::joins::NestedLoopJoinExec;
    plan.transform_up(|node| match node.downcast_ref::<NestedLoopJoinExec>() {
        Some(join) if emits_build_rows_at_end(*join.join_type()) => {
            // Inputs merged here for the static planner (the adaptive one
            // merges them again as the wrapper requires).
            let children = join
                .children()
                .into_iter()
                .map(|c| {
                    if c.output_partitioning().partition_count() > 1 {
                        Arc::new(CoalescePartitionsExec::new(Arc::clone(c)))
                            as Arc<dyn ExecutionPlan>
                    } else {
                        Arc::clone(c)
                    }
                })
                .collect();
            let join = datafusion::physical_plan::execution_plan::replace_children_if_necessary(
                Arc::clone(&node),
                children,
            )?;
            Ok(Transformed::yes(Arc::new(SingleTaskJoinExec::try_new(join)?)))
        }
        _ => Ok(Transformed::no(node)),
    })
    .map(|t| t.data)
}

/// Rewrite 6: each recursive query (with what it reads) runs whole in one
/// task ([`crate::single_task::InProcessExec`]).
///
/// # Errors
/// Not expected: wrapping cannot fail.
pub fn recursive_in_process(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
    plan.transform_down(|node| {
        if node.is::<RecursiveQueryExec>() {
            let wrapped: Arc<dyn ExecutionPlan> =
                Arc::new(crate::single_task::InProcessExec::new(node));
            Ok(Transformed::new(wrapped, true, TreeNodeRecursion::Jump))
        } else {
            Ok(Transformed::no(node))
        }
    })
    .map(|t| t.data)
}

/// Why Ballista's adaptive planner would never finish `plan` (rewrite 8
/// of the module docs), or `None`.
///
/// # Errors
/// Walking the plan's subqueries failed.
pub fn adaptive_hazard(plan: &LogicalPlan) -> Result<Option<String>> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    // The node under projections, aliases and filters.
    fn below(plan: &LogicalPlan) -> &LogicalPlan {
        match plan {
            LogicalPlan::Projection(p) => below(&p.input),
            LogicalPlan::SubqueryAlias(a) => below(&a.input),
            LogicalPlan::Filter(f) => below(&f.input),
            other => other,
        }
    }
    let mut hazard = None;
    plan.apply_with_subqueries(|node| {
        hazard = match node {
            LogicalPlan::Sort(s) if matches!(below(&s.input), LogicalPlan::Union(_)) => {
                Some("a sort over a UNION".to_string())
            }
            LogicalPlan::Window(w) if matches!(below(&w.input), LogicalPlan::Union(_)) => {
                Some("a window over a UNION".to_string())
            }
            LogicalPlan::Sort(s)
                if s.expr.iter().any(|e| {
                    datafusion::logical_expr::ExprSchemable::get_type(
                        &e.expr,
                        s.input.schema().as_ref(),
                    )
                    .is_ok_and(|t| {
                        matches!(t, datafusion::arrow::datatypes::DataType::Dictionary(..))
                    })
                }) =>
            {
                Some("a sort by a dictionary column".to_string())
            }
            // Its re-planning shuffles inside the recursive term (rewrite 6).
            LogicalPlan::RecursiveQuery(_) => Some("a recursive query".to_string()),
            _ => None,
        };
        Ok(if hazard.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    Ok(hazard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn optimized(sql: &str) -> LogicalPlan {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (x INT, k INT) AS VALUES (1, 1), (2, 1), (3, 2)")
            .await
            .expect("table")
            .collect()
            .await
            .expect("create");
        let df = ctx.sql(sql).await.expect("plan");
        ctx.state().optimize(df.logical_plan()).expect("optimize")
    }

    fn text(plan: &LogicalPlan) -> String {
        plan.display_indent().to_string()
    }

    #[tokio::test]
    async fn a_limit_over_values_becomes_the_selected_rows() {
        let plan = optimized("SELECT * FROM (VALUES (1), (2), (3)) LIMIT 1 OFFSET 1").await;
        let out = limited_values(plan).expect("rewrite");
        let shown = text(&out);
        assert!(!shown.contains("Limit"), "{shown}");
        assert!(shown.contains("Values: (Int64(2))"), "{shown}");
    }

    #[tokio::test]
    async fn a_union_of_constant_rows_becomes_values() {
        let plan =
            optimized("SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, NULL UNION ALL SELECT 3, 'z'")
                .await;
        let before = plan.schema().clone();
        let out = constant_unions(plan).expect("rewrite");
        let shown = text(&out);
        assert!(!shown.contains("Union"), "{shown}");
        assert!(shown.contains("Values:"), "{shown}");
        assert_eq!(out.schema().as_ref(), before.as_ref());
        // A union reading a table stays a union.
        let plan = optimized("SELECT x FROM t UNION ALL SELECT 2").await;
        assert!(text(&constant_unions(plan).expect("rewrite")).contains("Union"));
    }

    #[test]
    fn values_are_cut_by_skip_and_fetch() {
        let schema = Arc::new(datafusion::common::DFSchema::empty());
        let values = LogicalPlan::Values(Values { schema, values: vec![vec![], vec![], vec![]] });
        let rows = |skip, fetch| match cut_values(&values, skip, fetch).expect("cut") {
            Some(LogicalPlan::Values(v)) => v.values.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(rows(0, Some(1)), 1);
        assert_eq!(rows(1, None), 2);
        assert_eq!(rows(5, Some(1)), 0);
        assert_eq!(rows(2, Some(usize::MAX)), 1);
    }

    #[tokio::test]
    async fn an_unbounded_fetch_is_no_limit() {
        let plan = optimized("SELECT * FROM t").await;
        let limit = LogicalPlan::Limit(Limit {
            skip: Some(Box::new(lit(1_i64))),
            fetch: Some(Box::new(lit(i64::MAX))),
            input: Arc::new(plan),
        });
        let out = unbounded_fetches(limit).expect("rewrite");
        let LogicalPlan::Limit(l) = &out else { panic!("{}", text(&out)) };
        assert!(l.fetch.is_none(), "{}", text(&out));
    }

    #[tokio::test]
    async fn a_window_filter_moves_into_the_argument_and_keeps_its_name() {
        let plan = optimized(
            "SELECT count(*) FILTER (WHERE x > 1) OVER () AS c, \
             sum(x) FILTER (WHERE x > 1) OVER (PARTITION BY k) AS s FROM t",
        )
        .await;
        let before = plan.schema().clone();
        let out = window_filters(plan).expect("rewrite");
        assert_eq!(out.schema().as_ref(), before.as_ref());
        let shown = text(&out);
        // The filter is in the arguments; the names keep it.
        assert!(shown.contains("count(CASE WHEN"), "{shown}");
        assert!(shown.contains("sum(CASE WHEN"), "{shown}");
    }

    #[tokio::test]
    async fn a_filtered_window_aggregate_that_keeps_nulls_is_refused() {
        let plan = optimized("SELECT array_agg(x) FILTER (WHERE x > 1) OVER () FROM t").await;
        let err = window_filters(plan).expect_err("array_agg keeps NULLs");
        assert!(err.to_string().contains("array_agg"), "{err}");
    }

    #[tokio::test]
    async fn sorts_over_unions_are_adaptive_hazards() {
        let hazard = |sql: &'static str| async move {
            adaptive_hazard(&optimized(sql).await).expect("walk")
        };
        let found =
            hazard("SELECT 2 AS a, x FROM t UNION ALL SELECT 1, x FROM t ORDER BY a, x").await;
        assert_eq!(found.as_deref(), Some("a sort over a UNION"));
        let found = hazard("SELECT x FROM t UNION ALL SELECT k FROM t ORDER BY 1 LIMIT 2").await;
        assert_eq!(found.as_deref(), Some("a sort over a UNION"));
        assert_eq!(hazard("SELECT * FROM t JOIN t u ON t.x > u.k ORDER BY 1").await, None);
    }
}
