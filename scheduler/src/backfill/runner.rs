//! One backfill's runner: performs what the state machine
//! ([`sluice_sql::job::backfill::Machine`]) decides, feeds it the outcomes,
//! and persists the record after every step.
//!
//! ```text
//! missing dates (OUT/feature_date=D absent) ─► chunks of ≤ chunk_days consecutive dates
//!   per chunk (up to `parallel` at once), as jobs of the leader's scheduler:
//!     COPY (tiled chunk query) TO <staging>/<chunk>.<id>.<attempt>/ PARTITIONED BY (feature_date)
//!     quality expectations over the staged files ─ fail ─► staging removed, backfill fails
//!     pass ─► each staging/feature_date=D renamed to OUT/feature_date=D   (atomic commit)
//! ```
//!
//! Staging lives beside the output (`.<out>.sluice-staging/`), so readers of
//! OUT never see it; a date directory appears in OUT only by a rename of a
//! complete one, and a date already there is never written again: a chunk
//! resubmitted after a failover commits only its missing dates.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use sluice_proto::pb;
use sluice_proto::{ErrorClass, etcd::now_ms};
use sluice_sql::job::backfill::{
    Action, BackfillState, Chunk, ChunkState, Event, Failure, Machine,
};
use sluice_sql::job::plan::{self, ColumnTypes, PlanOptions};
use sluice_sql::job::quality;
use sluice_sql::job::spec::{Expectation, JobSpec};
use tokio::task::JoinSet;

use super::convert;
use super::engine::{Engine, JobIds};
use super::{BackfillId, Hub, StoreError};

/// Submissions of a chunk beyond the first for failures a retry can fix
/// (an executor lost with the chunk's output, a leader failover).
pub const MAX_RETRIES: u32 = 3;

/// A backfill's spec, compiled against its data.
pub struct Compiled {
    pub spec: JobSpec,
    pub ctx: SessionContext,
    pub types: ColumnTypes,
    pub plan_opts: PlanOptions,
    pub out: PathBuf,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// `YYYY-MM-DD` of a request field.
fn date(field: &str, s: &str) -> Result<NaiveDate, Failure> {
    sluice_sql::job::backfill::parse_date(field, s)
        .map_err(|m| Failure::new(ErrorClass::User, false, m))
}

/// Parses and validates `request` and checks the spec against the data;
/// nothing is written.
///
/// # Errors
/// A [`Failure`] of class `User` naming the file, field or line.
pub async fn compile(
    engine: &dyn Engine,
    session: &str,
    request: &pb::BackfillRequest,
) -> Result<Compiled, Failure> {
    let user = |m: String| Failure::new(ErrorClass::User, false, m);
    let from = date("from", &request.from)?;
    let to = date("to", &request.to)?;
    if from > to {
        return Err(user(format!("--from {from} is after --to {to}; expected --from <= --to")));
    }
    let spec =
        JobSpec::parse(&request.spec_text, &request.spec_label).map_err(|e| user(e.to_string()))?;
    let spec_dir = Path::new(&request.spec_dir);
    if !spec_dir.is_absolute() {
        return Err(user(format!("spec_dir '{}': expected an absolute path", request.spec_dir)));
    }
    let data_dir = match request.data_dir.as_str() {
        "" => spec_dir.to_path_buf(),
        d => spec_dir.join(d),
    };
    let out = match request.output.as_str() {
        "" => spec_dir.join(&spec.output.path),
        o => spec_dir.join(o),
    };
    let settings: Vec<(String, String)> =
        request.settings.iter().map(|s| (s.key.clone(), s.value.clone())).collect();
    let ctx = engine.session(session, &settings).await?;
    let tables = sluice_sql::job::prepare::source_tables(&spec, &request.spec_label, &data_dir)
        .map_err(|e| Failure::new(e.class(), false, e.to_string()))?;
    for t in &tables {
        t.register(&ctx).await.map_err(|e| Failure::new(e.class(), false, e.to_string()))?;
    }
    let prepared = sluice_sql::job::prepare::prepare(&ctx, &spec, &request.spec_label, from, to)
        .await
        .map_err(|e| Failure::new(e.class(), false, e.to_string()))?;
    Ok(Compiled { spec, ctx, types: prepared.types, plan_opts: prepared.plan_opts, out, from, to })
}

/// Dates committed in `out` (folders `feature_date=YYYY-MM-DD`).
pub fn committed_dates(out: &Path) -> BTreeSet<NaiveDate> {
    let mut dates = BTreeSet::new();
    for entry in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(d) = name.strip_prefix("feature_date=")
            && let Ok(date) = NaiveDate::parse_from_str(d, "%Y-%m-%d")
        {
            dates.insert(date);
        }
    }
    dates
}

