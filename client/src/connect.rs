//! Connecting to a cluster and running SQL on it.

use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::SessionContextExt;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{DataFrame, SessionContext};
use sluice_proto::HostPort;
use sluice_sql::session;
use sluice_sql::tables::TableSource;

use crate::cluster::EmbeddedCluster;
use crate::error::{Error, Result};

/// Where a query runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A running scheduler.
    Scheduler(HostPort),
    /// The current leader of a high-availability cluster, found in etcd
    /// (and found again after a failover).
    Cluster(sluice_proto::etcd::EtcdTarget),
    /// An embedded cluster started in this process for the query.
    Standalone,
    /// Plain single-process DataFusion, no cluster: the reference engine,
    /// for comparisons and for profiling plans (`EXPLAIN ANALYZE`).
    Local,
}

/// A session on a cluster; holds the embedded cluster alive when there is one.
pub struct Connection {
    pub ctx: SessionContext,
    /// The scheduler (none for [`Target::Local`]).
    pub scheduler: Option<HostPort>,
    /// The token sent to the scheduler, if any.
    pub token: Option<String>,
    _embedded: Option<EmbeddedCluster>,
}

/// The cluster's mutual-TLS credentials for this client, from
/// `SLUICE_CLUSTER_CA`, `SLUICE_CLUSTER_CERT` and `SLUICE_CLUSTER_KEY` (PEM
/// files, e.g. the `client` set of `sluice cluster certs`); none when unset.
/// With them the client speaks TLS to the scheduler port and fetches
/// results from executors with its certificate.
///
/// # Errors
/// [`Error::Usage`] when only some are set or a file is unusable.
pub fn cluster_tls_from_env() -> Result<Option<sluice_proto::tls::ClusterTls>> {
    let var =
        |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let (ca, cert, key) =
        (var("SLUICE_CLUSTER_CA"), var("SLUICE_CLUSTER_CERT"), var("SLUICE_CLUSTER_KEY"));
    sluice_proto::tls::ClusterTls::from_options(ca.as_deref(), cert.as_deref(), key.as_deref())
        .map_err(|e| {
            Error::Usage(format!(
                "{} (set SLUICE_CLUSTER_CA, SLUICE_CLUSTER_CERT and SLUICE_CLUSTER_KEY together)",
                e.to_string().replace("--cluster-", "SLUICE_CLUSTER_")
            ))
        })
}

/// `--etcd-endpoints`/`--cluster` with the TLS to etcd from the
/// environment: `SLUICE_ETCD_CA` (+ `SLUICE_ETCD_CERT`/`SLUICE_ETCD_KEY`) for
/// an etcd with its own CA, else the cluster certificates
/// (`SLUICE_CLUSTER_*`) for `https://` endpoints.
///
/// # Errors
/// A bad endpoint or cluster name; TLS files missing, unreadable or
/// readable by others; `https://` without TLS or TLS without `https://`.
pub fn etcd_target(endpoints: &str, cluster: &str) -> Result<sluice_proto::etcd::EtcdTarget> {
    let var =
        |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let target = sluice_proto::etcd::EtcdTarget::parse(endpoints, cluster)?;
    let (ca, cert, key) = (var("SLUICE_ETCD_CA"), var("SLUICE_ETCD_CERT"), var("SLUICE_ETCD_KEY"));
    let rename = |e: sluice_proto::etcd::EtcdError| {
        Error::Usage(
            e.to_string()
                .replace("--etcd-ca", "SLUICE_ETCD_CA")
                .replace("--etcd-cert", "SLUICE_ETCD_CERT")
                .replace("--etcd-key", "SLUICE_ETCD_KEY"),
        )
    };
    let cluster_tls = if ca.is_none() && target.endpoints_label().contains("https://") {
        cluster_tls_from_env()?
    } else {
        None
    };
    let tls = sluice_proto::etcd::EtcdTls::resolve(
        endpoints,
        ca.as_deref(),
        cert.as_deref(),
        key.as_deref(),
        cluster_tls.as_ref(),
    )
    .map_err(rename)?;
    target.with_tls(tls).map_err(rename)
}

/// Number of executors (and slots each) of an embedded cluster.
pub const EMBEDDED_EXECUTORS: usize = 2;
/// Slots per embedded executor: the machine's cores shared between them.
pub fn embedded_vcores() -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / EMBEDDED_EXECUTORS).max(1)
}

