//! `sluice backfill`: computes a feature job's daily partitions over a date
//! range on the cluster.
//!
//! ```text
//! missing dates (OUT/feature_date=D absent) ─► chunks of ≤ chunk_days consecutive dates
//!   per chunk (up to `parallel` at once), on the cluster:
//!     COPY (tiled chunk query) TO <staging>/<chunk>/ PARTITIONED BY (feature_date)
//!     quality expectations over the staged files ─ fail ─► staging removed, job fails
//!     pass ─► each staging/feature_date=D renamed to OUT/feature_date=D   (atomic commit)
//! ```
//!
//! Staging lives beside the output (`.<out>.sluice-staging/`), so readers of
//! OUT never see it; a date directory appears in OUT only by a rename of a
//! complete one. A rerun skips committed dates, so a run killed at any point
//! (even SIGKILL) is completed by running it again, and a repeated run
//! changes nothing. A lock file beside the output keeps two backfills from
//! writing the same output at once.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use serde::Serialize;
use sluice_sql::job::spec::{Expectation, Function, JobSpec, SpecError};
use sluice_sql::job::{plan, quality};
use sluice_sql::options::SluiceOptions;
use sluice_sql::tables::{TableFormat, TableSource};

use crate::connect::{Target, connect_as, run_sql};
use crate::error::{Error, Result};

/// What to backfill and where.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub spec: PathBuf,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub target: Target,
    /// Source paths are relative to this (default: the spec's folder).
    pub data_dir: Option<PathBuf>,
    /// Output folder (default: the spec's `output.path`, relative to the spec).
    pub output: Option<PathBuf>,
    /// Feature dates per distributed job; [`AUTO_CHUNK_DAYS`] picks them
    /// from the range ([`auto_chunk_days`]).
    pub chunk_days: u32,
    /// Chunks in flight at once.
    pub parallel: usize,
    pub settings: Vec<(String, String)>,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Token for a scheduler that checks them.
    pub token: Option<String>,
    /// The id to record the backfill under in etcd (default: a new one).
    pub id: Option<String>,
}

/// The outcome of one expectation on one chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ExpectationResult {
    pub expectation: String,
    pub column: String,
    pub chunk: String,
    pub passed: bool,
    pub failing: u64,
    pub samples: Vec<String>,
}

/// The machine-readable summary (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    pub spec: String,
    pub output: String,
    pub from: String,
    pub to: String,
    pub dates_total: usize,
    pub dates_already_committed: usize,
    pub dates_committed: usize,
    pub chunks: usize,
    pub rows: u64,
    pub seconds: f64,
    pub quality: Vec<ExpectationResult>,
    pub ok: bool,
}

fn spec_error(e: SpecError) -> Error {
    Error::Usage(e.to_string())
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), reason: e.to_string() }
}

/// `YYYY-MM-DD`.
pub fn parse_date(flag: &str, s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
        Error::Usage(format!("{flag} '{s}' is not a date; expected YYYY-MM-DD, e.g. 2024-03-31"))
    })
}

/// Dates committed in `out` (folders `feature_date=YYYY-MM-DD`).
pub fn committed_dates(out: &Path) -> BTreeSet<NaiveDate> {
    let mut dates = BTreeSet::new();
    for entry in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(d) = name.strip_prefix("feature_date=") {
            if let Ok(date) = NaiveDate::parse_from_str(d, "%Y-%m-%d") {
                dates.insert(date);
            }
        }
    }
    dates
}

/// [`BackfillOptions::chunk_days`] that lets the range decide.
pub const AUTO_CHUNK_DAYS: u32 = 0;

/// Longest chunk the automatic choice makes. A chunk's memory grows with
/// its entities × dates; 183 dates measured fastest on a year (one round of
/// two chunks instead of two rounds of 92-date chunks, each of which rescans
/// the windows' history; see benchmarks/README.md).
pub const MAX_AUTO_CHUNK_DAYS: u32 = 183;

/// The chunk length for `dates` dates with `parallel` chunks in flight: as
/// few chunks of at most [`MAX_AUTO_CHUNK_DAYS`] as possible, their number
/// rounded up to a multiple of `parallel` so that no round leaves a slot
/// idle, all of about the same length.
pub fn auto_chunk_days(dates: usize, parallel: usize) -> u32 {
    let dates = dates.max(1);
    let parallel = parallel.max(1);
    let n = dates.div_ceil(MAX_AUTO_CHUNK_DAYS as usize).div_ceil(parallel) * parallel;
    let n = n.min(dates);
    u32::try_from(dates.div_ceil(n)).unwrap_or(MAX_AUTO_CHUNK_DAYS)
}

impl BackfillOptions {
    /// The chunk length for `dates` dates to compute.
    fn chunk_days_for(&self, dates: usize) -> u32 {
        match self.chunk_days {
            AUTO_CHUNK_DAYS => auto_chunk_days(dates, self.parallel),
            n => n,
        }
    }
}

/// Splits sorted dates into runs of consecutive dates of at most `max` days.
pub fn chunks(dates: &[NaiveDate], max: u32) -> Vec<(NaiveDate, NaiveDate)> {
    let mut out: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    for &d in dates {
        match out.last_mut() {
            Some((first, last))
                if *last + chrono::Duration::days(1) == d
                    && (d - *first).num_days() < i64::from(max) =>
            {
                *last = d;
            }
            _ => out.push((d, d)),
        }
    }
    out
}

/// An exclusive lock on an output folder, released on drop.
struct OutputLock {
    path: PathBuf,
}

