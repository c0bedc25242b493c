//! `sluice gen tpch`: the eight TPC-H tables as Parquet, generated with
//! `tpchgen` (the dbgen-compatible Rust port) straight into Arrow batches.
//!
//! Layout: `OUT/<table>/part-<n>.parquet`. Large tables are split into parts
//! of about two million rows, generated on all cores.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

use crate::error::{Error, Result};

const BATCH_ROWS: usize = 65_536;
const ROWS_PER_PART: f64 = 2_000_000.0;

/// Rows of each table at scale factor 1.
fn rows_at_sf1(table: &str) -> f64 {
    match table {
        "lineitem" => 6_000_000.0,
        "orders" => 1_500_000.0,
        "partsupp" => 800_000.0,
        "part" => 200_000.0,
        "customer" => 150_000.0,
        "supplier" => 10_000.0,
        _ => 25.0,
    }
}

/// How many part files a table gets at `scale_factor`.
pub fn part_count(table: &str, scale_factor: f64) -> i32 {
    if matches!(table, "nation" | "region") {
        return 1;
    }
    ((rows_at_sf1(table) * scale_factor / ROWS_PER_PART).ceil() as i32).max(1)
}

fn batches(
    table: &str,
    sf: f64,
    part: i32,
    parts: i32,
) -> Box<dyn Iterator<Item = datafusion::arrow::error::Result<RecordBatch>> + Send> {
    match table {
        "nation" => Box::new(
            NationArrow::new(NationGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "region" => Box::new(
            RegionArrow::new(RegionGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "part" => Box::new(
            PartArrow::new(PartGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "supplier" => Box::new(
            SupplierArrow::new(SupplierGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "partsupp" => Box::new(
            PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "customer" => Box::new(
            CustomerArrow::new(CustomerGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "orders" => Box::new(
            OrderArrow::new(OrderGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        _ => Box::new(
            LineItemArrow::new(LineItemGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
    }
}

/// String views become plain UTF-8: Ballista turns view types off for its
/// shuffle, and plain strings read back identically everywhere.
fn plain_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8View => Field::new(f.name(), DataType::Utf8, f.is_nullable()),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ))
}

fn to_plain(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> datafusion::arrow::error::Result<RecordBatch> {
    let columns: Vec<ArrayRef> =
        batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) }
            })
            .collect::<datafusion::arrow::error::Result<_>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

fn write_part(table: &str, sf: f64, part: i32, parts: i32, dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join(format!("part-{part}.parquet"));
    let mut rows = 0u64;
    let mut writer: Option<(ArrowWriter<File>, SchemaRef)> = None;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .build();
    for batch in batches(table, sf, part, parts) {
        let batch = batch?;
        if writer.is_none() {
            let schema = plain_schema(batch.schema().as_ref());
            let w =
                ArrowWriter::try_new(File::create(&path)?, schema.clone(), Some(props.clone()))?;
            writer = Some((w, schema));
        }
        if let Some((w, schema)) = writer.as_mut() {
            rows += batch.num_rows() as u64;
            w.write(&to_plain(&batch, schema)?)?;
        }
    }
    if let Some((w, _)) = writer {
        w.close()?;
    }
    Ok(rows)
}

pub use super::Generated;
use super::{io_error, move_into_place, staging_dir};

/// Writes the TPC-H tables at `scale_factor` under `out`, replacing tables
/// already there.
///
/// # Errors
/// [`Error::Usage`] for a scale factor out of range, [`Error::Io`] naming the
/// path that could not be written. Nothing is left half-written.
pub fn generate(scale_factor: f64, out: &Path) -> Result<Vec<Generated>> {
    if !(scale_factor > 0.0 && scale_factor <= 1000.0) {
        return Err(Error::Usage(format!(
            "--scale-factor {scale_factor} is out of range; expected a number in (0, 1000], e.g. 0.1 or 1"
        )));
    }
    let io = io_error;
    let staging = staging_dir(out)?;

    let mut jobs = Vec::new();
    for table in sluice_sql::tpch::TABLES {
        let parts = part_count(table, scale_factor);
        let dir = staging.path().join(table);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, &e))?;
        for part in 1..=parts {
            jobs.push((table, part, parts, dir.clone()));
        }
    }
    // Biggest parts first so the threads finish together.
    jobs.sort_by(|a, b| rows_at_sf1(b.0).total_cmp(&rows_at_sf1(a.0)));
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let results: Vec<anyhow::Result<Vec<(&str, u64)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((table, part, parts, dir)) = jobs.get(i) else { break };
                        let rows = write_part(table, scale_factor, *part, *parts, dir)?;
                        done.push((*table, rows));
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("generator thread panicked"))))
            .collect()
    });
    let mut generated: Vec<Generated> = Vec::new();
    for r in results {
        for (table, rows) in r.map_err(|e| io(staging.path(), &e))? {
            match generated.iter_mut().find(|g| g.table == table) {
                Some(g) => {
                    g.rows += rows;
                    g.files += 1;
                }
                None => generated.push(Generated { table, path: out.join(table), rows, files: 1 }),
            }
        }
    }
    move_into_place(staging.path(), &generated)?;
    generated.sort_by_key(|g| sluice_sql::tpch::TABLES.iter().position(|t| *t == g.table));
    Ok(generated)
}

/// `NAME=PATH` table sources for a generated TPC-H folder.
///
/// # Errors
/// [`Error::Table`] when a table folder is missing.
pub fn table_sources(dir: &Path) -> Result<Vec<sluice_sql::tables::TableSource>> {
    sluice_sql::tpch::TABLES
        .iter()
        .map(|t| {
            let path = dir.join(t);
            sluice_sql::tables::TableSource::new(
                t,
                &path.to_string_lossy(),
                Some(sluice_sql::tables::TableFormat::Parquet),
            )
            .map_err(Error::from)
        })
        .collect()
}
