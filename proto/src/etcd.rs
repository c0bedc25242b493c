//! Cluster membership and leadership in etcd: the key layout every Sluice
//! process agrees on, and the lease, election and lookup helpers they share.
//!
//! ```text
//!   /sluice/{cluster}/leader             LeaderRecord: under the leader's lease, created only when absent
//!   /sluice/{cluster}/schedulers/{id}    SchedulerRecord: every scheduler, leader or standby, under its lease
//!   /sluice/{cluster}/executors/{id}     ExecutorRecord: every executor, under its lease
//!   /sluice/{cluster}/status             LeaderStatus: the leader's term, published every 2 s (fenced)
//!   /sluice/{cluster}/backfills/{id}     pb::Backfill (protobuf): a backfill's record, written by the
//!                                        leader running it, fenced on the leader key
//! ```
//!
//! A key under a lease disappears when its owner stops keeping the lease
//! alive (crash, freeze, partition): that deletion is how the cluster learns
//! a member is gone. Several clusters share one etcd through `--cluster`.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use etcd_client::Client;
use etcd_client::{
    Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::HostPort;

/// Default lease TTL of schedulers and executors, seconds: a lost member is
/// noticed within it; keep-alives go out every quarter of it.
pub const DEFAULT_LEASE_TTL_SECONDS: u64 = 20;

/// How long a process keeps retrying an unreachable etcd at start.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "cannot reach etcd at {endpoints} after {seconds}s: {reason}; check --etcd-endpoints and that etcd is running"
    )]
    Unreachable { endpoints: String, seconds: u64, reason: String },
    #[error("etcd at {endpoints}: {reason}")]
    Request { endpoints: String, reason: String },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error(
        "no leader scheduler in cluster '{cluster}' at {endpoints} after {seconds}s; start a `sluice-scheduler --state etcd --cluster {cluster}`"
    )]
    NoLeader { cluster: String, endpoints: String, seconds: u64 },
}

impl EtcdError {
    pub fn class(&self) -> crate::ErrorClass {
        match self {
            EtcdError::Invalid { .. } => crate::ErrorClass::User,
            _ => crate::ErrorClass::External,
        }
    }
}

type Result<T, E = EtcdError> = std::result::Result<T, E>;

/// TLS to etcd: whom to trust as etcd, and the certificate this process
/// presents (etcd's `--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    config: etcd_client::TlsOptions,
    /// Where the credentials came from, for messages and equality.
    source: String,
}

impl PartialEq for EtcdTls {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for EtcdTls {}

impl EtcdTls {
    /// The member's cluster credentials: etcd's certificate is verified
    /// against the cluster CA as [`crate::tls::CLUSTER_SERVER_NAME`] (what
    /// `sluice cluster certs` mints for etcd), the member's certificate is
    /// the client certificate.
    pub fn of_cluster(tls: &crate::tls::ClusterTls) -> Self {
        Self {
            config: tls.tonic_client(),
            source: format!("cluster certificate of {}", tls.identity().name),
        }
    }