impl OutputLock {
    fn acquire(path: PathBuf) -> Result<Self> {
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = std::fs::read_to_string(&path).unwrap_or_default();
                    let alive = !pid.trim().is_empty()
                        && Path::new(&format!("/proc/{}", pid.trim())).exists();
                    if alive {
                        return Err(Error::Usage(format!(
                            "another backfill (pid {}) is writing this output; its lock is {}",
                            pid.trim(),
                            path.display()
                        )));
                    }
                    // The holder died (e.g. SIGKILL): take the lock over.
                    std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                }
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        Err(Error::Usage(format!("cannot take the lock {}", path.display())))
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let name =
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    out.with_file_name(format!(".{name}.{suffix}"))
}

fn int_value(batches: &[RecordBatch], col: usize) -> u64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(col)
                .as_primitive_opt::<Int64Type>()
                .map(|a| if a.is_null(0) { 0 } else { a.value(0) })
        })
        .unwrap_or(0)
        .max(0) as u64
}

/// The sum of an integer column over every row (0 when absent).
fn column_total(batches: &[RecordBatch], name: &str) -> u64 {
    let mut total = 0i64;
    for b in batches {
        if let Some(a) =
            b.schema().index_of(name).ok().and_then(|c| b.column(c).as_primitive_opt::<Int64Type>())
        {
            total += a.iter().flatten().sum::<i64>();
        }
    }
    total.max(0) as u64
}

fn render_rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .filter_map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
            .collect();
        for i in 0..b.num_rows() {
            let cells: Vec<String> =
                names.iter().zip(&fmts).map(|(n, f)| format!("{n}={}", f.value(i))).collect();
            rows.push(cells.join(" "));
        }
    }
    rows
}

/// A table registered for one attempt of a chunk's checks, deregistered
/// when the attempt ends, whatever its outcome.
struct AttemptTable<'a> {
    ctx: &'a SessionContext,
    name: String,
}

impl Drop for AttemptTable<'_> {
    fn drop(&mut self) {
        let _ = self.ctx.deregister_table(self.name.as_str());
    }
}

/// Checks a staged chunk; returns (results, rows per date).
async fn check_chunk(
    ctx: &SessionContext,
    spec: &JobSpec,
    staging: &Path,
    label: &str,
    dates: &[NaiveDate],
) -> Result<(Vec<ExpectationResult>, Vec<(NaiveDate, u64)>)> {
    let has_files = walk_has_files(staging);
    // One name per attempt, gone with the attempt whatever its outcome: a
    // check stopped by an executor loss is retried, and a name left behind
    // failed the retry ("The table stg_… already exists").
    let attempt = AttemptTable {
        ctx,
        name: format!("stg_{}_{}", label.replace('-', "_"), uuid::Uuid::new_v4().simple()),
    };
    let table = attempt.name.as_str();
    let mut per_date: Vec<(NaiveDate, u64)> = dates.iter().map(|d| (*d, 0)).collect();
    let mut results = Vec::new();
    if has_files {
        let opts = ParquetReadOptions::default().table_partition_cols(vec![(
            "feature_date".to_string(),
            datafusion::arrow::datatypes::DataType::Utf8,
        )]);
        ctx.register_parquet(table, &format!("{}/", staging.display()), opts)
            .await
            .map_err(Error::from_datafusion)?;
        let checks = run_sql(ctx, &quality::chunk_checks_sql(spec, table)).await?;
        for b in &checks {
            // VARCHAR is Utf8 on the cluster and Utf8View on plain DataFusion.
            let ds = datafusion::arrow::compute::cast(
                b.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .map_err(|e| Error::from_datafusion(e.into()))?;
            let ds = ds.as_string_opt::<i32>();
            let ns = b.column(1).as_primitive_opt::<Int64Type>();
            if let (Some(ds), Some(ns)) = (ds, ns) {
                for i in 0..b.num_rows() {
                    if let Ok(d) = NaiveDate::parse_from_str(ds.value(i), "%Y-%m-%d") {
                        if let Some(slot) = per_date.iter_mut().find(|(x, _)| *x == d) {
                            slot.1 = ns.value(i).max(0) as u64;
                        }
                    }
                }
            }
        }
        for (i, e) in spec.expectations.iter().enumerate() {
            let (failing, samples) = match e {
                Expectation::UniqueKey { columns } => {
                    let n = match quality::unique_key_per_date(columns) {
                        Some(_) => column_total(&checks, &format!("e{i}")),
                        None => int_value(
                            &run_sql(ctx, &quality::duplicate_count_sql(columns, table)).await?,
                            0,
                        ),
                    };
                    let samples = if n > 0 {
                        render_rows(
                            &run_sql(ctx, &quality::duplicate_keys_sql(columns, table, 5)).await?,
                        )
                    } else {
                        vec![]
                    };
                    (n, samples)
                }
                Expectation::RowCountBetween { min, max } => {
                    row_count_failures(&per_date, *min, *max)
                }
                _ => {
                    let n = column_total(&checks, &format!("e{i}"));
                    let samples = match (n > 0, quality::samples_sql(spec, e, table, 5)) {
                        (true, Some(sql)) => render_rows(&run_sql(ctx, &sql).await?),
                        _ => vec![],
                    };
                    (n, samples)
                }
            };
            results.push(ExpectationResult {
                expectation: e.kind().to_string(),
                column: e.column_label(),
                chunk: label.to_string(),
                passed: failing == 0,
                failing,
                samples,
            });
        }
    } else {
        for e in &spec.expectations {
            let (failing, samples) = match e {
                Expectation::RowCountBetween { min, max } => {
                    row_count_failures(&per_date, *min, *max)
                }
                _ => (0, vec![]),
            };
            results.push(ExpectationResult {
                expectation: e.kind().to_string(),
                column: e.column_label(),
                chunk: label.to_string(),
                passed: failing == 0,
                failing,
                samples,
            });
        }
    }
    Ok((results, per_date))
}

fn row_count_failures(
    per_date: &[(NaiveDate, u64)],
    min: Option<u64>,
    max: Option<u64>,
) -> (u64, Vec<String>) {
    let bad: Vec<String> = per_date
        .iter()
        .filter(|(_, n)| min.is_some_and(|m| *n < m) || max.is_some_and(|m| *n > m))
        .map(|(d, n)| format!("feature_date={d} rows={n}"))
        .collect();
    (bad.len() as u64, bad.into_iter().take(5).collect())
}

fn walk_has_files(dir: &Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                return true;
            }
        }
    }
    false
}

