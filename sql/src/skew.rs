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
//! L' = L + salt: sluice_salt(S, row) when k is hot, else 0
//! R' = R + salt: unnest([0, 1, …, S-1]) when k is hot, else 0
//! ```
//!
//! so a hot key's left rows spread over S shuffle partitions, each meeting a
//! copy of the key's right rows; cold keys are untouched. The salt is a hash
//! of the row, never random (see [`crate::udf::salt`]). Only join types that
//! never emit unmatched right rows are salted (inner, left, left semi, left
//! anti): replicating the right side of a right or full join would emit its
//! unmatched rows S times.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    Expr, JoinType, LogicalPlan, LogicalPlanBuilder, ScalarUDF, col, lit, when,
};

use datafusion::functions_nested::expr_fn::make_array;

use crate::udf::salt::Salt;

/// A join whose left key can be counted: its position in a post-order walk,
/// its left input and its left key.
pub struct Candidate {
    pub index: usize,
    pub left: LogicalPlan,
    pub key: Expr,
}

fn saltable(join_type: JoinType) -> bool {
    matches!(join_type, JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti)
}

/// Whether `plan` only scans, filters, projects and aliases (so counting its
/// key reads one column and does not recompute joins or aggregations).
fn plain_scan(plan: &LogicalPlan) -> bool {
    let mut plain = true;
    let _ = plan.apply(|p| {
        if !matches!(
            p,
            LogicalPlan::TableScan(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Projection(_)
                | LogicalPlan::SubqueryAlias(_)
        ) {
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
                });
            }
            index += 1;
        }
        Ok(Transformed::no(p))
    })?;
    Ok(out)
}

/// Rewrites the joins of `hot` (candidate index → hot key values) as in the
/// module documentation. Returns the plan and one line per salted join for
/// EXPLAIN output.
pub fn salt_joins(
    plan: LogicalPlan,
    hot: &BTreeMap<usize, Vec<ScalarValue>>,
    buckets: u32,
) -> Result<(LogicalPlan, Vec<String>)> {
    if hot.is_empty() {
        return Ok((plan, vec![]));
    }
    let salt_udf = Arc::new(ScalarUDF::from(Salt::default()));
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
        let is_hot = |k: Expr| k.in_list(keys.iter().cloned().map(lit).collect(), false);
        let (ls, rs) = (format!("__sluice_salt_l{i}"), format!("__sluice_salt_r{i}"));

        let left_cols: Vec<Expr> =
            j.left.schema().columns().into_iter().map(Expr::Column).collect();
        let mut salt_args = vec![lit(i64::from(buckets))];
        salt_args.extend(left_cols.iter().cloned());
        let mut left_proj = left_cols.clone();
        left_proj.push(
            when(is_hot(lk.clone()), salt_udf.call(salt_args)).otherwise(lit(0i64))?.alias(&ls),
        );
        let left = LogicalPlanBuilder::from(j.left.as_ref().clone()).project(left_proj)?.build()?;

        // One pass over the right side: each row carries the list of its
        // salts ([0..S) for a hot key, [0] otherwise) and is unnested into one
        // row per salt. (A union of the cold rows and the replicated hot rows
        // computed the right side twice, and Ballista fails a stage whose
        // tasks run union branches with different operator counts: "task
        // metrics array size 11 does not equal … 10".)
        let salts_col = format!("__sluice_salts_r{i}");
        let all = make_array((0..i64::from(buckets)).map(lit).collect());
        let mut right_proj: Vec<Expr> =
            j.right.schema().columns().into_iter().map(Expr::Column).collect();
        right_proj.push(
            when(is_hot(rk.clone()), all).otherwise(make_array(vec![lit(0i64)]))?.alias(&salts_col),
        );
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
        let shown: Vec<String> = keys.iter().map(ToString::to_string).collect();
        notes.push(format!(
            "salted {} join on {lk} into {buckets} buckets; hot keys: {}",
            j.join_type,
            shown.join(", ")
        ));
        Ok(Transformed::yes(joined))
    })?;
    Ok((out.data, notes))
}
