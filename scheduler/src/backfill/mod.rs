//! Backfills owned by the cluster: the `BackfillService` of
//! `proto/sluice/v1/backfill.proto`, served by the leader scheduler beside
//! Ballista's gRPC.
//!
//! ```text
//!   sluice backfill ──Submit──► Hub ──validate (sql::job::prepare)──► record (etcd, fenced)
//!        │  Watch ◄── events ──┤                                         │
//!        │                     └─ runner (runner.rs): chunk jobs submitted to this
//!        └─ Ctrl-C: detaches      scheduler in process, quality checks, commits
//!   new leader: Hub::resume_all ── every RUNNING record ──► runner (committed dates kept)
//! ```
//!
//! The orchestration itself is [`sluice_sql::job::backfill::Machine`]; this
//! module performs its actions and keeps the records.

pub mod engine;
pub mod runner;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use sluice_proto::etcd::now_ms;
use sluice_proto::pb;
use sluice_proto::pb::backfill_event::Event as Ev;
use sluice_proto::{ErrorClass, HostPort};
use tokio::sync::{Mutex, broadcast, watch};
use tonic::{Request, Response, Status};

pub use engine::{ClusterEngine, Engine, LocalEngine};
pub use store::{Store, StoreError};

/// A backfill's id: `bf-` and 12 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackfillId(String);

impl BackfillId {
    /// A fresh id.
    pub fn generate() -> Self {
        Self(format!("bf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for BackfillId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("bf-").unwrap_or_default();
        if hex.len() == 12 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "'{s}' is not a backfill id; expected bf- and 12 hex digits, e.g. bf-1a2b3c4d5e6f"
            ))
        }
    }
}

impl std::fmt::Display for BackfillId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A backfill id from a request, or `INVALID_ARGUMENT`.
fn parse_id(s: &str) -> Result<BackfillId, Status> {
    s.parse().map_err(Status::invalid_argument)
}

/// A backfill being run by this process.
struct Live {
    events: broadcast::Sender<pb::BackfillEvent>,
    cancel: watch::Sender<bool>,
    record: pb::Backfill,
}

/// The backfills this scheduler runs, and the records of all.
pub struct Hub {
    pub(crate) engine: Arc<dyn Engine>,
    store: Store,
    /// This scheduler's id, recorded as each backfill's owner.
    owner: String,
    live: Mutex<HashMap<BackfillId, Live>>,
}

fn status_of(f: &sluice_sql::job::backfill::Failure) -> Status {
    match f.class {
        ErrorClass::User => Status::invalid_argument(f.message.clone()),
        ErrorClass::External => Status::unavailable(f.message.clone()),
        ErrorClass::Internal => Status::internal(f.message.clone()),
    }
}

fn event(e: Ev) -> pb::BackfillEvent {
    pb::BackfillEvent { at_ms: now_ms(), event: Some(e) }
}

impl Hub {
    pub fn new(engine: Arc<dyn Engine>, store: Store, owner: impl Into<String>) -> Arc<Self> {
        Arc::new(Self { engine, store, owner: owner.into(), live: Mutex::default() })
    }

    pub(crate) async fn save(&self, record: &pb::Backfill) -> Result<(), StoreError> {
        let mut record = record.clone();
        record.updated_ms = now_ms();
        record.runner_alive = false;
        self.store.save(&record).await?;
        let Ok(id) = parse_id(&record.id) else { return Ok(()) };
        if let Some(live) = self.live.lock().await.get_mut(&id) {
            record.runner_alive = true;
            live.record = record;
        }
        Ok(())
    }

    pub(crate) async fn publish(&self, id: &BackfillId, e: Ev) {
        if let Some(live) = self.live.lock().await.get(id) {
            let _ = live.events.send(event(e));
        }
    }

    /// The runner of `record` ended.
    pub(crate) async fn finished(&self, record: pb::Backfill) {
        let Ok(id) = parse_id(&record.id) else { return };
        if let Some(live) = self.live.lock().await.remove(&id) {
            let _ = live.events.send(event(Ev::Finished(record)));
        }
    }