/// Moves each staged date folder into the output (creating an empty one for
/// a date without rows). A date already present is left alone.
fn commit(staging: &Path, out: &Path, dates: &[NaiveDate]) -> Result<usize> {
    let mut committed = 0;
    for d in dates {
        let name = format!("feature_date={d}");
        let src = staging.join(&name);
        let dst = out.join(&name);
        if dst.exists() {
            continue;
        }
        if !src.exists() {
            std::fs::create_dir_all(&src).map_err(|e| io_err(&src, e))?;
        }
        std::fs::rename(&src, &dst).map_err(|e| io_err(&dst, e))?;
        committed += 1;
    }
    Ok(committed)
}

/// Checks that features' columns exist and have types their functions accept.
async fn validate_against_data(
    ctx: &SessionContext,
    spec: &JobSpec,
    spec_path: &str,
) -> Result<()> {
    let invalid =
        |field: String, reason: String| Error::Usage(format!("{spec_path}: {field}: {reason}"));
    for (name, src) in &spec.sources {
        let mut cols = Vec::new();
        if let Some(k) = &src.key {
            cols.push(format!("\"{k}\""));
        }
        if let Some(t) = &src.timestamp {
            cols.push(format!("\"{t}\""));
        }
        if !cols.is_empty() {
            if let Err(e) =
                ctx.sql(&format!("SELECT {} FROM \"{name}\" LIMIT 0", cols.join(", "))).await
            {
                return Err(invalid(
                    format!("sources.{name}"),
                    sluice_sql::session::clean_df_message(&e),
                ));
            }
        }
    }
    for (i, f) in spec.features.iter().enumerate() {
        let field = |rest: &str| format!("features[{i}] ({}).{rest}", f.name);
        for (what, expr) in [("filter", &f.filter), ("available_at", &f.available_at)] {
            if let Some(expr) = expr {
                if let Err(e) =
                    ctx.sql(&format!("SELECT {expr} FROM \"{}\" LIMIT 0", f.source)).await
                {
                    return Err(invalid(field(what), sluice_sql::session::clean_df_message(&e)));
                }
            }
        }
        if let Some(col) = &f.column {
            match ctx.sql(&format!("SELECT {col} AS v FROM \"{}\" LIMIT 0", f.source)).await {
                Err(e) => {
                    return Err(invalid(
                        field("column"),
                        sluice_sql::session::clean_df_message(&e),
                    ));
                }
                Ok(df) => {
                    let dt = df.schema().field(0).data_type().clone();
                    let ok = match f.function {
                        Function::Sum | Function::Avg => dt.is_numeric(),
                        Function::Latest => dt.is_temporal(),
                        Function::Count | Function::Min | Function::Max => true,
                    };
                    if !ok {
                        return Err(invalid(
                            field("column"),
                            format!(
                                "'{col}' has type {dt}; {} needs a {}",
                                f.function,
                                if f.function == Function::Latest {
                                    "timestamp or date"
                                } else {
                                    "number"
                                }
                            ),
                        ));
                    }
                }
            }
        }
    }
    for (j, d) in spec.dimensions.iter().enumerate() {
        let cols: Vec<String> = d.columns.iter().map(|c| format!("\"{c}\"")).collect();
        if let Err(e) =
            ctx.sql(&format!("SELECT {} FROM \"{}\" LIMIT 0", cols.join(", "), d.source)).await
        {
            return Err(invalid(
                format!("dimensions[{j}]"),
                sluice_sql::session::clean_df_message(&e),
            ));
        }
    }
    // Derived expressions and the whole query: plan one day.
    let day = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default();
    let types = partial_types(ctx, spec).await?;
    if let Err(e) =
        ctx.sql(&plan::chunk_query(spec, day, day, &types, &plan::PlanOptions::default())).await
    {
        let msg = sluice_sql::session::clean_df_message(&e);
        let culprit = spec.derived.iter().position(|d| {
            msg.contains(&d.name) || d.expr.split_whitespace().any(|w| msg.contains(w))
        });
        let field = match culprit {
            Some(k) => format!("derived[{k}] ({})", spec.derived[k].name),
            None => "the compiled feature query".to_string(),
        };
        return Err(invalid(field, msg));
    }
    Ok(())
}

/// The types of every source's partial aggregates, from planning them.
async fn partial_types(ctx: &SessionContext, spec: &JobSpec) -> Result<plan::ColumnTypes> {
    let mut types = plan::ColumnTypes::new();
    for src in spec.event_sources() {
        let df =
            ctx.sql(&plan::partial_query(spec, src, 0, 0)).await.map_err(Error::from_datafusion)?;
        for field in df.schema().fields() {
            let name = field.name();
            if name.starts_with('s') || name.starts_with('c') || name.starts_with('m') {
                types.insert(name.clone(), field.data_type().to_string());
            }
        }
    }
    Ok(types)
}

