//! DataFusion's own sqllogictest corpus on Sluice's two engines, record by
//! record.
//!
//! The files are the `test_files/` of the crates.io package
//! `datafusion-sqllogictest`, pinned to the DataFusion version Sluice runs
//! (a dependency of this crate, found through `cargo metadata`; nothing is
//! copied into the repository). Each file runs in a [`Sandbox`] laid out as
//! DataFusion's repository is (`datafusion/sqllogictest/test_files`), the
//! working directory of DataFusion's own runner, so the corpus's relative
//! paths (`test_files/scratch/…`, `../core/tests/data/…`) mean what they mean
//! upstream.
//!
//! ```text
//!  record ──► local   (DataFusion's own engine, TestContext for the file)  ──► pass / fail / timeout
//!         └─► cluster (a Ballista session on a real scheduler, through      ──► pass / fail / timeout
//!                      `sluice sql`'s salted path; the file's tables and
//!                      schemas registered as in TestContext)
//! ```
//!
//! Both engines render results with DataFusion's own conversion
//! (`datafusion_sqllogictest::convert_batches`) and are checked with its
//! validators, so a record passes on the cluster exactly when DataFusion's
//! runner would pass it. Every record runs under its own timeout, so a hang
//! or a failure is counted and the file goes on.
//!
//! Data files the corpus reads from outside the package (DataFusion's
//! `core/tests/data`, the arrow-testing and parquet-testing repositories)
//! are not in any crates.io package: records that need them fail on both
//! engines and are reported with that reason ([`missing_data`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion_sqllogictest::{
    DFColumnType, DFOutput, DFSqlLogicTestError, DataFusion, TestContext, convert_batches,
    convert_schema_to_types, df_value_validator, value_normalizer,
};
use sqllogictest::{Condition, DBOutput, Record, Runner};

/// The corpus files Sluice runs (relative to `test_files/`).
pub const FILES: &[&str] = &[
    "aggregate.slt",
    "group_by.slt",
    "joins.slt",
    "window.slt",
    "subquery.slt",
    "select.slt",
    "order.slt",
    "limit.slt",
    "union.slt",
    "cte.slt",
    "predicates.slt",
    "case.slt",
    "scalar.slt",
    "math.slt",
    "expr.slt",
    "decimal.slt",
    "datetime/timestamps.slt",
    "strings.slt",
    "in_list.slt",
    "coalesce.slt",
    "distinct_on.slt",
    "nullif.slt",
    "functions.slt",
];

/// The label DataFusion's runner adds (`onlyif Datafusion` records run).
const UPSTREAM_LABEL: &str = "Datafusion";

/// The folder of the `datafusion-sqllogictest` package in cargo's registry.
///
/// # Errors
/// When `cargo metadata` fails or does not list the package.
pub fn package_dir() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(crate::workspace_root())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let manifest = packages
        .iter()
        .find(|p| p["name"] == "datafusion-sqllogictest")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| anyhow::anyhow!("cargo metadata lists no datafusion-sqllogictest"))?;
    Ok(Path::new(manifest)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("manifest path {manifest} has no folder"))?
        .to_path_buf())
}

/// A copy of the package's `test_files/` and `data/` at
/// `<tmp>/datafusion/sqllogictest`, the runner's working directory upstream
/// (scratch files are written under it).
pub struct Sandbox {
    _root: tempfile::TempDir,
    /// `<tmp>/datafusion/sqllogictest`.
    pub dir: PathBuf,
}

impl Sandbox {
    /// # Errors
    /// When the package cannot be found or copied.
    pub fn new() -> anyhow::Result<Self> {
        let package = package_dir()?;
        let root = tempfile::Builder::new().prefix("sluice-corpus-").tempdir()?;
        let dir = root.path().join("datafusion").join("sqllogictest");
        for sub in ["test_files", "data"] {
            copy_dir(&package.join(sub), &dir.join(sub))?;
        }
        std::fs::create_dir_all(dir.join("test_files/scratch"))?;
        Ok(Self { _root: root, dir })
    }

    /// A corpus file's path in the sandbox.
    pub fn file(&self, relative: &str) -> PathBuf {
        self.dir.join("test_files").join(relative)
    }

