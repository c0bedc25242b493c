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
//! job's result. A dictionary of dictionaries, which Arrow IPC cannot
//! encode, is written as a dictionary of the inner values ([`ipc_type`])
//! and cast back the same way.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, make_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
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

/// `dt` as Arrow IPC can encode it: a dictionary whose values are a
/// dictionary becomes a dictionary of the inner values (same keys, same
/// values). arrow-ipc 59 refuses the nested form ("Arrow IPC field
/// metadata cannot encode direct dictionary-of-dictionary values"), and
/// every shuffle, result and inline table of the cluster travels as IPC.
pub fn ipc_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Dictionary(key, value) => match value.as_ref() {
            DataType::Dictionary(_, inner) => {
                ipc_type(&DataType::Dictionary(key.clone(), inner.clone()))
            }
            other => DataType::Dictionary(key.clone(), Box::new(ipc_type(other))),
        },
        other => other.clone(),
    }
}

/// `schema` with [`ipc_type`]s, or `None` when no field needs one.
pub fn ipc_schema(schema: &Schema) -> Option<SchemaRef> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(ipc_type(f.data_type())))
        .collect();
    if fields.iter().zip(schema.fields()).all(|(a, b)| a.data_type() == b.data_type()) {
        return None;
    }
    Some(Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())))
}

/// `column` cast to `to`. Arrow cannot cast into a dictionary of
/// dictionaries ("Unsupported output type for dictionary packing"): that
/// one is built from the flat form ([`ipc_type`]), its keys over its values
/// cast to the inner dictionary.
fn cast_to(column: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let DataType::Dictionary(_, value) = to else { return Ok(cast(column, to)?) };
    if !matches!(value.as_ref(), DataType::Dictionary(..)) {
        return Ok(cast(column, to)?);
    }
    let flat_type = ipc_type(to);
    let flat = if column.data_type() == &flat_type {
        Arc::clone(column)
    } else {
        cast(column, &flat_type)?
    };
    let data = flat.to_data();
    let values =
        data.child_data().first().cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("a {flat_type} array without values"))
        })?;
    let inner = cast_to(&make_array(values), value)?;
    let nested =
        data.into_builder().data_type(to.clone()).child_data(vec![inner.to_data()]).build()?;
    Ok(make_array(nested))
}

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
                cast_to(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>>>()?;
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

/// Its input's batches in a given schema: the input's own declared one
/// ([`TypedExec::new`], see the module docs), or the input's
/// [`ipc_schema`] ([`TypedExec::for_ipc`]). It reports no metrics, so a
/// stage's metric list is unchanged.
#[derive(Debug)]
pub struct TypedExec {
    input: Arc<dyn ExecutionPlan>,
    /// `None`: the input's properties (its own schema).
    properties: Option<Arc<PlanProperties>>,
}

impl TypedExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input, properties: None }
    }

    /// `input` in its [`ipc_schema`], or `None` when it needs no cast.
    pub fn for_ipc(input: Arc<dyn ExecutionPlan>) -> Option<Self> {
        let schema = ipc_schema(&input.schema())?;
        Some(Self::with_schema(input, schema))
    }

    /// `input` in `schema` (same columns, types it casts to).
    pub fn with_schema(input: Arc<dyn ExecutionPlan>, schema: SchemaRef) -> Self {
        use datafusion::physical_plan::ExecutionPlanProperties;
        let properties = PlanProperties::new(
            datafusion::physical_expr::EquivalenceProperties::new(schema),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Self { input, properties: Some(Arc::new(properties)) }
    }
}

/// Marks a buffer as a [`TypedExec`] (see [`crate::write::SluiceCodec`]).
pub(crate) const TYPED_TAG: &[u8] = b"\0sluice.typed.v1\0";

/// Encodes `node` when it is a [`TypedExec`]: its schema (as
/// datafusion-proto's message, which holds any Arrow type).
pub(crate) fn try_encode(node: &Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> Result<bool> {
    use prost::Message as _;
    if !node.is::<TypedExec>() {
        return Ok(false);
    }
    let schema = datafusion_proto::protobuf::Schema::try_from(node.schema().as_ref())?;
    buf.extend_from_slice(TYPED_TAG);
    schema
        .encode(buf)
        .map_err(|e| DataFusionError::Internal(format!("encoding a TypedExec: {e}")))?;
    Ok(true)
}

/// Decodes a node [`try_encode`] wrote; `None` when `buf` is not one.
pub(crate) fn try_decode(
    buf: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    use prost::Message as _;
    let Some(body) = buf.strip_prefix(TYPED_TAG) else { return Ok(None) };
    let proto = datafusion_proto::protobuf::Schema::decode(body)
        .map_err(|e| DataFusionError::Internal(format!("decoding a TypedExec: {e}")))?;
    let schema = Arc::new(Schema::try_from(&proto)?);
    let [input] = inputs else {
        return Err(DataFusionError::Internal(format!(
            "TypedExec takes 1 input, got {}",
            inputs.len()
        )));
    };
    Ok(Some(Arc::new(TypedExec::with_schema(Arc::clone(input), schema))))
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
        self.properties.as_ref().unwrap_or_else(|| self.input.properties())
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
            (Some(input), true) => match self.properties {
                Some(_) => Ok(Arc::new(Self::with_schema(input, self.schema()))),
                None => Ok(Arc::new(Self::new(input))),
            },
            _ => Err(DataFusionError::Internal("TypedExec takes 1 child".into())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema();
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
    use datafusion::arrow::array::{DictionaryArray, StringArray};
    use datafusion::arrow::datatypes::Int32Type;

    use super::*;

    #[test]
    fn dictionaries_of_dictionaries_travel_flat_and_come_back() -> Result<()> {
        let inner = DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8));
        let nested = DataType::Dictionary(Box::new(DataType::Int32), Box::new(inner.clone()));
        let flat = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        assert_eq!(ipc_type(&nested), flat);
        let schema = Arc::new(Schema::new(vec![Field::new("d", nested.clone(), true)]));
        let values: ArrayRef = Arc::new(StringArray::from(vec![Some("é"), None, Some("é")]));
        let column = cast(&values, &flat)?;
        let sent = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("d", flat.clone(), true)])),
            vec![column],
        )?;
        // Written as IPC and read back, then cast to the plan's type.
        let mut bytes = Vec::new();
        {
            let mut w =
                datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &sent.schema())?;
            w.write(&sent)?;
            w.finish()?;
        }
        let read = datafusion::arrow::ipc::reader::StreamReader::try_new(
            std::io::Cursor::new(bytes),
            None,
        )?
        .next()
        .ok_or_else(|| DataFusionError::Internal("no batch".into()))??;
        let typed = to_plan_types(read, &schema)?;
        assert_eq!(typed.schema(), schema);
        // And from plain strings (a Flight fetch hydrates dictionaries).
        let hydrated = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("d", DataType::Utf8, true)])),
            vec![values],
        )?;
        let typed = to_plan_types(hydrated, &schema)?;
        assert_eq!(typed.column(0).data_type(), &nested);
        assert_eq!(typed.column(0).null_count(), 1);
        assert!(ipc_schema(&Schema::new(vec![Field::new("s", DataType::Utf8, true)])).is_none());
        Ok(())
    }

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
