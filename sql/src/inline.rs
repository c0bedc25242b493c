//! In-memory tables on the cluster: shipped inside the plan.
//!
//! A `MemTable` (`CREATE TABLE t AS VALUES …`, CTAS, `INSERT` into a memory
//! table, batches a program registered) lives in the client's session. A
//! query over it is sent to the scheduler as a logical plan, and DataFusion
//! can encode only the table providers it knows (listing tables); Ballista's
//! codec fails every other one ("LogicalExtensionCodec is not provided").
//!
//! [`SluiceLogicalCodec`] wraps Ballista's logical codec (registered on the
//! client and the scheduler) and encodes a `MemTable` as an `InlineTable`
//! (`proto/sluice/v1/tables.proto`): its partitions as Arrow IPC streams.
//! The scheduler decodes it into an [`InlineTable`], whose scans are
//! in-memory scans that travel on to the executors in the physical plan.
//!
//! ```text
//!  client MemTable ──InlineTable (IPC)──► scheduler InlineTable ──scan──► DataSourceExec(MemorySourceConfig) ──► executors
//! ```
//!
//! How large a table travels this way is bounded by the gRPC message limit
//! of the scheduler (16 MiB): larger tables are written as files and
//! scanned from there instead (`sluice_client`'s planner, see
//! [`inline_max_bytes`]).
//!
//! [`InlineTable::scan`] applies a pushed-down `LIMIT` to the batches
//! themselves: Ballista's per-task plan restriction rebuilds in-memory scans
//! without their `fetch` (`task_builder.rs`, `select_output_partitions`), so
//! a limit that exists only as the scan's fetch would be lost.

use std::io::Cursor;
use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::serde::BallistaLogicalExtensionCodec;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::common::TableReference;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use prost::Message as _;
use sluice_proto::pb::InlineTable as InlineTableProto;

/// Marks a table provider encoded by [`SluiceLogicalCodec`] (other
/// encodings are passed to Ballista's codec).
const MAGIC: &[u8] = b"sluice.v1.InlineTable\0";

/// Marks a Delta table version ([`crate::delta::DeltaTableProvider`]).
const DELTA_MAGIC: &[u8] = b"sluice.v1.DeltaTableRef\0";

