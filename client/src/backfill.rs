//! `sluice backfill`: submits a feature job's backfill to the cluster's
//! `BackfillService` (proto/sluice/v1/backfill.proto) and follows it.
//!
//! ```text
//!   sluice backfill SPEC --from --to ──Submit(spec text, range)──► leader scheduler
//!        ▲ progress bar, quality report ◄──Watch (events)──────── runner (sluice_scheduler::backfill)
//!        │ Ctrl-C: detaches (the backfill keeps running; `sluice backfill watch ID`)
//!   --detach: prints the id and returns        --local: the same runner in this process,
//!   embedded (no flags): the same service         on plain DataFusion (the reference)
//!   on a cluster started in this process
//! ```
//!
//! The cluster owns the backfill: the leader runs it, records its progress in
//! etcd and a new leader resumes it. This process only submits, follows and
//! prints; killing it stops nothing.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datafusion::arrow::array::AsArray;
use futures::{Stream, StreamExt};
use serde::Serialize;
use sluice_proto::pb;
use sluice_proto::pb::backfill_event::Event as Ev;
use sluice_proto::pb::backfill_service_client::BackfillServiceClient;
use sluice_proto::{ErrorClass, HostPort};
pub use sluice_scheduler::backfill::BackfillId;
use sluice_sql::job::plan;
use sluice_sql::job::prepare::HotEntities;
use sluice_sql::job::spec::JobSpec;
use sluice_sql::options::SluiceOptions;

use crate::connect::{Target, connect_as, run_sql};
use crate::error::{Error, Result};

pub use sluice_sql::job::backfill::{AUTO_CHUNK_DAYS, MAX_AUTO_CHUNK_DAYS, auto_chunk_days};

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
    /// Recompute every date of the range, replacing the dates already in
    /// the output (after a spec change); otherwise only missing dates.
    pub replace: bool,
    pub settings: Vec<(String, String)>,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Token for a scheduler that checks them.
    pub token: Option<String>,
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
    pub id: String,
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

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), reason: e.to_string() }
}

/// `YYYY-MM-DD`.
///
/// # Errors
/// [`Error::Usage`] naming the flag.
pub fn parse_date(flag: &str, s: &str) -> Result<NaiveDate> {
    sluice_sql::job::backfill::parse_date(flag, s).map_err(Error::Usage)
}

/// Dates with rows in the Delta table at `out` (a local path or a URL);
/// empty when there is no table. Object-store credentials come from the
/// `AWS_*` variables.
///
/// # Errors
/// [`Error::Query`] when the store cannot be read.
pub async fn committed_dates(out: &str) -> Result<std::collections::BTreeSet<NaiveDate>> {
    let config = sluice_sql::session::local_session_config();
    let runtime =
        sluice_sql::session::runtime_env(&config, None).map_err(Error::from_datafusion)?;
    let url = sluice_sql::storage::folder_url(out).map_err(Error::from_datafusion)?;
    sluice_sql::delta::committed_dates(&runtime, &url, "feature_date")
        .await
        .map_err(|e| Error::Query { message: e.to_string(), class: ErrorClass::External })
}

/// The request for the service: the spec's text (the scheduler parses it),
/// paths made absolute here, where they were written.
///
/// # Errors
/// [`Error::Io`] when the spec cannot be read.
pub fn request(opts: &BackfillOptions) -> Result<pb::BackfillRequest> {
    let spec_text = std::fs::read_to_string(&opts.spec)
        .map_err(|e| Error::Usage(format!("{}: cannot read the spec: {e}", opts.spec.display())))?;
    let spec_dir = opts.spec.parent().map(Path::to_path_buf).unwrap_or_default();
    let spec_dir = if spec_dir.as_os_str().is_empty() { PathBuf::from(".") } else { spec_dir };
    let spec_dir = std::path::absolute(&spec_dir).map_err(|e| io_err(&spec_dir, e))?;
    let absolute = |p: &Option<PathBuf>| -> Result<String> {
        match p {
            None => Ok(String::new()),
            // An object-store URL (`s3://bucket/prefix`) stays as typed.
            Some(p) if sluice_sql::storage::is_url(&p.to_string_lossy()) => {
                Ok(p.to_string_lossy().into_owned())
            }
            Some(p) => Ok(std::path::absolute(p).map_err(|e| io_err(p, e))?.display().to_string()),
        }
    };
    // The client's AWS_* variables reach the executors as s3.* settings
    // (unless --set already gave them).
    let mut settings: Vec<(String, String)> = opts.settings.clone();
    for (k, v) in sluice_sql::storage::s3_settings_from_env() {
        if !settings.iter().any(|(key, _)| *key == k) {
            settings.push((k, v));
        }
    }
    Ok(pb::BackfillRequest {
        spec_text,
        spec_label: opts.spec.display().to_string(),
        data_dir: absolute(&opts.data_dir)?,
        output: absolute(&opts.output)?,
        from: opts.from.to_string(),
        to: opts.to.to_string(),
        chunk_days: opts.chunk_days,
        parallel: u32::try_from(opts.parallel.max(1)).unwrap_or(u32::MAX),
        settings: settings.into_iter().map(|(key, value)| pb::Setting { key, value }).collect(),
        spec_dir: spec_dir.display().to_string(),
        replace: opts.replace,
        traceparent: String::new(),
    })
}