/// A validated spec connected to its engine.
struct Prepared {
    spec: JobSpec,
    spec_label: String,
    out: PathBuf,
    conn: crate::connect::Connection,
    types: plan::ColumnTypes,
    plan_opts: plan::PlanOptions,
    skew: SluiceOptions,
    /// The range's hot entities (`None`: skew handling off).
    hot: Option<HotEntities>,
    tables: Vec<TableSource>,
}

/// The hot entities of a backfill's range: keys with their share of the
/// rows the sources feed the tiles aggregation, and how that was measured.
struct HotEntities {
    keys: Vec<(datafusion::common::ScalarValue, f64)>,
    how: crate::hotkeys::Detection,
    /// The shuffle partitions the salts were chosen for.
    partitions: usize,
}

/// Samples the entity keys of every event source over `first..=last` (the
/// rows the tiles aggregation reads) and returns the hot ones: once per
/// backfill, not per chunk; a key hot in only some chunks costs those
/// chunks a little balance, never correctness.
async fn hot_entities(
    ctx: &SessionContext,
    spec: &JobSpec,
    first: NaiveDate,
    last: NaiveDate,
    skew: &SluiceOptions,
) -> Result<HotEntities> {
    let (f, t) = (plan::day_number(first), plan::day_number(last));
    let keys: Vec<String> = spec
        .event_sources()
        .into_iter()
        .map(|src| format!("SELECT __k FROM ({})", plan::partial_query(spec, src, f, t)))
        .collect();
    let partitions = ctx.state().config().target_partitions();
    if keys.is_empty() {
        return Ok(HotEntities {
            keys: vec![],
            how: crate::hotkeys::Detection::Counted,
            partitions,
        });
    }
    let df = ctx.sql(&keys.join(" UNION ALL ")).await.map_err(Error::from_datafusion)?;
    // Optimized: types coerced and filters pushed into the scans.
    let keys_plan = ctx.state().optimize(df.logical_plan()).map_err(Error::from_datafusion)?;
    let (keys, how) = crate::hotkeys::hot_keys(
        ctx,
        &keys_plan,
        &datafusion::prelude::col("__k"),
        skew.skew_hot_key_share,
    )
    .await?;
    Ok(HotEntities { keys, how, partitions })
}

/// Parses and validates the spec, registers its sources and checks them
/// against the data (columns, types) before anything is written.
async fn prepare(opts: &BackfillOptions) -> Result<Prepared> {
    if opts.from > opts.to {
        return Err(Error::Usage(format!(
            "--from {} is after --to {}; expected --from <= --to",
            opts.from, opts.to
        )));
    }
    let spec_label = opts.spec.display().to_string();
    let spec = JobSpec::from_file(&opts.spec).map_err(spec_error)?;
    let spec_dir = opts.spec.parent().map(Path::to_path_buf).unwrap_or_default();
    let spec_dir = if spec_dir.as_os_str().is_empty() { PathBuf::from(".") } else { spec_dir };
    let data_dir = opts.data_dir.clone().unwrap_or_else(|| spec_dir.clone());
    let out = opts.output.clone().unwrap_or_else(|| spec_dir.join(&spec.output.path));
    let out = std::path::absolute(&out).map_err(|e| io_err(&out, e))?;

    let mut tables = Vec::new();
    for (name, src) in &spec.sources {
        let path = spec.source_path(src, &data_dir);
        let format = match src.format.as_str() {
            "parquet" => TableFormat::Parquet,
            "csv" => TableFormat::Csv,
            "json" => TableFormat::Json,
            other => {
                return Err(Error::Usage(format!(
                    "{spec_label}: sources.{name}.format: unknown format '{other}'; expected parquet, csv or json"
                )));
            }
        };
        let source = TableSource::new(name, &path.to_string_lossy(), Some(format)).map_err(|e| match e {
            sluice_sql::Error::TablePathNotFound { path, .. } => Error::Usage(format!(
                "{spec_label}: sources.{name}.path: '{path}' does not exist (paths are relative to --data-dir, here {}); generate data with `sluice gen churn --out DIR` and pass --data-dir DIR",
                data_dir.display()
            )),
            other => Error::from(other),
        })?;
        tables.push(source);
    }
    let conn = connect_as(&opts.target, opts.token.as_deref(), &opts.settings, &tables).await?;
    validate_against_data(&conn.ctx, &spec, &spec_label).await?;
    let types = partial_types(&conn.ctx, &spec).await?;
    let skew = sluice_sql::options::of_session(&conn.ctx);
    let mut plan_opts = plan::PlanOptions { combine_per_day: skew.skew_enabled, salted: None };
    let hot = match skew.skew_enabled {
        true => Some(hot_entities(&conn.ctx, &spec, opts.from, opts.to, &skew).await?),
        false => None,
    };
    if let Some(h) = hot.as_ref().filter(|h| !h.keys.is_empty()) {
        let salts = sluice_sql::skew::salt_values(&h.keys, skew.skew_buckets, h.partitions)
            .map_err(Error::from_datafusion)?;
        plan_opts.salted =
            Some(plan::SaltedKeys { keys: h.keys.iter().map(|(k, _)| k.clone()).collect(), salts });
    }
    Ok(Prepared { spec, spec_label, out, conn, types, plan_opts, skew, hot, tables })
}

