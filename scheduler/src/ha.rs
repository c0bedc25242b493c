//! `--state etcd`: any number of schedulers, one leader elected through
//! etcd, standbys ready to take over.
//!
//! ```text
//!   campaign ──elected──► lead: Ballista's scheduler in a runtime of its own
//!      ▲  │ not elected        │ lease expired / unconfirmed, leader key lost
//!      │  ▼                    ▼
//!      └─ standby: the port answers "the leader is X"  ◄── step down: the
//!         (/readyz 503), watching the leader key           runtime is dropped
//! ```
//!
//! * **Election.** Each scheduler holds a lease and creates the leader key
//!   under it only if the key is absent (a transaction), so exactly one wins.
//!   When the leader's lease ends, its key vanishes and the standbys race again.
//! * **Fencing.** A leader that cannot confirm a keep-alive for nearly a TTL
//!   steps down before etcd could let another take over; everything it ran
//!   (Ballista's scheduler, its gRPC and Flight SQL ports, its event loops)
//!   lives in one Tokio runtime that is dropped on step-down, so nothing of the
//!   old term keeps scheduling. Its etcd writes are conditioned on still holding
//!   the leader key ([`EtcdTarget::fenced_put`]).
//! * **Membership.** Executors hold leases of their own; the leader watches
//!   their keys and declares an executor lost when its key disappears
//!   ([`LostExecutors`]), which runs Ballista's executor-lost path.
//!
//! Jobs live in the leader's memory (Ballista's job state): a failover loses
//! jobs in flight, whose clients get a retryable error. Backfills survive:
//! the leader runs them and records their progress in etcd (fenced writes);
//! a new leader resumes every running one ([`crate::backfill`]), keeping
//! committed dates and resubmitting the chunks that were in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use serde::{Deserialize, Serialize};
use sluice_proto::HostPort;
use sluice_proto::etcd::{
    EtcdTarget, KeptLease, LeaderRecord, LeaseState, SchedulerRecord, now_ms,
};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::gate::LeaderView;
use crate::recovery::LostExecutors;
use crate::{SchedulerProcessConfig, advertised_host, endpoint_for};

/// What a leader publishes about its term every few seconds (a fenced write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    pub id: String,
    pub since_ms: u64,
    pub updated_ms: u64,
    pub executors: usize,
    pub queued_jobs: usize,
    pub running_jobs: usize,
    /// Executors draining (or drained, their outputs still read from
    /// peers), with why; they take no task.
    #[serde(default)]
    pub draining: Vec<DrainingExecutor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainingExecutor {
    pub id: String,
    pub reason: String,
}

/// The key of [`LeaderStatus`].
pub fn status_key(target: &EtcdTarget) -> String {
    target.status_key()
}

/// The addresses a high-availability scheduler serves on.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub endpoint: HostPort,
    pub flight_sql: Option<HostPort>,
}

enum Campaign {
    Elected,
    LeaseEnded(LeaseState),
    Shutdown,
}

enum TermEnd {
    Shutdown,
    SteppedDown(String),
}

/// A non-blocking handle on the process's listener, for one phase to
/// register with its own runtime (`tokio::net::TcpListener::from_std`).
fn phase_listener(listener: &std::net::TcpListener) -> std::io::Result<std::net::TcpListener> {
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A runtime of its own for one phase (standby or leader term): dropping it
/// stops every task the phase spawned, connections included.
fn phase_runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .thread_stack_size(sluice_proto::WORKER_STACK_BYTES)
        .build()
        .map_err(|e| Error::Stopped { reason: format!("cannot start a runtime: {e}") })
}