/// A gRPC status from the service as a client error: the status code
/// carries the class.
pub fn from_status(s: &tonic::Status) -> Error {
    use tonic::Code;
    let message = s.message().to_string();
    match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound | Code::AlreadyExists => {
            Error::Usage(message)
        }
        Code::Unauthenticated | Code::PermissionDenied => Error::Usage(message),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Error::Query { message, class: ErrorClass::External }
        }
        _ => Error::Query { message, class: ErrorClass::Internal },
    }
}

/// Whether following can go on after `s` (the scheduler went away or
/// stopped running the backfill: a leader takes it over).
fn follow_again(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
}

/// A gRPC channel to `scheduler` (over the cluster's TLS when
/// `SLUICE_CLUSTER_*` name client credentials).
///
/// # Errors
/// [`Error::SchedulerUnreachable`].
pub async fn scheduler_channel(scheduler: &HostPort) -> Result<tonic::transport::Channel> {
    let tls = crate::connect::cluster_tls_from_env()?;
    scheduler_channel_with(scheduler, tls.as_ref()).await
}

/// [`scheduler_channel`] with explicit cluster TLS (`None`: plain, as to the
/// embedded cluster, which has none whatever the environment says).
///
/// # Errors
/// As [`scheduler_channel`].
pub async fn scheduler_channel_with(
    scheduler: &HostPort,
    tls: Option<&sluice_proto::tls::ClusterTls>,
) -> Result<tonic::transport::Channel> {
    let unreachable =
        |e: String| Error::SchedulerUnreachable { addr: scheduler.clone(), reason: e };
    let mut endpoint = tonic::transport::Endpoint::from_shared(scheduler.http_url())
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = tls.secure_endpoint(endpoint).map_err(|e| unreachable(e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| unreachable(e.to_string()))
}

/// The scheduler `target` names (a cluster's leader).
///
/// # Errors
/// As [`scheduler_channel`]; [`Error::Usage`] for targets without one.
pub async fn scheduler_of(target: &Target) -> Result<HostPort> {
    match target {
        Target::Scheduler(addr) => Ok(addr.clone()),
        Target::Cluster(cluster) => {
            crate::connect::reachable_leader(cluster, crate::connect::LEADER_WAIT).await
        }
        Target::Standalone | Target::Local => Err(Error::Usage(
            "this needs a cluster: pass --scheduler HOST:PORT or --etcd-endpoints URL (an embedded cluster ends with the command that started it)".into(),
        )),
    }
}

/// Asks the scheduler of `target` to drain executor `id` (scale-in): it
/// takes no new task, finishes its running ones, moves its shuffle output to
/// peers and exits. Returns whether it was draining already.
///
/// # Errors
/// [`Error::Usage`] for an executor the scheduler does not know; as
/// [`scheduler_channel`].
pub async fn drain_executor(target: &Target, token: Option<&str>, id: &str) -> Result<bool> {
    let scheduler = scheduler_of(target).await?;
    let mut client = sluice_proto::pb::drain_service_client::DrainServiceClient::new(
        scheduler_channel(&scheduler).await?,
    );
    let mut request =
        tonic::Request::new(sluice_proto::pb::DrainExecutorRequest { executor_id: id.to_string() });
    if let Some(token) = token
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    let reply = client.drain(request).await.map_err(|s| from_status(&s))?;
    Ok(reply.into_inner().already)
}

/// The backfill service of a scheduler, `token` sent on every call.
pub struct Service {
    client: BackfillServiceClient<tonic::transport::Channel>,
    token: Option<String>,
    pub scheduler: HostPort,
}

impl Service {
    /// Connects to `scheduler`.
    ///
    /// # Errors
    /// [`Error::SchedulerUnreachable`].
    pub async fn connect(scheduler: &HostPort, token: Option<&str>) -> Result<Self> {
        let tls = crate::connect::cluster_tls_from_env()?;
        Self::connect_with(scheduler, token, tls.as_ref()).await
    }

    /// [`Service::connect`] with explicit cluster TLS (`None`: plain).
    ///
    /// # Errors
    /// As [`Service::connect`].
    pub async fn connect_with(
        scheduler: &HostPort,
        token: Option<&str>,
        tls: Option<&sluice_proto::tls::ClusterTls>,
    ) -> Result<Self> {
        let channel = scheduler_channel_with(scheduler, tls).await?;
        Ok(Self {
            client: BackfillServiceClient::new(channel),
            token: token.map(str::to_string),
            scheduler: scheduler.clone(),
        })
    }

    /// Connects to the scheduler of `target` (the leader of a cluster).
    ///
    /// # Errors
    /// As [`Service::connect`]; [`Error::Usage`] for targets without one.
    pub async fn of(target: &Target, token: Option<&str>) -> Result<Self> {
        Self::connect(&scheduler_of(target).await?, token).await
    }

    fn req<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// # Errors
    /// The service's refusal ([`from_status`]).
    pub async fn submit(&mut self, mut request: pb::BackfillRequest) -> Result<pb::Backfill> {
        use tracing::Instrument;
        // The root of the backfill's trace (when traces are on): the
        // scheduler's spans join it through the request.
        let span = tracing::info_span!(
            target: "sluice_client",
            "backfill submit",
            spec = %request.spec_label,
            from = %request.from,
            to = %request.to,
        );
        request.traceparent = sluice_proto::logging::traces::traceparent(&span);
        let call =
            self.client.submit(self.req(pb::SubmitBackfillRequest { request: Some(request) }));
        let r = call.instrument(span).await.map_err(|s| from_status(&s))?;
        r.into_inner().backfill.ok_or_else(|| Error::Query {
            message: "the scheduler accepted the backfill but returned no record".into(),
            class: ErrorClass::Internal,
        })
    }

    /// # Errors
    /// `NOT_FOUND` as [`Error::Usage`].
    pub async fn get(&mut self, id: &BackfillId) -> Result<pb::Backfill> {
        let r = self
            .client
            .get(self.req(pb::GetBackfillRequest { id: id.to_string() }))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(r.into_inner())
    }

    /// # Errors
    /// As [`from_status`].
    pub async fn list(&mut self) -> Result<Vec<pb::Backfill>> {
        let r = self
            .client
            .list(self.req(pb::ListBackfillsRequest {}))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(r.into_inner().backfills)
    }

    /// # Errors
    /// A second cancel (or of a finished backfill) is [`Error::Usage`].
    pub async fn cancel(&mut self, id: &BackfillId) -> Result<pb::Backfill> {
        let r = self
            .client
            .cancel(self.req(pb::CancelBackfillRequest { id: id.to_string() }))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(r.into_inner())
    }

    async fn watch(
        &mut self,
        id: &BackfillId,
    ) -> std::result::Result<tonic::Streaming<pb::BackfillEvent>, tonic::Status> {
        Ok(self
            .client
            .watch(self.req(pb::WatchBackfillRequest { id: id.to_string() }))
            .await?
            .into_inner())
    }
}

/// Draws progress and remembers the last record seen.
struct Follower {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    rows: u64,
    last: Option<pb::Backfill>,
}

impl Follower {
    fn new(progress: bool) -> Self {
        let bar = (progress && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} dates  {msg}  ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Self { bar, started: Instant::now(), rows: 0, last: None }
    }

    /// Handles one event; the final record once it has come.
    fn on(&mut self, e: pb::BackfillEvent) -> Option<pb::Backfill> {
        match e.event? {
            Ev::Snapshot(b) => {
                if let Some(bar) = &self.bar {
                    bar.set_length(u64::from(
                        b.dates_total.saturating_sub(b.dates_already_committed),
                    ));
                    bar.set_position(u64::from(b.dates_committed));
                }
                self.rows = b.rows;
                self.last = Some(b);
                None
            }
            Ev::Chunk(c) => {
                match c.kind() {
                    pb::ChunkEventKind::Committed => {
                        self.rows += c.rows;
                        if let Some(bar) = &self.bar {
                            bar.inc(u64::from(c.dates));
                            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
                            bar.set_message(format!(
                                "{} rows, {:.0} rows/s",
                                self.rows,
                                self.rows as f64 / secs
                            ));
                        }
                    }
                    pb::ChunkEventKind::Retried => {
                        let why = c.failure.map(|f| f.message).unwrap_or_default();
                        tracing::warn!(chunk = %format!("{}_{}", c.first, c.last), attempt = c.attempt, error = %why, "chunk resubmitted by the cluster");
                    }
                    _ => {}
                }
                None
            }
            Ev::ResumedBy(leader) => {
                tracing::warn!(%leader, "a new leader resumed the backfill");
                None
            }
            Ev::Finished(b) => {
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                Some(b)
            }
        }
    }
}

/// How to follow a backfill again, and how to stop it.
fn reattach_hint(id: &BackfillId, target: &Target) -> String {
    let at = match target {
        Target::Scheduler(a) => format!("--scheduler {a}"),
        Target::Cluster(c) => {
            format!("--etcd-endpoints {} --cluster {}", c.endpoints_label(), c.cluster)
        }
        _ => String::new(),
    };
    format!(
        "backfill {id} keeps running on the cluster.\n  follow it:  sluice backfill watch {id} {at}\n  status:     sluice backfill status {id} {at}\n  stop it:    sluice backfill cancel {id} {at}"
    )
}

/// Follows backfill `id` on `target` until it ends; follows the new leader
/// after a failover. Ctrl-C detaches ([`Error::Detached`]).
///
/// # Errors
/// The cluster unreachable for longer than a failover takes.
pub async fn watch(
    target: &Target,
    token: Option<&str>,
    id: &BackfillId,
    progress: bool,
) -> Result<pb::Backfill> {
    let mut follower = Follower::new(progress);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut lost_since: Option<Instant> = None;
    let give_up = crate::connect::LEADER_WAIT * 2;
    loop {
        let attempt = async {
            let mut service = Service::of(target, token).await.map_err(|e| (e, true))?;
            let mut stream =
                service.watch(id).await.map_err(|s| (from_status(&s), follow_again(&s)))?;
            loop {
                match stream.message().await {
                    Ok(Some(e)) => {
                        if let Some(done) = follower.on(e) {
                            return Ok(done);
                        }
                    }
                    Ok(None) => {
                        return Err((
                            Error::Query {
                                message: "the watch ended early".into(),
                                class: ErrorClass::External,
                            },
                            true,
                        ));
                    }
                    Err(s) => return Err((from_status(&s), follow_again(&s))),
                }
            }
        };
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = &mut ctrl_c => {
                if let Some(bar) = &follower.bar {
                    bar.abandon();
                }
                return Err(Error::Detached(reattach_hint(id, target)));
            }
        };
        match outcome {
            Ok(done) => return Ok(done),
            Err((e, again)) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                let retriable =
                    again || matches!(e, Error::SchedulerUnreachable { .. } | Error::Etcd(_));
                if !retriable || !matches!(target, Target::Cluster(_)) || since.elapsed() > give_up
                {
                    return Err(e);
                }
                tracing::warn!(error = %e, "lost the scheduler while following; following the leader");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The report of a finished backfill; its failure as an error.
///
/// # Errors
/// [`Error::Query`] with the failure's class for a failed backfill;
/// [`Error::Usage`] for a cancelled one.
pub fn outcome(record: &pb::Backfill, seconds: f64) -> Result<BackfillReport> {
    let request = record.request.clone().unwrap_or_default();
    let report = BackfillReport {
        id: record.id.clone(),
        spec: request.spec_label.clone(),
        output: request.output.clone(),
        from: request.from.clone(),
        to: request.to.clone(),
        dates_total: record.dates_total as usize,
        dates_already_committed: record.dates_already_committed as usize,
        dates_committed: record.dates_committed as usize,
        chunks: record.chunks.len(),
        rows: record.rows,
        seconds,
        quality: {
            let mut q: Vec<ExpectationResult> = record
                .quality
                .iter()
                .map(|q| ExpectationResult {
                    expectation: q.expectation.clone(),
                    column: q.column.clone(),
                    chunk: q.chunk.clone(),
                    passed: q.passed,
                    failing: q.failing,
                    samples: q.samples.clone(),
                })
                .collect();
            q.sort_by(|a, b| a.chunk.cmp(&b.chunk));
            q
        },
        ok: record.state() == pb::BackfillState::Done,
    };
    match record.state() {
        pb::BackfillState::Done | pb::BackfillState::FailedQuality => Ok(report),
        pb::BackfillState::Cancelled => Err(Error::Usage(format!(
            "backfill {} was cancelled; {} dates stay committed in {} (a rerun completes the rest)",
            record.id,
            record.dates_committed + record.dates_already_committed,
            request.output
        ))),
        _ => {
            let failure = record.failure.clone().unwrap_or_default();
            let class = match failure.class() {
                pb::ErrorClass::User => ErrorClass::User,
                pb::ErrorClass::External => ErrorClass::External,
                _ => ErrorClass::Internal,
            };
            Err(Error::Query { message: failure.message, class })
        }
    }
}

/// Submits a backfill and returns its record at once (`--detach`).
///
/// # Errors
/// The spec refused ([`Error::Usage`] naming file and field), an
/// unreachable cluster.
pub async fn submit(opts: &BackfillOptions) -> Result<(pb::Backfill, HostPort)> {
    let request = request(opts)?;
    let mut service = Service::of(&opts.target, opts.token.as_deref()).await?;
    let record = service.submit(request).await?;
    Ok((record, service.scheduler))
}

/// Runs a backfill to its end: submitted to the cluster (an embedded one
/// without a target), or run in this process on plain DataFusion (`--local`).
///
/// # Errors
/// Bad spec or flags ([`Error::Usage`] naming file and field), an
/// unreachable cluster, a failing chunk, a cancel; Ctrl-C on a cluster
/// target detaches ([`Error::Detached`]).
pub async fn run(opts: &BackfillOptions) -> Result<BackfillReport> {
    let started = Instant::now();
    let request = request(opts)?;
    let record = match &opts.target {
        Target::Local => {
            let conn = connect_as(&Target::Local, None, &opts.settings, &[]).await?;
            let hub = sluice_scheduler::backfill::Hub::new(
                Arc::new(sluice_scheduler::backfill::LocalEngine { ctx: conn.ctx.clone() }),
                sluice_scheduler::backfill::Store::memory(),
                "local",
            );
            let record = hub.submit(request).await.map_err(|s| from_status(&s))?;
            let id: BackfillId = record.id.parse().map_err(Error::Usage)?;
            let rx = hub.watch(&id).await.map_err(|s| from_status(&s))?;
            follow_stream(tokio_stream::wrappers::ReceiverStream::new(rx), opts.progress).await?
        }
        Target::Standalone => {
            // The embedded cluster lives as long as `conn`.
            let conn = connect_as(&opts.target, None, &opts.settings, &[]).await?;
            let scheduler = conn.scheduler.clone().ok_or_else(|| Error::Embedded {
                message: "the embedded cluster has no scheduler address".into(),
            })?;
            // The embedded cluster runs without TLS, whatever SLUICE_CLUSTER_* say.
            let mut service = Service::connect_with(&scheduler, None, None).await?;
            let record = service.submit(request).await?;
            let id: BackfillId = record.id.parse().map_err(Error::Usage)?;
            let stream = service.watch(&id).await.map_err(|s| from_status(&s))?;
            let done = follow_stream(stream, opts.progress).await;
            drop(conn);
            done?
        }
        Target::Scheduler(_) | Target::Cluster(_) => {
            let mut service = Service::of(&opts.target, opts.token.as_deref()).await?;
            let record = service.submit(request).await?;
            tracing::info!(backfill = %record.id, scheduler = %service.scheduler, "backfill submitted");
            let id: BackfillId = record.id.parse().map_err(Error::Usage)?;
            watch(&opts.target, opts.token.as_deref(), &id, opts.progress).await?
        }
    };
    outcome(&record, started.elapsed().as_secs_f64())
}

async fn follow_stream(
    stream: impl Stream<Item = std::result::Result<pb::BackfillEvent, tonic::Status>> + Unpin,
    progress: bool,
) -> Result<pb::Backfill> {
    let mut follower = Follower::new(progress);
    let mut stream = stream;
    while let Some(e) = stream.next().await {
        let e = e.map_err(|s| from_status(&s))?;
        if let Some(done) = follower.on(e) {
            return Ok(done);
        }
    }
    Err(Error::Query {
        message: "the backfill's event stream ended early".into(),
        class: ErrorClass::Internal,
    })
}

/// A backfill record as `status --json` and `sluice cluster status` print it.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillView {
    pub id: String,
    pub state: String,
    /// The scheduler running it.
    pub owner: String,
    /// Whether a runner drives it (asked of the leader; unknown when read
    /// from etcd directly).
    pub runner_alive: Option<bool>,
    pub spec: String,
    pub output: String,
    pub from: String,
    pub to: String,
    pub dates_total: u32,
    pub dates_already_committed: u32,
    pub dates_committed: u32,
    pub rows: u64,
    pub resumptions: u32,
    pub error: Option<String>,
    pub chunks: Vec<ChunkView>,
    pub submitted_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkView {
    pub first: String,
    pub last: String,
    pub state: String,
    pub submissions: u32,
    pub job_ids: Vec<String>,
    pub error: Option<String>,
}

fn state_name(s: pb::BackfillState) -> &'static str {
    match s {
        pb::BackfillState::Running | pb::BackfillState::Unspecified => "running",
        pb::BackfillState::Done => "done",
        pb::BackfillState::Failed => "failed",
        pb::BackfillState::FailedQuality => "failed-quality",
        pb::BackfillState::Cancelled => "cancelled",
    }
}

fn chunk_state_name(s: pb::ChunkState) -> &'static str {
    match s {
        pb::ChunkState::Pending | pb::ChunkState::Unspecified => "pending",
        pb::ChunkState::Writing => "writing",
        pb::ChunkState::Checking => "checking",
        pb::ChunkState::Committing => "committing",
        pb::ChunkState::Committed => "committed",
        pb::ChunkState::Failed => "failed",
        pb::ChunkState::FailedQuality => "failed-quality",
        pb::ChunkState::Cancelled => "cancelled",
    }
}

impl BackfillView {
    /// `runner_known`: the record came from the leader (which says whether
    /// it runs it), not from etcd.
    pub fn of(b: &pb::Backfill, runner_known: bool) -> Self {
        let request = b.request.clone().unwrap_or_default();
        let running = b.state() == pb::BackfillState::Running;
        let state = if running && runner_known && !b.runner_alive {
            "running (no runner: waiting for the leader to resume it)".to_string()
        } else {
            state_name(b.state()).to_string()
        };
        Self {
            id: b.id.clone(),
            state,
            owner: b.owner.clone(),
            runner_alive: runner_known.then_some(b.runner_alive),
            spec: request.spec_label,
            output: request.output,
            from: request.from,
            to: request.to,
            dates_total: b.dates_total,
            dates_already_committed: b.dates_already_committed,
            dates_committed: b.dates_committed,
            rows: b.rows,
            resumptions: b.resumptions,
            error: b.failure.as_ref().map(|f| f.message.clone()),
            chunks: b
                .chunks
                .iter()
                .map(|c| ChunkView {
                    first: c.first.clone(),
                    last: c.last.clone(),
                    state: chunk_state_name(c.state()).to_string(),
                    submissions: c.submissions,
                    job_ids: c.job_ids.clone(),
                    error: c.failure.as_ref().map(|f| f.message.clone()),
                })
                .collect(),
            submitted_ms: b.submitted_ms,
            updated_ms: b.updated_ms,
        }
    }

    /// The human-readable record.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "backfill {}  {}", self.id, self.state);
        let _ = writeln!(out, "  spec     {}", self.spec);
        let _ = writeln!(out, "  output   {}", self.output);
        let _ =
            writeln!(out, "  range    {} .. {}  ({} dates)", self.from, self.to, self.dates_total);
        let _ = writeln!(
            out,
            "  dates    {} of {} committed ({} already there)",
            self.dates_committed + self.dates_already_committed,
            self.dates_total,
            self.dates_already_committed
        );
        let _ = writeln!(out, "  rows     {}", self.rows);
        let _ = writeln!(
            out,
            "  owner    {}{}",
            self.owner,
            match self.resumptions {
                0 => String::new(),
                n => format!("  (resumed {n}x by a new leader)"),
            }
        );
        if let Some(e) = &self.error {
            let _ = writeln!(out, "  error    {e}");
        }
        let _ = writeln!(out, "  chunks   {}", self.chunks.len());
        for c in &self.chunks {
            let reason = c.error.as_deref().map(|r| format!("  ({r})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "    {}_{:<13} {:<14} submitted {}x{reason}",
                c.first, c.last, c.state, c.submissions
            );
        }
        out
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

/// A spec checked against its data on the target, for `--explain`.
struct Explained {
    spec: JobSpec,
    conn: crate::connect::Connection,
    prepared: sluice_sql::job::prepare::Prepared,
}

async fn prepare_explain(opts: &BackfillOptions) -> Result<Explained> {
    if opts.from > opts.to {
        return Err(Error::Usage(format!(
            "--from {} is after --to {}; expected --from <= --to",
            opts.from, opts.to
        )));
    }
    let label = opts.spec.display().to_string();
    let spec = JobSpec::from_file(&opts.spec).map_err(|e| Error::Usage(e.to_string()))?;
    let spec_dir = opts.spec.parent().map(Path::to_path_buf).unwrap_or_default();
    let spec_dir = if spec_dir.as_os_str().is_empty() { PathBuf::from(".") } else { spec_dir };
    let data_dir = opts.data_dir.clone().unwrap_or_else(|| spec_dir.clone());
    let prep_err = |e: sluice_sql::job::prepare::PrepareError| match e {
        sluice_sql::job::prepare::PrepareError::Invalid(m) => Error::Usage(m),
        sluice_sql::job::prepare::PrepareError::Engine(e) => Error::from_datafusion(e),
    };
    let tables =
        sluice_sql::job::prepare::source_tables(&spec, &label, &data_dir.to_string_lossy())
            .map_err(prep_err)?;
    let conn = connect_as(&opts.target, opts.token.as_deref(), &opts.settings, &tables).await?;
    let prepared = sluice_sql::job::prepare::prepare(&conn.ctx, &spec, &label, opts.from, opts.to)
        .await
        .map_err(prep_err)?;
    Ok(Explained { spec, conn, prepared })
}

/// `EXPLAIN` (or `EXPLAIN ANALYZE`, which runs it) of the query of the
/// range's first chunk: the SQL, then the plan. Writes nothing.
///
/// # Errors
/// As [`run`], for the spec, the data and the engine.
pub async fn explain(opts: &BackfillOptions, analyze: bool) -> Result<String> {
    let Explained { spec, conn, prepared } = prepare_explain(opts).await?;
    let all: Vec<NaiveDate> = opts.from.iter_days().take_while(|d| *d <= opts.to).collect();
    let chunk_days =
        sluice_sql::job::backfill::chunk_days(opts.chunk_days, all.len(), opts.parallel);
    let Some(first_chunk) = sluice_sql::job::backfill::chunks(&all, chunk_days).into_iter().next()
    else {
        return Ok(String::new());
    };
    let (first, last) = (first_chunk.first, first_chunk.last);
    let sql = plan::chunk_query(&spec, first, last, &prepared.types, &prepared.plan_opts);
    let mut text = format!("-- chunk {first}..{last}\n");
    text.push_str(&hot_keys_report(
        &spec,
        prepared.hot.as_ref(),
        &prepared.plan_opts,
        &prepared.skew,
    ));
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
        let copy = |dir: &str| {
            plan::copy_statement(&spec, first, last, &prepared.types, &prepared.plan_opts, dir)
        };
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
    ctx: &datafusion::prelude::SessionContext,
    scheduler: &HostPort,
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
        match crate::http::get_as(&addr, &path, token, Duration::from_secs(10)).await {
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