    /// Empties `test_files/scratch/<stem>` as DataFusion's runner does
    /// before each file.
    pub fn reset_scratch(&self, relative: &str) -> anyhow::Result<()> {
        let stem = Path::new(relative)
            .file_stem()
            .ok_or_else(|| anyhow::anyhow!("{relative}: no file name"))?;
        let scratch = self.dir.join("test_files/scratch").join(stem);
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch)?;
        }
        std::fs::create_dir_all(&scratch)?;
        Ok(())
    }
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// How one record ended on one engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// The runner's message (wrong result, unexpected error, …).
    Fail(String),
    /// Still running when the record's timeout passed.
    Timeout,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Pass)
    }
}

/// One statement or query of a file, with how it ended on each engine.
#[derive(Debug, Clone)]
pub struct RecordResult {
    pub file: String,
    pub line: u32,
    pub sql: String,
    pub local: Outcome,
    pub cluster: Outcome,
    /// The runner's failure had a result to compare (a wrong answer rather
    /// than an error), on the cluster.
    pub cluster_wrong_result: bool,
    /// The cluster's rows are the expected rows in another order, and the
    /// statement does not define an order (no `ORDER BY` at its root).
    pub cluster_order_only: bool,
    /// The cluster's rows differ from the expected ones only in naming
    /// string columns' type `Utf8` where local says `Utf8View`.
    pub cluster_view_types_only: bool,
}

/// The engine on the cluster: a Ballista session on a running scheduler;
/// statements run as `sluice sql` runs them (hot-key salting of joins),
/// results rendered by DataFusion's own conversion.
pub struct ClusterEngine {
    ctx: SessionContext,
    /// Whether the statement last run defines the order of its rows (a
    /// sort at its root), for the harness to read.
    ordered: Arc<Mutex<bool>>,
}