/// Runs a high-availability scheduler until `shutdown` turns true. Calls
/// `announce` once the scheduler port is bound.
///
/// # Errors
/// [`Error::Etcd`] when etcd stays unreachable at start, [`Error::Bind`],
/// or the error of a leader term that failed to start.
pub async fn run(
    config: &SchedulerProcessConfig,
    target: EtcdTarget,
    mut shutdown: watch::Receiver<bool>,
    announce: impl FnOnce(&Addresses),
) -> Result<()> {
    let client =
        target.connect(Duration::from_secs(config.etcd_connect_timeout_seconds.max(1))).await?;
    let bind_error = |source| Error::Bind { addr: config.bind.clone(), source };
    let listener = std::net::TcpListener::bind((config.bind.host.as_str(), config.bind.port))
        .map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let endpoint = endpoint_for(config, local_addr);
    let mut config = config.clone();
    // Fix the Flight SQL port for the process's life: each term binds it anew.
    if let Some(bind) = &mut config.flight_sql_bind
        && bind.port == 0
    {
        let probe = std::net::TcpListener::bind((bind.host.as_str(), 0))
            .map_err(|source| Error::Bind { addr: bind.clone(), source })?;
        bind.port =
            probe.local_addr().map_err(|source| Error::Bind { addr: bind.clone(), source })?.port();
    }
    let flight_sql =
        config.flight_sql_bind.as_ref().map(|b| HostPort::new(advertised_host(&b.host), b.port));
    // In etcd mode the lease decides an executor's fate; reap promptly.
    config.expire_dead_executor_interval_seconds =
        config.expire_dead_executor_interval_seconds.min(2);
    announce(&Addresses { endpoint: endpoint.clone(), flight_sql: flight_sql.clone() });

    let id = format!("scheduler-{endpoint}");
    let ttl = Duration::from_secs(config.lease_ttl_seconds);
    let view: LeaderView = Arc::default();
    let me = Me {
        id,
        endpoint: endpoint.to_string(),
        flight_sql: flight_sql.as_ref().map(ToString::to_string),
        started_ms: now_ms(),
    };
    loop {
        let lease = match KeptLease::grant(&target, &client, ttl, true).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "cannot get an etcd lease; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = sluice_proto::until_true(&mut shutdown) => return Ok(()),
                }
            }
        };
        let record = SchedulerRecord {
            id: me.id.clone(),
            endpoint: me.endpoint.clone(),
            flight_sql: me.flight_sql.clone(),
            started_ms: me.started_ms,
        };
        if let Err(e) = target
            .put_record(&mut client.clone(), target.scheduler_key(&me.id), &record, lease.id)
            .await
        {
            tracing::warn!(error = %e, "cannot register this scheduler in etcd; retrying");
            lease.abandon();
            continue;
        }

        // Standby until elected.
        let standby = phase_runtime("sluice-standby")?;
        let standby_listener = phase_listener(&listener).map_err(bind_error)?;
        let standby_view = Arc::clone(&view);
        let standby_tls = config.cluster_tls()?;
        standby.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(standby_listener)?;
            crate::gate::serve_standby(listener, standby_view, standby_tls).await
        });
        let campaign = campaign(&target, &client, &lease, &me, &view, &mut shutdown).await;
        standby.shutdown_background();
        match campaign {
            Campaign::Shutdown => {
                lease.revoke(&client).await;
                return Ok(());
            }
            Campaign::LeaseEnded(state) => {
                tracing::warn!(?state, "lease lost while standing by; rejoining");
                lease.abandon();
                continue;
            }
            Campaign::Elected => {}
        }
        let term =
            lead(&config, &target, &client, &lease, &listener, local_addr, &me, &mut shutdown)
                .await
                .unwrap_or_else(|e| {
                    // E.g. a port of the previous term not released yet: give
                    // leadership up and campaign again.
                    TermEnd::SteppedDown(format!("the scheduler failed to start: {e}"))
                });
        match term {
            TermEnd::Shutdown => {
                // Revoking hands leadership over now instead of after a TTL.
                lease.revoke(&client).await;
                return Ok(());
            }
            TermEnd::SteppedDown(reason) => {
                tracing::warn!(%reason, "stepped down as leader; standing by again");
                // The lease may still exist (etcd unreachable): let it go
                // once etcd answers, so a standby need not wait for its TTL.
                let client = client.clone();
                tokio::spawn(async move { lease.revoke(&client).await });
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = sluice_proto::until_true(&mut shutdown) => return Ok(()),
                }
            }
        }
    }
}

struct Me {
    id: String,
    endpoint: String,
    flight_sql: Option<String>,
    started_ms: u64,
}