    /// The runner stopped without ending the backfill (this scheduler was
    /// deposed): watchers are cut off so they follow the new leader.
    pub(crate) async fn forget(&self, id: &BackfillId) {
        self.live.lock().await.remove(id);
    }

    /// Validates `request` against the data and starts running it.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` naming the file, field or line; `FAILED_PRECONDITION`
    /// when another running backfill writes the same output.
    pub async fn submit(
        self: &Arc<Self>,
        request: pb::BackfillRequest,
    ) -> Result<pb::Backfill, Status> {
        let id = BackfillId::generate();
        let compiled = runner::compile(self.engine.as_ref(), &format!("backfill-{id}"), &request)
            .await
            .map_err(|f| status_of(&f))?;
        let output = compiled.out.url.to_string();
        // Recorded resolved: a resumed backfill writes where this one does.
        let mut request = request;
        request.output = output.clone();
        let running = self.store.list().await.map_err(|e| Status::unavailable(e.to_string()))?;
        if let Some(other) = running.iter().find(|b| {
            b.state() == pb::BackfillState::Running
                && b.request.as_ref().is_some_and(|r| r.output == output)
        }) {
            return Err(Status::failed_precondition(format!(
                "backfill {} is writing {output}; wait for it or cancel it (`sluice backfill cancel {}`)",
                other.id, other.id
            )));
        }
        let (chunks, total, already) =
            runner::plan_chunks(&compiled, &request).await.map_err(|f| status_of(&f))?;
        let record = pb::Backfill {
            id: id.to_string(),
            request: Some(request),
            state: pb::BackfillState::Running as i32,
            owner: self.owner.clone(),
            runner_alive: true,
            dates_total: total as u32,
            dates_already_committed: already as u32,
            chunks: chunks.iter().map(convert::chunk_to_pb).collect(),
            submitted_ms: now_ms(),
            ..Default::default()
        };
        self.store.save(&record).await.map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(backfill = %id, chunks = chunks.len(), dates = total - already, "backfill submitted");
        self.spawn(id, record.clone(), compiled).await;
        Ok(record)
    }

    async fn spawn(
        self: &Arc<Self>,
        id: BackfillId,
        record: pb::Backfill,
        compiled: runner::Compiled,
    ) {
        let (events, _) = broadcast::channel(1024);
        let (cancel, cancelled) = watch::channel(false);
        let mut live_record = record.clone();
        live_record.runner_alive = true;
        self.live.lock().await.insert(id.clone(), Live { events, cancel, record: live_record });
        tokio::spawn(runner::drive(Arc::clone(self), id, record, compiled, cancelled));
    }

    /// Resumes every running backfill of the store (a new leader's first
    /// act): committed dates stay, chunks in flight are resubmitted.
    pub async fn resume_all(self: &Arc<Self>) {
        let records = loop {
            match self.store.list().await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list backfills to resume; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        };
        for mut record in records.into_iter().filter(|r| r.state() == pb::BackfillState::Running) {
            let Ok(id) = parse_id(&record.id) else {
                tracing::warn!(id = %record.id, "a backfill record with a malformed id; skipped");
                continue;
            };
            if self.live.lock().await.contains_key(&id) {
                continue;
            }
            let previous = std::mem::replace(&mut record.owner, self.owner.clone());
            record.resumptions += 1;
            let request = record.request.clone().unwrap_or_default();
            tracing::info!(backfill = %record.id, %previous, "resuming a backfill whose runner is gone");
            match runner::compile(
                self.engine.as_ref(),
                &format!("backfill-{}", record.id),
                &request,
            )
            .await
            {
                Ok(compiled) => {
                    if let Err(e) = self.store.save(&record).await {
                        tracing::warn!(backfill = %record.id, error = %e, "cannot take the backfill over");
                        continue;
                    }
                    self.spawn(id.clone(), record, compiled).await;
                    self.publish(&id, Ev::ResumedBy(self.owner.clone())).await;
                }
                Err(f) => {
                    record.state = pb::BackfillState::Failed as i32;
                    record.failure = Some(convert::failure(&f));
                    record.finished_ms = now_ms();
                    if let Err(e) = self.store.save(&record).await {
                        tracing::warn!(backfill = %record.id, error = %e, "cannot record the failed resume");
                    }
                }
            }
        }
    }