    /// `--etcd-ca FILE [--etcd-cert FILE --etcd-key FILE]`: an etcd with its
    /// own CA, verified by the endpoints' host names.
    ///
    /// # Errors
    /// [`EtcdError::Invalid`] naming the flag whose file is unreadable, not
    /// PEM, or (the key) readable by others; or a certificate without key.
    pub fn load(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Self> {
        crate::install_crypto();
        let invalid = |what: &str, reason: String| EtcdError::Invalid { what: what.into(), reason };
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| invalid(flag, format!("{}: {e}", path.display())))
                .and_then(|pem| {
                    if String::from_utf8_lossy(&pem).contains("-----BEGIN ") {
                        Ok(pem)
                    } else {
                        Err(invalid(flag, format!("{}: not a PEM file", path.display())))
                    }
                })
        };
        let mut config = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("--etcd-ca", ca)?));
        match (cert, key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                crate::tls::check_private_file("--etcd-key", key)
                    .map_err(|e| invalid("--etcd-key", e.to_string()))?;
                config = config.identity(etcd_client::Identity::from_pem(
                    read("--etcd-cert", cert)?,
                    read("--etcd-key", key)?,
                ));
            }
            (Some(_), None) => {
                return Err(invalid("--etcd-key", "--etcd-cert needs --etcd-key".into()));
            }
            (None, Some(_)) => {
                return Err(invalid("--etcd-cert", "--etcd-key needs --etcd-cert".into()));
            }
        }
        Ok(Self { config, source: format!("--etcd-ca {}", ca.display()) })
    }

    /// The TLS a process uses for `endpoints`: the `--etcd-*` files when
    /// given, else the cluster credentials when the endpoints are `https`,
    /// else none.
    ///
    /// # Errors
    /// See [`EtcdTls::load`]; `--etcd-cert`/`--etcd-key` without `--etcd-ca`.
    pub fn resolve(
        endpoints: &str,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        cluster: Option<&crate::tls::ClusterTls>,
    ) -> Result<Option<Self>> {
        match (ca, cluster) {
            (Some(ca), _) => Self::load(ca, cert, key).map(Some),
            (None, _) if cert.is_some() || key.is_some() => Err(EtcdError::Invalid {
                what: "--etcd-ca".into(),
                reason: "--etcd-cert/--etcd-key need --etcd-ca (the CA of etcd's certificate)"
                    .into(),
            }),
            (None, Some(cluster)) if endpoints.contains("https://") => {
                Ok(Some(Self::of_cluster(cluster)))
            }
            (None, _) => Ok(None),
        }
    }
}

/// Which etcd, and which cluster in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTarget {
    /// `http://host:port` or `https://host:port` URLs (all one scheme).
    pub endpoints: Vec<String>,
    pub cluster: String,
    /// Set (by [`EtcdTarget::with_tls`]) exactly when the endpoints are `https`.
    pub tls: Option<EtcdTls>,
}

