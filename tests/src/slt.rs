//! sqllogictest engines: `local` (plain DataFusion, the reference) and
//! `cluster` (a Ballista session on a running Sluice scheduler).
//!
//! Every `.slt` file runs in a fresh session on each engine. `${DATA}` in a
//! file is replaced by the absolute path of `tests/data`. Expected output is
//! written by the `local` engine only ([`complete_file`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType, Record, RecordOutput, Runner};

/// Which engine a file runs on.
#[derive(Debug, Clone)]
pub enum EngineKind {
    Local,
    Cluster { scheduler: String },
}

impl EngineKind {
    pub fn name(&self) -> &'static str {
        match self {
            EngineKind::Local => "local",
            EngineKind::Cluster { .. } => "cluster",
        }
    }
}

/// One session of an engine.
pub struct Engine {
    ctx: SessionContext,
    name: &'static str,
    /// Statements go through `sluice sql`'s salted path (cluster engine).
    salted: bool,
}

impl Engine {
    pub async fn new(kind: &EngineKind) -> Result<Self, DataFusionError> {
        let ctx = match kind {
            EngineKind::Local => {
                SessionContext::new_with_config(sluice_sql::session::local_session_config())
            }
            EngineKind::Cluster { scheduler } => {
                let target = sluice_client::Target::Scheduler(
                    scheduler.parse().map_err(|e| DataFusionError::External(Box::new(e)))?,
                );
                let conn = sluice_client::connect(&target, &[], &[])
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                conn.ctx
            }
        };
        let salted = matches!(kind, EngineKind::Cluster { .. });
        Ok(Self { ctx, name: kind.name(), salted })
    }
}

fn float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // Round to 10 significant digits, then print the shortest form.
    let rounded: f64 = format!("{v:.9e}").parse().unwrap_or(v);
    if rounded == rounded.trunc() && rounded.abs() < 1e15 {
        format!("{rounded:.1}")
    } else {
        format!("{rounded}")
    }
}

/// Renders batches as sqllogictest rows: NULL as `NULL`, empty strings as
/// `(empty)`, floats to 10 significant digits.
pub fn rows(
    batches: &[RecordBatch],
) -> Result<(Vec<DefaultColumnType>, Vec<Vec<String>>), DataFusionError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut types = Vec::new();
    let mut out = Vec::new();
    for batch in batches {
        if types.is_empty() {
            types = batch
                .schema()
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::UInt64 => DefaultColumnType::Integer,
                    DataType::Float16
                    | DataType::Float32
                    | DataType::Float64
                    | DataType::Decimal128(..)
                    | DataType::Decimal256(..) => DefaultColumnType::FloatingPoint,
                    _ => DefaultColumnType::Text,
                })
                .collect();
        }
        let mut cols: Vec<Box<dyn Fn(usize) -> String + '_>> = Vec::new();
        for col in batch.columns() {
            let col: &dyn Array = col.as_ref();
            match col.data_type() {
                DataType::Float64 => {
                    let a = col.as_primitive::<Float64Type>();
                    cols.push(Box::new(move |i| {
                        if a.is_null(i) { "NULL".into() } else { float(a.value(i)) }
                    }));
                }
                DataType::Float32 => {
                    let a = col.as_primitive::<Float32Type>();
                    cols.push(Box::new(move |i| {
                        if a.is_null(i) { "NULL".into() } else { float(a.value(i) as f64) }
                    }));
                }
                _ => {
                    let f = ArrayFormatter::try_new(col, &options)?;
                    cols.push(Box::new(move |i| {
                        let s = f.value(i).to_string();
                        if s.is_empty() { "(empty)".to_string() } else { s }
                    }));
                }
            }
        }
        for i in 0..batch.num_rows() {
            out.push(cols.iter().map(|c| c(i)).collect());
        }
    }
    Ok((types, out))
}

#[async_trait]
impl sqllogictest::AsyncDB for Engine {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let (schema_is_empty, batches) = if self.salted {
            // The cluster runs what `sluice sql` runs: hot-key salting of
            // joins when `sluice.skew.enabled`. Planned once first (without
            // running DDL) to tell statements from queries.
            let plan = self.ctx.state().create_logical_plan(sql).await?;
            let batches = sluice_client::connect::run_sql_salted(&self.ctx, sql)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            (plan.schema().fields().is_empty(), batches)
        } else {
            let df = self.ctx.sql(sql).await?;
            (df.schema().fields().is_empty(), df.collect().await?)
        };
        if schema_is_empty {
            return Ok(DBOutput::StatementComplete(0));
        }
        let (types, rows) = rows(&batches)?;
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        self.name
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// `tests/sqllogictest/**/*.slt`, sorted.
pub fn slt_files() -> Vec<PathBuf> {
    let root = crate::workspace_root().join("tests/sqllogictest");
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "slt") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn data_dir() -> String {
    crate::workspace_root().join("tests/data").display().to_string()
}

fn parse(path: &Path) -> anyhow::Result<Vec<Record<DefaultColumnType>>> {
    let text = std::fs::read_to_string(path)?;
    let text = text.replace("${DATA}", &data_dir());
    Ok(sqllogictest::parse_with_name(&text, path.display().to_string())?)
}

fn runner(kind: &EngineKind) -> Runner<Engine, impl sqllogictest::MakeConnection<Conn = Engine>> {
    let kind = Arc::new(kind.clone());
    let mut runner = Runner::new(move || {
        let kind = kind.clone();
        async move { Engine::new(&kind).await }
    });
    runner.add_label("sluice");
    runner
}

/// Runs one file on an engine; returns the number of queries checked.
pub async fn run_file(path: &Path, kind: &EngineKind) -> anyhow::Result<usize> {
    let mut runner = runner(kind);
    runner.add_label(kind.name());
    let mut queries = 0;
    let trace = std::env::var("SLUICE_SLT_TRACE").is_ok_and(|v| v == "1");
    for record in parse(path)? {
        if matches!(record, Record::Query { .. }) {
            queries += 1;
        }
        if trace {
            eprintln!("[{}] {record}", kind.name());
        }
        runner
            .run_async(record)
            .await
            .map_err(|e| anyhow::anyhow!("[{}] {}", kind.name(), e.display(true)))?;
    }
    Ok(queries)
}

/// Rewrites a file's expected output with the `local` engine's results.
pub async fn complete_file(path: &Path) -> anyhow::Result<()> {
    let mut runner = runner(&EngineKind::Local);
    runner.add_label("local");
    let mut out = String::new();
    for record in parse(path)? {
        let output = runner.apply_record(record.clone()).await;
        match &output {
            RecordOutput::Query { error: Some(e), .. }
            | RecordOutput::Statement { error: Some(e), .. } => {
                anyhow::bail!("{}: {record}\nfails on the local engine: {e}", path.display());
            }
            _ => {}
        }
        let updated = sqllogictest::update_record_with_output(
            &record,
            &output,
            " ",
            sqllogictest::default_validator,
            sqllogictest::default_normalizer,
            sqllogictest::default_column_validator,
        )
        .unwrap_or(record);
        out.push_str(&updated.to_string());
        out.push('\n');
    }
    let out = out.replace(&data_dir(), "${DATA}");
    std::fs::write(path, out)?;
    Ok(())
}
