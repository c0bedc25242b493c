//! `sluice sql`: one statement (or several) on a cluster, or through a Flight SQL endpoint.

use std::path::PathBuf;

use sluice_client::format::OutputFormat;
use sluice_client::{Error, Target};
use sluice_proto::HostPort;
use sluice_sql::tables::TableSource;

use super::args::EtcdArgs;

#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    /// The scheduler to submit to.
    #[arg(long, env = "SLUICE_SCHEDULER", value_name = "HOST:PORT", conflicts_with = "standalone")]
    pub scheduler: Option<HostPort>,
    /// Start an embedded cluster (scheduler + 2 executors) in this process.
    #[arg(long)]
    pub standalone: bool,
    /// A table: NAME=PATH or NAME=PATH:FORMAT (parquet|csv|json); PATH is a file, a folder, file:// or s3:// URL. Repeatable.
    #[arg(long = "table", short = 't', value_name = "NAME=PATH[:FORMAT]")]
    pub tables: Vec<String>,
    /// A session setting (datafusion.*, ballista.*, s3.*, sluice.*). Repeatable; unknown keys are errors.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Query a scheduler's Flight SQL endpoint instead (catalog tables; token from
    /// --token-file or SLUICE_TOKEN; --tls-ca for TLS).
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["scheduler", "standalone", "tables", "settings"])]
    pub flight_sql: Option<HostPort>,
    /// Catalog file whose tables the query sees (default: SLUICE_CATALOG, else
    /// ~/.sluice/catalog.json); with --flight-sql the scheduler's catalog is used instead.
    #[arg(long, value_name = "FILE", conflicts_with = "flight_sql")]
    pub catalog: Option<PathBuf>,
    /// File holding the token for --flight-sql, or for a --scheduler started with
    /// --auth-token-file (an admin token); else SLUICE_TOKEN.
    #[arg(long, value_name = "FILE", conflicts_with = "standalone")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) of a TLS Flight SQL endpoint.
    #[arg(long, value_name = "FILE", requires = "flight_sql")]
    pub tls_ca: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The SQL: one statement, or several separated by `;` (each result is
    /// printed; `CREATE TABLE t AS …; SELECT … FROM t` works).
    pub sql: String,
}

pub async fn run(args: SqlArgs) -> Result<(), Error> {
    match args {
        SqlArgs { flight_sql: Some(addr), token_file, tls_ca, format, sql, .. } => {
            let endpoint = sluice_client::catalog::FlightSqlEndpoint {
                addr,
                token: sluice_client::catalog::read_token(token_file.as_deref())?,
                tls_ca,
            };
            let batches = sluice_client::catalog::run_sql_flight(&endpoint, &sql).await?;
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            sluice_client::format::write(&mut lock, &batches, format)
                .map_err(|e| Error::Io { path: "stdout".into(), reason: e.to_string() })?;
            Ok(())
        }
        SqlArgs {
            scheduler,
            standalone: _,
            tables,
            settings,
            format,
            token_file,
            catalog,
            sql,
            etcd,
            ..
        } => {
            let (target, token) = match (scheduler, etcd.target()?) {
                (Some(addr), _) => (
                    Target::Scheduler(addr),
                    sluice_client::catalog::read_token(token_file.as_deref())?,
                ),
                (None, Some(cluster)) => (
                    Target::Cluster(cluster),
                    sluice_client::catalog::read_token(token_file.as_deref())?,
                ),
                (None, None) => (Target::Standalone, None),
            };
            let tables =
                tables.iter().map(|t| TableSource::parse(t)).collect::<Result<Vec<_>, _>>()?;
            let settings = settings
                .iter()
                .map(|s| sluice_sql::session::parse_setting(s))
                .collect::<Result<Vec<_>, _>>()?;
            let conn =
                sluice_client::connect::connect_as(&target, token.as_deref(), &settings, &[])
                    .await?;
            let catalog = catalog.unwrap_or_else(sluice_client::catalog::default_catalog_file);
            sluice_client::catalog::use_catalog_file(&conn.ctx, &catalog)?;
            for t in &tables {
                t.register(&conn.ctx).await?;
            }
            // One statement (retried after an executor loss when it only
            // reads), or several separated by `;`, each result printed.
            let results = match sluice_client::connect::statement_count(&sql) {
                1 => vec![sluice_client::connect::run_sql_salted(&conn.ctx, &sql).await?],
                _ => sluice_client::connect::collect_statements(&conn.ctx, &sql)
                    .await
                    .map_err(Error::from_datafusion)?
                    .into_iter()
                    .filter(|(schema, _)| !schema.fields().is_empty())
                    .map(|(_, batches)| batches)
                    .collect(),
            };
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            for batches in &results {
                sluice_client::format::write(&mut lock, batches, format)
                    .map_err(|e| Error::Io { path: "stdout".into(), reason: e.to_string() })?;
            }
            Ok(())
        }
    }
}