/// `EXPLAIN` (or `EXPLAIN ANALYZE`, which runs it) of the query of the
/// range's first chunk: the SQL, then the plan. Writes nothing.
///
/// # Errors
/// As [`run`], for the spec, the data and the engine.
pub async fn explain(opts: &BackfillOptions, analyze: bool) -> Result<String> {
    let Prepared { spec, conn, types, plan_opts, skew, hot, .. } = prepare(opts).await?;
    let all: Vec<NaiveDate> = opts.from.iter_days().take_while(|d| *d <= opts.to).collect();
    let chunk_days = opts.chunk_days_for(all.len());
    let Some(&(first, last)) = chunks(&all, chunk_days).first() else {
        return Ok(String::new());
    };
    let sql = plan::chunk_query(&spec, first, last, &types, &plan_opts);
    let mut text = format!("-- chunk {first}..{last}\n");
    text.push_str(&hot_keys_report(&spec, hot.as_ref(), &plan_opts, &skew));
    // The adaptive planner picks broadcast joins at run time; say what it
    // is expected to pick from the estimates now.
    let logical =
        conn.ctx.state().create_logical_plan(&sql).await.map_err(Error::from_datafusion)?;
    let logical = conn.ctx.state().optimize(&logical).map_err(Error::from_datafusion)?;
    for note in sluice_sql::broadcast::notes(&conn.ctx.state(), &logical)
        .await
        .map_err(Error::from_datafusion)?
    {
        text.push_str(&format!("-- {note}\n"));
    }
    text.push_str(&format!("{sql}\n\n"));
    if let (true, Some(scheduler)) = (analyze, &conn.scheduler) {
        // Ballista cannot EXPLAIN ANALYZE this plan, and its adaptive planner
        // picks join strategies (broadcast or partitioned) only at run time:
        // run the chunk's write and show the plan the scheduler executed.
        let copy = |dir: &str| plan::copy_statement(&spec, first, last, &types, &plan_opts, dir);
        text.push_str(&executed_plan(&conn.ctx, scheduler, conn.token.as_deref(), copy).await?);
        return Ok(text);
    }
    let verb = if analyze { "EXPLAIN ANALYZE" } else { "EXPLAIN" };
    let batches = run_sql(&conn.ctx, &format!("{verb} {sql}")).await?;
    for b in &batches {
        let (Some(kind), Some(plan)) =
            (b.column(0).as_string_opt::<i32>(), b.column(1).as_string_opt::<i32>())
        else {
            continue;
        };
        for i in 0..b.num_rows() {
            text.push_str(&format!("{}:\n{}\n\n", kind.value(i), plan.value(i)));
        }
    }
    Ok(text)
}

/// Runs `copy` (a chunk's `COPY` into the folder it is given) into a
/// throwaway folder on the cluster, then returns the physical plan the
/// scheduler executed (its REST API, `/api/job/{id}`), preceded by one line
/// per broadcast join (`HashJoinExec: mode=CollectLeft`, whose build side
/// every task reads whole).
async fn executed_plan(
    ctx: &SessionContext,
    scheduler: &sluice_proto::HostPort,
    token: Option<&str>,
    copy: impl Fn(&str) -> String,
) -> Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-explain-")
        .tempdir()
        .map_err(|e| io_err(&std::env::temp_dir(), e))?;
    let job_name = format!(
        "sluice-explain-{}",
        dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    );
    run_sql(ctx, &format!("SET ballista.job.name = '{job_name}'")).await?;
    run_sql(ctx, &copy(&format!("{}/", dir.path().display()))).await?;
    let rest = |path: String| async move {
        let addr = scheduler.to_string();
        match crate::http::get_as(&addr, &path, token, std::time::Duration::from_secs(10)).await {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body).map_err(|e| {
                Error::Sql { message: format!("scheduler {addr}{path}: not JSON: {e}") }
            }),
            Ok((status, body)) => Err(Error::Sql {
                message: format!("scheduler {addr}{path}: HTTP {status}: {}", body.trim()),
            }),
            Err(e) => Err(Error::SchedulerUnreachable {
                addr: scheduler.clone(),
                reason: format!("REST API {path}: {e}"),
            }),
        }
    };
    let jobs = rest("/api/jobs".to_string()).await?;
    let Some(id) = jobs.as_array().into_iter().flatten().find_map(|j| {
        (j["job_name"].as_str() == Some(job_name.as_str()))
            .then(|| j["job_id"].as_str().map(str::to_string))
            .flatten()
    }) else {
        return Err(Error::Sql {
            message: format!("the scheduler has no job named {job_name} (its REST API is off?)"),
        });
    };
    let job = rest(format!("/api/job/{id}")).await?;
    let physical = job["physical_plan"].as_str().unwrap_or_default();
    let lines: Vec<&str> = physical.lines().collect();
    let mut text = format!("-- executed plan of job {id} (adaptive join decisions resolved)\n");
    for (i, line) in lines.iter().enumerate() {
        if let Some(join) = line.trim().strip_prefix("HashJoinExec: mode=CollectLeft") {
            let join_type =
                join.split(", ").find_map(|p| p.strip_prefix("join_type=")).unwrap_or("?");
            let build = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
            let build: String = build.chars().take(160).collect();
            text.push_str(&format!(
                "-- broadcast join ({join_type}): every task reads the build side whole: {build}\n"
            ));
        }
    }
    text.push_str(&format!("\n{physical}\n"));
    Ok(text)
}

