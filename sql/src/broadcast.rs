//! What `EXPLAIN` says about broadcast joins, ahead of the run.
//!
//! Ballista's adaptive planner picks each join's strategy when the join's
//! inputs are ready, from their statistics, so a plain `EXPLAIN` shows
//! `DynamicJoinSelectionExec` and not the choice. [`notes`] applies the
//! planner's rule (Ballista 55, `DynamicJoinSelectionExec::to_actual_join`)
//! to the statistics DataFusion estimates before the run (file metadata,
//! filter selectivity), one line per equi-join:
//!
//! - the smaller side (by bytes when both sides have a byte size, else by
//!   rows) becomes the build side;
//! - it is broadcast when under `ballista.optimizer.broadcast_join_threshold_bytes`
//!   (or, without a byte size, `…_rows`), a threshold of 0 turning broadcast
//!   off, and only when the join type seen from the build side never emits
//!   the build side's unmatched rows (inner, right, right semi/anti/mark):
//!   the preserved side of an outer join is never broadcast.
//!
//! At run time the planner measures what it estimated here, so a side whose
//! size is unknown now (an aggregation, an unnest) may still be broadcast.

use std::sync::Arc;

use ballista_core::config::BallistaConfig;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Join, LogicalPlan};
use datafusion::physical_plan::statistics::StatisticsContext;
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

/// A side's estimated size: bytes and rows when known.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    bytes: Option<usize>,
    rows: Option<usize>,
}

impl Size {
    fn of(plan: &Arc<dyn ExecutionPlan>) -> Self {
        match StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()) {
            Ok(s) => Size {
                bytes: s.total_byte_size.get_value().copied().filter(|b| *b > 0),
                rows: s.num_rows.get_value().copied(),
            },
            Err(_) => Size::default(),
        }
    }

    fn show(&self) -> String {
        match (self.bytes, self.rows) {
            (Some(b), Some(r)) => format!("~{} rows, ~{}", r, bytes(b)),
            (Some(b), None) => format!("~{}", bytes(b)),
            (None, Some(r)) => format!("~{r} rows"),
            (None, None) => "size unknown before the run".to_string(),
        }
    }
}

fn bytes(b: usize) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b as f64 >= MIB { format!("{:.1} MiB", b as f64 / MIB) } else { format!("{b} bytes") }
}

