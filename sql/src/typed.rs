//! Batches cast back to the types their plan declares.
//!
//! Arrow Flight's encoder (`FlightDataEncoder`, which Ballista's executors
//! use to serve shuffle partitions and job results) sends dictionary columns
//! as their values and declares `LargeList` columns as `List`. A shuffle
//! partition read from another executor then came back as `Utf8` where the
//! plan says `Dictionary(Int32, Utf8)` (one read from local disk keeps the
//! dictionary), and the stage's sort failed ("RowConverter column schema
//! mismatch"). Both casts back are lossless. [`TypedExec`] puts a reader's
//! batches back in its declared schema; the client does the same for a
//! job's result.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

/// `batch` with the columns of `schema`'s types (cast where they differ).
///
/// # Errors
/// A cast Arrow cannot do.
pub fn to_plan_types(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema() == *schema || batch.schema().fields().len() != schema.fields().len() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                datafusion::arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    // The plan's schema (nullability included) when the data fits it; the
    // cast columns under their own fields otherwise.
    match RecordBatch::try_new_with_options(Arc::clone(schema), columns.clone(), &options) {
        Ok(b) => Ok(b),
        Err(_) => {
            let fields: Vec<_> = columns
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    f.as_ref().clone().with_data_type(c.data_type().clone()).with_nullable(true)
                })
                .collect();
            let own = Arc::new(Schema::new(fields));
            Ok(RecordBatch::try_new_with_options(own, columns, &options)?)
        }
    }
}

/// Its input's batches in its input's declared schema (see the module
/// docs). It reports no metrics, so a stage's metric list is unchanged.
#[derive(Debug)]
pub struct TypedExec {
    input: Arc<dyn ExecutionPlan>,
}

impl TypedExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for TypedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TypedExec")
    }
}

impl ExecutionPlan for TypedExec {
    fn name(&self) -> &str {
        "TypedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::new(input))),
            _ => Err(DataFusionError::Internal("TypedExec takes 1 child".into())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.input.schema();
        let stream = self.input.execute(partition, context)?;
        let typed = Arc::clone(&schema);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.map(move |b| b.and_then(|b| to_plan_types(b, &typed))),
        )))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, DictionaryArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type};

    use super::*;

    #[test]
    fn hydrated_dictionaries_are_cast_back() -> Result<()> {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let schema = Arc::new(Schema::new(vec![Field::new("d", dict.clone(), true)]));
        let values = StringArray::from(vec![Some("a"), None, Some("a")]);
        let hydrated = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("d", DataType::Utf8, true)])),
            vec![Arc::new(values)],
        )?;
        let typed = to_plan_types(hydrated, &schema)?;
        assert_eq!(typed.schema(), schema);
        let column = typed.column(0).as_any().downcast_ref::<DictionaryArray<Int32Type>>();
        assert_eq!(column.map(|c| c.null_count()), Some(1));
        Ok(())
    }
}