/// Checks that something listens at the scheduler's address, so that a
/// wrong address fails in seconds with a clear message rather than in
/// Ballista's retry loop.
pub(crate) async fn check_reachable(addr: &HostPort) -> Result<()> {
    let target = addr.to_string();
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&target))
        .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            Err(Error::SchedulerUnreachable { addr: addr.clone(), reason: e.to_string() })
        }
        Err(_) => Err(Error::SchedulerUnreachable {
            addr: addr.clone(),
            reason: "no answer within 5 s".to_string(),
        }),
    }
}

/// How long a client waits for a reachable leader (a failover takes about
/// one lease TTL).
pub const LEADER_WAIT: Duration = Duration::from_secs(60);

/// The leader of `cluster` once it answers: right after a leader dies its
/// key still names it until its lease runs out, so an unreachable leader is
/// polled again until a live one is elected or `wait` is over.
///
/// # Errors
/// [`Error::Etcd`] when etcd is unreachable or no leader is elected;
/// [`Error::SchedulerUnreachable`] when the elected leader does not answer.
pub async fn reachable_leader(
    cluster: &sluice_proto::etcd::EtcdTarget,
    wait: Duration,
) -> Result<HostPort> {
    let started = std::time::Instant::now();
    let mut client = cluster.connect(Duration::from_secs(10)).await?;
    loop {
        let left = wait.saturating_sub(started.elapsed());
        let leader = cluster.wait_for_leader(&mut client, left).await?;
        let addr: HostPort = leader.endpoint.parse().map_err(|e: sluice_proto::Error| {
            Error::Usage(format!("leader record of cluster '{}': {e}", cluster.cluster))
        })?;
        // Ready, not just listening: a frozen leader still accepts TCP.
        let ready = crate::http::get(&addr.to_string(), "/readyz", Duration::from_secs(2)).await;
        match ready {
            Ok((200, _)) => return Ok(addr),
            _ if started.elapsed() >= wait => {
                return Err(Error::SchedulerUnreachable {
                    addr,
                    reason: format!(
                        "the leader of cluster '{}' is not ready after {}s ({ready:?})",
                        cluster.cluster,
                        wait.as_secs()
                    ),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Opens a session on `target` with `settings` applied and `tables` registered.
///
/// # Errors
/// [`Error::SchedulerUnreachable`], or an [`Error::Table`] naming the bad
/// setting or table.
pub async fn connect(
    target: &Target,
    settings: &[(String, String)],
    tables: &[TableSource],
) -> Result<Connection> {
    connect_as(target, None, settings, tables).await
}

/// [`connect`] with a token for a scheduler that checks them (`--auth-token-file`):
/// sent as `authorization: Bearer TOKEN` on every call to the scheduler.
///
/// # Errors
/// As [`connect`].
pub async fn connect_as(
    target: &Target,
    token: Option<&str>,
    settings: &[(String, String)],
    tables: &[TableSource],
) -> Result<Connection> {
    let tls = match target {
        Target::Scheduler(_) | Target::Cluster(_) => cluster_tls_from_env()?,
        Target::Standalone | Target::Local => None,
    };
    connect_with(target, token, tls.as_ref(), settings, tables).await
}

/// [`connect_as`] with explicit cluster TLS credentials (instead of
/// `SLUICE_CLUSTER_*`).
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(
    target: &Target,
    token: Option<&str>,
    tls: Option<&sluice_proto::tls::ClusterTls>,
    settings: &[(String, String)],
    tables: &[TableSource],
) -> Result<Connection> {
    if let Target::Local = target {
        let mut config = session::local_session_config();
        session::apply_settings(&mut config, settings)?;
        let runtime = session::runtime_env(&config, None).map_err(Error::from_datafusion)?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        session::register_functions(&ctx);
        for t in tables {
            t.register(&ctx).await?;
        }
        return Ok(Connection { ctx, scheduler: None, token: None, _embedded: None });
    }
    // Validate everything local before touching the network.
    let mut config = session::cluster_session_config();
    // The client's AWS_* variables reach the scheduler and the executors as
    // s3.* settings (--set wins).
    let from_env: Vec<(String, String)> = sluice_sql::storage::s3_settings_from_env()
        .into_iter()
        .filter(|(k, _)| !settings.iter().any(|(key, _)| key == k))
        .collect();
    session::apply_settings(&mut config, &from_env)?;
    session::apply_settings(&mut config, settings)?;
    config = session::with_cluster_tls(config, tls);
    if let Some(token) = token {
        use ballista::prelude::SessionConfigExt;
        let metadata = [("authorization".to_string(), format!("Bearer {token}"))];
        config = config.with_ballista_grpc_metadata(metadata.into_iter().collect());
    }
    let (scheduler, embedded) = match target {
        Target::Scheduler(addr) => {
            check_reachable(addr).await?;
            (addr.clone(), None)
        }
        Target::Cluster(cluster) => (reachable_leader(cluster, LEADER_WAIT).await?, None),
        Target::Standalone | Target::Local => {
            let cluster = EmbeddedCluster::start(EMBEDDED_EXECUTORS, embedded_vcores()).await?;
            (cluster.scheduler().clone(), Some(cluster))
        }
    };
    let url = scheduler.http_url().replace("http://", "df://");
    // In-memory tables travel inside plans, and client-side tables and
    // inserts stay in the client (`crate::planner`).
    let codec = Arc::new(sluice_sql::inline::SluiceLogicalCodec::default());
    let config = {
        use ballista::prelude::SessionConfigExt;
        let ballista = config.ballista_config();
        config.with_ballista_logical_extension_codec(codec.clone()).with_ballista_query_planner(
            Arc::new(crate::planner::ClientPlanner::new(url.clone(), ballista, codec)),
        )
    };
    let state = session::client_state(config).map_err(Error::from_datafusion)?;
    let ctx =
        SessionContext::remote_with_state(&url, state).await.map_err(Error::from_datafusion)?;
    // Ballista rebuilds the state for remote execution, keeping only built-in functions.
    session::register_functions(&ctx);
    for t in tables {
        t.register(&ctx).await?;
    }
    Ok(Connection {
        ctx,
        scheduler: Some(scheduler),
        token: token.map(str::to_string),
        _embedded: embedded,
    })
}

/// Runs one SQL statement and collects its result.
///
/// # Errors
/// [`Error::Sql`] for statements that do not parse or plan, [`Error::Query`]
/// for failures while running.
pub async fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await.map_err(Error::from_datafusion)?;
    df.collect().await.map_err(Error::from_datafusion)
}

/// Runs one SQL statement as [`run_sql`] does, with hot-key salting of its
/// joins when `sluice.skew.enabled` (the default): the left key of each
/// saltable join over a plain scan is sampled ([`sluice_sql::hotkeys`]), keys
/// above `sluice.skew.hot_key_share` of the rows are salted into
/// `sluice.skew.buckets` buckets (see `sluice_sql::skew`); joins expected to
/// be broadcast are not salted, as neither side is shuffled. `EXPLAIN` shows
/// the rewritten plan, preceded by one `sluice_skew` row per salted join and
/// one `sluice_broadcast` row per equi-join (see `sluice_sql::broadcast`).
///
/// # Errors
/// As [`run_sql`].
pub async fn run_sql_salted(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let mut attempt = 0;
    loop {
        match run_sql_salted_once(ctx, sql).await {
            Err(e) if e.lost_to_executor_loss() && attempt < 2 && reads_only(sql) => {
                tracing::warn!(error = %e, "query stopped by an executor loss; resubmitting it");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Whether `sql` only reads (so running it again after a failure cannot
/// write twice).
fn reads_only(sql: &str) -> bool {
    let first = sql.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
    matches!(first.as_str(), "select" | "with" | "values" | "explain" | "show" | "describe" | "(")
}

async fn run_sql_salted_once(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    collect_salted(ctx, sql).await.map(|(_, batches)| batches).map_err(Error::from_datafusion)
}

/// Runs one SQL statement as `sluice sql` does (hot-key salting of joins,
/// `EXPLAIN` notes; see [`run_sql_salted`]) and returns its schema with
/// its batches. Errors stay DataFusion's own, as they read on a single
/// process: a failure inside the cluster comes back with the text the
/// failing executor or scheduler saw ([`sluice_sql::remote_error`]).
///
/// # Errors
/// The statement's planning or execution error.
pub async fn collect_salted(
    ctx: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<(SchemaRef, Vec<RecordBatch>)> {
    let df = ctx.sql(sql).await.map_err(sluice_sql::remote_error::unwrap)?;
    salted(ctx, df).await.map_err(sluice_sql::remote_error::unwrap)
}

/// How many statements `sql` holds (1 when it does not parse: the error
/// is then reported by running it).
pub fn statement_count(sql: &str) -> usize {
    datafusion::sql::parser::DFParser::parse_sql(sql).map_or(1, |s| s.len().max(1))
}

/// Runs each statement of `sql` (several separated by `;`) as
/// [`collect_salted`] does, in order; returns each one's schema and
/// batches. Statements that create or change tables (`CREATE TABLE … AS`,
/// `INSERT INTO` a memory table) are seen by the ones after them.
///
/// # Errors
/// The first failing statement's error, DataFusion's own; the statements
/// before it have run.
pub async fn collect_statements(
    ctx: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<Vec<(SchemaRef, Vec<RecordBatch>)>> {
    use datafusion::sql::parser::DFParserBuilder;
    let state = ctx.state();
    let options = &state.config().options().sql_parser;
    let dialect =
        datafusion::sql::sqlparser::dialect::dialect_from_str(options.dialect.to_string())
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(format!(
                    "unsupported SQL dialect {}",
                    options.dialect
                ))
            })?;
    let statements = DFParserBuilder::new(sql)
        .with_dialect(dialect.as_ref())
        .with_recursion_limit(options.recursion_limit.get())
        .build()?
        .parse_statements()?;
    let mut results = Vec::with_capacity(statements.len());
    for statement in statements {
        let plan = ctx.state().statement_to_plan(statement).await?;
        let df = ctx.execute_logical_plan(plan).await.map_err(sluice_sql::remote_error::unwrap)?;
        results.push(salted(ctx, df).await.map_err(sluice_sql::remote_error::unwrap)?);
    }
    Ok(results)
}

/// Plans and runs `df`: the schema is the executed plan's, as DataFusion's
/// own runner reports it (the unoptimized plan's types may differ).
async fn run_df(df: DataFrame) -> datafusion::error::Result<(SchemaRef, Vec<RecordBatch>)> {
    let task_ctx = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let schema = plan.schema();
    let batches = datafusion::physical_plan::collect(plan, task_ctx).await?;
    Ok((schema, batches))
}

async fn salted(
    ctx: &SessionContext,
    df: DataFrame,
) -> datafusion::error::Result<(SchemaRef, Vec<RecordBatch>)> {
    use datafusion::arrow::array::{Array, StringArray};
    use datafusion::logical_expr::LogicalPlan;

    let opts = sluice_sql::options::of_session(ctx);
    let is_explain = matches!(df.logical_plan(), LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
    if !opts.skew_enabled && !is_explain {
        return run_df(df).await;
    }
    let (plan, explain) = match df.logical_plan() {
        LogicalPlan::Explain(e) => (e.plan.as_ref().clone(), Some((e.verbose, false))),
        LogicalPlan::Analyze(a) => (a.input.as_ref().clone(), Some((a.verbose, true))),
        other => (other.clone(), None),
    };
    // Optimized first: equi-join keys are extracted from ON clauses and
    // filters pushed into the scans by DataFusion's logical optimizer.
    let plan = ctx.state().optimize(&plan)?;
    let mut hot = std::collections::BTreeMap::new();
    let candidates =
        if opts.skew_enabled { sluice_sql::skew::join_candidates(&plan)? } else { Vec::new() };
    let mut detected = Vec::new();
    for c in candidates {
        // A broadcast join shuffles neither side: nothing to balance.
        if sluice_sql::broadcast::expected(&ctx.state(), &c.join).await {
            continue;
        }
        let (keys, how) =
            sluice_sql::hotkeys::hot_keys(ctx, &c.left, &c.key, opts.skew_hot_key_share).await?;
        if !keys.is_empty() {
            hot.insert(c.index, keys);
            detected.push(how);
        }
    }
    // Broadcast expectations are noted on the plan before salting: the
    // salted right side (an unnest) has no size estimate.
    let broadcast = match explain {
        Some(_) => sluice_sql::broadcast::notes(&ctx.state(), &plan).await?,
        None => Vec::new(),
    };
    // The join's shuffle partitions: salt values are chosen to land on
    // distinct ones.
    let partitions = ctx.state().config().target_partitions();
    let (plan, notes) = sluice_sql::skew::salt_joins(plan, &hot, opts.skew_buckets, partitions)?;
    // One note per salted join, in the order of `hot` (the joins' order).
    let notes: Vec<String> =
        notes.into_iter().zip(&detected).map(|(n, how)| format!("{n} ({how})")).collect();
    let Some((verbose, analyze)) = explain else {
        return run_df(DataFrame::new(ctx.state(), plan)).await;
    };
    let mut notes: Vec<(&str, String)> = notes.into_iter().map(|n| ("sluice_skew", n)).collect();
    notes.extend(broadcast.into_iter().map(|n| ("sluice_broadcast", n)));
    let df = DataFrame::new(ctx.state(), plan);
    let (schema, mut batches) = run_df(df.explain(verbose, analyze)?).await?;
    if let (false, Some(first)) = (notes.is_empty(), batches.first()) {
        let schema = first.schema();
        let kinds = StringArray::from(notes.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        let texts = StringArray::from(notes.into_iter().map(|(_, n)| n).collect::<Vec<_>>());
        let cols: Vec<Arc<dyn Array>> = vec![Arc::new(kinds), Arc::new(texts)];
        if schema.fields().len() == 2 {
            batches.insert(0, RecordBatch::try_new(schema, cols)?);
        }
    }
    Ok((schema, batches))
}