impl EtcdTarget {
    /// Parses `--etcd-endpoints URL[,URL]` and `--cluster NAME`. A plain
    /// `host:port` is `http://`; `https://` endpoints need
    /// [`EtcdTarget::with_tls`] before connecting.
    ///
    /// # Errors
    /// [`EtcdError::Invalid`] naming the flag.
    pub fn parse(endpoints: &str, cluster: &str) -> Result<Self> {
        let mut urls = Vec::new();
        let mut schemes = std::collections::BTreeSet::new();
        for raw in endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (scheme, hostport) = match raw.split_once("://") {
                Some(("http", rest)) => ("http", rest),
                Some(("https", rest)) => ("https", rest),
                Some((other, _)) => {
                    return Err(EtcdError::Invalid {
                        what: "--etcd-endpoints".into(),
                        reason: format!("'{raw}': scheme '{other}'; expected http:// or https://"),
                    });
                }
                None => ("http", raw),
            };
            let addr: HostPort =
                hostport.trim_end_matches('/').parse().map_err(|e: crate::Error| {
                    EtcdError::Invalid { what: "--etcd-endpoints".into(), reason: e.to_string() }
                })?;
            schemes.insert(scheme);
            urls.push(format!("{scheme}://{addr}"));
        }
        if schemes.len() > 1 {
            return Err(EtcdError::Invalid {
                what: "--etcd-endpoints".into(),
                reason: "mixes http:// and https:// endpoints; use one scheme".into(),
            });
        }
        if urls.is_empty() {
            return Err(EtcdError::Invalid {
                what: "--etcd-endpoints".into(),
                reason: "no endpoint given; expected URL[,URL], e.g. http://127.0.0.1:2379".into(),
            });
        }
        let valid = !cluster.is_empty()
            && cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(EtcdError::Invalid {
                what: "--cluster".into(),
                reason: format!("'{cluster}': use letters, digits, '-' and '_'"),
            });
        }
        Ok(Self { endpoints: urls, cluster: cluster.to_string(), tls: None })
    }

    fn is_https(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Sets the TLS to etcd (see [`EtcdTls::resolve`]).
    ///
    /// # Errors
    /// [`EtcdError::Invalid`] when `https` endpoints get no TLS, or TLS
    /// files are given for `http` endpoints (they would be ignored).
    pub fn with_tls(mut self, tls: Option<EtcdTls>) -> Result<Self> {
        match (&tls, self.is_https()) {
            (None, true) => Err(EtcdError::Invalid {
                what: "--etcd-endpoints".into(),
                reason: format!(
                    "{}: https:// needs etcd TLS: --etcd-ca (and --etcd-cert/--etcd-key for client-cert-auth), or the cluster certificates (--cluster-ca/--cluster-cert/--cluster-key; SLUICE_CLUSTER_* for the CLI)",
                    self.endpoints_label()
                ),
            }),
            (Some(t), false) => Err(EtcdError::Invalid {
                what: "--etcd-endpoints".into(),
                reason: format!(
                    "{}: etcd TLS is configured ({}) but the endpoints are http://; use https://",
                    self.endpoints_label(),
                    t.source
                ),
            }),
            _ => {
                self.tls = tls;
                Ok(self)
            }
        }
    }

    pub fn endpoints_label(&self) -> String {
        self.endpoints.join(",")
    }

    fn prefix(&self) -> String {
        format!("/sluice/{}/", self.cluster)
    }

    pub fn leader_key(&self) -> String {
        format!("{}leader", self.prefix())
    }

    pub fn schedulers_prefix(&self) -> String {
        format!("{}schedulers/", self.prefix())
    }

    pub fn executors_prefix(&self) -> String {
        format!("{}executors/", self.prefix())
    }

    /// Where [`crate::pb::Backfill`] records live.
    pub fn backfills_prefix(&self) -> String {
        format!("{}backfills/", self.prefix())
    }

    pub fn backfill_key(&self, id: &str) -> String {
        format!("{}{id}", self.backfills_prefix())
    }

    /// The leader's published status.
    pub fn status_key(&self) -> String {
        format!("{}status", self.prefix())
    }

    pub fn scheduler_key(&self, id: &str) -> String {
        format!("{}{id}", self.schedulers_prefix())
    }

    pub fn executor_key(&self, id: &str) -> String {
        format!("{}{id}", self.executors_prefix())
    }

    fn request_error(&self, e: impl std::fmt::Display) -> EtcdError {
        EtcdError::Request { endpoints: self.endpoints_label(), reason: e.to_string() }
    }

    /// Connects, retrying with backoff (0.2 s doubling to 2 s) for up to
    /// `timeout`; the connection is checked with a read.
    ///
    /// # Errors
    /// [`EtcdError::Unreachable`] naming the endpoints.
    pub async fn connect(&self, timeout: Duration) -> Result<Client> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let attempt = async {
                let mut options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5))
                    .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
                if let Some(tls) = &self.tls {
                    options = options.with_tls(tls.config.clone());
                }
                let mut client = Client::connect(&self.endpoints, Some(options)).await?;
                client.get(self.leader_key(), None).await?;
                Ok::<_, etcd_client::Error>(client)
            };
            match attempt.await {
                Ok(client) => return Ok(client),
                Err(e) if started.elapsed() + backoff >= timeout => {
                    return Err(EtcdError::Unreachable {
                        endpoints: self.endpoints_label(),
                        seconds: started.elapsed().as_secs(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => {
                    tracing::warn!(endpoints = %self.endpoints_label(), error = %e, "etcd not reachable yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The current leader, if any, with the lease it holds.
    ///
    /// # Errors
    /// [`EtcdError::Request`] when etcd fails or the record is unreadable.
    pub async fn leader(&self, client: &mut Client) -> Result<Option<(LeaderRecord, i64)>> {
        let resp = client.get(self.leader_key(), None).await.map_err(|e| self.request_error(e))?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                let record = serde_json::from_slice(kv.value())
                    .map_err(|e| self.request_error(format!("leader record: {e}")))?;
                Ok(Some((record, kv.lease())))
            }
        }
    }

    /// Polls until a leader is elected, for up to `timeout`.
    ///
    /// # Errors
    /// [`EtcdError::NoLeader`] after `timeout`.
    pub async fn wait_for_leader(
        &self,
        client: &mut Client,
        timeout: Duration,
    ) -> Result<LeaderRecord> {
        let started = Instant::now();
        loop {
            match self.leader(client).await {
                Ok(Some((leader, _))) => return Ok(leader),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "looking up the leader"),
            }
            if started.elapsed() >= timeout {
                return Err(EtcdError::NoLeader {
                    cluster: self.cluster.clone(),
                    endpoints: self.endpoints_label(),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Tries to become leader: creates the leader key under `lease` only if
    /// no leader holds it. Returns `Ok(None)` when elected, else the sitting
    /// leader's record.
    ///
    /// # Errors
    /// [`EtcdError::Request`] when etcd fails.
    pub async fn campaign(
        &self,
        client: &mut Client,
        me: &LeaderRecord,
        lease: i64,
    ) -> Result<Option<LeaderRecord>> {
        let key = self.leader_key();
        let value = serde_json::to_vec(me).map_err(|e| self.request_error(e))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let resp = client.txn(txn).await.map_err(|e| self.request_error(e))?;
        if resp.succeeded() {
            return Ok(None);
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op
                && let Some(kv) = get.kvs().first()
            {
                let record = serde_json::from_slice(kv.value())
                    .map_err(|e| self.request_error(format!("leader record: {e}")))?;
                return Ok(Some(record));
            }
        }
        // The leader vanished between the compare and the get: try again.
        Ok(Some(LeaderRecord::default()))
    }

    /// Writes `key` only while `lease` still holds the leader key: a
    /// deposed leader's writes fail instead of landing (fencing).
    ///
    /// # Errors
    /// [`EtcdError::Request`], also when this process is no longer leader.
    pub async fn fenced_put(
        &self,
        client: &mut Client,
        lease: i64,
        key: String,
        value: Vec<u8>,
    ) -> Result<()> {
        let txn = Txn::new()
            .when([Compare::lease(self.leader_key(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(key.clone(), value, None)]);
        let resp = client.txn(txn).await.map_err(|e| self.request_error(e))?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(self.request_error(format!("not the leader any more; write of {key} refused")))
        }
    }

    /// Puts a JSON record under `lease`.
    ///
    /// # Errors
    /// [`EtcdError::Request`].
    pub async fn put_record<T: Serialize>(
        &self,
        client: &mut Client,
        key: String,
        record: &T,
        lease: i64,
    ) -> Result<()> {
        let value = serde_json::to_vec(record).map_err(|e| self.request_error(e))?;
        client
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(|e| self.request_error(e))?;
        Ok(())
    }

    /// Every record under `prefix`, with the lease it is held under.
    /// Records that fail to parse are skipped with a warning.
    ///
    /// # Errors
    /// [`EtcdError::Request`].
    pub async fn list<T: for<'de> Deserialize<'de>>(
        &self,
        client: &mut Client,
        prefix: &str,
    ) -> Result<Vec<(T, i64)>> {
        let resp = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.request_error(e))?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            match serde_json::from_slice(kv.value()) {
                Ok(record) => out.push((record, kv.lease())),
                Err(e) => tracing::warn!(key = ?kv.key_str(), error = %e, "unreadable record"),
            }
        }
        Ok(out)
    }

    /// Seconds left on `lease` and its granted TTL (`None` when it has
    /// expired).
    ///
    /// # Errors
    /// [`EtcdError::Request`].
    pub async fn lease_remaining(
        &self,
        client: &mut Client,
        lease: i64,
    ) -> Result<Option<(i64, i64)>> {
        let resp =
            client.lease_time_to_live(lease, None).await.map_err(|e| self.request_error(e))?;
        Ok((resp.ttl() > 0).then_some((resp.ttl(), resp.granted_ttl())))
    }
}

/// The leader key's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The scheduler's id.
    pub id: String,
    /// Where executors and clients reach it (gRPC, REST).
    pub endpoint: String,
    /// Its Flight SQL endpoint, if it serves one.
    pub flight_sql: Option<String>,
    /// When it was elected (Unix ms).
    pub since_ms: u64,
}

/// A scheduler's membership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerRecord {
    pub id: String,
    pub endpoint: String,
    pub flight_sql: Option<String>,
    pub started_ms: u64,
}

/// An executor's membership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    /// Ballista's executor id (a new one each time the executor rejoins).
    pub id: String,
    /// Arrow Flight (shuffle) address.
    pub flight: String,
    pub vcores: usize,
    /// The leader it registered with.
    pub scheduler: String,
    pub started_ms: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why a kept lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Kept alive.
    Alive,
    /// etcd said it expired: every key under it is gone.
    Expired,
    /// etcd has not confirmed a keep-alive for so long that the lease may
    /// have expired (only reported when asked to, see [`KeptLease::grant`]).
    Unconfirmed,
}

/// A lease kept alive in the background every quarter of its TTL.
pub struct KeptLease {
    pub id: i64,
    pub ttl: Duration,
    state: watch::Receiver<LeaseState>,
    task: tokio::task::JoinHandle<()>,
}

impl KeptLease {
    /// Grants a lease of `ttl` and keeps it alive. With `give_up_unconfirmed`,
    /// the state turns [`LeaseState::Unconfirmed`] once no keep-alive has been
    /// confirmed for `ttl` minus a margin (a leader must stop before etcd
    /// could let another take over); without it, only etcd's word that the
    /// lease expired ends it (an executor rides out an etcd outage: etcd
    /// renews every lease when it comes back).
    ///
    /// # Errors
    /// [`EtcdError::Request`] when the grant fails.
    pub async fn grant(
        target: &EtcdTarget,
        client: &Client,
        ttl: Duration,
        give_up_unconfirmed: bool,
    ) -> Result<Self> {
        let mut client = client.clone();
        let secs = ttl.as_secs().max(2) as i64;
        let resp = client.lease_grant(secs, None).await.map_err(|e| target.request_error(e))?;
        let id = resp.id();
        let ttl = Duration::from_secs(secs as u64);
        let (tx, rx) = watch::channel(LeaseState::Alive);
        let task = tokio::spawn(keep_alive(client, id, ttl, give_up_unconfirmed, tx));
        Ok(Self { id, ttl, state: rx, task })
    }

    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// Resolves when the lease is no longer [`LeaseState::Alive`].
    pub async fn ended(&self) -> LeaseState {
        let mut rx = self.state.clone();
        loop {
            let state = *rx.borrow_and_update();
            if state != LeaseState::Alive {
                return state;
            }
            if rx.changed().await.is_err() {
                return LeaseState::Expired;
            }
        }
    }

    /// Stops keeping the lease and revokes it (its keys vanish now, not
    /// after the TTL); best effort.
    pub async fn revoke(self, client: &Client) {
        self.task.abort();
        let mut client = client.clone();
        let id = self.id;
        if let Err(e) = client.lease_revoke(id).await {
            tracing::debug!(lease = id, error = %e, "lease revoke failed; it expires on its own");
        }
    }

    /// Stops keeping the lease without revoking it.
    pub fn abandon(self) {}
}

async fn keep_alive(
    mut client: Client,
    id: i64,
    ttl: Duration,
    give_up_unconfirmed: bool,
    state: watch::Sender<LeaseState>,
) {
    let every = (ttl / 4).max(Duration::from_millis(250));
    // Every round (reconnect, send, reply) is bounded, and the time a lease
    // is known good from is when the confirmed request was *sent*: a leader
    // that gives up after `give_up_after` stops before etcd, counting from
    // when it received that request, can expire the lease.
    let round_limit = every.min(Duration::from_secs(2));
    let give_up_after = ttl.saturating_sub(round_limit + Duration::from_secs(1)).max(round_limit);
    let mut confirmed = Instant::now();
    let mut stream = None;
    loop {
        let sent = Instant::now();
        let round = async {
            if stream.is_none() {
                match client.lease_keep_alive(id).await {
                    Ok(s) => stream = Some(s),
                    // The first reply is read while connecting: a gone lease
                    // is an error here, not a TTL of 0.
                    Err(e) => {
                        let gone = match client.lease_time_to_live(id, None).await {
                            Ok(resp) => resp.ttl() <= 0,
                            Err(_) => false,
                        };
                        return if gone { Ok(0) } else { Err(e.to_string()) };
                    }
                }
            }
            let (keeper, responses) = stream.as_mut().ok_or("no stream")?;
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match responses.message().await {
                Ok(Some(resp)) => Ok(resp.ttl()),
                Ok(None) => Err("keep-alive stream closed".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let outcome = match tokio::time::timeout(round_limit, round).await {
            Ok(outcome) => outcome,
            Err(_) => Err("no reply in time".to_string()),
        };
        match outcome {
            Ok(left) if left <= 0 => {
                tracing::warn!(lease = id, "lease expired");
                let _ = state.send(LeaseState::Expired);
                return;
            }
            Ok(_) => confirmed = sent,
            Err(reason) => {
                stream = None;
                tracing::warn!(lease = id, %reason, unconfirmed_for = ?confirmed.elapsed(), "lease keep-alive failed; retrying");
                if give_up_unconfirmed && confirmed.elapsed() >= give_up_after {
                    let _ = state.send(LeaseState::Unconfirmed);
                    return;
                }
            }
        }
        let next = if stream.is_some() { every } else { every.min(Duration::from_millis(500)) };
        let next = if give_up_unconfirmed {
            // Wake up in time to give up.
            next.min(
                give_up_after.saturating_sub(confirmed.elapsed()).max(Duration::from_millis(50)),
            )
        } else {
            next
        };
        tokio::time::sleep(next).await;
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        // Not revoked: the lease runs out on its own.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_name_their_keys() {
        let t = EtcdTarget::parse("127.0.0.1:2379, http://10.0.0.2:2379", "prod-1").expect("valid");
        assert_eq!(t.endpoints, vec!["http://127.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert_eq!(t.leader_key(), "/sluice/prod-1/leader");
        assert_eq!(t.executor_key("e1"), "/sluice/prod-1/executors/e1");
        assert!(EtcdTarget::parse("", "a").is_err());
        assert!(EtcdTarget::parse("127.0.0.1:2379", "a/b").is_err());
        assert!(EtcdTarget::parse("nohost", "a").is_err());
        assert!(EtcdTarget::parse("ftp://x:1", "a").is_err());
        assert!(EtcdTarget::parse("https://x:1,http://y:1", "a").is_err());
        // https needs TLS; TLS needs https.
        let https = EtcdTarget::parse("https://x:1", "a").expect("valid");
        assert!(https.clone().with_tls(None).is_err());
        assert!(t.clone().with_tls(None).is_ok());
        let dir = tempfile::tempdir().expect("dir");
        let certs = crate::tls::mint(dir.path(), &[], 1).expect("certs");
        let m = certs.member("scheduler").expect("scheduler");
        let cluster = crate::tls::ClusterTls::load(&certs.ca, &m.cert, &m.key).expect("loads");
        let tls = EtcdTls::resolve(&https.endpoints_label(), None, None, None, Some(&cluster))
            .expect("resolves")
            .expect("cluster TLS for https");
        assert!(https.with_tls(Some(tls.clone())).is_ok());
        assert!(t.with_tls(Some(tls)).is_err());
        let plain = EtcdTls::resolve("http://x:1", None, None, None, Some(&cluster));
        assert!(plain.expect("resolves").is_none());
        assert!(EtcdTls::resolve("https://x:1", None, Some(&m.cert), None, None).is_err());
        // Explicit files: the key must be private.
        let etcd_key = dir.path().join("etcd.key");
        let explicit = EtcdTls::resolve(
            "https://x:1",
            Some(&certs.ca),
            Some(&dir.path().join("etcd.pem")),
            Some(&etcd_key),
            None,
        );
        assert!(explicit.expect("loads").is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&etcd_key, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            let err = EtcdTls::load(&certs.ca, Some(&dir.path().join("etcd.pem")), Some(&etcd_key))
                .expect_err("readable key");
            assert!(err.to_string().contains("--etcd-key"), "{err}");
        }
        let err = EtcdTls::load(&dir.path().join("missing.pem"), None, None).expect_err("missing");
        assert!(err.to_string().contains("--etcd-ca"), "{err}");
    }
}
