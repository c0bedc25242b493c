//! Hot-key salting of joins: a logical rewrite, so it works with Ballista's
//! adaptive planner (which replaces custom physical rules).
//!
//! For an equi-join on one key whose left input is a plain scan (scans,
//! filters, projections, aliases: cheap to count), the caller counts the
//! left key's values ([`join_candidates`] gives the inputs to count) and
//! passes the hot ones (more than `sluice.skew.hot_key_share` of the rows)
//! to [`salt_joins`], which rewrites
//!
//! ```text
//! L ⋈ R ON l.k = r.k
//!   → L' ⋈ R' ON l.k = r.k AND L'.salt = R'.salt, then the original columns
//! L' = L + salt: sluice_hot_salt(hot keys, salts, k, row): one of k's S
//!      salts by a hash of the row when k is hot, else 0
//! R' = R + salt: unnest(sluice_hot_salts(hot keys, salts, k)): all of k's
//!      S salts when k is hot, else [0]
//! ```
//!
//! so a hot key's left rows spread over S shuffle partitions, each meeting a
//! copy of the key's right rows; cold keys are untouched. The salt values
//! s1..sS of a key are chosen ([`salt_values`]) so that the shuffle's hash
//! partitioning of (key, salt) puts them on S different partitions, the
//! least loaded by the hot keys already placed: a hash of (key, 0..S) would
//! put two buckets on one partition about as often as not. The salt is a hash
//! of the row, never random (see [`crate::udf::hot_salt`]). Only join types that
//! never emit unmatched right rows are salted (inner, left, left semi, left
//! anti): replicating the right side of a right or full join would emit its
//! unmatched rows S times.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    Expr, JoinType, LogicalPlan, LogicalPlanBuilder, ScalarUDF, TableScan, TableScanBuilder, col,
    lit,
};

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::hash_utils::create_hashes;
use datafusion::physical_plan::repartition::REPARTITION_RANDOM_STATE;

use crate::udf::hot_salt::{HotSalt, HotSalts};

/// A join whose left key can be counted: its position in a post-order walk,
/// its left input and its left key.
pub struct Candidate {
    pub index: usize,
    pub left: LogicalPlan,
    pub key: Expr,
    /// The join itself (to tell whether it will be broadcast).
    pub join: datafusion::logical_expr::Join,
}

fn saltable(join_type: JoinType) -> bool {
    matches!(join_type, JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti)
}