/// The `--explain` lines on skew: the range's hot entities (more than
/// `sluice.skew.hot_key_share` of the rows its sources feed the tiles
/// aggregation) and what the plan does about them.
fn hot_keys_report(
    spec: &JobSpec,
    hot: Option<&HotEntities>,
    plan_opts: &plan::PlanOptions,
    skew: &SluiceOptions,
) -> String {
    let Some(hot) = hot else {
        return "-- skew handling off (sluice.skew.enabled=false): no hot-key detection, no salting; every source row of an entity crosses the shuffle to the one task that owns it (combine=0)\n".to_string();
    };
    let key = &spec.entity.key;
    let mut text = format!(
        "-- hot keys (> {:.1}% of the source rows the tiles aggregation reads, sluice.skew.hot_key_share; {}): ",
        skew.skew_hot_key_share * 100.0,
        hot.how
    );
    if hot.keys.is_empty() {
        text.push_str("none\n");
    } else {
        let shown: Vec<String> = hot
            .keys
            .iter()
            .map(|(k, share)| format!("{key}={k} ({:.1}%)", share * 100.0))
            .collect();
        text.push_str(&format!("{}\n", shown.join(", ")));
    }
    match &plan_opts.salted {
        Some(salted) => text.push_str(&format!(
            "-- salted tiles aggregation on {key}: {n} hot keys, each spread over {b} salt buckets on distinct shuffle partitions of {p} (salt: a hash of the row's day); grouped by ({key}, salt), then each hot entity's windows merged per feature day (sum, min, max) by sluice_merge_salted in the write's grouping by date (no extra stage)\n",
            n = salted.keys.len(),
            b = salted.salts.first().map_or(0, Vec::len),
            p = hot.partitions,
        )),
        None => text.push_str(&format!("-- no salting: no hot {key}\n")),
    }
    text.push_str("-- skew handling on (sluice.skew.enabled): the partial tiles aggregation combines each entity's values per day before the shuffle, so an entity costs the final aggregation its active days, not its rows\n");
    text
}

/// Runs a backfill.
///
/// # Errors
/// Bad spec or flags ([`Error::Usage`] naming file and field), an
/// unreachable cluster, a failing query, or a failed quality expectation
/// (the report is in the error message; nothing of that chunk is committed).
pub async fn run(opts: &BackfillOptions) -> Result<BackfillReport> {
    // Every chunk job carries the backfill's id as its Ballista job name, so
    // a cancel can find the jobs still running.
    let id = opts.id.clone().unwrap_or_else(crate::registry::new_id);
    let mut named = opts.clone();
    named.id = Some(id.clone());
    // Plain DataFusion (`--local`) has no Ballista settings.
    let ballista = !matches!(opts.target, Target::Local);
    if ballista && !named.settings.iter().any(|(k, _)| k == JOB_NAME_KEY) {
        named.settings.push((JOB_NAME_KEY.to_string(), job_name(&id)));
    }
    run_named(&named).await
}

const JOB_NAME_KEY: &str = "ballista.job.name";

fn job_name(id: &str) -> String {
    format!("sluice backfill {id}")
}