async fn campaign(
    target: &EtcdTarget,
    client: &Client,
    lease: &KeptLease,
    me: &Me,
    view: &LeaderView,
    shutdown: &mut watch::Receiver<bool>,
) -> Campaign {
    let mut client = client.clone();
    let mut logged_leader = String::new();
    loop {
        let record = LeaderRecord {
            id: me.id.clone(),
            endpoint: me.endpoint.clone(),
            flight_sql: me.flight_sql.clone(),
            since_ms: now_ms(),
        };
        match target.campaign(&mut client, &record, lease.id).await {
            Ok(None) => return Campaign::Elected,
            Ok(Some(leader)) => {
                if leader.id != logged_leader && !leader.id.is_empty() {
                    tracing::info!(leader = %leader.id, endpoint = %leader.endpoint, "standing by");
                    logged_leader = leader.id.clone();
                }
                *view.write().unwrap_or_else(std::sync::PoisonError::into_inner) = leader;
            }
            Err(e) => tracing::warn!(error = %e, "campaign failed; retrying"),
        }
        // Wait for the leader key to go, re-checking every second in case
        // the watch misses it (created after the deletion, etcd restarted).
        let leader_gone = async {
            let Ok(mut stream) = client.clone().watch(target.leader_key(), None).await else {
                return std::future::pending::<()>().await;
            };
            while let Ok(Some(resp)) = stream.message().await {
                if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = leader_gone => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            state = lease.ended() => return Campaign::LeaseEnded(state),
            () = sluice_proto::until_true(shutdown) => return Campaign::Shutdown,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn lead(
    config: &SchedulerProcessConfig,
    target: &EtcdTarget,
    client: &Client,
    lease: &KeptLease,
    listener: &std::net::TcpListener,
    local_addr: SocketAddr,
    me: &Me,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<TermEnd> {
    let elected_ms = now_ms();
    tracing::info!(id = %me.id, "elected leader; starting the scheduler");
    let term = phase_runtime("sluice-leader")?;
    let lost = LostExecutors::default();
    let term_listener = phase_listener(listener)
        .map_err(|source| Error::Bind { addr: config.bind.clone(), source })?;
    let term_config = config.clone();
    let term_lost = lost.clone();
    let term_store = crate::backfill::Store::Etcd {
        target: target.clone(),
        client: client.clone(),
        lease: lease.id,
    };
    let started = term
        .spawn(async move {
            let listener = tokio::net::TcpListener::from_std(term_listener)
                .map_err(|source| Error::Bind { addr: term_config.bind.clone(), source })?;
            crate::start_on(&term_config, listener, local_addr, term_lost, term_store).await
        })
        .await;
    let running = match started {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            term.shutdown_background();
            return Err(e);
        }
        Err(e) => {
            term.shutdown_background();
            return Err(Error::Stopped { reason: e.to_string() });
        }
    };
    tracing::info!(id = %me.id, endpoint = %running.endpoint, "leading");
    let watcher = tokio::spawn(watch_executors(target.clone(), client.clone(), lost));
    let scheduler = running.scheduler.clone();
    let publisher = tokio::spawn(publish_status(
        target.clone(),
        client.clone(),
        lease.id,
        me.id.clone(),
        elected_ms,
        scheduler,
        running.drains.clone(),
    ));
    let end = tokio::select! {
        state = lease.ended() => TermEnd::SteppedDown(format!("etcd lease {state:?}")),
        reason = deposed(target, client, lease.id) => TermEnd::SteppedDown(reason),
        result = running.wait() => TermEnd::SteppedDown(format!("the scheduler stopped: {result:?}")),
        () = sluice_proto::until_true(shutdown) => TermEnd::Shutdown,
    };
    watcher.abort();
    publisher.abort();
    term.shutdown_background();
    Ok(end)
}

/// Resolves when the leader key no longer belongs to `lease`.
async fn deposed(target: &EtcdTarget, client: &Client, lease: i64) -> String {
    let mut client = client.clone();
    loop {
        match target.leader(&mut client).await {
            Ok(Some((_, holder))) if holder == lease => {}
            Ok(Some((leader, _))) => return format!("{} holds the leader key", leader.id),
            Ok(None) => return "the leader key is gone".to_string(),
            // Unreachable etcd is the lease keeper's call (it gives up in time).
            Err(e) => tracing::debug!(error = %e, "leader check failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Marks executors lost when their membership key disappears. Watches from
/// the revision of a listing, resuming after the last event seen, and starts
/// over when etcd cancels the watch (e.g. after a compaction).
async fn watch_executors(target: EtcdTarget, client: Client, lost: LostExecutors) {
    let prefix = target.executors_prefix();
    let mut next_revision = 0;
    loop {
        if next_revision == 0 {
            match client
                .clone()
                .get(prefix.clone(), Some(etcd_client::GetOptions::new().with_prefix()))
                .await
            {
                Ok(resp) => {
                    next_revision = resp.header().map_or(0, |h| h.revision() + 1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list executors; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let options = WatchOptions::new().with_prefix().with_start_revision(next_revision);
        match client.clone().watch(prefix.clone(), Some(options)).await {
            Ok(mut stream) => {
                while let Ok(Some(resp)) = stream.message().await {
                    if resp.canceled() {
                        tracing::warn!(
                            reason = resp.cancel_reason(),
                            "executor watch cancelled; resyncing"
                        );
                        // Compacted past our revision: list again.
                        next_revision = 0;
                        break;
                    }
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        next_revision = next_revision.max(kv.mod_revision() + 1);
                        if event.event_type() != EventType::Delete {
                            continue;
                        }
                        let Some(id) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix))
                        else {
                            continue;
                        };
                        if lost.mark(id) {
                            tracing::warn!(executor_id = %id, "executor left the cluster or its etcd lease ended; declaring it lost");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch executors; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn publish_status(
    target: EtcdTarget,
    client: Client,
    lease: i64,
    id: String,
    since_ms: u64,
    scheduler: Arc<crate::Scheduler>,
    drains: crate::drain::Drains,
) {
    let mut client = client;
    loop {
        let draining: Vec<DrainingExecutor> = drains
            .draining()
            .into_iter()
            .map(|(id, reason)| DrainingExecutor { id, reason })
            .collect();
        let executors = scheduler
            .state
            .executor_manager
            .get_executors_state()
            .await
            .map_or(0, |e| e.iter().filter(|(m, _, _)| !drains.excluded(&m.id)).count());
        let status = LeaderStatus {
            draining,
            id: id.clone(),
            since_ms,
            updated_ms: now_ms(),
            executors,
            queued_jobs: scheduler.pending_job_number(),
            running_jobs: scheduler.running_job_number(),
        };
        match serde_json::to_vec(&status) {
            Ok(value) => {
                if let Err(e) =
                    target.fenced_put(&mut client, lease, status_key(&target), value).await
                {
                    tracing::debug!(error = %e, "status not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "status not encodable"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
