//! Nested-loop joins that run as one task (rewrite 7 of
//! [`crate::cluster_plan`]).
//!
//! A `NestedLoopJoinExec` of a join type that emits build (left) rows once
//! the probe side is done (`LEFT`, `FULL`, semi, anti, mark) keeps the
//! record of matched build rows in one structure shared by the join's
//! partitions. Split into tasks, every task kept its own record and emitted
//! the rows again. [`SingleTaskJoinExec`] wraps such a join so that it is
//! one partition over merged inputs: the planners see a node they do not
//! rewrite (neither adaptive nor static join selection swaps it) whose
//! inputs must each be one partition, so a stage boundary merges the probe
//! side and the join runs as one task.
//!
//! [`SluiceCodec`](crate::write::SluiceCodec) encodes it as its join over
//! two empty inputs with the children's schemas (datafusion-proto encodes the
//! join's filter and projection); the children travel as its inputs.

use std::fmt;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::NestedLoopJoinExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, SendableRecordBatchStream,
};

/// Marks a buffer as a [`SingleTaskJoinExec`] (see [`crate::write::SluiceCodec`]).
pub(crate) const SINGLE_TASK_JOIN_TAG: &[u8] = b"\0sluice.single_task_join.v1\0";
/// Marks a buffer as an [`InProcessExec`].
pub(crate) const IN_PROCESS_TAG: &[u8] = b"\0sluice.in_process.v1\0";

/// Whether a nested-loop join of `join_type` emits build rows at its end,
/// or would once join selection swaps its inputs (a `RIGHT` join becomes a
/// `LEFT` one when its right side is the smaller): every type but inner.
pub fn emits_build_rows_at_end(join_type: JoinType) -> bool {
    join_type != JoinType::Inner
}

/// A nested-loop join run as one partition (see the module docs).
#[derive(Debug)]
pub struct SingleTaskJoinExec {
    /// A `NestedLoopJoinExec` over this node's children.
    join: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl SingleTaskJoinExec {
    /// Wraps `join`.
    ///
    /// # Errors
    /// When `join` is not a `NestedLoopJoinExec`.
    pub fn try_new(join: Arc<dyn ExecutionPlan>) -> Result<Self> {
        if !join.is::<NestedLoopJoinExec>() {
            return Err(DataFusionError::Internal(format!(
                "SingleTaskJoinExec wraps a NestedLoopJoinExec, got {}",
                join.name()
            )));
        }
        let properties = PlanProperties::new(
            join.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(1),
            join.pipeline_behavior(),
            join.boundedness(),
        );
        Ok(Self { join, properties: Arc::new(properties) })
    }

    /// The wrapped join.
    pub fn join(&self) -> &Arc<dyn ExecutionPlan> {
        &self.join
    }

    /// The join over two empty inputs of its children's schemas: what the
    /// codec encodes.
    pub(crate) fn template(&self) -> Result<Arc<dyn ExecutionPlan>> {
        let children = self
            .join
            .children()
            .into_iter()
            .map(|c| Arc::new(EmptyExec::new(c.schema())) as Arc<dyn ExecutionPlan>)
            .collect();
        Arc::clone(&self.join).replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    /// The node `template` (a join over placeholders) stands for, over
    /// `inputs`.
    pub(crate) fn from_template(
        template: Arc<dyn ExecutionPlan>,
        inputs: &[Arc<dyn ExecutionPlan>],
    ) -> Result<Self> {
        if inputs.len() != 2 {
            return Err(DataFusionError::Internal(format!(
                "SingleTaskJoinExec takes 2 inputs, got {}",
                inputs.len()
            )));
        }
        let join = template.replace_children(
            inputs.to_vec(),
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?;
        Self::try_new(join)
    }
}

impl DisplayAs for SingleTaskJoinExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SingleTaskJoinExec: ")?;
        match self.join.downcast_ref::<NestedLoopJoinExec>() {
            Some(join) => join.fmt_as(t, f),
            None => Ok(()),
        }
    }
}

impl ExecutionPlan for SingleTaskJoinExec {
    fn name(&self) -> &'static str {
        "SingleTaskJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        // Both sides arrive merged: a task reads only its own partition of
        // an input (Ballista restricts each task's plan to it).
        vec![Distribution::SinglePartition, Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false, false]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false, false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.join.children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.join.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let join = Arc::clone(&self.join).replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?;
        Ok(Arc::new(Self::try_new(join)?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "SingleTaskJoinExec has one partition, asked for {partition}"
            )));
        }
        for child in self.join.children() {
            let n = child.output_partitioning().partition_count();
            if n != 1 {
                return Err(DataFusionError::Internal(format!(
                    "SingleTaskJoinExec needs merged inputs, got one of {n} partitions"
                )));
            }
        }
        let join = &self.join;
        join.execute(0, context)
    }
}

