//! Recursive queries (`WITH RECURSIVE`) on executors.
//!
//! DataFusion's physical plan encoding has no message for
//! `RecursiveQueryExec` and `WorkTableExec`, so a plan holding a recursive
//! query could not reach an executor. [`crate::write::SluiceCodec`] encodes
//! both through these functions:
//!
//! - `RecursiveQueryExec`: its name, distinctness and output schema; the
//!   static and recursive terms travel as its two inputs.
//! - `WorkTableExec`: its name and (projected) schema.
//!
//! On decode the recursive query is built again with
//! `RecursiveQueryExec::try_new`, which gives the work-table scans of its
//! recursive term the work table it fills (one process runs the whole query:
//! the cluster planner keeps a recursive query in one stage, see
//! `crate::cluster_plan`). A work-table scan that reads some columns only is
//! rebuilt with that projection, found by matching its columns, in order, to
//! the query's output columns (the work table holds whole rows).

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
use datafusion::physical_plan::work_table::WorkTableExec;
use prost::Message as _;
use sluice_proto::pb::{RecursiveQuery, WorkTable};

pub(crate) const RECURSIVE_TAG: &[u8] = b"\0sluice.recursive_query.v1\0";
pub(crate) const WORK_TABLE_TAG: &[u8] = b"\0sluice.work_table.v1\0";

fn schema_bytes(schema: &Schema) -> Result<Vec<u8>> {
    let options = datafusion::arrow::ipc::writer::IpcWriteOptions::default();
    let data = datafusion::arrow::ipc::writer::IpcDataGenerator::default()
        .schema_to_bytes_with_dictionary_tracker(
            schema,
            &mut datafusion::arrow::ipc::writer::DictionaryTracker::new(false),
            &options,
        );
    Ok(data.ipc_message)
}

fn schema_from(bytes: &[u8]) -> Result<SchemaRef> {
    let message = datafusion::arrow::ipc::root_as_message(bytes)
        .map_err(|e| DataFusionError::Internal(format!("a recursive query's schema: {e}")))?;
    let ipc = message.header_as_schema().ok_or_else(|| {
        DataFusionError::Internal("a recursive query's schema message has no schema".into())
    })?;
    Ok(Arc::new(datafusion::arrow::ipc::convert::fb_to_schema(ipc)))
}

/// Encodes `node` when it is a recursive query or a work-table scan.
pub(crate) fn try_encode(node: &Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> Result<bool> {
    let encoded = if let Some(r) = node.downcast_ref::<RecursiveQueryExec>() {
        buf.extend_from_slice(RECURSIVE_TAG);
        RecursiveQuery {
            name: r.name().to_string(),
            is_distinct: r.is_distinct(),
            schema: schema_bytes(&node.schema())?,
        }
        .encode(buf)
    } else if let Some(w) = node.downcast_ref::<WorkTableExec>() {
        buf.extend_from_slice(WORK_TABLE_TAG);
        WorkTable { name: w.name().to_string(), schema: schema_bytes(&w.schema())? }.encode(buf)
    } else {
        return Ok(false);
    };
    encoded.map_err(|e| DataFusionError::Internal(format!("encoding a recursive query: {e}")))?;
    Ok(true)
}

/// Decodes a node [`try_encode`] wrote; `None` when `buf` is not one.
pub(crate) fn try_decode(
    buf: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let invalid = |e: prost::DecodeError| {
        DataFusionError::Internal(format!("decoding a recursive query: {e}"))
    };
    if let Some(body) = buf.strip_prefix(WORK_TABLE_TAG) {
        let p = WorkTable::decode(body).map_err(invalid)?;
        return Ok(Some(Arc::new(WorkTableExec::new(p.name, schema_from(&p.schema)?, None)?)));
    }
    let Some(body) = buf.strip_prefix(RECURSIVE_TAG) else { return Ok(None) };
    let p = RecursiveQuery::decode(body).map_err(invalid)?;
    let [static_term, recursive_term] = inputs else {
        return Err(DataFusionError::Internal(format!(
            "a recursive query has 2 inputs, got {}",
            inputs.len()
        )));
    };
    let schema = schema_from(&p.schema)?;
    let recursive_term = with_projections(Arc::clone(recursive_term), &p.name, &schema)?;
    Ok(Some(Arc::new(RecursiveQueryExec::try_new(
        p.name,
        schema,
        Arc::clone(static_term),
        recursive_term,
        p.is_distinct,
    )?)))
}

/// The work-table scans named `name` under `plan`, rebuilt to read the
/// whole-row table `full` with the projection their columns give.
fn with_projections(
    plan: Arc<dyn ExecutionPlan>,
    name: &str,
    full: &SchemaRef,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(w) = node.downcast_ref::<WorkTableExec>() else {
            return Ok(Transformed::no(node));
        };
        if w.name() != name || w.schema().fields().len() == full.fields().len() {
            return Ok(Transformed::no(node));
        }
        let projection = projection_of(&w.schema(), full).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "the work table {name} is read with columns {:?} not among {:?}",
                w.schema().fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
                full.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
            ))
        })?;
        let rebuilt: Arc<dyn ExecutionPlan> =
            Arc::new(WorkTableExec::new(name.to_string(), Arc::clone(full), Some(projection))?);
        Ok(Transformed::yes(rebuilt))
    })
    .map(|t| t.data)
}

/// The positions in `full` of `projected`'s columns, matched by name in
/// order.
fn projection_of(projected: &Schema, full: &Schema) -> Option<Vec<usize>> {
    let mut out = Vec::with_capacity(projected.fields().len());
    let mut from = 0;
    for f in projected.fields() {
        let at = full.fields().iter().skip(from).position(|g| g.name() == f.name())? + from;
        out.push(at);
        from = at + 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};

    #[test]
    fn projections_are_found_by_column_names_in_order() {
        let full = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("c", DataType::Int64, true),
        ]);
        let proj = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("c", DataType::Int64, true),
        ]);
        assert_eq!(projection_of(&proj, &full), Some(vec![0, 2]));
        let wrong = Schema::new(vec![Field::new("z", DataType::Int64, true)]);
        assert_eq!(projection_of(&wrong, &full), None);
    }
}