    /// The record as this scheduler knows it (`runner_alive` set when it runs it).
    ///
    /// # Errors
    /// `NOT_FOUND`; `UNAVAILABLE` when the store cannot be read.
    pub async fn get(&self, id: &BackfillId) -> Result<pb::Backfill, Status> {
        if let Some(live) = self.live.lock().await.get(id) {
            return Ok(live.record.clone());
        }
        match self.store.get(id.as_str()).await {
            Ok(Some(mut r)) => {
                r.runner_alive = false;
                Ok(r)
            }
            Ok(None) => Err(Status::not_found(format!("no backfill {id}"))),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    /// Every record, newest first.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the store cannot be read.
    pub async fn list(&self) -> Result<Vec<pb::Backfill>, Status> {
        let mut all = self.store.list().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let live = self.live.lock().await;
        for r in &mut all {
            if let Some(l) = parse_id(&r.id).ok().and_then(|id| live.get(&id)) {
                *r = l.record.clone();
            }
        }
        all.sort_by(|a, b| b.submitted_ms.cmp(&a.submitted_ms));
        Ok(all)
    }

    /// The record now, then progress events until the backfill ends.
    ///
    /// # Errors
    /// As [`Hub::get`].
    pub async fn watch(
        &self,
        id: &BackfillId,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<pb::BackfillEvent, Status>>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let subscription =
            self.live.lock().await.get(id).map(|l| (l.events.subscribe(), l.record.clone()));
        match subscription {
            Some((mut events, snapshot)) => {
                let _ = tx.send(Ok(event(Ev::Snapshot(snapshot)))).await;
                let id = id.clone();
                tokio::spawn(async move {
                    loop {
                        match events.recv().await {
                            Ok(e) => {
                                let last = matches!(e.event, Some(Ev::Finished(_)));
                                if tx.send(Ok(e)).await.is_err() || last {
                                    return;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::debug!(backfill = %id, skipped = n, "a watcher lagged");
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                let _ = tx
                                    .send(Err(Status::unavailable(format!(
                                        "backfill {id}: this scheduler stopped running it; the leader resumes it"
                                    ))))
                                    .await;
                                return;
                            }
                        }
                    }
                });
            }
            None => {
                let record = self.get(id).await?;
                let _ = tx.send(Ok(event(Ev::Snapshot(record.clone())))).await;
                if record.state() == pb::BackfillState::Running {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "backfill {id} is running but has no runner on this scheduler yet; the leader resumes it"
                        ))))
                        .await;
                } else {
                    let _ = tx.send(Ok(event(Ev::Finished(record)))).await;
                }
            }
        }
        Ok(rx)
    }

    /// Stops a running backfill and returns its final record.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` when it has already ended; `NOT_FOUND`.
    pub async fn cancel(&self, id: &BackfillId) -> Result<pb::Backfill, Status> {
        let subscription = {
            let live = self.live.lock().await;
            live.get(id).map(|l| {
                let rx = l.events.subscribe();
                let _ = l.cancel.send(true);
                rx
            })
        };
        let Some(mut events) = subscription else {
            let record = self.get(id).await?;
            return Err(Status::failed_precondition(format!(
                "backfill {id} is not running: it is {}",
                convert::state_from_pb(record.state())
            )));
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(pb::BackfillEvent { event: Some(Ev::Finished(record)), .. })) => {
                    return Ok(record);
                }
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => return self.get(id).await,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "backfill {id}: cancel asked, its jobs have not stopped within 120 s"
                    )));
                }
            }
        }
    }
}