/// The largest in-memory table (Arrow IPC bytes) shipped inside a plan by
/// default; `sluice.memory_tables.inline_max_bytes` changes it.
pub const DEFAULT_INLINE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The partitions of a memory table, read without waiting (a table being
/// written to at the same moment is an error, not a wait).
pub fn memtable_partitions(table: &MemTable) -> Result<Vec<Vec<RecordBatch>>> {
    table
        .batches
        .iter()
        .map(|p| {
            p.try_read().map(|b| b.clone()).map_err(|_| {
                DataFusionError::Execution(
                    "an in-memory table is being written while a query reads it".to_string(),
                )
            })
        })
        .collect()
}

/// The bytes of data `partitions` hold (what their IPC encoding about
/// takes; not the capacity of their buffers, which an `INSERT` of many small
/// batches inflates).
pub fn size_of(partitions: &[Vec<RecordBatch>]) -> usize {
    partitions
        .iter()
        .flatten()
        .flat_map(|b| b.columns().iter())
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
        .sum()
}

/// `partitions` as an `InlineTable` message.
fn encode_partitions(schema: &SchemaRef, partitions: &[Vec<RecordBatch>]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(partitions.len());
    // Types IPC cannot encode travel flat and are cast back on decode.
    let ipc = crate::typed::ipc_schema(schema);
    let written = ipc.as_ref().unwrap_or(schema);
    for batches in partitions {
        let mut buf = Vec::new();
        {
            let mut writer = StreamWriter::try_new(&mut buf, written)?;
            // One message per partition: `INSERT`s leave many small batches.
            let batch = if batches.len() > 1 {
                Some(datafusion::arrow::compute::concat_batches(schema, batches)?)
            } else {
                batches.first().cloned()
            };
            if let Some(b) = batch {
                writer.write(&crate::typed::to_plan_types(b, written)?)?;
            }
            writer.finish()?;
        }
        out.push(buf);
    }
    let mut bytes = MAGIC.to_vec();
    InlineTableProto { partitions: out, sort_orders: vec![] }
        .encode(&mut bytes)
        .map_err(|e| DataFusionError::Internal(format!("encoding an in-memory table: {e}")))?;
    Ok(bytes)
}

fn decode_partitions(buf: &[u8], schema: &SchemaRef) -> Result<Vec<Vec<RecordBatch>>> {
    let proto = InlineTableProto::decode(buf).map_err(|e| {
        DataFusionError::Internal(format!("decoding an in-memory table sent by the client: {e}"))
    })?;
    let mut partitions = Vec::with_capacity(proto.partitions.len());
    for bytes in proto.partitions {
        let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
        let mut batches = Vec::new();
        for b in reader {
            // The table's schema (field names and nullability as planned),
            // not the one the stream was written with.
            let b = crate::typed::to_plan_types(b?, schema)?;
            batches.push(RecordBatch::try_new(Arc::clone(schema), b.columns().to_vec())?);
        }
        partitions.push(batches);
    }
    if partitions.is_empty() {
        partitions.push(vec![]);
    }
    Ok(partitions)
}

/// An in-memory table that arrived inside a plan (see the module docs).
#[derive(Debug)]
pub struct InlineTable {
    schema: SchemaRef,
    partitions: Vec<Vec<RecordBatch>>,
}

impl InlineTable {
    pub fn new(schema: SchemaRef, partitions: Vec<Vec<RecordBatch>>) -> Self {
        Self { schema, partitions }
    }
}

/// The first `limit` rows of each partition.
fn truncate(partitions: &[Vec<RecordBatch>], limit: Option<usize>) -> Vec<Vec<RecordBatch>> {
    let Some(limit) = limit else { return partitions.to_vec() };
    partitions
        .iter()
        .map(|batches| {
            let mut left = limit;
            let mut kept = Vec::new();
            for b in batches {
                if left == 0 {
                    break;
                }
                let n = b.num_rows().min(left);
                kept.push(b.slice(0, n));
                left -= n;
            }
            kept
        })
        .collect()
}

#[async_trait]
impl TableProvider for InlineTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // No filter is pushed into this table, so a limit here counts rows
        // of the table itself.
        let partitions = truncate(&self.partitions, limit);
        // The scan's rows are encoded as IPC to reach executors: types IPC
        // cannot hold are scanned flat and cast back above the scan.
        let Some(flat) = crate::typed::ipc_schema(&self.schema) else {
            let source =
                MemorySourceConfig::try_new(&partitions, self.schema(), projection.cloned())?
                    .with_limit(limit);
            return Ok(DataSourceExec::from_data_source(source));
        };
        let partitions = partitions
            .into_iter()
            .map(|batches| {
                batches.into_iter().map(|b| crate::typed::to_plan_types(b, &flat)).collect()
            })
            .collect::<Result<Vec<Vec<RecordBatch>>>>()?;
        let source =
            MemorySourceConfig::try_new(&partitions, Arc::clone(&flat), projection.cloned())?
                .with_limit(limit);
        let declared = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema(),
        };
        Ok(Arc::new(crate::typed::TypedExec::with_schema(
            DataSourceExec::from_data_source(source),
            declared,
        )))
    }
}