/// Whether `plan` only scans, filters, projects and aliases (so counting its
/// key reads one column and does not recompute joins or aggregations), and
/// not a recursive query's work table.
fn plain_scan(plan: &LogicalPlan) -> bool {
    let mut plain = true;
    let _ = plan.apply(|p| {
        // A recursive query's work table has rows only while the query
        // runs: the join's input cannot be sampled on its own.
        let work_table = matches!(p, LogicalPlan::TableScan(scan)
        if datafusion::datasource::source_as_provider(&scan.source).is_ok_and(|t| {
            t.is::<datafusion::datasource::cte_worktable::CteWorkTable>()
        }));
        if work_table
            || !matches!(
                p,
                LogicalPlan::TableScan(_)
                    | LogicalPlan::Filter(_)
                    | LogicalPlan::Projection(_)
                    | LogicalPlan::SubqueryAlias(_)
            )
        {
            plain = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    plain
}

/// Joins [`salt_joins`] can salt, numbered in the order it walks joins
/// (post-order, as `transform_up` visits them).
pub fn join_candidates(plan: &LogicalPlan) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    let mut index = 0;
    plan.clone().transform_up(|p| {
        if let LogicalPlan::Join(j) = &p {
            if j.on.len() == 1 && saltable(j.join_type) && !j.null_aware && plain_scan(&j.left) {
                out.push(Candidate {
                    index,
                    left: j.left.as_ref().clone(),
                    key: j.on[0].0.clone(),
                    join: j.clone(),
                });
            }
            index += 1;
        }
        Ok(Transformed::no(p))
    })?;
    Ok(out)
}

/// The salt values of each hot key of one join (`keys`: value and share of
/// the rows, in any order), `buckets` per key, such that DataFusion's hash
/// repartitioning of (key, salt) into `partitions` shuffle partitions (what
/// Ballista's shuffle writer runs: `create_hashes` with
/// `REPARTITION_RANDOM_STATE`, modulo the count) puts a key's buckets on
/// distinct partitions, each time the one least loaded by the buckets placed
/// so far (heaviest key first). With `partitions` 0 (unknown) the values are
/// `1..=buckets`. Only balance depends on the choice, never the answer: the
/// right side is replicated to exactly the values the left side can pick.
///
/// # Errors
/// A key whose type cannot be hashed.
pub fn salt_values(
    keys: &[(ScalarValue, f64)],
    buckets: u32,
    partitions: usize,
) -> Result<Vec<Vec<i64>>> {
    let buckets = buckets.max(1) as usize;
    // More buckets than partitions would balance nothing more and only
    // replicate the right side's hot rows further.
    let buckets = if partitions > 0 { buckets.min(partitions) } else { buckets };
    if partitions == 0 {
        return Ok(vec![(1..=buckets as i64).collect(); keys.len()]);
    }
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|a, b| keys[*b].1.total_cmp(&keys[*a].1));
    let mut load = vec![0f64; partitions];
    let mut out = vec![Vec::new(); keys.len()];
    // Enough candidates that every partition has a few.
    let candidates = (partitions * 16 + buckets) as i64;
    let salts: ArrayRef = std::sync::Arc::new(Int64Array::from_iter_values(1..=candidates));
    for i in order {
        let (key, share) = &keys[i];
        let key_array = key.to_array_of_size(candidates as usize)?;
        let mut hashes = vec![0u64; candidates as usize];
        create_hashes(
            &[key_array, salts.clone()],
            REPARTITION_RANDOM_STATE.random_state(),
            &mut hashes,
        )?;
        let mut free: Vec<std::collections::VecDeque<i64>> = vec![Default::default(); partitions];
        for (v, h) in (1..=candidates).zip(hashes) {
            free[(h % partitions as u64) as usize].push_back(v);
        }
        let mut used = vec![0usize; partitions];
        for _ in 0..buckets {
            let best = (0..partitions)
                .filter(|p| !free[*p].is_empty())
                .min_by(|a, b| load[*a].total_cmp(&load[*b]).then(used[*a].cmp(&used[*b])));
            let Some(p) = best else { break };
            if let Some(v) = free[p].pop_front() {
                out[i].push(v);
                load[p] += share / buckets as f64;
                used[p] += 1;
            }
        }
    }
    Ok(out)
}

/// Whether rows of a column of this type are likely distinct from each other
/// (event times, ids, measurements), so hashing it spreads a hot key's rows.
fn likely_distinct(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(_, _)
            | DataType::Int64
            | DataType::UInt64
            | DataType::Float64
            | DataType::Decimal128(_, _)
            | DataType::Decimal256(_, _)
    )
}

/// The table scan under a plain-scan chain (see [`plain_scan`]).
fn scan_of(plan: &LogicalPlan) -> Option<&TableScan> {
    match plan {
        LogicalPlan::TableScan(s) => Some(s),
        other => other.inputs().first().and_then(|p| scan_of(p)),
    }
}