/// `.<name>.<suffix>` beside `out`.
pub fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let name =
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    out.with_file_name(format!(".{name}.{suffix}"))
}

/// A new record's chunks: the range's dates not yet in the output.
pub fn plan_chunks(
    compiled: &Compiled,
    request: &pb::BackfillRequest,
) -> (Vec<Chunk>, usize, usize) {
    let all: Vec<NaiveDate> = compiled.from.iter_days().take_while(|d| *d <= compiled.to).collect();
    let done = committed_dates(&compiled.out);
    let missing: Vec<NaiveDate> = all.iter().copied().filter(|d| !done.contains(d)).collect();
    let days = sluice_sql::job::backfill::chunk_days(
        request.chunk_days,
        missing.len(),
        request.parallel.max(1) as usize,
    );
    (sluice_sql::job::backfill::chunks(&missing, days), all.len(), all.len() - missing.len())
}

/// What a chunk task reports.
enum Outcome {
    Staged,
    Checked { results: Vec<pb::QualityResult>, per_date: Vec<(NaiveDate, u64)> },
    Failed(Failure),
}

/// Runs backfill `id` from its record until it ends or this leader stops
/// leading. `cancel` turns true on a `Cancel` call.
pub async fn drive(
    hub: Arc<Hub>,
    id: BackfillId,
    mut record: pb::Backfill,
    compiled: Compiled,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) {
    let request = record.request.clone().unwrap_or_default();
    let staging_root = sibling(&compiled.out, "sluice-staging");
    if let Err(e) =
        std::fs::create_dir_all(&compiled.out).and_then(|()| std::fs::create_dir_all(&staging_root))
    {
        let failure = Failure::new(
            ErrorClass::External,
            false,
            format!("cannot create {} or its staging: {e}", compiled.out.display()),
        );
        record.failure = Some(convert::failure(&failure));
        record.state = pb::BackfillState::Failed as i32;
        finish(&hub, &mut record).await;
        return;
    }
    let chunks: Vec<Chunk> = record.chunks.iter().filter_map(convert::chunk_from_pb).collect();
    let state = convert::state_from_pb(record.state());
    let mut machine =
        Machine::restore(chunks, state, request.parallel.max(1) as usize, MAX_RETRIES);
    let runner = Runner {
        hub: Arc::clone(&hub),
        id: id.clone(),
        compiled: Arc::new(compiled),
        staging_root,
    };
    let mut tasks: JoinSet<(usize, u32, Outcome)> = JoinSet::new();
    let mut handles: HashMap<usize, (u32, tokio::task::AbortHandle, JobIds)> = HashMap::new();
    let mut per_date: HashMap<usize, Vec<(NaiveDate, u64)>> = HashMap::new();
    let mut pending_events = vec![Event::Resume];
    loop {
        for event in std::mem::take(&mut pending_events) {
            let actions = match machine.on(event.clone()) {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(backfill = %id, ?event, reason = %e, "event ignored");
                    continue;
                }
            };
            for action in actions {
                match action {
                    Action::Submit { chunk, attempt } => {
                        let jobs: JobIds = Arc::default();
                        let r = runner.clone();
                        let c = machine.chunks[chunk].clone();
                        let j = Arc::clone(&jobs);
                        let handle = tasks
                            .spawn(async move { (chunk, attempt, r.write(&c, attempt, &j).await) });
                        handles.insert(chunk, (attempt, handle, jobs));
                        runner
                            .event(chunk_event(
                                &machine.chunks[chunk],
                                pb::ChunkEventKind::Submitted,
                                attempt,
                            ))
                            .await;
                    }
                    Action::Check(chunk) => {
                        let Some((attempt, _, jobs)) = handles.get(&chunk).cloned() else {
                            continue;
                        };
                        let r = runner.clone();
                        let c = machine.chunks[chunk].clone();
                        let j = Arc::clone(&jobs);
                        let handle = tasks
                            .spawn(async move { (chunk, attempt, r.check(&c, attempt, &j).await) });
                        handles.insert(chunk, (attempt, handle, jobs));
                        runner
                            .event(chunk_event(
                                &machine.chunks[chunk],
                                pb::ChunkEventKind::Staged,
                                attempt,
                            ))
                            .await;
                    }
                    Action::Commit(chunk) => {
                        let attempt = handles.get(&chunk).map_or(0, |h| h.0);
                        let c = machine.chunks[chunk].clone();
                        match runner.commit(&c, attempt) {
                            Ok(dates) => {
                                let rows: u64 = per_date
                                    .remove(&chunk)
                                    .unwrap_or_default()
                                    .iter()
                                    .map(|(_, n)| n)
                                    .sum();
                                if let Some(pc) = record.chunks.get_mut(chunk) {
                                    pc.rows = rows;
                                }
                                record.rows += rows;
                                let mut e = chunk_event(&c, pb::ChunkEventKind::Committed, attempt);
                                e.dates = dates as u32;
                                e.rows = rows;
                                pending_events.push(Event::Committed(chunk));
                                runner.event(e).await;
                            }
                            Err(failure) => {
                                pending_events.push(Event::JobFailed { chunk, failure })
                            }
                        }
                    }
                    Action::StopJobs(chunk) => {
                        if let Some((_, handle, jobs)) = handles.remove(&chunk) {
                            handle.abort();
                            let ids = jobs.lock().await.clone();
                            for job in ids {
                                runner.hub.engine.cancel(&job).await;
                            }
                        }
                    }
                    Action::Discard(chunk) => runner.discard(&machine.chunks[chunk]),
                    Action::Retried { chunk, failure } => {
                        tracing::warn!(backfill = %id, chunk = %machine.chunks[chunk].label(), error = %failure.message, "chunk failed; resubmitting it");
                        let mut e = chunk_event(
                            &machine.chunks[chunk],
                            pb::ChunkEventKind::Retried,
                            machine.chunks[chunk].submissions,
                        );
                        e.failure = Some(convert::failure(&failure));
                        runner.event(e).await;
                    }
                    Action::Finish(state) => {
                        tasks.abort_all();
                        let _ = std::fs::remove_dir_all(&runner.staging_root);
                        convert::apply(&mut record, &machine, &runner.compiled.out);
                        record.state = convert::state_to_pb(state) as i32;
                        if state == BackfillState::Failed {
                            record.failure = machine
                                .chunks
                                .iter()
                                .find_map(|c| {
                                    c.failure.as_ref().filter(|_| c.state == ChunkState::Failed)
                                })
                                .map(|f| {
                                    let mut f = convert::failure(f);
                                    f.message = format!(
                                        "chunk {}: {}",
                                        machine
                                            .chunks
                                            .iter()
                                            .find(|c| c.state == ChunkState::Failed)
                                            .map(Chunk::label)
                                            .unwrap_or_default(),
                                        f.message
                                    );
                                    f
                                });
                        }
                        if state == BackfillState::Cancelled {
                            record.failure = Some(pb::Failure {
                                class: pb::ErrorClass::User as i32,
                                retryable: false,
                                message: "cancelled".into(),
                            });
                        }
                        finish(&hub, &mut record).await;
                        return;
                    }
                }
            }
        }
        convert::apply(&mut record, &machine, &runner.compiled.out);
        for (i, (_, _, jobs)) in &handles {
            if let Some(pc) = record.chunks.get_mut(*i) {
                pc.job_ids = jobs.lock().await.clone();
            }
        }
        match hub.save(&record).await {
            Ok(()) => {}
            Err(StoreError::Deposed(reason)) => {
                tracing::warn!(backfill = %id, %reason, "no longer the leader; the new leader resumes this backfill");
                tasks.abort_all();
                hub.forget(&id).await;
                return;
            }
            Err(e) => {
                tracing::warn!(backfill = %id, error = %e, "backfill progress not saved; retrying with the next step")
            }
        }
        if !pending_events.is_empty() {
            continue;
        }
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else {
                    // Nothing in flight and nothing to do: should not happen.
                    tracing::error!(backfill = %id, "runner has nothing in flight; stopping");
                    return;
                };
                let Ok((chunk, attempt, outcome)) = joined else { continue };
                // A result of an attempt since replaced.
                if handles.get(&chunk).map(|h| h.0) != Some(attempt) {
                    continue;
                }
                match outcome {
                    Outcome::Staged => pending_events.push(Event::Staged(chunk)),
                    Outcome::Checked { results, per_date: counts } => {
                        let passed = results.iter().all(|r| r.passed);
                        let mut e = chunk_event(&machine.chunks[chunk], pb::ChunkEventKind::Checked, attempt);
                        e.quality = results.clone();
                        record.quality.retain(|q| q.chunk != machine.chunks[chunk].label());
                        record.quality.extend(results);
                        per_date.insert(chunk, counts);
                        runner.event(e).await;
                        pending_events.push(Event::Checked { chunk, passed });
                    }
                    Outcome::Failed(failure) => {
                        if !failure.retryable {
                            let mut e = chunk_event(&machine.chunks[chunk], pb::ChunkEventKind::Failed, attempt);
                            e.failure = Some(convert::failure(&failure));
                            runner.event(e).await;
                        }
                        pending_events.push(Event::JobFailed { chunk, failure });
                    }
                }
            }
            () = sluice_proto::until_true(&mut cancel) => pending_events.push(Event::Cancel),
        }
    }
}

