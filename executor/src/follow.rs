//! `--etcd-endpoints … --cluster …`: the executor finds the leader scheduler
//! in etcd, registers its membership under a lease, and follows the leader
//! when leadership moves.
//!
//! Each registration with a leader is one *term*: Ballista's executor in a
//! Tokio runtime of its own, under a fresh executor id. A term ends when
//!
//! * the leader changes: the old leader's jobs are gone, so the term is
//!   dropped and a new one registers with the new leader;
//! * the lease expired (the process was frozen or cut off for longer than
//!   the TTL): the leader has declared this executor lost and rescheduled
//!   its work, so it rejoins under a new id and lease; whatever the old term
//!   still reports is refused by the leader;
//! * Ballista's executor stops: on SIGTERM it drains its tasks and returns,
//!   and the process leaves the cluster (membership key deleted, lease
//!   revoked); on an error the executor rejoins.
//!
//! The lease is kept alive every quarter of its TTL. An etcd outage alone does
//! not end a term: etcd renews every lease when it comes back.

use std::time::Duration;

use etcd_client::Client;
use sluice_proto::HostPort;
use sluice_proto::etcd::{EtcdTarget, ExecutorRecord, KeptLease, LeaderRecord, LeaseState, now_ms};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::{ExecutorConfig, RunningExecutor};

async fn grant(
    target: &EtcdTarget,
    client: &Client,
    ttl: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<KeptLease> {
    loop {
        match KeptLease::grant(target, client, ttl, false).await {
            Ok(lease) => return Some(lease),
            Err(e) => tracing::warn!(error = %e, "cannot get an etcd lease; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = sluice_proto::until_true(shutdown) => return None,
        }
    }
}

/// Polls until the leader key holds a leader other than `current`.
async fn leader_moved(
    target: &EtcdTarget,
    client: &Client,
    current: &LeaderRecord,
) -> LeaderRecord {
    let mut client = client.clone();
    loop {
        if let Ok(Some((leader, _))) = target.leader(&mut client).await
            && leader != *current
        {
            return leader;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_for_leader(
    target: &EtcdTarget,
    client: &Client,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<LeaderRecord> {
    let mut client = client.clone();
    let mut warned = false;
    loop {
        match target.leader(&mut client).await {
            Ok(Some((leader, _))) => return Some(leader),
            Ok(None) if !warned => {
                tracing::warn!(cluster = %target.cluster, "no leader scheduler yet; waiting");
                warned = true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look up the leader; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = sluice_proto::until_true(shutdown) => return None,
        }
    }
}

/// Runs one term's executor in `runtime`.
async fn start_term(
    runtime: &tokio::runtime::Runtime,
    config: &ExecutorConfig,
) -> Result<RunningExecutor> {
    let config = config.clone();
    runtime
        .spawn(async move { crate::start(&config).await })
        .await
        .map_err(|e| Error::Stopped { reason: e.to_string() })?
}

/// Runs an executor that follows the leader of `target`'s cluster until it
/// is stopped (SIGTERM drains it) or `shutdown` turns true while it waits
/// for a leader. `announce` gets each term's executor.
///
/// # Errors
/// [`Error::Etcd`] when etcd stays unreachable at start; a configuration
/// error of the first term.
pub async fn follow(
    config: &ExecutorConfig,
    target: EtcdTarget,
    ttl: Duration,
    connect_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    announce: impl Fn(&RunningExecutor),
) -> Result<()> {
    let client = target.connect(connect_timeout).await?;
    let Some(mut lease) = grant(&target, &client, ttl, &mut shutdown).await else {
        return Ok(());
    };
    let mut first = true;
    let mut fresh_lease = false;
    loop {
        if *shutdown.borrow() {
            lease.revoke(&client).await;
            return Ok(());
        }
        if fresh_lease || lease.state() != LeaseState::Alive {
            fresh_lease = false;
            lease.abandon();
            lease = match grant(&target, &client, ttl, &mut shutdown).await {
                Some(lease) => lease,
                None => return Ok(()),
            };
        }
        let Some(leader) = wait_for_leader(&target, &client, &mut shutdown).await else {
            lease.revoke(&client).await;
            return Ok(());
        };
        let scheduler: HostPort = match leader.endpoint.parse() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(endpoint = %leader.endpoint, error = %e, "unusable leader record");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let runtime = sluice_proto::runtime()
            .map_err(|e| Error::Stopped { reason: format!("cannot start a runtime: {e}") })?;
        // Ballista keeps "this executor is stopping" in a process-wide flag
        // that nothing resets; a previous term's stop must not make this
        // one's heartbeats say Terminating.
        ballista_executor::executor_server::TERMINATING
            .store(false, std::sync::atomic::Ordering::Release);
        let term_config = ExecutorConfig { scheduler: scheduler.clone(), ..config.clone() };
        let running = match start_term(&runtime, &term_config).await {
            Ok(running) => running,
            Err(e) if first && e.class() == sluice_proto::ErrorClass::User => {
                runtime.shutdown_background();
                lease.revoke(&client).await;
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "executor did not start; retrying");
                runtime.shutdown_background();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let key = target.executor_key(&running.id);
        let record = ExecutorRecord {
            id: running.id.clone(),
            flight: running.flight.to_string(),
            vcores: running.vcores,
            scheduler: scheduler.to_string(),
            started_ms: now_ms(),
        };
        if let Err(e) = target.put_record(&mut client.clone(), key.clone(), &record, lease.id).await
        {
            tracing::warn!(error = %e, "cannot register membership in etcd; retrying under a new lease");
            runtime.shutdown_background();
            fresh_lease = true;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        tracing::info!(executor_id = %running.id, leader = %leader.id, %scheduler, "following the leader");
        if first {
            announce(&running);
            first = false;
        }
        let stop_task = running.abort_handle();
        let drainer = running.drainer();
        let _work_dir = running.temp_dir();
        let mut wait = std::pin::pin!(running.wait());
        tokio::select! {
            () = sluice_proto::until_true(&mut shutdown) => {
                // Ballista's executor saw the same signal and stops taking
                // tasks; drain within the deadline, then leave the cluster.
                let deadline = Duration::from_secs(config.drain_deadline_seconds);
                let outcome = drainer
                    .run(deadline, "SIGTERM", crate::drain::stop_ballista, wait.as_mut())
                    .await;
                println!("{}", outcome.summary());
                let _ = client.clone().delete(key, None).await;
                lease.revoke(&client).await;
                stop_task.abort();
                runtime.shutdown_background();
                return Ok(());
            }
            result = &mut wait => match result {
                Ok(()) if !*shutdown.borrow() => {
                    // The leader stopped this executor (it declared it lost).
                    tracing::warn!("the leader stopped this executor; rejoining under a new id");
                }
                Ok(()) => {
                    // SIGTERM: Ballista drained the executor; leave the cluster.
                    let _ = client.clone().delete(key, None).await;
                    lease.revoke(&client).await;
                    runtime.shutdown_background();
                    return Ok(());
                }
                Err(e) => tracing::warn!(error = %e, "executor stopped; rejoining"),
            },
            state = lease.ended() => {
                tracing::warn!(?state, "membership lease ended: the leader has declared this executor lost; rejoining under a new id");
            }
            moved = leader_moved(&target, &client, &leader) => {
                tracing::info!(leader = %moved.id, endpoint = %moved.endpoint, "leader changed; re-registering");
            }
        }
        stop_task.abort();
        runtime.shutdown_background();
        let _ = client.clone().delete(key, None).await;
    }
}