/// A column of the left input's table to hash into the salt besides the
/// columns the query reads, or `None` when one of those (other than the key)
/// is already likely distinct per row. Timestamps first, then 64-bit
/// numbers, then any other fixed-width column.
fn entropy_column(left: &LogicalPlan, key: &Expr) -> Option<String> {
    let scan = scan_of(left)?;
    let keys: Vec<&str> = key.column_refs().into_iter().map(|c| c.name.as_str()).collect();
    let hashed = left.schema().fields();
    if hashed
        .iter()
        .filter(|f| !keys.contains(&f.name().as_str()))
        .any(|f| likely_distinct(f.data_type()))
    {
        return None;
    }
    // Columns the scan reads anyway (for a filter) cost nothing more.
    let rank = |f: &datafusion::arrow::datatypes::Field| {
        let t = f.data_type();
        let kind = match t {
            DataType::Timestamp(_, _) => 0,
            t if likely_distinct(t) => 1,
            t if t.is_primitive() => 2,
            _ => 3,
        };
        let unread = scan.projected_schema.field_with_unqualified_name(f.name()).is_err();
        (kind, unread)
    };
    let source = scan.source.schema();
    source
        .fields()
        .iter()
        .filter(|f| !keys.contains(&f.name().as_str()))
        .filter(|f| hashed.iter().all(|h| h.name() != f.name()))
        .filter(|f| rank(f).0 < 3)
        .min_by_key(|f| rank(f))
        .map(|f| f.name().clone())
}

/// `plan` (a plain-scan chain) with the scan's table column `name` added to
/// the scan and passed up through every projection, and the expression that
/// reads it at the top (aliased `__sluice_salt_src` above projections).
fn with_scan_column(plan: &LogicalPlan, name: &str) -> Result<(LogicalPlan, Expr)> {
    const SRC: &str = "__sluice_salt_src";
    match plan {
        LogicalPlan::TableScan(scan) => {
            let source = scan.source.schema();
            let index = source.index_of(name)?;
            let mut projection =
                scan.projection.clone().unwrap_or_else(|| (0..source.fields().len()).collect());
            if !projection.contains(&index) {
                projection.push(index);
            }
            let extended = TableScanBuilder::new(scan.table_name.clone(), scan.source.clone())
                .with_projection(Some(projection))
                .with_filters(scan.filters.clone())
                .with_fetch(scan.fetch)
                .with_statistics_requests(scan.statistics_requests.clone())
                .build()?;
            let column = Expr::Column(Column::new(Some(scan.table_name.clone()), name));
            Ok((LogicalPlan::TableScan(extended), column))
        }
        LogicalPlan::Projection(p) => {
            let (input, column) = with_scan_column(&p.input, name)?;
            let mut exprs = p.expr.clone();
            exprs.push(column.alias(SRC));
            let out = LogicalPlanBuilder::from(input).project(exprs)?.build()?;
            Ok((out, col(SRC)))
        }
        LogicalPlan::Filter(f) => {
            let (input, column) = with_scan_column(&f.input, name)?;
            let out = LogicalPlanBuilder::from(input).filter(f.predicate.clone())?.build()?;
            Ok((out, column))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let (input, column) = with_scan_column(&a.input, name)?;
            let out = LogicalPlanBuilder::from(input).alias(a.alias.clone())?.build()?;
            let Expr::Column(c) = column else { return Ok((out, column)) };
            Ok((out, Expr::Column(Column::new(Some(a.alias.clone()), c.name))))
        }
        other => {
            datafusion::common::plan_err!("salting: cannot add a column under {}", other.display())
        }
    }
}