/// Whether `plan` returns its rows in an order it defines: a sort at its
/// root, under projections, aliases and limits.
pub fn defines_order(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Sort(_) => true,
        LogicalPlan::Projection(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Filter(_) => plan.inputs().first().is_some_and(|i| defines_order(i)),
        // Not a query: its text (EXPLAIN) or its count is the answer.
        LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Dml(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::Statement(_) => true,
        _ => false,
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for ClusterEngine {
    type Error = DFSqlLogicTestError;
    type ColumnType = DFColumnType;

    async fn run(&mut self, sql: &str) -> Result<DFOutput, DFSqlLogicTestError> {
        let ordered = match self.ctx.state().create_logical_plan(sql).await {
            Ok(plan) => defines_order(&plan),
            Err(_) => true,
        };
        *self.ordered.lock().unwrap_or_else(|p| p.into_inner()) = ordered;
        let (schema, batches) = sluice_client::connect::collect_salted(&self.ctx, sql).await?;
        let types = convert_schema_to_types(schema.fields());
        let rows = convert_batches(&schema, batches, false)?;
        if rows.is_empty() && types.is_empty() {
            Ok(DBOutput::StatementComplete(0))
        } else {
            Ok(DBOutput::Rows { types, rows })
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sluice-cluster"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// A cluster session for one file: the file's tables, schemas and functions
/// of DataFusion's `TestContext` registered as well, so the file sees the
/// same catalog on both engines.
///
/// # Errors
/// When the scheduler cannot be reached.
pub async fn cluster_session(
    scheduler: &str,
    reference: &SessionContext,
) -> anyhow::Result<SessionContext> {
    let target = sluice_client::Target::Scheduler(scheduler.parse()?);
    // DataFusion's runner plans with 4 partitions (TestContext). In-memory
    // tables over the inline limit are written to a folder the executors
    // (on this machine) read.
    let stage = std::env::current_dir()?.join("test_files/scratch/sluice-memory-tables");
    std::fs::create_dir_all(&stage)?;
    let settings = [
        ("datafusion.execution.target_partitions".to_string(), "4".to_string()),
        ("sluice.memory_tables.stage_url".to_string(), stage.display().to_string()),
    ];
    let conn = sluice_client::connect(&target, &settings, &[]).await?;
    let ctx = conn.ctx;
    copy_catalog(reference, &ctx)?;
    Ok(ctx)
}

/// Registers in `to` the schemas, tables and functions `from` has and `to`
/// lacks.
fn copy_catalog(from: &SessionContext, to: &SessionContext) -> anyhow::Result<()> {
    let state = from.state();
    let default_catalog = &state.config().options().catalog.default_catalog;
    let (Some(src), Some(dst)) = (from.catalog(default_catalog), to.catalog(default_catalog))
    else {
        return Ok(());
    };
    for name in src.schema_names() {
        let Some(schema) = src.schema(&name) else { continue };
        match dst.schema(&name) {
            None => {
                dst.register_schema(&name, schema)?;
            }
            Some(target) => {
                for table in schema.table_names() {
                    if target.table_exist(&table) {
                        continue;
                    }
                    let provider = futures::executor::block_on(schema.table(&table))?;
                    if let Some(provider) = provider {
                        target.register_table(table, provider)?;
                    }
                }
            }
        }
    }
    let have = to.state();
    for (name, udf) in state.scalar_functions() {
        if !have.scalar_functions().contains_key(name) {
            to.register_udf(udf.as_ref().clone());
        }
    }
    Ok(())
}

fn should_skip(conditions: &[Condition], labels: &[&str]) -> bool {
    conditions.iter().any(|c| match c {
        Condition::OnlyIf { label } => !labels.contains(&label.as_str()),
        Condition::SkipIf { label } => labels.contains(&label.as_str()),
    })
}

/// The line and SQL of a statement or query record that runs (not skipped
/// by its conditions); `None` for other records.
fn counted(record: &Record<DFColumnType>, labels: &[&str]) -> Option<(u32, String)> {
    match record {
        Record::Statement { loc, conditions, sql, .. }
        | Record::Query { loc, conditions, sql, .. }
            if !should_skip(conditions, labels) =>
        {
            Some((loc.line(), sql.clone()))
        }
        _ => None,
    }
}

fn configure<D: sqllogictest::AsyncDB<ColumnType = DFColumnType>, M>(runner: &mut Runner<D, M>)
where
    M: sqllogictest::MakeConnection<Conn = D>,
{
    runner.add_label(UPSTREAM_LABEL);
    runner.with_column_validator(sqllogictest::strict_column_validator);
    runner.with_normalizer(value_normalizer);
    runner.with_validator(df_value_validator);
}

async fn run_one<D, M>(
    runner: &mut Runner<D, M>,
    record: Record<DFColumnType>,
    timeout: Duration,
) -> (Outcome, bool, Option<(String, String)>)
where
    D: sqllogictest::AsyncDB<ColumnType = DFColumnType>,
    M: sqllogictest::MakeConnection<Conn = D>,
{
    match tokio::time::timeout(timeout, runner.run_async(record)).await {
        Ok(Ok(_)) => (Outcome::Pass, false, None),
        Ok(Err(e)) => {
            let wrong = matches!(
                e.kind(),
                sqllogictest::TestErrorKind::QueryResultMismatch { .. }
                    | sqllogictest::TestErrorKind::QueryResultColumnsMismatch { .. }
            );
            let mismatch = match e.kind() {
                sqllogictest::TestErrorKind::QueryResultMismatch { expected, actual, .. } => {
                    Some((expected.clone(), actual.clone()))
                }
                _ => None,
            };
            (Outcome::Fail(e.display(false).to_string()), wrong, mismatch)
        }
        Err(_) => (Outcome::Timeout, false, None),
    }
}

/// The engines' sandboxes: each engine runs a file in its own copy, so
/// files one writes (`COPY … TO 'test_files/scratch/…'`) are not read by
/// the other.
pub struct Sandboxes {
    pub local: Sandbox,
    pub cluster: Sandbox,
}

impl Sandboxes {
    /// # Errors
    /// As [`Sandbox::new`].
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self { local: Sandbox::new()?, cluster: Sandbox::new()? })
    }
}

/// One record as one engine ran it.
struct Ran {
    line: u32,
    sql: String,
    outcome: Outcome,
    wrong: bool,
    order_only: bool,
    view_types_only: bool,
}

/// A result's rows, sorted.
fn sorted_rows(text: &str) -> Vec<String> {
    let mut rows: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    rows.sort();
    rows
}

/// `SLUICE_CORPUS_TRACE=1` prints every record's outcome as it ends.
fn trace() -> bool {
    std::env::var("SLUICE_CORPUS_TRACE").is_ok_and(|v| v == "1")
}

/// Runs the statements and queries of `records` on `runner`, each under
/// `timeout`, in `sandbox` (the process's working directory meanwhile).
async fn run_records<D, M>(
    runner: &mut Runner<D, M>,
    records: &[Record<DFColumnType>],
    timeout: Duration,
    ordered: Option<&Mutex<bool>>,
) -> Vec<Ran>
where
    D: sqllogictest::AsyncDB<ColumnType = DFColumnType>,
    M: sqllogictest::MakeConnection<Conn = D>,
{
    let labels = [UPSTREAM_LABEL];
    let mut out = Vec::new();
    for record in records {
        if matches!(record, Record::Halt { .. }) {
            break;
        }
        match counted(record, &labels) {
            Some((line, sql)) => {
                let started = Instant::now();
                let (outcome, wrong, mismatch) = run_one(runner, record.clone(), timeout).await;
                let unordered =
                    ordered.is_some_and(|o| !*o.lock().unwrap_or_else(|p| p.into_inner()));
                let order_only = unordered
                    && mismatch.as_ref().is_some_and(|(e, a)| sorted_rows(e) == sorted_rows(a));
                let view_types_only =
                    mismatch.as_ref().is_some_and(|(e, a)| string_types_only(e, a));
                if trace() {
                    let first = sql.lines().next().unwrap_or_default();
                    let shown = match &outcome {
                        Outcome::Pass => "pass",
                        Outcome::Fail(_) => "FAIL",
                        Outcome::Timeout => "TIMEOUT",
                    };
                    eprintln!(
                        "[corpus] line {line}: {shown} in {:.1?}: {first}",
                        started.elapsed()
                    );
                }
                out.push(Ran { line, sql, outcome, wrong, order_only, view_types_only });
            }
            // Control records (sort mode, …) are applied, not counted.
            None => {
                let _ = runner.run_async(record.clone()).await;
            }
        }
    }
    out
}

/// Runs one corpus file on both engines, record by record, each record
/// under `timeout`: first on `local` in its sandbox, then on the cluster in
/// its own (the process's working directory is each sandbox in turn).
///
/// # Errors
/// When the file cannot be parsed or the cluster session cannot be opened;
/// failures of records are results, not errors.
pub async fn run_file(
    sandboxes: &Sandboxes,
    relative: &str,
    scheduler: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<RecordResult>> {
    let records = sqllogictest::parse_file::<DFColumnType>(sandboxes.local.file(relative))?;
    let rel = PathBuf::from(relative);

    std::env::set_current_dir(&sandboxes.local.dir)?;
    sandboxes.local.reset_scratch(relative)?;
    let local_ctx = TestContext::try_new_for_test_file(Path::new(relative))
        .await
        .ok_or_else(|| anyhow::anyhow!("{relative}: DataFusion's runner skips this file"))?;
    let local_session = local_ctx.session_ctx().clone();
    let mut local = Runner::new(move || {
        let (ctx, rel) = (local_session.clone(), rel.clone());
        async move { Ok(DataFusion::new(ctx, rel, indicatif::ProgressBar::hidden())) }
    });
    configure(&mut local);
    let local_out = run_records(&mut local, &records, timeout, None).await;
    drop(local);

    std::env::set_current_dir(&sandboxes.cluster.dir)?;
    sandboxes.cluster.reset_scratch(relative)?;
    // The file's tables, schemas and functions as DataFusion's TestContext
    // makes them (made in the cluster's sandbox).
    let reference = TestContext::try_new_for_test_file(Path::new(relative))
        .await
        .ok_or_else(|| anyhow::anyhow!("{relative}: DataFusion's runner skips this file"))?;
    let cluster_ctx = cluster_session(scheduler, reference.session_ctx()).await?;
    let ordered = Arc::new(Mutex::new(true));
    let engine_ordered = Arc::clone(&ordered);
    let mut cluster = Runner::new(move || {
        let ctx = cluster_ctx.clone();
        let ordered = Arc::clone(&engine_ordered);
        async move { Ok(ClusterEngine { ctx, ordered }) }
    });
    configure(&mut cluster);
    let cluster_out = run_records(&mut cluster, &records, timeout, Some(&ordered)).await;

    Ok(local_out
        .into_iter()
        .zip(cluster_out)
        .map(|(local, cluster)| RecordResult {
            file: relative.to_string(),
            line: local.line,
            sql: local.sql,
            local: local.outcome,
            cluster: cluster.outcome,
            cluster_wrong_result: cluster.wrong,
            cluster_order_only: cluster.order_only,
            cluster_view_types_only: cluster.view_types_only,
        })
        .collect())
}

/// Whether `expected` and `actual` differ only in naming string types,
/// where `expected` says `Utf8View`: the cluster's `Utf8`, or a type chosen
/// from it (`coalesce(utf8, dictionary)` keeps the dictionary, where
/// `coalesce(utf8view, dictionary)` gives `Utf8View`).
pub fn string_types_only(expected: &str, actual: &str) -> bool {
    fn erased(s: &str) -> String {
        let mut s = s.to_string();
        for key in ["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"] {
            s = s.replace(&format!("Dictionary({key}, Utf8)"), "<string>");
        }
        s.replace("Utf8View", "<string>").replace("Utf8", "<string>")
    }
    expected != actual && expected.contains("Utf8View") && erased(expected) == erased(actual)
}

/// Why a record that passes on `local` may fail on the cluster by design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IntendedDifference {
    /// `EXPLAIN` shows the distributed plan (stages, shuffle writers and
    /// readers, Sluice's `sluice_skew`/`sluice_broadcast` notes) that the
    /// scheduler runs, not DataFusion's single-process plan text.
    Explain,
    /// The rows are the expected ones in another order, and the statement
    /// has no `ORDER BY` at its root: SQL leaves that order undefined, and
    /// a distributed engine returns rows as its tasks finish.
    RowOrder,
    /// String columns are `Utf8` where DataFusion makes them `Utf8View`:
    /// Ballista turns `map_string_types_to_utf8view` and
    /// `schema_force_view_types` off on every session (its shuffle writer
    /// does not handle view types; `ballista-core` `extension.rs`). Values
    /// are equal; only `arrow_typeof` tells (of the column, or of a type
    /// chosen from it: `coalesce` of a string and a dictionary).
    StringViewTypes,
}

impl IntendedDifference {
    pub const ALL: [IntendedDifference; 3] = [Self::Explain, Self::RowOrder, Self::StringViewTypes];

    pub fn reason(self) -> &'static str {
        match self {
            Self::Explain => "EXPLAIN shows the distributed plan the scheduler runs",
            Self::RowOrder => "same rows, another order, and no ORDER BY at the statement's root",
            Self::StringViewTypes => {
                "Utf8 (or a type chosen from it) where local says Utf8View (Ballista disables view types)"
            }
        }
    }
}

/// The intended difference covering `r`, if `r` passes locally and not on
/// the cluster for one of those reasons.
pub fn intended(r: &RecordResult) -> Option<IntendedDifference> {
    if !r.local.passed() || r.cluster.passed() {
        return None;
    }
    let first_word = r.sql.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
    if first_word == "explain" {
        Some(IntendedDifference::Explain)
    } else if r.cluster_order_only {
        Some(IntendedDifference::RowOrder)
    } else if r.cluster_view_types_only {
        Some(IntendedDifference::StringViewTypes)
    } else {
        None
    }
}

/// Why a record failing on `local` fails: a data file the corpus reads from
/// outside its package, when that is the reason.
pub fn missing_data(outcome: &Outcome) -> Option<String> {
    let Outcome::Fail(msg) = outcome else { return None };
    for marker in
        ["../core/tests/data", "../../testing/", "../../parquet-testing/", "../core/tests/tpch-csv"]
    {
        if let Some(at) = msg.find(marker) {
            let rest = &msg[at..];
            let end = rest
                .find(|c: char| c == '\'' || c == '"' || c.is_whitespace())
                .unwrap_or(rest.len());
            return Some(rest[..end].to_string());
        }
    }
    None
}

/// Per-file counts of a run.
#[derive(Debug, Default, Clone)]
pub struct FileCounts {
    pub records: usize,
    pub local: usize,
    pub cluster: usize,
    /// Pass on local, not on the cluster.
    pub local_only: usize,
    /// Pass on the cluster, not on local.
    pub cluster_only: usize,
    pub cluster_timeouts: usize,
    pub local_timeouts: usize,
}

/// Counts per file, in [`FILES`] order.
pub fn counts(results: &[RecordResult]) -> BTreeMap<String, FileCounts> {
    let mut out: BTreeMap<String, FileCounts> = BTreeMap::new();
    for r in results {
        let c = out.entry(r.file.clone()).or_default();
        c.records += 1;
        c.local += usize::from(r.local.passed());
        c.cluster += usize::from(r.cluster.passed());
        c.local_only += usize::from(r.local.passed() && !r.cluster.passed());
        c.cluster_only += usize::from(!r.local.passed() && r.cluster.passed());
        c.cluster_timeouts += usize::from(r.cluster == Outcome::Timeout);
        c.local_timeouts += usize::from(r.local == Outcome::Timeout);
    }
    out
}

/// A Markdown table of [`counts`], with a total row.
pub fn report(results: &[RecordResult]) -> String {
    let counts = counts(results);
    let mut out = String::from(
        "| file | records | local | cluster | local only | cluster only | timeouts (local/cluster) |\n|---|---|---|---|---|---|---|\n",
    );
    let mut total = FileCounts::default();
    for (file, c) in &counts {
        out.push_str(&format!(
            "| {file} | {} | {} | {} | {} | {} | {}/{} |\n",
            c.records,
            c.local,
            c.cluster,
            c.local_only,
            c.cluster_only,
            c.local_timeouts,
            c.cluster_timeouts
        ));
        total.records += c.records;
        total.local += c.local;
        total.cluster += c.cluster;
        total.local_only += c.local_only;
        total.cluster_only += c.cluster_only;
        total.local_timeouts += c.local_timeouts;
        total.cluster_timeouts += c.cluster_timeouts;
    }
    let pct =
        |n: usize| if total.records == 0 { 0.0 } else { 100.0 * n as f64 / total.records as f64 };
    out.push_str(&format!(
        "| **all** | {} | {} ({:.1}%) | {} ({:.1}%) | {} | {} | {}/{} |\n",
        total.records,
        total.local,
        pct(total.local),
        total.cluster,
        pct(total.cluster),
        total.local_only,
        total.cluster_only,
        total.local_timeouts,
        total.cluster_timeouts
    ));
    out
}

/// Runs `files` on both engines against the scheduler at `scheduler`.
///
/// # Errors
/// As [`run_file`].
pub async fn run_files(
    sandboxes: &Sandboxes,
    files: &[&str],
    scheduler: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<RecordResult>> {
    let mut all = Vec::new();
    for file in files {
        let started = Instant::now();
        let results = run_file(sandboxes, file, scheduler, timeout).await?;
        let c = counts(&results);
        if let Some(c) = c.get(*file) {
            eprintln!(
                "[corpus] {file}: {} records, local {}, cluster {}, local only {}, in {:.1?}",
                c.records,
                c.local,
                c.cluster,
                c.local_only,
                started.elapsed()
            );
        }
        all.extend(results);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::string_types_only;

    #[test]
    fn string_type_names_differ_only_where_local_says_utf8view() {
        assert!(string_types_only("a Utf8View\nb Utf8View", "a Utf8\nb Utf8"));
        assert!(string_types_only("a Utf8View", "a Dictionary(Int32, Utf8)"));
        // Values differ, or local says no view type: a real difference.
        assert!(!string_types_only("a Utf8View", "b Utf8"));
        assert!(!string_types_only("a Utf8", "a Dictionary(Int32, Utf8)"));
        assert!(!string_types_only("a Utf8View", "a Int32"));
    }
}
