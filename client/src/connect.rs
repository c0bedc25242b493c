//! Connecting to a cluster and running SQL on it.

use std::time::Duration;

use ballista::prelude::SessionContextExt;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
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
    _embedded: Option<EmbeddedCluster>,
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
async fn check_reachable(addr: &HostPort) -> Result<()> {
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
    if let Target::Local = target {
        let mut config = session::local_session_config();
        session::apply_settings(&mut config, settings)?;
        let runtime = session::runtime_env(&config, None).map_err(Error::from_datafusion)?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        session::register_functions(&ctx);
        for t in tables {
            t.register(&ctx).await?;
        }
        return Ok(Connection { ctx, scheduler: None, _embedded: None });
    }
    // Validate everything local before touching the network.
    let mut config = session::cluster_session_config();
    session::apply_settings(&mut config, settings)?;
    let (scheduler, embedded) = match target {
        Target::Scheduler(addr) => {
            check_reachable(addr).await?;
            (addr.clone(), None)
        }
        Target::Standalone | Target::Local => {
            let cluster = EmbeddedCluster::start(EMBEDDED_EXECUTORS, embedded_vcores()).await?;
            (cluster.scheduler().clone(), Some(cluster))
        }
    };
    let state = session::client_state(config).map_err(Error::from_datafusion)?;
    let ctx =
        SessionContext::remote_with_state(&scheduler.http_url().replace("http://", "df://"), state)
            .await
            .map_err(Error::from_datafusion)?;
    // Ballista rebuilds the state for remote execution, keeping only built-in functions.
    session::register_functions(&ctx);
    for t in tables {
        t.register(&ctx).await?;
    }
    Ok(Connection { ctx, scheduler: Some(scheduler), _embedded: embedded })
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