fn chunk_event(c: &Chunk, kind: pb::ChunkEventKind, attempt: u32) -> pb::ChunkEvent {
    pb::ChunkEvent {
        first: c.first.to_string(),
        last: c.last.to_string(),
        kind: kind as i32,
        attempt,
        ..Default::default()
    }
}

async fn finish(hub: &Hub, record: &mut pb::Backfill) {
    record.finished_ms = now_ms();
    record.runner_alive = false;
    for _ in 0..20 {
        match hub.save(record).await {
            Ok(()) => break,
            Err(StoreError::Deposed(_)) => break,
            Err(e) => {
                tracing::warn!(backfill = %record.id, error = %e, "final state not saved; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    tracing::info!(backfill = %record.id, state = ?record.state(), dates = record.dates_committed, "backfill ended");
    hub.finished(record.clone()).await;
}

#[derive(Clone)]
struct Runner {
    hub: Arc<Hub>,
    id: BackfillId,
    compiled: Arc<Compiled>,
    staging_root: PathBuf,
}

impl Runner {
    async fn event(&self, e: pb::ChunkEvent) {
        self.hub.publish(&self.id, pb::backfill_event::Event::Chunk(e)).await;
    }

    /// The staging folder of one attempt: tasks of an earlier attempt (or of
    /// a deposed leader) may still be writing into theirs.
    fn staging(&self, c: &Chunk, attempt: u32) -> PathBuf {
        self.staging_root.join(format!("{}.{}.{attempt}", c.label(), self.id))
    }

    fn job_name(&self, c: &Chunk, what: &str, attempt: u32) -> String {
        format!("sluice backfill {} {} {what} #{attempt}", self.id, c.label())
    }

    async fn write(&self, c: &Chunk, attempt: u32, jobs: &JobIds) -> Outcome {
        let staging = self.staging(c, attempt);
        let _ = std::fs::remove_dir_all(&staging);
        let k = &self.compiled;
        let copy = plan::copy_statement(
            &k.spec,
            c.first,
            c.last,
            &k.types,
            &k.plan_opts,
            &format!("{}/", staging.display()),
        );
        match self.hub.engine.run(&k.ctx, &self.job_name(c, "write", attempt), &copy, jobs).await {
            Ok(_) => Outcome::Staged,
            Err(f) => Outcome::Failed(f),
        }
    }

    async fn check(&self, c: &Chunk, attempt: u32, jobs: &JobIds) -> Outcome {
        match self.check_chunk(c, attempt, jobs).await {
            Ok((results, per_date)) => Outcome::Checked { results, per_date },
            Err(f) => Outcome::Failed(f),
        }
    }

    /// Removes every staging folder of `c` (all attempts).
    fn discard(&self, c: &Chunk) {
        let prefix = format!("{}.{}.", c.label(), self.id);
        for entry in std::fs::read_dir(&self.staging_root).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Moves each staged date folder into the output (an empty one for a
    /// date without rows). A date already present is left alone.
    fn commit(&self, c: &Chunk, attempt: u32) -> Result<usize, Failure> {
        let staging = self.staging(c, attempt);
        let out = &self.compiled.out;
        let io = |p: &Path, e: std::io::Error| {
            Failure::new(ErrorClass::External, false, format!("{}: {e}", p.display()))
        };
        let mut committed = 0;
        for d in c.dates() {
            let name = format!("feature_date={d}");
            let src = staging.join(&name);
            let dst = out.join(&name);
            if dst.exists() {
                continue;
            }
            if !src.exists() {
                std::fs::create_dir_all(&src).map_err(|e| io(&src, e))?;
            }
            std::fs::rename(&src, &dst).map_err(|e| io(&dst, e))?;
            committed += 1;
        }
        Ok(committed)
    }

    async fn run(&self, name: &str, sql: &str, jobs: &JobIds) -> Result<Vec<RecordBatch>, Failure> {
        self.hub.engine.run(&self.compiled.ctx, name, sql, jobs).await
    }

    /// Checks a staged chunk; returns (results, rows per date).
    async fn check_chunk(
        &self,
        c: &Chunk,
        attempt: u32,
        jobs: &JobIds,
    ) -> Result<(Vec<pb::QualityResult>, Vec<(NaiveDate, u64)>), Failure> {
        let spec = &self.compiled.spec;
        let ctx = &self.compiled.ctx;
        let staging = self.staging(c, attempt);
        let label = c.label();
        let dates = c.dates();
        let name = self.job_name(c, "check", attempt);
        // One name per attempt, gone with the attempt whatever its outcome.
        let attempt_table = AttemptTable {
            ctx: ctx.clone(),
            name: format!("stg_{}_{}", label.replace('-', "_"), uuid::Uuid::new_v4().simple()),
        };
        let table = attempt_table.name.as_str();
        let mut per_date: Vec<(NaiveDate, u64)> = dates.iter().map(|d| (*d, 0)).collect();
        let mut results = Vec::new();
        let result = |e: &Expectation, failing: u64, samples: Vec<String>| pb::QualityResult {
            expectation: e.kind().to_string(),
            column: e.column_label(),
            chunk: label.clone(),
            passed: failing == 0,
            failing,
            samples,
        };
        if !walk_has_files(&staging) {
            for e in &spec.expectations {
                let (failing, samples) = match e {
                    Expectation::RowCountBetween { min, max } => {
                        row_count_failures(&per_date, *min, *max)
                    }
                    _ => (0, vec![]),
                };
                results.push(result(e, failing, samples));
            }
            return Ok((results, per_date));
        }
        let df = |e: datafusion::error::DataFusionError| Failure::of_datafusion(&e);
        let opts = ParquetReadOptions::default().table_partition_cols(vec![(
            "feature_date".to_string(),
            datafusion::arrow::datatypes::DataType::Utf8,
        )]);
        ctx.register_parquet(table, &format!("{}/", staging.display()), opts).await.map_err(df)?;
        let checks = self.run(&name, &quality::chunk_checks_sql(spec, table), jobs).await?;
        for b in &checks {
            // VARCHAR is Utf8 on the cluster and Utf8View on plain DataFusion.
            let ds = datafusion::arrow::compute::cast(
                b.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .map_err(|e| df(e.into()))?;
            let ds = ds.as_string_opt::<i32>();
            let ns = b.column(1).as_primitive_opt::<Int64Type>();
            if let (Some(ds), Some(ns)) = (ds, ns) {
                for i in 0..b.num_rows() {
                    if let Ok(d) = NaiveDate::parse_from_str(ds.value(i), "%Y-%m-%d")
                        && let Some(slot) = per_date.iter_mut().find(|(x, _)| *x == d)
                    {
                        slot.1 = ns.value(i).max(0) as u64;
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
                            &self
                                .run(&name, &quality::duplicate_count_sql(columns, table), jobs)
                                .await?,
                            0,
                        ),
                    };
                    let samples = if n > 0 {
                        render_rows(
                            &self
                                .run(&name, &quality::duplicate_keys_sql(columns, table, 5), jobs)
                                .await?,
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
                        (true, Some(sql)) => render_rows(&self.run(&name, &sql, jobs).await?),
                        _ => vec![],
                    };
                    (n, samples)
                }
            };
            results.push(result(e, failing, samples));
        }
        Ok((results, per_date))
    }
}

/// A table registered for one attempt of a chunk's checks, deregistered
/// when the attempt ends, whatever its outcome (a check stopped by an
/// executor loss is retried, and a name left behind failed the retry).
struct AttemptTable {
    ctx: SessionContext,
    name: String,
}

impl Drop for AttemptTable {
    fn drop(&mut self) {
        let _ = self.ctx.deregister_table(self.name.as_str());
    }
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