/// Cancels the backfill's jobs still queued or running on the scheduler and
/// waits (up to a minute) until none is, so nothing writes into the staging
/// folder afterwards.
async fn cancel_jobs(scheduler: &sluice_proto::HostPort, token: Option<&str>, name: &str) {
    use ballista_core::serde::protobuf::CancelJobParams;
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    let addr = scheduler.to_string();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let mut grpc = SchedulerGrpcClient::connect(scheduler.http_url()).await.ok();
    while Instant::now() < deadline {
        let Ok((200, body)) =
            crate::http::get_as(&addr, "/api/jobs", token, std::time::Duration::from_secs(5)).await
        else {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            continue;
        };
        if grpc.is_none() {
            grpc = SchedulerGrpcClient::connect(scheduler.http_url()).await.ok();
        }
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        let live: Vec<String> = jobs
            .iter()
            .filter(|j| {
                j["job_name"] == name && matches!(j["status"].as_str(), Some("Queued" | "Running"))
            })
            .filter_map(|j| j["job_id"].as_str().map(str::to_string))
            .collect();
        if live.is_empty() {
            return;
        }
        for job_id in live {
            let Some(client) = grpc.as_mut() else { break };
            let mut request = tonic::Request::new(CancelJobParams { job_id: job_id.clone() });
            if let Some(token) = token
                && let Ok(value) = format!("Bearer {token}").parse()
            {
                request.metadata_mut().insert("authorization", value);
            }
            if let Err(e) = client.cancel_job(request).await {
                tracing::warn!(job = %job_id, error = %e, "cannot cancel a chunk job");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn run_named(opts: &BackfillOptions) -> Result<BackfillReport> {
    let started = Instant::now();
    let run_id = opts.id.clone().unwrap_or_default();
    let Prepared { spec, spec_label, out, conn, types, plan_opts, tables, .. } =
        prepare(opts).await?;
    std::fs::create_dir_all(&out).map_err(|e| io_err(&out, e))?;
    let _lock = OutputLock::acquire(sibling(&out, "sluice-lock"))?;
    let staging_root = sibling(&out, "sluice-staging");
    if staging_root.exists() {
        // Left by a killed run: nothing in it was committed.
        std::fs::remove_dir_all(&staging_root).map_err(|e| io_err(&staging_root, e))?;
    }
    std::fs::create_dir_all(&staging_root).map_err(|e| io_err(&staging_root, e))?;

    let all: Vec<NaiveDate> = opts.from.iter_days().take_while(|d| *d <= opts.to).collect();
    let done = committed_dates(&out);
    let missing: Vec<NaiveDate> = all.iter().copied().filter(|d| !done.contains(d)).collect();
    let plan_chunks = chunks(&missing, opts.chunk_days_for(missing.len()));

    let bar = if opts.progress && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(missing.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} dates  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let rows_done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let session = Session::new(conn);
    let registry = match &opts.target {
        Target::Cluster(cluster) => {
            crate::registry::Registry::start(
                cluster,
                opts,
                &out,
                all.len(),
                all.len() - missing.len(),
            )
            .await
        }
        _ => None,
    };
    let results = futures::stream::iter(plan_chunks.iter().copied())
        .map(|(first, last)| {
            let session = &session;
            let run_id = &run_id;
            let registry = &registry;
            let tables = &tables;
            let spec = &spec;
            let out = &out;
            let staging_root = &staging_root;
            let types = &types;
            let plan_opts = &plan_opts;
            let bar = bar.clone();
            let rows_done = rows_done.clone();
            let failed = failed.clone();
            async move {
                if failed.load(Ordering::SeqCst) {
                    return Ok::<_, Error>((vec![], 0usize, 0u64, false));
                }
                let label = format!("{first}_{last}");
                let dates: Vec<NaiveDate> = first.iter_days().take_while(|d| *d <= last).collect();
                let mut attempt = 0;
                let (staging, results, per_date) = loop {
                    if let Some(r) = registry {
                        r.chunk(&label, "running", None).await;
                    }
                    let (generation, ctx) = session.current().await;
                    // A fresh folder per attempt: tasks of a lost attempt may still be writing.
                    // Named after this run too: jobs of a killed earlier run may
                    // still be writing into that run's folders.
                    let staging = staging_root.join(format!("{label}.{run_id}.{attempt}"));
                    let copy = plan::copy_statement(
                        spec,
                        first,
                        last,
                        types,
                        plan_opts,
                        &format!("{}/", staging.display()),
                    );
                    let ran = async {
                        run_sql(&ctx, &copy).await?;
                        check_chunk(&ctx, spec, &staging, &label, &dates).await
                    }
                    .await;
                    match ran {
                        Ok((results, per_date)) => break (staging, results, per_date),
                        Err(e) if e.lost_to_executor_loss() && attempt < MAX_FAILOVER_RETRIES => {
                            tracing::warn!(chunk = %label, error = %e, "chunk's job stopped by an executor loss; resubmitting it");
                            let _ = std::fs::remove_dir_all(&staging);
                            attempt += 1;
                        }
                        // A peer stopped answering while the scheduler still
                        // does: an executor went away holding output the
                        // client was reading (Ballista reports a failed
                        // connection to it only as text). With an etcd
                        // cluster the arm below retries on the leader.
                        Err(e) if attempt < MAX_FAILOVER_RETRIES
                            && !matches!(opts.target, Target::Cluster(_))
                            && matches!(e, Error::Query { class: sluice_proto::ErrorClass::External, .. })
                            && session.scheduler_answers().await =>
                        {
                            tracing::warn!(chunk = %label, error = %e, "chunk's output lost with an executor; resubmitting it");
                            let _ = std::fs::remove_dir_all(&staging);
                            attempt += 1;
                        }
                        Err(e) if retry_on_new_leader(&opts.target, &e) && attempt < MAX_FAILOVER_RETRIES => {
                            tracing::warn!(chunk = %label, error = %e, "chunk lost with the scheduler; resubmitting it to the leader");
                            let _ = std::fs::remove_dir_all(&staging);
                            session.reconnect(generation, opts, tables).await?;
                            attempt += 1;
                        }
                        Err(e) => {
                            if let Some(r) = registry {
                                r.chunk(&label, "failed", Some(&e.to_string())).await;
                            }
                            return Err(e);
                        }
                    }
                };
                if results.iter().any(|r| !r.passed) {
                    failed.store(true, Ordering::SeqCst);
                    let _ = std::fs::remove_dir_all(&staging);
                    if let Some(r) = registry {
                        r.chunk(&label, "failed", Some("quality expectations failed")).await;
                    }
                    return Ok((results, 0, 0, true));
                }
                let committed = commit(&staging, out, &dates)?;
                let _ = std::fs::remove_dir_all(&staging);
                if let Some(r) = registry {
                    r.committed(&label, committed).await;
                }
                let rows: u64 = per_date.iter().map(|(_, n)| n).sum();
                let total = rows_done.fetch_add(rows, Ordering::SeqCst) + rows;
                if let Some(bar) = &bar {
                    bar.inc(dates.len() as u64);
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!("{total} rows, {:.0} rows/s", total as f64 / secs));
                }
                Ok((results, committed, rows, false))
            }
        })
        .buffer_unordered(opts.parallel.max(1))
        .collect::<Vec<_>>();
    // `sluice backfill cancel ID`: dropping the chunks cancels their jobs.
    let results = match &registry {
        Some(r) => tokio::select! {
            results = results => results,
            () = r.cancelled() => {
                let id = r.id().await;
                let (_, _, scheduler) = session.current_scheduler().await;
                if let Some(scheduler) = scheduler {
                    cancel_jobs(&scheduler, opts.token.as_deref(), &job_name(&id)).await;
                }
                let _ = std::fs::remove_dir_all(&staging_root);
                r.finish("cancelled", Some("cancelled by `sluice backfill cancel`".into())).await;
                return Err(Error::Usage(format!(
                    "backfill {id} was cancelled; {} dates stay committed in {} (a rerun completes the rest)",
                    committed_dates(&out).len(),
                    out.display()
                )));
            }
        },
        None => results.await,
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let _ = std::fs::remove_dir_all(&staging_root);

    let mut report = BackfillReport {
        spec: spec_label,
        output: out.display().to_string(),
        from: opts.from.to_string(),
        to: opts.to.to_string(),
        dates_total: all.len(),
        dates_already_committed: all.len() - missing.len(),
        dates_committed: 0,
        chunks: plan_chunks.len(),
        rows: 0,
        seconds: 0.0,
        quality: vec![],
        ok: true,
    };
    let mut first_error = None;
    for r in results {
        match r {
            Ok((q, committed, rows, failed_quality)) => {
                report.dates_committed += committed;
                report.rows += rows;
                report.ok &= !failed_quality;
                report.quality.extend(q);
            }
            Err(e) => {
                report.ok = false;
                first_error.get_or_insert(e);
            }
        }
    }
    report.quality.sort_by(|a, b| a.chunk.cmp(&b.chunk));
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(r) = &registry {
        let state = match (&first_error, report.ok) {
            (Some(_), _) => "failed",
            (None, false) => "failed-quality",
            (None, true) => "done",
        };
        r.finish(state, first_error.as_ref().map(ToString::to_string)).await;
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(report)
}

/// Times a chunk lost with a failed-over scheduler (or stopped by an
/// executor loss) is resubmitted.
const MAX_FAILOVER_RETRIES: u32 = 3;

/// Whether `e` means the scheduler went away (not the chunk's fault) on a
/// target where a new leader can take the chunk.
fn retry_on_new_leader(target: &Target, e: &Error) -> bool {
    matches!(target, Target::Cluster(_)) && e.class() == sluice_proto::ErrorClass::External
}

/// The backfill's session, replaced when the leader changes.
struct Session {
    current: tokio::sync::RwLock<(u64, SessionContext, crate::connect::Connection)>,
}

impl Session {
    fn new(conn: crate::connect::Connection) -> Self {
        let ctx = conn.ctx.clone();
        Self { current: tokio::sync::RwLock::new((0, ctx, conn)) }
    }

    async fn current(&self) -> (u64, SessionContext) {
        let guard = self.current.read().await;
        (guard.0, guard.1.clone())
    }

    /// Whether the scheduler this session submits to accepts connections.
    async fn scheduler_answers(&self) -> bool {
        let (_, _, scheduler) = self.current_scheduler().await;
        match scheduler {
            Some(addr) => crate::connect::check_reachable(&addr).await.is_ok(),
            None => false,
        }
    }

    async fn current_scheduler(&self) -> (u64, SessionContext, Option<sluice_proto::HostPort>) {
        let guard = self.current.read().await;
        (guard.0, guard.1.clone(), guard.2.scheduler.clone())
    }

    /// Connects to the current leader, unless a concurrent chunk already did
    /// since `generation`.
    async fn reconnect(
        &self,
        generation: u64,
        opts: &BackfillOptions,
        tables: &[TableSource],
    ) -> Result<()> {
        let mut guard = self.current.write().await;
        if guard.0 != generation {
            return Ok(());
        }
        let conn = connect_as(&opts.target, opts.token.as_deref(), &opts.settings, tables).await?;
        tracing::info!(scheduler = ?conn.scheduler, "backfill reconnected to the leader");
        *guard = (generation + 1, conn.ctx.clone(), conn);
        Ok(())
    }
}

/// The human-readable quality report.
pub fn quality_report(report: &BackfillReport) -> String {
    use std::collections::BTreeMap;
    let mut by_expectation: BTreeMap<(String, String), (usize, usize, u64, Vec<String>)> =
        BTreeMap::new();
    for r in &report.quality {
        let e = by_expectation.entry((r.expectation.clone(), r.column.clone())).or_default();
        e.0 += 1;
        if !r.passed {
            e.1 += 1;
            e.2 += r.failing;
            for s in &r.samples {
                if e.3.len() < 5 {
                    e.3.push(format!("[{}] {s}", r.chunk));
                }
            }
        }
    }
    let mut out = String::from("quality:\n");
    for ((kind, column), (chunks, failed, failing, samples)) in by_expectation {
        if failed == 0 {
            out.push_str(&format!("  PASS {kind:<18} {column:<28} ({chunks} chunk(s))\n"));
        } else {
            out.push_str(&format!("  FAIL {kind:<18} {column:<28} {failing} failing in {failed} of {chunks} chunk(s)\n"));
            for s in samples {
                out.push_str(&format!("         e.g. {s}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_chunks_fill_every_round_and_stay_bounded() {
        // A year on 2 slots: one round of two chunks.
        assert_eq!(auto_chunk_days(365, 2), 183);
        // A quarter: still both slots busy.
        assert_eq!(auto_chunk_days(90, 2), 45);
        // Two years: four chunks, none over the bound.
        assert_eq!(auto_chunk_days(730, 2), 183);
        // 400 dates: 3 chunks would leave a slot idle in the second round; 4 of 100.
        assert_eq!(auto_chunk_days(400, 2), 100);
        assert_eq!(auto_chunk_days(1, 2), 1);
        assert_eq!(auto_chunk_days(0, 0), 1);
        for dates in 1..1200 {
            for parallel in 1..5 {
                let days = auto_chunk_days(dates, parallel) as usize;
                assert!((1..=MAX_AUTO_CHUNK_DAYS as usize).contains(&days), "{dates}/{parallel}");
                let n = dates.div_ceil(days);
                assert!(n >= dates.div_ceil(MAX_AUTO_CHUNK_DAYS as usize), "{dates}/{parallel}");
            }
        }
    }
}