/// Ballista's logical codec, plus in-memory tables ([`InlineTable`]) and
/// `COPY` with its options ([`crate::copy`]).
#[derive(Debug, Default)]
pub struct SluiceLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for SluiceLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        match buf.strip_prefix(crate::copy::MAGIC) {
            Some(body) => crate::copy::decode(body, inputs, ctx, &self.inner),
            None => self.inner.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        if crate::copy::try_encode(node, buf, &self.inner)? {
            return Ok(());
        }
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        if let Some(body) = buf.strip_prefix(DELTA_MAGIC) {
            let r = sluice_proto::pb::DeltaTableRef::decode(body).map_err(|e| {
                DataFusionError::Plan(format!("Delta table {table_ref} in the plan: {e}"))
            })?;
            let url = url::Url::parse(&r.url).map_err(|e| {
                DataFusionError::Plan(format!("Delta table {table_ref}: URL {}: {e}", r.url))
            })?;
            return Ok(Arc::new(crate::delta::DeltaTableProvider::pinned(
                url,
                r.version,
                schema,
                &r.partition_columns,
            )));
        }
        match buf.strip_prefix(MAGIC) {
            Some(body) => {
                let partitions = decode_partitions(body, &schema).map_err(|e| {
                    DataFusionError::Context(format!("in-memory table {table_ref}"), Box::new(e))
                })?;
                Ok(Arc::new(InlineTable::new(schema, partitions)))
            }
            None => self.inner.try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let partitions = if let Some(mem) = node.downcast_ref::<MemTable>() {
            memtable_partitions(mem)?
        } else if let Some(inline) = node.downcast_ref::<InlineTable>() {
            inline.partitions.clone()
        } else if let Some(delta) = node.downcast_ref::<crate::delta::DeltaTableProvider>() {
            let r = sluice_proto::pb::DeltaTableRef {
                url: delta.url().to_string(),
                version: delta.version(),
                partition_columns: delta.partition_names(),
            };
            buf.extend(DELTA_MAGIC);
            buf.extend(r.encode_to_vec());
            return Ok(());
        } else {
            return self.inner.try_encode_table_provider(table_ref, node, buf);
        };
        buf.extend(encode_partitions(&node.schema(), &partitions)?);
        Ok(())
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    fn batch(schema: &SchemaRef, values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(Arc::clone(schema), vec![Arc::new(Int64Array::from(values.to_vec()))])
            .expect("batch")
    }

    #[tokio::test]
    async fn a_memory_table_round_trips_through_the_codec() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let parts = vec![
            vec![batch(&schema, &[1, 2]), batch(&schema, &[3])],
            vec![],
            vec![batch(&schema, &[4])],
        ];
        let mem = MemTable::try_new(Arc::clone(&schema), parts.clone()).expect("table");
        let codec = SluiceLogicalCodec::default();
        let mut buf = Vec::new();
        codec
            .try_encode_table_provider(&TableReference::bare("t"), Arc::new(mem), &mut buf)
            .expect("encode");
        let ctx = SessionContext::new();
        let decoded = codec
            .try_decode_table_provider(
                &buf,
                &TableReference::bare("t"),
                Arc::clone(&schema),
                &ctx.task_ctx(),
            )
            .expect("decode");
        let inline = decoded.downcast_ref::<InlineTable>().expect("inline");
        // Each partition arrives as one batch with the same rows.
        let rows = |p: &[Vec<RecordBatch>]| -> Vec<Vec<i64>> {
            p.iter()
                .map(|b| {
                    b.iter()
                        .flat_map(|b| {
                            b.column(0)
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .expect("int64")
                                .values()
                                .to_vec()
                        })
                        .collect()
                })
                .collect()
        };
        assert_eq!(rows(&inline.partitions), rows(&parts));
        assert!(inline.partitions.iter().all(|p| p.len() <= 1));
    }

    #[test]
    fn a_limit_truncates_every_partition() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let parts =
            vec![vec![batch(&schema, &[1, 2]), batch(&schema, &[3])], vec![batch(&schema, &[4])]];
        let rows: Vec<usize> = truncate(&parts, Some(2))
            .iter()
            .map(|p| p.iter().map(RecordBatch::num_rows).sum())
            .collect();
        assert_eq!(rows, vec![2, 1]);
        assert_eq!(truncate(&parts, None), parts);
    }
}