/// The gRPC face of a [`Hub`].
#[derive(Clone)]
pub struct BackfillGrpc(pub Arc<Hub>);

/// `record` as clients see it: secret settings (`s3.secret_access_key`, …)
/// replaced. The stored record keeps them: a new leader resuming the
/// backfill needs them for its jobs.
fn redacted(mut record: pb::Backfill) -> pb::Backfill {
    if let Some(request) = record.request.as_mut() {
        for s in &mut request.settings {
            if sluice_sql::storage::is_secret(&s.key) {
                s.value = "<redacted>".into();
            }
        }
    }
    record
}

fn redacted_event(mut e: pb::BackfillEvent) -> pb::BackfillEvent {
    match e.event.take() {
        Some(Ev::Snapshot(r)) => e.event = Some(Ev::Snapshot(redacted(r))),
        Some(Ev::Finished(r)) => e.event = Some(Ev::Finished(redacted(r))),
        other => e.event = other,
    }
    e
}

#[tonic::async_trait]
impl pb::backfill_service_server::BackfillService for BackfillGrpc {
    async fn submit(
        &self,
        request: Request<pb::SubmitBackfillRequest>,
    ) -> Result<Response<pb::SubmitBackfillResponse>, Status> {
        let request = request
            .into_inner()
            .request
            .ok_or_else(|| Status::invalid_argument("SubmitBackfillRequest.request is missing"))?;
        let backfill = self.0.submit(request).await?;
        Ok(Response::new(pb::SubmitBackfillResponse { backfill: Some(redacted(backfill)) }))
    }

    async fn get(
        &self,
        request: Request<pb::GetBackfillRequest>,
    ) -> Result<Response<pb::Backfill>, Status> {
        Ok(Response::new(redacted(self.0.get(&parse_id(&request.into_inner().id)?).await?)))
    }

    async fn list(
        &self,
        _request: Request<pb::ListBackfillsRequest>,
    ) -> Result<Response<pb::ListBackfillsResponse>, Status> {
        let backfills = self.0.list().await?.into_iter().map(redacted).collect();
        Ok(Response::new(pb::ListBackfillsResponse { backfills }))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::BackfillEvent, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchBackfillRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut events = self.0.watch(&parse_id(&request.into_inner().id)?).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if tx.send(e.map(redacted_event)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelBackfillRequest>,
    ) -> Result<Response<pb::Backfill>, Status> {
        Ok(Response::new(redacted(self.0.cancel(&parse_id(&request.into_inner().id)?).await?)))
    }
}

/// The service for a gRPC router.
pub fn grpc_service(
    hub: Arc<Hub>,
) -> pb::backfill_service_server::BackfillServiceServer<BackfillGrpc> {
    pb::backfill_service_server::BackfillServiceServer::new(BackfillGrpc(hub))
}

/// Where a client reaches the service (the scheduler's gRPC port).
pub fn service_url(scheduler: &HostPort) -> String {
    scheduler.http_url()
}

/// Conversions between the state machine's types and the wire's.
pub mod convert {
    use chrono::NaiveDate;
    use sluice_proto::pb;
    use sluice_sql::job::backfill::{BackfillState, Chunk, ChunkState, Failure, Machine};

    pub fn state_to_pb(s: BackfillState) -> pb::BackfillState {
        match s {
            BackfillState::Running => pb::BackfillState::Running,
            BackfillState::Done => pb::BackfillState::Done,
            BackfillState::Failed => pb::BackfillState::Failed,
            BackfillState::FailedQuality => pb::BackfillState::FailedQuality,
            BackfillState::Cancelled => pb::BackfillState::Cancelled,
        }
    }

