//! `sluice cluster status`: the live picture of a high-availability cluster,
//! read from etcd (leader, standbys, executors and their leases, backfills).

use std::fmt::Write as _;

use serde::Serialize;
use sluice_proto::etcd::{EtcdTarget, ExecutorRecord, LeaderRecord, SchedulerRecord, now_ms};
use sluice_scheduler::ha::{LeaderStatus, status_key};

use crate::Result;
use crate::backfill::BackfillView;

/// An executor with its lease.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutorView {
    #[serde(flatten)]
    pub record: ExecutorRecord,
    /// Seconds since its last keep-alive (granted TTL − TTL left).
    pub last_keep_alive_seconds_ago: Option<i64>,
    pub lease_ttl_seconds: Option<i64>,
}

/// The cluster as etcd sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub etcd: String,
    pub leader: Option<LeaderRecord>,
    /// What the leader last published about its term.
    pub leader_status: Option<LeaderStatus>,
    pub standbys: Vec<SchedulerRecord>,
    pub executors: Vec<ExecutorView>,
    pub backfills: Vec<BackfillView>,
}

/// Reads the cluster's state.
///
/// # Errors
/// [`crate::Error::Etcd`] when etcd is unreachable.
pub async fn read(target: &EtcdTarget) -> Result<ClusterStatus> {
    let mut client = target.connect(std::time::Duration::from_secs(10)).await?;
    let leader = target.leader(&mut client).await?.map(|(l, _)| l);
    let leader_status = match client.get(status_key(target), None).await {
        Ok(resp) => resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()),
        Err(_) => None,
    };
    let leader_status: Option<LeaderStatus> =
        leader_status.filter(|s: &LeaderStatus| leader.as_ref().is_some_and(|l| l.id == s.id));
    let schedulers =
        target.list::<SchedulerRecord>(&mut client, &target.schedulers_prefix()).await?;
    let standbys = schedulers
        .into_iter()
        .map(|(s, _)| s)
        .filter(|s| leader.as_ref().is_none_or(|l| l.id != s.id))
        .collect();
    let mut executors = Vec::new();
    for (record, lease) in
        target.list::<ExecutorRecord>(&mut client, &target.executors_prefix()).await?
    {
        let ttl = target.lease_remaining(&mut client, lease).await.ok().flatten();
        executors.push(ExecutorView {
            record,
            last_keep_alive_seconds_ago: ttl.map(|(left, granted)| (granted - left).max(0)),
            lease_ttl_seconds: ttl.map(|(_, granted)| granted),
        });
    }
    executors.sort_by_key(|a| a.record.started_ms);
    let mut backfills: Vec<BackfillView> =
        sluice_scheduler::backfill::store::list_etcd(target, &client)
            .await
            .map_err(|e| sluice_proto::etcd::EtcdError::Request {
                endpoints: target.endpoints_label(),
                reason: e.to_string(),
            })?
            .iter()
            .map(|b| BackfillView::of(b, false))
            .collect();
    backfills.sort_by_key(|b| std::cmp::Reverse(b.submitted_ms));
    Ok(ClusterStatus {
        cluster: target.cluster.clone(),
        etcd: target.endpoints_label(),
        leader,
        leader_status,
        standbys,
        executors,
        backfills,
    })
}

fn ago(ms: u64) -> String {
    let secs = now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

/// The human-readable status.
pub fn render(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cluster '{}' (etcd {})", status.cluster, status.etcd);
    match &status.leader {
        Some(l) => {
            let flight =
                l.flight_sql.as_ref().map(|f| format!(", flight-sql {f}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "leader     {} at {}{flight}, leading for {}",
                l.id,
                l.endpoint,
                ago(l.since_ms)
            );
            if let Some(s) = &status.leader_status {
                let _ = writeln!(
                    out,
                    "           {} executors registered, {} running jobs, {} queued (reported {} ago)",
                    s.executors,
                    s.running_jobs,
                    s.queued_jobs,
                    ago(s.updated_ms)
                );
            }
        }
        None => {
            let _ = writeln!(out, "leader     none elected");
        }
    }
    if status.standbys.is_empty() {
        let _ = writeln!(out, "standbys   none");
    }
    for s in &status.standbys {
        let _ = writeln!(out, "standby    {} at {}, up {}", s.id, s.endpoint, ago(s.started_ms));
    }
    let _ = writeln!(out, "executors  {}", status.executors.len());
    if !status.executors.is_empty() {
        let _ = writeln!(
            out,
            "  {:<38} {:<22} {:>6}  {:<22} LAST KEEP-ALIVE",
            "ID", "FLIGHT", "SLOTS", "SCHEDULER"
        );
    }
    let draining: &[sluice_scheduler::ha::DrainingExecutor] =
        status.leader_status.as_ref().map_or(&[], |s| s.draining.as_slice());
    for e in &status.executors {
        let keep_alive = match (e.last_keep_alive_seconds_ago, e.lease_ttl_seconds) {
            (Some(ago), Some(ttl)) => format!("{ago}s ago (TTL {ttl}s)"),
            _ => "lease expired".to_string(),
        };
        let drain = draining
            .iter()
            .find(|d| d.id == e.record.id)
            .map(|d| format!("  DRAINING ({})", d.reason))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<38} {:<22} {:>6}  {:<22} {keep_alive}{drain}",
            e.record.id, e.record.flight, e.record.vcores, e.record.scheduler
        );
    }
    if !draining.is_empty() {
        let ids: Vec<&str> = draining.iter().map(|d| d.id.as_str()).collect();
        let _ =
            writeln!(out, "draining   {} ({}): they take no task", draining.len(), ids.join(", "));
    }
    let running: Vec<_> =
        status.backfills.iter().filter(|b| b.state.starts_with("running")).collect();
    let _ =
        writeln!(out, "backfills  {} running, {} recorded", running.len(), status.backfills.len());
    for b in status.backfills.iter().take(10) {
        let chunks_done = b.chunks.iter().filter(|c| c.state == "committed").count();
        let resubmitted: u32 = b.chunks.iter().map(|c| c.submissions.saturating_sub(1)).sum();
        let _ = writeln!(
            out,
            "  {} {:<14} {}..{}  {}/{} dates, {} chunks committed, {} resubmitted, owner {}, updated {} ago  {}",
            b.id,
            b.state,
            b.from,
            b.to,
            b.dates_committed + b.dates_already_committed,
            b.dates_total,
            chunks_done,
            resubmitted,
            b.owner,
            ago(b.updated_ms),
            b.output
        );
    }
    out
}
