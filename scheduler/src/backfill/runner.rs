//! One backfill's runner: performs what the state machine
//! ([`sluice_sql::job::backfill::Machine`]) decides, feeds it the outcomes,
//! and persists the record after every step.
//!
//! ```text
//! missing dates (none in the Delta table OUT) ─► chunks of ≤ chunk_days consecutive dates
//!   per chunk (up to `parallel` at once), as jobs of the leader's scheduler:
//!     COPY (tiled chunk query) TO OUT/_sluice/<chunk>.<id>.<attempt>/ PARTITIONED BY (feature_date)
//!     quality expectations over the attempt's files ─ fail ─► files deleted, backfill fails
//!     pass ─► one Delta commit: remove the dates' old files, add the attempt's   (atomic)
//! ```
//!
//! OUT is a Delta table on local disk or object storage ([`sluice_sql::delta`]).
//! Executors write straight under it; an attempt's files are invisible until
//! the commit names them, and a failed or superseded attempt's files are
//! deleted. The commit carries the transaction `sluice:<backfill>:<chunk>`,
//! so a chunk resubmitted after a failover, or a commit retried after a lost
//! reply, is recognised and not applied twice. Nothing here assumes the
//! scheduler and the executors share a filesystem.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::object_store::ObjectStore;
use datafusion::object_store::path::Path as StorePath;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use sluice_proto::pb;
use sluice_proto::{ErrorClass, etcd::now_ms};
use sluice_sql::delta::{self, DeltaError};
use sluice_sql::job::backfill::{
    Action, BackfillState, Chunk, ChunkState, Event, Failure, Machine,
};
use sluice_sql::job::plan::{self, ColumnTypes, PlanOptions};
use sluice_sql::job::quality;
use sluice_sql::job::spec::{Expectation, JobSpec};
use sluice_sql::storage;
use tokio::task::JoinSet;
use url::Url;

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
    pub out: Output,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// The partition column of every backfill output.
pub const PARTITION: &str = "feature_date";

/// A backfill's output: a Delta table folder and the store holding it.
pub struct Output {
    pub url: Url,
    pub store: Arc<dyn ObjectStore>,
    pub runtime: Arc<RuntimeEnv>,
    /// The table's columns (`feature_date` a date), from the chunk query.
    pub schema: SchemaRef,
}

impl Output {
    /// The folder of one attempt's files, relative to the table.
    fn attempt_dir(name: &str) -> String {
        format!("_sluice/{name}")
    }

    fn attempt_url(&self, name: &str) -> String {
        format!("{}{}/", self.url, Self::attempt_dir(name))
    }

    fn table_path(&self) -> StorePath {
        storage::store_path(&self.url)
    }

    fn attempt_path(&self, name: &str) -> StorePath {
        let mut p = self.table_path();
        for part in Self::attempt_dir(name).split('/') {
            p = p.clone().join(part);
        }
        p
    }
}

