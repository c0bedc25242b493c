//! The backfill registry in etcd: each backfill driven on a
//! high-availability cluster records its range, options and every chunk's
//! state under `/sluice/{cluster}/backfills/{id}`, so `sluice cluster status`
//! shows progress and a failover's effect is visible (chunks resubmitted,
//! never committed twice).
//!
//! Writes are best effort: etcd trouble is logged and never fails the
//! backfill, whose source of truth stays the committed output folders.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_proto::etcd::{EtcdTarget, now_ms};
use tokio::sync::Mutex;

use crate::backfill::BackfillOptions;

/// One chunk's state: `pending`, `running`, `committed` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkState {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Times the chunk was submitted (more than 1 after a failover).
    #[serde(default)]
    pub submissions: u32,
}

/// A backfill's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillRecord {
    pub id: String,
    pub spec: String,
    pub output: String,
    pub from: String,
    pub to: String,
    pub parallel: usize,
    pub chunk_days: u32,
    pub dates_total: usize,
    pub dates_committed: usize,
    /// `running`, `done`, `failed` or `failed-quality`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub chunks: BTreeMap<String, ChunkState>,
    /// `host:pid` of the process driving it.
    pub driver: String,
    pub started_ms: u64,
    pub updated_ms: u64,
}

/// The key prefix of backfill records.
pub fn backfills_prefix(target: &EtcdTarget) -> String {
    format!("/sluice/{}/backfills/", target.cluster)
}

/// A new backfill id.
pub fn new_id() -> String {
    format!("bf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The key whose presence asks backfill `id` to stop.
fn cancel_key(target: &EtcdTarget, id: &str) -> String {
    format!("/sluice/{}/backfill-cancel/{id}", target.cluster)
}

/// A backfill's record, if recorded.
///
/// # Errors
/// [`crate::Error::Etcd`].
pub async fn get(target: &EtcdTarget, id: &str) -> crate::Result<Option<BackfillRecord>> {
    let mut client = target.connect(std::time::Duration::from_secs(10)).await?;
    let key = format!("{}{id}", backfills_prefix(target));
    let resp = client.get(key, None).await.map_err(|e| sluice_proto::etcd::EtcdError::Request {
        endpoints: target.endpoints_label(),
        reason: e.to_string(),
    })?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => serde_json::from_slice(kv.value()).map(Some).map_err(|e| {
            crate::Error::Usage(format!("backfill {id}: unreadable record in etcd: {e}"))
        }),
    }
}

/// Asks a running backfill to stop (its driver checks every second).
///
/// # Errors
/// [`crate::Error::Usage`] when there is no such backfill or it is not
/// running; [`crate::Error::Etcd`].
pub async fn request_cancel(target: &EtcdTarget, id: &str) -> crate::Result<()> {
    let record = get(target, id).await?.ok_or_else(|| {
        crate::Error::Usage(format!("no backfill {id} in cluster '{}'", target.cluster))
    })?;
    if record.state != "running" {
        return Err(crate::Error::Usage(format!(
            "backfill {id} is not running (it is {})",
            record.state
        )));
    }
    let mut client = target.connect(std::time::Duration::from_secs(10)).await?;
    client
        .put(cancel_key(target, id), sluice_proto::etcd::now_ms().to_string(), None)
        .await
        .map_err(|e| sluice_proto::etcd::EtcdError::Request {
            endpoints: target.endpoints_label(),
            reason: e.to_string(),
        })?;
    Ok(())
}

/// The human-readable record.
pub fn render(r: &BackfillRecord) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "backfill {}  {}", r.id, r.state);
    let _ = writeln!(out, "  spec     {}", r.spec);
    let _ = writeln!(out, "  output   {}", r.output);
    let _ = writeln!(out, "  range    {} .. {}  ({} dates)", r.from, r.to, r.dates_total);
    let _ = writeln!(out, "  dates    {} of {} committed", r.dates_committed, r.dates_total);
    let _ = writeln!(out, "  driver   {}", r.driver);
    if let Some(e) = &r.error {
        let _ = writeln!(out, "  error    {e}");
    }
    let _ = writeln!(out, "  chunks   {}", r.chunks.len());
    for (label, c) in &r.chunks {
        let reason = c.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default();
        let _ =
            writeln!(out, "    {label:<24} {:<10} submitted {}x{reason}", c.state, c.submissions);
    }
    out
}