/// The tables a side reads, for the note (`users`, `a ⋈ b`, …).
fn tables(plan: &LogicalPlan) -> String {
    let mut names = Vec::new();
    let _ = plan.apply(|p| {
        if let LogicalPlan::TableScan(s) = p {
            names.push(s.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names.dedup();
    if names.is_empty() { "(no table)".to_string() } else { names.join(", ") }
}

/// Whether a `CollectLeft` join of this type (build side on the left) is
/// correct when the build side is copied to every probe task: only when it
/// never emits the build side's unmatched rows.
fn broadcast_safe(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Inner
            | JoinType::Right
            | JoinType::RightSemi
            | JoinType::RightAnti
            | JoinType::RightMark
    )
}

/// The planner's decision for one join, from its two sides' estimates.
fn decide(
    join_type: JoinType,
    left: Size,
    right: Size,
    threshold_bytes: usize,
    threshold_rows: usize,
) -> (bool, bool, String) {
    let swap = match (left.bytes, right.bytes) {
        (Some(l), Some(r)) => l > r,
        _ => matches!((left.rows, right.rows), (Some(l), Some(r)) if l > r),
    };
    let (build, build_type) = if swap { (right, join_type.swap()) } else { (left, join_type) };
    let under = threshold_bytes != 0
        && match (build.bytes, build.rows) {
            (Some(b), _) => b < threshold_bytes,
            (None, Some(r)) => r > 0 && r < threshold_rows,
            (None, None) => false,
        };
    let why = if threshold_bytes == 0 {
        "broadcast is off (ballista.optimizer.broadcast_join_threshold_bytes = 0)".to_string()
    } else if !under {
        match (build.bytes, build.rows) {
            (None, None) => "the smaller side's size is unknown before the run; the adaptive planner measures it then".to_string(),
            _ => format!(
                "the smaller side is not under ballista.optimizer.broadcast_join_threshold_bytes ({}) / _rows ({threshold_rows})",
                bytes(threshold_bytes)
            ),
        }
    } else if !broadcast_safe(build_type) {
        format!(
            "the small side is the preserved side of a {join_type} join, which is never broadcast"
        )
    } else {
        format!(
            "under ballista.optimizer.broadcast_join_threshold_bytes ({}) / _rows ({threshold_rows})",
            bytes(threshold_bytes)
        )
    };
    (under && broadcast_safe(build_type), swap, why)
}

/// The thresholds in force: Ballista's keys (their defaults when the
/// session has no Ballista options).
fn thresholds(state: &SessionState) -> (usize, usize) {
    match state.config().options().extensions.get::<BallistaConfig>() {
        Some(bc) => (bc.broadcast_join_threshold_bytes(), bc.broadcast_join_threshold_rows()),
        None => {
            let d = BallistaConfig::default();
            (d.broadcast_join_threshold_bytes(), d.broadcast_join_threshold_rows())
        }
    }
}

/// Each side's estimated size, from plain DataFusion planning (the
/// session's own planner may be Ballista's, whose plans carry none).
async fn sizes(state: &SessionState, j: &Join) -> [Size; 2] {
    let planner = DefaultPhysicalPlanner::default();
    let mut sizes = [Size::default(); 2];
    for (size, side) in sizes.iter_mut().zip([&j.left, &j.right]) {
        if let Ok(physical) = planner.create_physical_plan(side, state).await {
            *size = Size::of(&physical);
        }
    }
    sizes
}

/// Whether the adaptive planner is expected to broadcast a side of `j`
/// (so its shuffle, and any skew in it, does not happen).
pub async fn expected(state: &SessionState, j: &Join) -> bool {
    let (bytes, rows) = thresholds(state);
    if bytes == 0 {
        // Broadcast is off: no need to plan the sides for their sizes.
        return false;
    }
    let [left, right] = sizes(state, j).await;
    decide(j.join_type, left, right, bytes, rows).0
}

/// One line per equi-join of `plan` (an optimized logical plan): which side
/// the adaptive planner is expected to broadcast, or why the join is
/// partitioned, with the estimated sizes. Reads file metadata only; runs
/// nothing.
///
/// # Errors
/// A side that cannot be planned.
pub async fn notes(state: &SessionState, plan: &LogicalPlan) -> Result<Vec<String>> {
    let (threshold_bytes, threshold_rows) = thresholds(state);
    let mut joins = Vec::new();
    plan.apply(|p| {
        if let LogicalPlan::Join(j) = p
            && !j.on.is_empty()
        {
            joins.push(j.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let mut out = Vec::new();
    for j in joins {
        let [left, right] = sizes(state, &j).await;
        let (broadcast, swap, why) =
            decide(j.join_type, left, right, threshold_bytes, threshold_rows);
        let keys: Vec<String> = j.on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
        let (lt, rt) = (tables(&j.left), tables(&j.right));
        let verdict = if broadcast {
            let (name, size) = if swap { (&rt, right) } else { (&lt, left) };
            format!("broadcast {name} ({}): {why}", size.show())
        } else {
            format!(
                "partitioned (both sides shuffled on the key; left {lt}: {}, right {rt}: {}): {why}",
                left.show(),
                right.show()
            )
        };
        out.push(format!("{} join on {}: {verdict}", j.join_type, keys.join(" AND ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn known(bytes: usize, rows: usize) -> Size {
        Size { bytes: Some(bytes), rows: Some(rows) }
    }

    #[test]
    fn small_side_is_broadcast_unless_it_is_preserved() {
        let (small, large) = (known(MIB, 20_000), known(900 * MIB, 50_000_000));
        // Small left: the build side as is.
        assert!(decide(JoinType::Inner, small, large, 128 * MIB, 1_000_000).0);
        assert!(decide(JoinType::Right, small, large, 128 * MIB, 1_000_000).0);
        assert!(!decide(JoinType::Left, small, large, 128 * MIB, 1_000_000).0);
        assert!(!decide(JoinType::Full, small, large, 128 * MIB, 1_000_000).0);
        assert!(!decide(JoinType::LeftAnti, small, large, 128 * MIB, 1_000_000).0);
        // Small right: swapped onto the build side.
        let (b, swap, _) = decide(JoinType::Left, large, small, 128 * MIB, 1_000_000);
        assert!(b && swap);
        assert!(decide(JoinType::LeftSemi, large, small, 128 * MIB, 1_000_000).0);
        assert!(!decide(JoinType::Right, large, small, 128 * MIB, 1_000_000).0);
    }

    #[test]
    fn thresholds_and_unknown_sizes() {
        let (small, large) = (known(MIB, 20_000), known(900 * MIB, 50_000_000));
        let (b, _, why) = decide(JoinType::Inner, small, large, 0, 1_000_000);
        assert!(!b && why.contains("off"), "{why}");
        assert!(!decide(JoinType::Inner, small, large, MIB / 2, 1_000_000).0);
        let rows_only = Size { bytes: None, rows: Some(10) };
        assert!(decide(JoinType::Inner, rows_only, Size::default(), 128 * MIB, 1_000_000).0);
        let (b, _, why) =
            decide(JoinType::Inner, Size::default(), Size::default(), 128 * MIB, 1_000_000);
        assert!(!b && why.contains("unknown"), "{why}");
    }
}