/// A plan run whole by each task, in one process: it shows the planners
/// no children, so neither Ballista planner splits it into stages, and a
/// task's plan is not restricted inside it. A recursive query runs so
/// (rewrite 6 of [`crate::cluster_plan`]): its recursive term reads the work
/// table the previous iteration filled, which only exists in the process
/// running the query. Ballista's static planner gave the two sides of a
/// join inside the term stages of their own, which found the work table
/// empty.
#[derive(Debug)]
pub struct InProcessExec {
    inner: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl InProcessExec {
    pub fn new(inner: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            inner.equivalence_properties().clone(),
            inner.output_partitioning().clone(),
            inner.pipeline_behavior(),
            inner.boundedness(),
        ));
        Self { inner, properties }
    }

    /// The plan it runs.
    pub fn inner(&self) -> &Arc<dyn ExecutionPlan> {
        &self.inner
    }
}

impl DisplayAs for InProcessExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::TreeRender => write!(f, "InProcessExec"),
            _ => write!(
                f,
                "InProcessExec: {}",
                datafusion::physical_plan::displayable(self.inner.as_ref()).one_line()
            ),
        }
    }
}

impl ExecutionPlan for InProcessExec {
    fn name(&self) -> &'static str {
        "InProcessExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
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
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("InProcessExec has no children".into()))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;
    use crate::write::SluiceCodec;

    #[tokio::test]
    async fn a_wrapped_join_survives_the_codec_and_answers_as_one_task() -> Result<()> {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
        ctx.sql("CREATE TABLE a (x INT) AS VALUES (1), (2), (3)").await?.collect().await?;
        ctx.sql("CREATE TABLE b (y INT) AS VALUES (0), (1), (5), (6), (7), (8)")
            .await?
            .collect()
            .await?;
        let sql = "SELECT x, y FROM a LEFT JOIN \
                   (SELECT y FROM b UNION ALL SELECT y + 100 FROM b) c ON c.y > a.x * 3 \
                   ORDER BY x, y";
        let expected = ctx.sql(sql).await?.collect().await?;
        let plan = ctx.sql(sql).await?.create_physical_plan().await?;
        let wrapped = crate::cluster_plan::single_task_nested_loop_joins(plan)?;
        let shown = displayable(wrapped.as_ref()).indent(true).to_string();
        // DataFusion may swap it into a RIGHT join: wrapped all the same.
        assert!(shown.contains("SingleTaskJoinExec: NestedLoopJoinExec: join_type="), "{shown}");
        let codec = SluiceCodec::default();
        let bytes = datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
            Arc::clone(&wrapped),
            &codec,
        )?;
        let decoded = datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
            &bytes,
            &ctx.task_ctx(),
            &codec,
        )?;
        assert_eq!(displayable(decoded.as_ref()).indent(true).to_string(), shown);
        assert_eq!(decoded.output_partitioning().partition_count(), 1);
        let got = collect(decoded, ctx.task_ctx()).await?;
        assert_eq!(
            datafusion::arrow::util::pretty::pretty_format_batches(&got)?.to_string(),
            datafusion::arrow::util::pretty::pretty_format_batches(&expected)?.to_string()
        );
        Ok(())
    }
}