/// A Delta error as a backfill failure.
pub fn delta_failure(e: &DeltaError) -> Failure {
    match e {
        DeltaError::Storage { retryable, .. } => {
            Failure::new(ErrorClass::External, *retryable, e.to_string())
        }
        _ => Failure::new(ErrorClass::User, false, e.to_string()),
    }
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
    let spec_dir = request.spec_dir.as_str();
    if !Path::new(spec_dir).is_absolute() {
        return Err(user(format!("spec_dir '{spec_dir}': expected an absolute path")));
    }
    let data_dir = storage::resolve(spec_dir, &request.data_dir);
    let out = match request.output.as_str() {
        "" => storage::resolve(spec_dir, &spec.output.path),
        o => storage::resolve(spec_dir, o),
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
    let out = output(&ctx, &out, &spec, &prepared, from).await?;
    Ok(Compiled { spec, ctx, types: prepared.types, plan_opts: prepared.plan_opts, out, from, to })
}

/// Opens the output location and checks it before anything is written: the
/// store answers (credentials, bucket), and a folder holding files is a
/// Delta table.
async fn output(
    ctx: &SessionContext,
    location: &str,
    spec: &JobSpec,
    prepared: &sluice_sql::job::prepare::Prepared,
    from: NaiveDate,
) -> Result<Output, Failure> {
    let user = |m: String| Failure::new(ErrorClass::User, false, m);
    let url = storage::folder_url(location).map_err(|e| user(format!("--output: {e}")))?;
    let runtime = ctx.runtime_env();
    let store = ObjectStoreUrl::parse(storage::store_root(&url))
        .and_then(|u| runtime.object_store(u))
        .map_err(|e| user(format!("--output {url}: {e}")))?;
    let is_delta = delta::is_delta_table(&runtime, &url).await.map_err(|e| {
        user(format!(
            "--output {url}: cannot list the folder: {}; check the bucket name and the \
             credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or --set s3.*)",
            std::error::Error::source(&e).map(ToString::to_string).unwrap_or_else(|| e.to_string())
        ))
    })?;
    if !is_delta {
        let existing = storage::list(store.as_ref(), &storage::store_path(&url))
            .await
            .map_err(|e| user(format!("--output {url}: {e}")))?;
        let data = existing.iter().find(|o| {
            !o.location.as_ref().contains("/_sluice/")
                && !o.location.as_ref().starts_with("_sluice/")
        });
        if let Some(o) = data {
            return Err(user(format!(
                "--output {url} holds files (e.g. {}) but is not a Delta table (no _delta_log/); \
                 choose an empty folder or an existing Delta table",
                o.location
            )));
        }
    }
    let query = plan::chunk_query(spec, from, from, &prepared.types, &prepared.plan_opts);
    let df = ctx.sql(&query).await.map_err(|e| Failure::of_datafusion(&e))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    if schema.field_with_name(PARTITION).is_err() {
        return Err(user(format!("the backfill query has no column {PARTITION}")));
    }
    Ok(Output { url, store, runtime, schema })
}

/// Dates with rows in the output table's latest version.
///
/// # Errors
/// The store's error, as a failure.
pub async fn committed_dates(out: &Output) -> Result<BTreeSet<NaiveDate>, Failure> {
    delta::committed_dates(&out.runtime, &out.url, PARTITION).await.map_err(|e| delta_failure(&e))
}

/// A new record's chunks: the range's dates not yet in the output.
///
/// # Errors
/// The store's error, as a failure.
pub async fn plan_chunks(
    compiled: &Compiled,
    request: &pb::BackfillRequest,
) -> Result<(Vec<Chunk>, usize, usize), Failure> {
    let all: Vec<NaiveDate> = compiled.from.iter_days().take_while(|d| *d <= compiled.to).collect();
    let done =
        if request.replace { BTreeSet::new() } else { committed_dates(&compiled.out).await? };
    let missing: Vec<NaiveDate> = all.iter().copied().filter(|d| !done.contains(d)).collect();
    let days = sluice_sql::job::backfill::chunk_days(
        request.chunk_days,
        missing.len(),
        request.parallel.max(1) as usize,
    );
    Ok((sluice_sql::job::backfill::chunks(&missing, days), all.len(), all.len() - missing.len()))
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
    let chunks: Vec<Chunk> = record.chunks.iter().filter_map(convert::chunk_from_pb).collect();
    let state = convert::state_from_pb(record.state());
    let mut machine =
        Machine::restore(chunks, state, request.parallel.max(1) as usize, MAX_RETRIES);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    // The backfill's span on this leader, under the submitting client's
    // span when it sent one: chunks, jobs, stages and tasks go under it.
    let span =
        tracing::info_span!("backfill", backfill = %id, from = %request.from, to = %request.to);
    sluice_proto::logging::traces::set_parent(&span, &request.traceparent);
    let runner =
        Runner { hub: Arc::clone(&hub), id: id.clone(), compiled: Arc::new(compiled), run, span };
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
                        match runner.commit(&c, attempt).await {
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
                    Action::Discard(chunk) => runner.discard(&machine.chunks[chunk]).await,
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
                        convert::apply(&mut record, &machine);
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
        convert::apply(&mut record, &machine);
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
    /// Drawn when this runner starts (see [`Runner::attempt`]).
    run: String,
    /// The backfill's span (traces).
    span: tracing::Span,
}

impl Runner {
    async fn event(&self, e: pb::ChunkEvent) {
        self.hub.publish(&self.id, pb::backfill_event::Event::Chunk(e)).await;
    }

    /// The name of one attempt's folder: tasks of an earlier attempt (or of
    /// a deposed leader) may still be writing into theirs. The run tag keeps
    /// a resumed runner out of the folders of the runner it replaces, whose
    /// attempt numbers its record may not show yet.
    fn attempt(&self, c: &Chunk, attempt: u32) -> String {
        format!("{}.{}.{attempt}-{}", c.label(), self.id, self.run)
    }

    fn job_name(&self, c: &Chunk, what: &str, attempt: u32) -> String {
        format!("sluice backfill {} {} {what} #{attempt}", self.id, c.label())
    }

    async fn write(&self, c: &Chunk, attempt: u32, jobs: &JobIds) -> Outcome {
        // A resubmission waits (2 s, 4 s, 8 s): an object store or executor
        // that went away briefly is back before the retries run out.
        if attempt > 1 {
            tokio::time::sleep(std::time::Duration::from_secs(1 << (attempt - 1).min(3))).await;
        }
        let k = &self.compiled;
        let name = self.attempt(c, attempt);
        if let Err(e) =
            storage::delete_prefix(k.out.store.as_ref(), &k.out.attempt_path(&name)).await
        {
            return Outcome::Failed(Failure::of_datafusion(&e));
        }
        let copy = plan::copy_statement(
            &k.spec,
            c.first,
            c.last,
            &k.types,
            &k.plan_opts,
            &k.out.attempt_url(&name),
        );
        let span =
            tracing::info_span!(parent: &self.span, "chunk write", chunk = %c.label(), attempt);
        let name = self.job_name(c, "write", attempt);
        let job = self.hub.engine.run(&k.ctx, &name, &copy, jobs);
        match tracing::Instrument::instrument(job, span).await {
            Ok(_) => Outcome::Staged,
            Err(f) => Outcome::Failed(f),
        }
    }

    async fn check(&self, c: &Chunk, attempt: u32, jobs: &JobIds) -> Outcome {
        let span =
            tracing::info_span!(parent: &self.span, "chunk check", chunk = %c.label(), attempt);
        match tracing::Instrument::instrument(self.check_chunk(c, attempt, jobs), span).await {
            Ok((results, per_date)) => Outcome::Checked { results, per_date },
            Err(f) => Outcome::Failed(f),
        }
    }

    /// Deletes the files of every attempt of `c` that no version of the
    /// table names. Best effort: a file left behind is invisible, and a later
    /// run of the chunk deletes it.
    ///
    /// The table is always read, never trusted to be the runner's own idea
    /// of what it committed: a leader that died between its commit and its
    /// record leaves a committed attempt the record does not know, and the
    /// resumed chunk's commit then finds the transaction already in the log
    /// ([`delta::Committed::Already`]) while its own attempt stays unnamed.
    async fn discard(&self, c: &Chunk) {
        let out = &self.compiled.out;
        let root = out.table_path().clone().join("_sluice");
        let listed = match out.store.list_with_delimiter(Some(&root)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(backfill = %self.id, chunk = %c.label(), error = %e, "attempt files not listed; left for a later run");
                return;
            }
        };
        let prefix = format!("{}.{}.", c.label(), self.id);
        if !listed
            .common_prefixes
            .iter()
            .any(|d| d.filename().is_some_and(|n| n.starts_with(&prefix)))
        {
            return;
        }
        let referenced = match delta::attempts_in_table(&out.runtime, &out.url, "_sluice").await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(backfill = %self.id, chunk = %c.label(), error = %e, "table not read; attempt files left for a later run");
                return;
            }
        };
        for dir in listed.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            if !discardable(name, &prefix, &referenced) {
                continue;
            }
            if let Err(e) = storage::delete_prefix(out.store.as_ref(), &dir).await {
                tracing::warn!(backfill = %self.id, chunk = %c.label(), error = %e, "attempt files not deleted");
            }
        }
    }

    /// Commits the attempt's files as the chunk's dates: one Delta version
    /// that replaces whatever those dates held. Returns the dates committed.
    async fn commit(&self, c: &Chunk, attempt: u32) -> Result<usize, Failure> {
        let out = &self.compiled.out;
        let name = self.attempt(c, attempt);
        let dir = Output::attempt_dir(&name);
        let objects = storage::list(out.store.as_ref(), &out.attempt_path(&name))
            .await
            .map_err(|e| Failure::of_datafusion(&e))?;
        let table = out.table_path();
        let mut files = Vec::new();
        for o in objects {
            let path = o.location.as_ref();
            if !path.ends_with(".parquet") {
                continue;
            }
            let rel = path.strip_prefix(table.as_ref()).unwrap_or(path).trim_start_matches('/');
            let date = o
                .location
                .parts()
                .find_map(|p| {
                    p.as_ref()
                        .strip_prefix("feature_date=")
                        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                })
                .ok_or_else(|| {
                    Failure::new(
                        ErrorClass::Internal,
                        false,
                        format!("{path}: a written file outside a feature_date= folder"),
                    )
                })?;
            debug_assert!(rel.starts_with(&dir));
            files.push(delta::NewFile { path: rel.to_string(), size: o.size, date });
        }
        let dates = c.dates();
        let started = std::time::Instant::now();
        let committed = delta::commit_dates(
            &out.runtime,
            &out.url,
            &out.schema,
            PARTITION,
            &dates,
            &files,
            &format!("sluice:{}:{}", self.id, c.label()),
            HashMap::from([
                ("sluice.backfill".to_string(), serde_json::json!(self.id.to_string())),
                ("sluice.chunk".to_string(), serde_json::json!(c.label())),
                ("sluice.attempt".to_string(), serde_json::json!(attempt)),
            ]),
        )
        .await
        .map_err(|e| delta_failure(&e))?;
        tracing::info!(backfill = %self.id, chunk = %c.label(), ?committed, files = files.len(), ms = started.elapsed().as_millis() as u64, "chunk committed");
        Ok(dates.len())
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
        let out = &self.compiled.out;
        let attempt_name = self.attempt(c, attempt);
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
        let written = storage::list(out.store.as_ref(), &out.attempt_path(&attempt_name))
            .await
            .map_err(|e| Failure::of_datafusion(&e))?;
        if !written.iter().any(|o| o.location.as_ref().ends_with(".parquet")) {
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
        ctx.register_parquet(table, &out.attempt_url(&attempt_name), opts).await.map_err(df)?;
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

/// Whether the attempt folder `name` may be deleted by the chunk whose
/// attempts start with `prefix` (`<chunk>.<backfill>.`): one of its own that
/// no version of the table names (`referenced`).
fn discardable(name: &str, prefix: &str, referenced: &BTreeSet<String>) -> bool {
    name.starts_with(prefix) && !referenced.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreferenced_attempts_of_the_chunk_are_discarded() {
        let prefix = "2024-02-04_2024-02-06.bf-1.";
        // Attempt 1 of the leader that died was committed; the resumed
        // runner's attempt 2 found the transaction already in the log.
        let referenced: BTreeSet<String> = ["2024-02-04_2024-02-06.bf-1.1-aaaa".to_string()].into();
        assert!(!discardable("2024-02-04_2024-02-06.bf-1.1-aaaa", prefix, &referenced));
        assert!(discardable("2024-02-04_2024-02-06.bf-1.2-bbbb", prefix, &referenced));
        // Another chunk's, or another backfill's, attempts are not this chunk's.
        assert!(!discardable("2024-02-07_2024-02-09.bf-1.1-bbbb", prefix, &referenced));
        assert!(!discardable("2024-02-04_2024-02-06.bf-12.1-bbbb", prefix, &referenced));
    }
}