/// A backfill's live record.
pub struct Registry {
    target: EtcdTarget,
    client: Mutex<sluice_proto::etcd::Client>,
    record: Mutex<BackfillRecord>,
}

impl Registry {
    /// Registers a backfill; `None` (logged) when etcd cannot be written.
    pub async fn start(
        target: &EtcdTarget,
        opts: &BackfillOptions,
        out: &Path,
        dates_total: usize,
        dates_committed: usize,
    ) -> Option<Self> {
        let client = match target.connect(std::time::Duration::from_secs(5)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "backfill not recorded in etcd");
                return None;
            }
        };
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map_or_else(|| "localhost".to_string(), |h| h.trim().to_string());
        let id = opts.id.clone().unwrap_or_else(new_id);
        let record = BackfillRecord {
            id: id.clone(),
            spec: opts.spec.display().to_string(),
            output: out.display().to_string(),
            from: opts.from.to_string(),
            to: opts.to.to_string(),
            parallel: opts.parallel,
            chunk_days: opts.chunk_days,
            dates_total,
            dates_committed,
            state: "running".into(),
            error: None,
            chunks: BTreeMap::new(),
            driver: format!("{host}:{}", std::process::id()),
            started_ms: now_ms(),
            updated_ms: now_ms(),
        };
        let mut client = client;
        // A stale cancel request must not stop this run.
        let _ = client.delete(cancel_key(target, &id), None).await;
        let registry =
            Self { target: target.clone(), client: Mutex::new(client), record: Mutex::new(record) };
        registry.save().await;
        tracing::info!(backfill = %id, "backfill recorded in etcd");
        Some(registry)
    }

    pub async fn id(&self) -> String {
        self.record.lock().await.id.clone()
    }

    /// Resolves once `sluice backfill cancel` asked this backfill to stop.
    pub async fn cancelled(&self) {
        let key = cancel_key(&self.target, &self.id().await);
        loop {
            let asked = {
                let mut client = self.client.lock().await;
                client.get(key.clone(), None).await.map(|r| !r.kvs().is_empty())
            };
            if matches!(asked, Ok(true)) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    async fn save(&self) {
        let record = {
            let mut record = self.record.lock().await;
            record.updated_ms = now_ms();
            record.clone()
        };
        let key = format!("{}{}", backfills_prefix(&self.target), record.id);
        let value = match serde_json::to_vec(&record) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "backfill record not encodable");
                return;
            }
        };
        if let Err(e) = self.client.lock().await.put(key, value, None).await {
            tracing::warn!(error = %e, "backfill record not saved in etcd");
        }
    }

    /// Records a chunk's new state.
    pub async fn chunk(&self, label: &str, state: &str, reason: Option<&str>) {
        {
            let mut record = self.record.lock().await;
            let chunk = record.chunks.entry(label.to_string()).or_insert(ChunkState {
                state: String::new(),
                reason: None,
                submissions: 0,
            });
            if state == "running" {
                chunk.submissions += 1;
            }
            chunk.state = state.to_string();
            chunk.reason = reason.map(str::to_string);
        }
        self.save().await;
    }

    /// Records a chunk's commit of `dates` new dates.
    pub async fn committed(&self, label: &str, dates: usize) {
        self.record.lock().await.dates_committed += dates;
        self.chunk(label, "committed", None).await;
    }

    /// Records the end of the backfill.
    pub async fn finish(&self, state: &str, error: Option<String>) {
        {
            let mut record = self.record.lock().await;
            record.state = state.to_string();
            record.error = error;
        }
        self.save().await;
    }
}

/// Every recorded backfill of a cluster.
///
/// # Errors
/// [`crate::Error::Etcd`].
pub async fn list(
    target: &EtcdTarget,
    client: &mut sluice_proto::etcd::Client,
) -> crate::Result<Vec<BackfillRecord>> {
    Ok(target
        .list::<BackfillRecord>(client, &backfills_prefix(target))
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}