/// Rewrites the joins of `hot` (candidate index → hot key values with their
/// share of the left rows) as in the module documentation, spreading each hot
/// key over `buckets` of the join's `partitions` shuffle partitions (0 when
/// unknown). Returns the plan and one line per salted join for EXPLAIN output.
pub fn salt_joins(
    plan: LogicalPlan,
    hot: &BTreeMap<usize, Vec<(ScalarValue, f64)>>,
    buckets: u32,
    partitions: usize,
) -> Result<(LogicalPlan, Vec<String>)> {
    if hot.is_empty() {
        return Ok((plan, vec![]));
    }
    let hot_salt = Arc::new(ScalarUDF::from(HotSalt::default()));
    let hot_salts = Arc::new(ScalarUDF::from(HotSalts::default()));
    let mut notes = Vec::new();
    // Joins numbered as in `join_candidates` (post-order).
    let mut next = 0usize;
    let out = plan.transform_up(|p| {
        let LogicalPlan::Join(j) = &p else { return Ok(Transformed::no(p)) };
        let i = next;
        next += 1;
        if j.on.len() != 1 || !saltable(j.join_type) || j.null_aware {
            return Ok(Transformed::no(p));
        }
        let Some(keys) = hot.get(&i).filter(|k| !k.is_empty()) else {
            return Ok(Transformed::no(p));
        };
        let (lk, rk) = j.on[0].clone();
        let values = salt_values(keys, buckets, partitions)?;
        let (ls, rs) = (format!("__sluice_salt_l{i}"), format!("__sluice_salt_r{i}"));
        // The literal arguments of both salt functions: the hot keys and
        // their salts, `values[0].len()` per key.
        let Some(key_type) = keys.first().map(|(k, _)| k.data_type()) else {
            return Ok(Transformed::no(p));
        };
        let hot_keys = lit(ScalarValue::List(ScalarValue::new_list_nullable(
            &keys.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            &key_type,
        )));
        let salts = lit(ScalarValue::List(ScalarValue::new_list_nullable(
            &values.iter().flatten().map(|s| ScalarValue::Int64(Some(*s))).collect::<Vec<_>>(),
            &DataType::Int64,
        )));

        // Left: each hot key's rows pick one of its salts by a hash of the
        // whole row; cold rows get 0.
        let left_cols: Vec<Expr> =
            j.left.schema().columns().into_iter().map(Expr::Column).collect();
        // What the salt hashes: the read columns that are likely distinct
        // per row (an event time, an id); when there is none (a key and an
        // event type: 3 distinct rows within a hot key, so 3 buckets), one
        // such column of the table, added to the scan; failing that, every
        // read column. Hashing fewer columns costs less per hot row.
        let keys_read: Vec<String> = lk.column_refs().into_iter().map(|c| c.name.clone()).collect();
        let distinct: Vec<Expr> = j
            .left
            .schema()
            .columns()
            .into_iter()
            .zip(j.left.schema().fields())
            .filter(|(c, f)| !keys_read.contains(&c.name) && likely_distinct(f.data_type()))
            .map(|(c, _)| Expr::Column(c))
            .collect();
        let mut left_input = j.left.as_ref().clone();
        let hashed: Vec<Expr> = if !distinct.is_empty() {
            distinct
        } else if let Some(name) = entropy_column(&j.left, &lk) {
            let (extended, extra) = with_scan_column(&j.left, &name)?;
            left_input = extended;
            vec![extra]
        } else {
            left_cols.clone()
        };
        let mut salt_args = vec![hot_keys.clone(), salts.clone(), lk.clone()];
        salt_args.extend(hashed);
        let mut left_proj = left_cols.clone();
        left_proj.push(hot_salt.call(salt_args).alias(&ls));
        let left = LogicalPlanBuilder::from(left_input).project(left_proj)?.build()?;

        // One pass over the right side: each row carries the list of its
        // salts (its key's salts for a hot key, [0] otherwise) and is
        // unnested into one row per salt. (A union of the cold rows and the
        // replicated hot rows computed the right side twice, and Ballista
        // fails a stage whose tasks run union branches with different
        // operator counts: "task metrics array size 11 does not equal … 10".)
        let salts_col = format!("__sluice_salts_r{i}");
        let mut right_proj: Vec<Expr> =
            j.right.schema().columns().into_iter().map(Expr::Column).collect();
        right_proj.push(hot_salts.call(vec![hot_keys, salts, rk.clone()]).alias(&salts_col));
        let right = LogicalPlanBuilder::from(j.right.as_ref().clone())
            .project(right_proj)?
            .unnest_column(salts_col.as_str())?
            .build()?;
        let mut renamed: Vec<Expr> = right
            .schema()
            .columns()
            .into_iter()
            .filter(|c| c.name != salts_col)
            .map(Expr::Column)
            .collect();
        renamed.push(col(salts_col.as_str()).alias(&rs));
        let right = LogicalPlanBuilder::from(right).project(renamed)?.build()?;

        let restore: Vec<Expr> = j.schema.columns().into_iter().map(Expr::Column).collect();
        let mut salted = LogicalPlanBuilder::from(left)
            .join_with_expr_keys(
                right,
                j.join_type,
                (vec![lk.clone(), col(&ls)], vec![rk, col(&rs)]),
                j.filter.clone(),
            )?
            .build()?;
        // Set operations (EXCEPT, INTERSECT) join with NULL equal to NULL;
        // the builder's default (NULL matches nothing) would change them.
        if let LogicalPlan::Join(salted) = &mut salted {
            salted.null_equality = j.null_equality;
        }
        let joined = LogicalPlanBuilder::from(salted).project(restore)?.build()?;
        let shown: Vec<String> =
            keys.iter().map(|(k, share)| format!("{k} ({:.1}%)", share * 100.0)).collect();
        let spread = if partitions > 0 {
            format!(" of the {partitions} shuffle partitions")
        } else {
            String::new()
        };
        notes.push(format!(
            "salted {} join on {lk} into {} buckets{spread}; hot keys: {}",
            j.join_type,
            values.first().map_or(0, Vec::len),
            shown.join(", ")
        ));
        Ok(Transformed::yes(joined))
    })?;
    Ok((out.data, notes))
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::DataFrame;

    use super::*;

    /// The shuffle partition of (key, salt), as the repartitioning computes it.
    fn partition(key: &ScalarValue, salt: i64, partitions: usize) -> usize {
        let arrays: Vec<ArrayRef> = vec![
            key.to_array_of_size(1).expect("key array"),
            std::sync::Arc::new(Int64Array::from(vec![salt])),
        ];
        let mut h = vec![0u64];
        create_hashes(&arrays, REPARTITION_RANDOM_STATE.random_state(), &mut h).expect("hash");
        (h[0] % partitions as u64) as usize
    }

    #[test]
    fn a_hot_key_lands_on_distinct_partitions() {
        let key = ScalarValue::Int64(Some(1));
        for (buckets, partitions) in [(16, 32), (32, 32), (8, 200)] {
            let values = salt_values(&[(key.clone(), 0.2)], buckets, partitions).expect("salts");
            assert_eq!(values[0].len(), buckets as usize);
            let mut parts: Vec<usize> =
                values[0].iter().map(|v| partition(&key, *v, partitions)).collect();
            parts.sort_unstable();
            parts.dedup();
            assert_eq!(parts.len(), buckets as usize, "{buckets} over {partitions}: {parts:?}");
        }
    }

    #[test]
    fn several_hot_keys_share_partitions_evenly() {
        let keys: Vec<(ScalarValue, f64)> = vec![
            (ScalarValue::Utf8(Some("bot".into())), 0.3),
            (ScalarValue::Utf8(Some("acme".into())), 0.1),
            (ScalarValue::Utf8(Some("globex".into())), 0.1),
        ];
        let partitions = 32;
        let values = salt_values(&keys, 16, partitions).expect("salts");
        let mut load = vec![0f64; partitions];
        for ((key, share), vs) in keys.iter().zip(&values) {
            assert_eq!(vs.len(), 16);
            for v in vs {
                load[partition(key, *v, partitions)] += share / 16.0;
            }
        }
        let max = load.iter().copied().fold(0.0, f64::max);
        // 0.5 of the rows over 32 partitions is 1/64 each; a hash of (key,
        // 0..16) would stack several buckets of the 0.3 key on one.
        assert!(max <= 0.3 / 16.0 + 1e-9, "{load:?}");
        // No more buckets than partitions.
        let values = salt_values(&keys[..1], 40, partitions).expect("salts");
        assert_eq!(values[0].len(), partitions);
    }

    /// Salted and unsalted joins give the same rows, and a hot key whose
    /// read columns take few values is hashed with the table's timestamp.
    #[tokio::test]
    async fn salted_join_equals_unsalted_and_spreads_a_low_entropy_hot_key() {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        use datafusion::prelude::SessionContext;

        let ctx = SessionContext::new();
        for f in crate::udf::scalar_functions() {
            ctx.register_udf(f.as_ref().clone());
        }
        for ddl in [
            "CREATE TABLE t AS SELECT CASE WHEN value % 3 = 0 THEN 1 ELSE value % 50 END AS k, \
             CASE value % 3 WHEN 0 THEN 'a' WHEN 1 THEN 'b' ELSE 'c' END AS kind, \
             to_timestamp(value) AS ts FROM generate_series(1, 6000)",
            "CREATE TABLE r AS SELECT value AS k, value * 10 AS v FROM generate_series(0, 40)",
        ] {
            ctx.sql(ddl).await.expect("ddl").collect().await.expect("create");
        }
        for join in ["JOIN", "LEFT JOIN"] {
            let sql = format!(
                "SELECT t.kind, count(*) AS n, sum(r.v) AS s FROM t {join} r ON t.k = r.k GROUP BY t.kind ORDER BY t.kind"
            );
            let plan = ctx.sql(&sql).await.expect("plan").into_optimized_plan().expect("optimize");
            let candidates = join_candidates(&plan).expect("candidates");
            assert_eq!(candidates.len(), 1, "{join}");
            let hot =
                BTreeMap::from([(candidates[0].index, vec![(ScalarValue::Int64(Some(1)), 0.33)])]);
            let (salted, notes) = salt_joins(plan.clone(), &hot, 8, 8).expect("salt");
            assert_eq!(notes.len(), 1, "{join}");
            let shown = salted.display_indent().to_string();
            assert!(shown.contains("sluice_hot_salt") && shown.contains("ts"), "{shown}");
            let a = DataFrame::new(ctx.state(), plan).collect().await.expect("unsalted");
            let b = DataFrame::new(ctx.state(), salted).collect().await.expect("salted");
            assert_eq!(
                datafusion::arrow::util::pretty::pretty_format_batches(&a)
                    .expect("fmt")
                    .to_string(),
                datafusion::arrow::util::pretty::pretty_format_batches(&b)
                    .expect("fmt")
                    .to_string(),
                "{join}"
            );
        }
        // The left side's salts of the hot key: all 8 used, not just the 3
        // (key, kind) combinations.
        let plan = ctx
            .sql("SELECT t.kind, r.v FROM t JOIN r ON t.k = r.k")
            .await
            .expect("plan")
            .into_optimized_plan()
            .expect("optimize");
        let c = &join_candidates(&plan).expect("candidates")[0];
        let hot = BTreeMap::from([(c.index, vec![(ScalarValue::Int64(Some(1)), 0.33)])]);
        let (salted, _) = salt_joins(plan, &hot, 8, 8).expect("salt");
        let mut left = None;
        salted
            .apply(|p| {
                if let LogicalPlan::Join(j) = p {
                    left = Some(j.left.as_ref().clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("walk");
        let left = DataFrame::new(ctx.state(), left.expect("join"))
            .filter(col("k").eq(lit(1i64)))
            .expect("filter")
            .collect()
            .await
            .expect("left side");
        let mut salts: Vec<i64> = left
            .iter()
            .flat_map(|b| {
                let i = b.schema().index_of("__sluice_salt_l0").expect("salt column");
                b.column(i).as_primitive::<Int64Type>().values().to_vec()
            })
            .collect();
        salts.sort_unstable();
        salts.dedup();
        assert_eq!(salts.len(), 8, "{salts:?}");
    }

    #[test]
    fn unknown_partition_count_uses_plain_values() {
        let values = salt_values(&[(ScalarValue::Int64(Some(7)), 0.5)], 4, 0).expect("salts");
        assert_eq!(values, vec![vec![1, 2, 3, 4]]);
    }
}