    pub fn state_from_pb(s: pb::BackfillState) -> BackfillState {
        match s {
            pb::BackfillState::Running | pb::BackfillState::Unspecified => BackfillState::Running,
            pb::BackfillState::Done => BackfillState::Done,
            pb::BackfillState::Failed => BackfillState::Failed,
            pb::BackfillState::FailedQuality => BackfillState::FailedQuality,
            pb::BackfillState::Cancelled => BackfillState::Cancelled,
        }
    }

    pub fn chunk_state_to_pb(s: ChunkState) -> pb::ChunkState {
        match s {
            ChunkState::Pending => pb::ChunkState::Pending,
            ChunkState::Writing => pb::ChunkState::Writing,
            ChunkState::Checking => pb::ChunkState::Checking,
            ChunkState::Committing => pb::ChunkState::Committing,
            ChunkState::Committed => pb::ChunkState::Committed,
            ChunkState::Failed => pb::ChunkState::Failed,
            ChunkState::FailedQuality => pb::ChunkState::FailedQuality,
            ChunkState::Cancelled => pb::ChunkState::Cancelled,
        }
    }

    pub fn chunk_state_from_pb(s: pb::ChunkState) -> ChunkState {
        match s {
            pb::ChunkState::Pending | pb::ChunkState::Unspecified => ChunkState::Pending,
            pb::ChunkState::Writing => ChunkState::Writing,
            pb::ChunkState::Checking => ChunkState::Checking,
            pb::ChunkState::Committing => ChunkState::Committing,
            pb::ChunkState::Committed => ChunkState::Committed,
            pb::ChunkState::Failed => ChunkState::Failed,
            pb::ChunkState::FailedQuality => ChunkState::FailedQuality,
            pb::ChunkState::Cancelled => ChunkState::Cancelled,
        }
    }

    pub fn failure(f: &Failure) -> pb::Failure {
        pb::Failure {
            class: sluice_proto::remote_error::ErrorClassPb::from(f.class) as i32,
            retryable: f.retryable,
            message: f.message.clone(),
        }
    }

    pub fn failure_from_pb(f: &pb::Failure) -> Failure {
        let class = match pb::ErrorClass::try_from(f.class).unwrap_or(pb::ErrorClass::Internal) {
            pb::ErrorClass::User => sluice_proto::ErrorClass::User,
            pb::ErrorClass::External => sluice_proto::ErrorClass::External,
            _ => sluice_proto::ErrorClass::Internal,
        };
        Failure::new(class, f.retryable, f.message.clone())
    }

    pub fn chunk_to_pb(c: &Chunk) -> pb::Chunk {
        pb::Chunk {
            first: c.first.to_string(),
            last: c.last.to_string(),
            state: chunk_state_to_pb(c.state) as i32,
            submissions: c.submissions,
            failure: c.failure.as_ref().map(failure),
            ..Default::default()
        }
    }

    pub fn chunk_from_pb(c: &pb::Chunk) -> Option<Chunk> {
        let first = NaiveDate::parse_from_str(&c.first, "%Y-%m-%d").ok()?;
        let last = NaiveDate::parse_from_str(&c.last, "%Y-%m-%d").ok()?;
        Some(Chunk {
            first,
            last,
            state: chunk_state_from_pb(c.state()),
            submissions: c.submissions,
            failure: c.failure.as_ref().map(failure_from_pb),
        })
    }

    /// Copies the machine's chunk states into `record`, and the dates this
    /// backfill committed.
    pub fn apply(record: &mut pb::Backfill, machine: &Machine) {
        for (i, c) in machine.chunks.iter().enumerate() {
            let Some(pc) = record.chunks.get_mut(i) else { continue };
            pc.state = chunk_state_to_pb(c.state) as i32;
            pc.submissions = c.submissions;
            pc.failure = c.failure.as_ref().map(failure);
            if !c.state.in_flight() {
                pc.job_ids.clear();
            }
        }
        record.dates_committed = machine
            .chunks
            .iter()
            .filter(|c| c.state == ChunkState::Committed)
            .map(|c| c.dates().len() as u32)
            .sum();
    }
}
