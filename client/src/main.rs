//! `sluice`: the Sluice command line.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_client::format::OutputFormat;
use sluice_client::{Error, Target};
use sluice_proto::HostPort;
use sluice_proto::logging::{self, LogFormat};
use sluice_sql::tables::TableSource;

/// Sluice: distributed SQL and feature backfills on Apache DataFusion + Ballista.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    after_help = "Examples:\n  sluice demo\n  sluice gen tpch --scale-factor 0.1 --out data/tpch\n  sluice sql --table lineitem=data/tpch/lineitem \"select l_returnflag, count(*) from lineitem group by 1\"\n  sluice sql --scheduler 127.0.0.1:50050 --table t=events.csv --format csv \"select * from t limit 5\""
)]
struct Cli {
    /// Log line format (logs go to stderr; RUST_LOG=info shows more).
    #[arg(long, global = true, default_value = "text", value_name = "text|json")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one SQL statement on a cluster and print the result.
    #[command(
        after_help = "Examples:\n  sluice sql --standalone --table lineitem=data/tpch/lineitem \"select l_returnflag, count(*) from lineitem group by 1\"\n  sluice sql --scheduler 127.0.0.1:50050 --table orders=data/orders.parquet --format json \"select * from orders limit 3\"\n  sluice sql --table ev=s3://bucket/events/:parquet --set s3.region=eu-west-1 \"select count(*) from ev\"\n  sluice sql --set datafusion.execution.target_partitions=8 --table t=t.csv \"EXPLAIN select count(*) from t\"\n\nWithout --scheduler (or SLUICE_SCHEDULER) the query runs on an embedded cluster in this process."
    )]
    Sql {
        /// The scheduler to submit to.
        #[arg(
            long,
            env = "SLUICE_SCHEDULER",
            value_name = "HOST:PORT",
            conflicts_with = "standalone"
        )]
        scheduler: Option<HostPort>,
        /// Start an embedded cluster (scheduler + 2 executors) in this process.
        #[arg(long)]
        standalone: bool,
        /// A table: NAME=PATH or NAME=PATH:FORMAT (parquet|csv|json); PATH is a file, a folder, file:// or s3:// URL. Repeatable.
        #[arg(long = "table", short = 't', value_name = "NAME=PATH[:FORMAT]")]
        tables: Vec<String>,
        /// A session setting (datafusion.*, ballista.*, s3.*, sluice.*). Repeatable; unknown keys are errors.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        /// Query a scheduler's Flight SQL endpoint instead (catalog tables; token from
        /// --token-file or SLUICE_TOKEN; --tls-ca for TLS).
        #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["scheduler", "standalone", "tables", "settings"])]
        flight_sql: Option<HostPort>,
        /// Catalog file whose tables the query sees (default: SLUICE_CATALOG, else
        /// ~/.sluice/catalog.json); with --flight-sql the scheduler's catalog is used instead.
        #[arg(long, value_name = "FILE", conflicts_with = "flight_sql")]
        catalog: Option<PathBuf>,
        /// File holding the token for --flight-sql, or for a --scheduler started with
        /// --auth-token-file (an admin token); else SLUICE_TOKEN.
        #[arg(long, value_name = "FILE", conflicts_with = "standalone")]
        token_file: Option<PathBuf>,
        /// CA certificate (PEM) of a TLS Flight SQL endpoint.
        #[arg(long, value_name = "FILE", requires = "flight_sql")]
        tls_ca: Option<PathBuf>,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The SQL: one statement, or several separated by `;` (each result is
        /// printed; `CREATE TABLE t AS …; SELECT … FROM t` works).
        sql: String,
    },
    /// The persistent table catalog: register, list, drop.
    Table {
        #[command(subcommand)]
        what: TableCommand,
    },
    /// Generate data sets.
    Gen {
        #[command(subcommand)]
        what: GenCommand,
    },
    /// Backfill a feature job's daily partitions over a date range on the cluster.
    #[command(
        after_help = "Examples:\n  sluice gen churn --users 2000 --start 2024-01-01 --days 120 --out data/churn\n  sluice backfill sql/jobs/churn.yaml --from 2024-02-01 --to 2024-04-30 --data-dir data/churn --output out/churn\n  sluice backfill sql/jobs/churn.yaml --from 2024-02-01 --to 2024-04-30 --data-dir data/churn --scheduler 127.0.0.1:50050 --json\n  sluice backfill sql/jobs/churn.yaml --from 2024-02-01 --to 2024-04-30 --data-dir data/churn --etcd-endpoints http://127.0.0.1:2379 --detach\n  sluice backfill watch bf-1a2b3c4d5e6f --etcd-endpoints http://127.0.0.1:2379\n  sluice backfill status bf-1a2b3c4d5e6f --etcd-endpoints http://127.0.0.1:2379\n  sluice backfill cancel bf-1a2b3c4d5e6f --etcd-endpoints http://127.0.0.1:2379\n  sluice backfill list --scheduler 127.0.0.1:50050\n\nThe cluster runs the backfill (its leader scheduler; a new leader resumes it): this command submits it\nand follows it. Ctrl-C detaches and leaves it running; --detach returns at once.\nOutput: OUT/feature_date=YYYY-MM-DD/*.parquet (Hive partitioning). Dates already committed are skipped,\nso rerunning a failed or cancelled backfill completes only what is missing.",
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true
    )]
    Backfill {
        #[command(subcommand)]
        what: Option<BackfillCommand>,
        /// The job spec (YAML), e.g. sql/jobs/churn.yaml.
        #[arg(required = true)]
        spec: Option<PathBuf>,
        /// First feature date, YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD", required = true)]
        from: Option<String>,
        /// Last feature date (inclusive), YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD", required = true)]
        to: Option<String>,
        /// Submit the backfill to the cluster (--scheduler or --etcd-endpoints), print its id
        /// and return (follow: `sluice backfill watch ID`, stop: `sluice backfill cancel ID`).
        #[arg(long)]
        detach: bool,
        /// The scheduler to submit to.
        #[arg(
            long,
            env = "SLUICE_SCHEDULER",
            value_name = "HOST:PORT",
            conflicts_with = "standalone"
        )]
        scheduler: Option<HostPort>,
        /// Start an embedded cluster in this process (the default without --scheduler).
        #[arg(long)]
        standalone: bool,
        /// Run on plain single-process DataFusion (no cluster): the reference engine.
        #[arg(long, conflicts_with_all = ["scheduler", "standalone"])]
        local: bool,
        /// Print the first chunk's SQL and plan instead of running the backfill.
        #[arg(long)]
        explain: bool,
        /// With --explain: run the first chunk. On a cluster its write goes to a throwaway
        /// folder and the plan the scheduler executed is printed (with the broadcast joins
        /// its adaptive planner chose); with --local, EXPLAIN ANALYZE (plan and metrics).
        #[arg(long, requires = "explain")]
        analyze: bool,
        /// Folder the spec's source paths are relative to (default: the spec's folder).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Output folder (default: the spec's output.path, relative to the spec).
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Feature dates per distributed job. Default: the range split into a multiple of
        /// --parallel chunks of at most 183 dates (a year: 2 × 183; see benchmarks/README.md).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        chunk_days: Option<u32>,
        /// Chunks in flight at once.
        #[arg(long, default_value_t = 2, value_name = "N")]
        parallel: usize,
        /// A session setting (KEY=VALUE), as for `sluice sql`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Print a machine-readable JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// Do not register the output in the catalog.
        #[arg(long)]
        no_register: bool,
        #[command(flatten)]
        catalog: CatalogArgs,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// A high-availability cluster's state in etcd.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
    /// Start an embedded cluster, generate churn data, backfill churn features (quality report, sample rows, point-in-time check), then check TPC-H queries against DataFusion.
    #[command(
        after_help = "Examples:\n  sluice demo\n  sluice demo --users 5000 --data-dir /tmp/sluice-demo"
    )]
    Demo {
        /// Users in the generated churn data.
        #[arg(long, default_value_t = 1000)]
        users: u64,
        /// TPC-H scale factor of the generated data.
        #[arg(long, default_value_t = 0.05)]
        scale_factor: f64,
        /// Keep the generated data here (default: a temp folder, removed afterwards).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// A high-availability cluster: its leader is looked up in etcd (and again
/// after a failover) instead of a fixed --scheduler.
#[derive(Debug, clap::Args)]
struct EtcdArgs {
    /// etcd endpoints of a cluster started with `--state etcd`, e.g. http://127.0.0.1:2379.
    #[arg(long, env = "SLUICE_ETCD_ENDPOINTS", value_name = "URL[,URL]", conflicts_with_all = ["scheduler", "standalone"])]
    etcd_endpoints: Option<String>,
    /// The cluster's name in etcd.
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "NAME", default_value = "default")]
    cluster: String,
}

impl EtcdArgs {
    fn target(&self) -> Result<Option<sluice_proto::etcd::EtcdTarget>, Error> {
        match &self.etcd_endpoints {
            None => Ok(None),
            Some(e) => Ok(Some(sluice_proto::etcd::EtcdTarget::parse(e, &self.cluster)?)),
        }
    }
}

/// Like [`EtcdArgs`], with the endpoints required.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// etcd endpoints of the cluster, e.g. http://127.0.0.1:2379.
    #[arg(long, env = "SLUICE_ETCD_ENDPOINTS", value_name = "URL[,URL]")]
    etcd_endpoints: String,
    /// The cluster's name in etcd.
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "NAME", default_value = "default")]
    cluster: String,
}

/// Where a backfill command finds the cluster's backfill service.
#[derive(Debug, clap::Args)]
struct ServiceArgs {
    /// The scheduler (leader) to ask.
    #[arg(long, env = "SLUICE_SCHEDULER", value_name = "HOST:PORT")]
    scheduler: Option<HostPort>,
    /// etcd endpoints of a high-availability cluster: ask its leader.
    #[arg(
        long,
        env = "SLUICE_ETCD_ENDPOINTS",
        value_name = "URL[,URL]",
        conflicts_with = "scheduler"
    )]
    etcd_endpoints: Option<String>,
    /// The cluster's name in etcd.
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "NAME", default_value = "default")]
    cluster: String,
    /// A file holding the scheduler's bearer token.
    #[arg(long, env = "SLUICE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl ServiceArgs {
    fn target(&self) -> Result<Target, Error> {
        match (&self.scheduler, &self.etcd_endpoints) {
            (Some(addr), _) => Ok(Target::Scheduler(addr.clone())),
            (None, Some(endpoints)) => Ok(Target::Cluster(sluice_proto::etcd::EtcdTarget::parse(
                endpoints,
                &self.cluster,
            )?)),
            (None, None) => Err(Error::Usage(
                "which cluster? pass --scheduler HOST:PORT or --etcd-endpoints URL[,URL]".into(),
            )),
        }
    }

    fn token(&self) -> Result<Option<String>, Error> {
        sluice_client::catalog::read_token(self.token_file.as_deref())
    }
}

#[derive(Debug, Subcommand)]
enum BackfillCommand {
    /// A backfill's state, owner, dates committed and every chunk's state.
    Status {
        /// The backfill id (printed on submit, listed by `sluice backfill list`).
        id: String,
        #[command(flatten)]
        at: ServiceArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follow a running backfill's progress until it ends (Ctrl-C detaches again).
    Watch {
        id: String,
        #[command(flatten)]
        at: ServiceArgs,
        /// Print the final summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running backfill: its chunk jobs are cancelled, its staging removed,
    /// committed dates stay.
    Cancel {
        id: String,
        #[command(flatten)]
        at: ServiceArgs,
    },
    /// Every backfill the cluster has recorded, newest first.
    List {
        #[command(flatten)]
        at: ServiceArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Leader, standbys, executors (slots, last keep-alive) and backfills with progress.
    #[command(
        after_help = "Examples:\n  sluice cluster status --etcd-endpoints http://127.0.0.1:2379 --cluster prod\n  sluice cluster status --etcd-endpoints http://127.0.0.1:2379 --json"
    )]
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Where `sluice table` and backfill registration find the catalog.
#[derive(Debug, clap::Args)]
struct CatalogArgs {
    /// The catalog file (embedded mode). Default: SLUICE_CATALOG, else ~/.sluice/catalog.json.
    #[arg(long, value_name = "FILE", conflicts_with = "flight_sql")]
    catalog: Option<PathBuf>,
    /// A scheduler's Flight SQL endpoint: use its catalog.
    #[arg(long, env = "SLUICE_FLIGHT_SQL", value_name = "HOST:PORT")]
    flight_sql: Option<HostPort>,
    /// File holding the token (else SLUICE_TOKEN): for --flight-sql, and for a --scheduler
    /// that checks tokens.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of a TLS endpoint.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

impl CatalogArgs {
    fn target(&self) -> Result<sluice_client::catalog::CatalogTarget, Error> {
        use sluice_client::catalog::{CatalogTarget, FlightSqlEndpoint};
        Ok(match &self.flight_sql {
            Some(addr) => CatalogTarget::FlightSql(FlightSqlEndpoint {
                addr: addr.clone(),
                token: sluice_client::catalog::read_token(self.token_file.as_deref())?,
                tls_ca: self.tls_ca.clone(),
            }),
            None => CatalogTarget::File(
                self.catalog.clone().unwrap_or_else(sluice_client::catalog::default_catalog_file),
            ),
        })
    }
}

#[derive(Debug, Subcommand)]
enum TableCommand {
    /// Register (or replace) a table: every session and Flight SQL client sees it.
    #[command(
        after_help = "Examples:\n  sluice table register churn_features out/churn --partitioned-by feature_date\n  sluice table register events data/churn/events --flight-sql 127.0.0.1:50051 --token-file admin.token"
    )]
    Register {
        /// Table name (letters, digits, '_').
        name: String,
        /// A folder or file (made absolute), or a URL.
        path: String,
        /// parquet, csv or json.
        #[arg(long, default_value = "parquet")]
        format: String,
        /// Hive partition column (`COL=VALUE/` folders); repeatable.
        #[arg(long = "partitioned-by", value_name = "COL")]
        partitioned_by: Vec<String>,
        #[command(flatten)]
        catalog: CatalogArgs,
    },
    /// List the catalog's tables.
    List {
        #[command(flatten)]
        catalog: CatalogArgs,
    },
    /// Remove a table from the catalog (its data stays).
    Drop {
        name: String,
        #[command(flatten)]
        catalog: CatalogArgs,
    },
}

#[derive(Debug, Subcommand)]
enum GenCommand {
    /// The 8 TPC-H tables as Parquet: OUT/<table>/part-N.parquet.
    #[command(
        after_help = "Examples:\n  sluice gen tpch --scale-factor 0.1 --out data/tpch\n  sluice gen tpch --scale-factor 1 --out /data/tpch-sf1"
    )]
    Tpch {
        /// Scale factor (1 = ~1 GB of raw data, 6M lineitem rows).
        #[arg(long, value_name = "SF")]
        scale_factor: f64,
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Raw churn data (users, transactions, events, tickets) as Parquet: OUT/<table>/part-N.parquet.
    #[command(
        after_help = "Examples:\n  sluice gen churn --users 10000 --start 2024-01-01 --days 365 --seed 7 --out data/churn\n  sluice gen churn --users 10000 --start 2024-01-01 --days 90 --zipf 1.2 --out data/churn-skewed\n\nSame arguments give the same rows."
    )]
    Churn {
        /// Number of users (user_id 1..=N).
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// First day of activity, YYYY-MM-DD.
        #[arg(long, default_value = "2024-01-01", value_name = "YYYY-MM-DD")]
        start: String,
        /// Days of activity.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Zipf exponent of activity over users (0 = uniform; 1.2 gives the hottest user ~20% of rows).
        #[arg(long, default_value_t = 0.0)]
        zipf: f64,
        /// Average transactions per user per day.
        #[arg(long, default_value_t = 0.2)]
        txn_rate: f64,
        /// Average events per user per day.
        #[arg(long, default_value_t = 1.5)]
        event_rate: f64,
        /// Average support tickets per user per day.
        #[arg(long, default_value_t = 0.01)]
        ticket_rate: f64,
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

async fn run_table(what: TableCommand) -> Result<(), Error> {
    use sluice_client::catalog;
    match what {
        TableCommand::Register { name, path, format, partitioned_by, catalog: args } => {
            let entry = sluice_sql::catalog::CatalogEntry {
                name,
                path: catalog::absolute(&path),
                format,
                partitioned_by,
            };
            let replaced = catalog::register(&args.target()?, entry.clone()).await?;
            let verb = if replaced.is_some() { "replaced" } else { "registered" };
            println!("{verb} table {} -> {} ({})", entry.name, entry.path, entry.format);
        }
        TableCommand::List { catalog: args } => {
            for t in catalog::list(&args.target()?).await? {
                let parts = if t.partitioned_by.is_empty() {
                    String::new()
                } else {
                    format!("  partitioned by {}", t.partitioned_by.join(", "))
                };
                println!("{:<24} {:<8} {}{parts}", t.name, t.format, t.path);
            }
        }
        TableCommand::Drop { name, catalog: args } => {
            let old = catalog::drop_table(&args.target()?, &name).await?;
            println!("dropped table {} (data left at {})", old.name, old.path);
        }
    }
    Ok(())
}

fn to_json(value: &impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Error::Io { path: "stdout".into(), reason: e.to_string() })
}

/// Prints a finished backfill's summary (and its quality report).
fn print_report(report: &sluice_client::backfill::BackfillReport, json: bool) -> Result<(), Error> {
    if json {
        println!("{}", to_json(report)?);
    } else {
        eprint!("{}", sluice_client::backfill::quality_report(report));
        eprintln!(
            "{} of {} dates committed ({} already there), {} rows in {} chunk(s), {:.1} s -> {}",
            report.dates_committed,
            report.dates_total,
            report.dates_already_committed,
            report.rows,
            report.chunks,
            report.seconds,
            report.output
        );
    }
    Ok(())
}

fn quality_failed(report: &sluice_client::backfill::BackfillReport) -> Error {
    let text = sluice_client::backfill::quality_report(report);
    Error::Query {
        message: format!(
            "a quality expectation failed; the failing chunk was not committed.\n{text}"
        ),
        class: sluice_proto::ErrorClass::User,
    }
}

async fn run_backfill_command(what: BackfillCommand) -> Result<(), Error> {
    use sluice_client::backfill::{BackfillView, Service};
    match what {
        BackfillCommand::Status { id, at, json } => {
            let mut service = Service::of(&at.target()?, at.token()?.as_deref()).await?;
            let view = BackfillView::of(&service.get(&id).await?, true);
            if json {
                println!("{}", to_json(&view)?);
            } else {
                print!("{}", view.render());
            }
            Ok(())
        }
        BackfillCommand::Watch { id, at, json } => {
            let target = at.target()?;
            let started = std::time::Instant::now();
            let record =
                sluice_client::backfill::watch(&target, at.token()?.as_deref(), &id, !json).await?;
            let report =
                sluice_client::backfill::outcome(&record, started.elapsed().as_secs_f64())?;
            print_report(&report, json)?;
            if !report.ok {
                return Err(quality_failed(&report));
            }
            Ok(())
        }
        BackfillCommand::Cancel { id, at } => {
            let mut service = Service::of(&at.target()?, at.token()?.as_deref()).await?;
            let record = service.cancel(&id).await?;
            println!(
                "backfill {id} cancelled; {} dates committed stay in {}",
                record.dates_committed + record.dates_already_committed,
                record.request.as_ref().map(|r| r.output.as_str()).unwrap_or_default()
            );
            Ok(())
        }
        BackfillCommand::List { at, json } => {
            let mut service = Service::of(&at.target()?, at.token()?.as_deref()).await?;
            let views: Vec<BackfillView> =
                service.list().await?.iter().map(|b| BackfillView::of(b, true)).collect();
            if json {
                println!("{}", to_json(&views)?);
            } else {
                for v in &views {
                    println!(
                        "{}  {:<14} {}..{}  {}/{} dates  {}",
                        v.id,
                        v.state,
                        v.from,
                        v.to,
                        v.dates_committed + v.dates_already_committed,
                        v.dates_total,
                        v.output
                    );
                }
            }
            Ok(())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Sql { flight_sql: Some(addr), token_file, tls_ca, format, sql, .. } => {
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
        Command::Sql {
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
        Command::Table { what } => run_table(what).await,
        Command::Cluster { what: ClusterCommand::Status { cluster, json } } => {
            let target =
                sluice_proto::etcd::EtcdTarget::parse(&cluster.etcd_endpoints, &cluster.cluster)?;
            let status = sluice_client::status::read(&target).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status)
                        .map_err(|e| Error::Io { path: "stdout".into(), reason: e.to_string() })?
                );
            } else {
                print!("{}", sluice_client::status::render(&status));
            }
            Ok(())
        }
        Command::Gen { what: GenCommand::Tpch { scale_factor, out } } => {
            let generated = sluice_client::datagen::tpch::generate(scale_factor, &out)?;
            for g in generated {
                println!(
                    "{:<10} {:>10} rows  {} file(s)  {}",
                    g.table,
                    g.rows,
                    g.files,
                    g.path.display()
                );
            }
            Ok(())
        }
        Command::Gen {
            what:
                GenCommand::Churn {
                    users,
                    start,
                    days,
                    seed,
                    zipf,
                    txn_rate,
                    event_rate,
                    ticket_rate,
                    out,
                },
        } => {
            let cfg = sluice_client::datagen::churn::ChurnConfig {
                users,
                start: sluice_client::backfill::parse_date("--start", &start)?,
                days,
                seed,
                zipf,
                txn_rate,
                event_rate,
                ticket_rate,
            };
            for g in sluice_client::datagen::churn::generate(&cfg, &out)? {
                println!(
                    "{:<13} {:>11} rows  {} file(s)  {}",
                    g.table,
                    g.rows,
                    g.files,
                    g.path.display()
                );
            }
            Ok(())
        }
        Command::Backfill { what: Some(what), .. } => run_backfill_command(what).await,
        Command::Backfill { spec: None, .. }
        | Command::Backfill { from: None, .. }
        | Command::Backfill { to: None, .. } => {
            Err(Error::Usage("backfill needs SPEC, --from and --to".into()))
        }
        Command::Backfill {
            what: None,
            spec: Some(spec),
            from: Some(from),
            to: Some(to),
            detach,
            scheduler,
            standalone: _,
            local,
            explain,
            analyze,
            data_dir,
            output,
            chunk_days,
            parallel,
            settings,
            json,
            no_register,
            catalog,
            etcd,
        } => {
            let catalog_target = if no_register || local { None } else { Some(catalog.target()?) };
            let opts = sluice_client::backfill::BackfillOptions {
                spec,
                from: sluice_client::backfill::parse_date("--from", &from)?,
                to: sluice_client::backfill::parse_date("--to", &to)?,
                target: match (scheduler, local, etcd.target()?) {
                    (Some(addr), _, _) => Target::Scheduler(addr),
                    (None, true, _) => Target::Local,
                    (None, false, Some(cluster)) => Target::Cluster(cluster),
                    (None, false, None) => Target::Standalone,
                },
                data_dir,
                output,
                chunk_days: chunk_days.unwrap_or(sluice_client::backfill::AUTO_CHUNK_DAYS),
                parallel,
                settings: settings
                    .iter()
                    .map(|s| sluice_sql::session::parse_setting(s))
                    .collect::<Result<Vec<_>, _>>()?,
                progress: !json,
                token: if local {
                    None
                } else {
                    sluice_client::catalog::read_token(catalog.token_file.as_deref())?
                },
            };
            if detach {
                if !matches!(opts.target, Target::Scheduler(_) | Target::Cluster(_)) {
                    return Err(Error::Usage(
                        "--detach needs a cluster to run the backfill: pass --scheduler HOST:PORT or --etcd-endpoints URL (an embedded cluster ends with this command)".into(),
                    ));
                }
                let (record, scheduler) = sluice_client::backfill::submit(&opts).await?;
                println!("{}", record.id);
                eprintln!(
                    "backfill {} submitted to {scheduler}: {} chunk(s), {} of {} dates to compute.\n  follow it:  sluice backfill watch {id}{at}\n  stop it:    sluice backfill cancel {id}{at}",
                    record.id,
                    record.chunks.len(),
                    record.dates_total - record.dates_already_committed,
                    record.dates_total,
                    id = record.id,
                    at = match &opts.target {
                        Target::Cluster(c) => format!(
                            " --etcd-endpoints {} --cluster {}",
                            c.endpoints_label(),
                            c.cluster
                        ),
                        _ => format!(" --scheduler {scheduler}"),
                    }
                );
                return Ok(());
            }
            if explain {
                print!("{}", sluice_client::backfill::explain(&opts, analyze).await?);
                return Ok(());
            }
            let report = sluice_client::backfill::run(&opts).await?;
            print_report(&report, json)?;
            if report.ok
                && let Some(target) = &catalog_target
            {
                let spec = sluice_sql::job::spec::JobSpec::from_file(&opts.spec)
                    .map_err(|e| Error::Usage(format!("{}: {e}", opts.spec.display())))?;
                let entry = sluice_sql::catalog::CatalogEntry {
                    name: spec.name.clone(),
                    path: sluice_client::catalog::absolute(&report.output),
                    format: "parquet".into(),
                    partitioned_by: vec![spec.output.partition_by.clone()],
                };
                sluice_client::catalog::register(target, entry).await?;
                if !json {
                    eprintln!("registered table {} -> {}", spec.name, report.output);
                }
            }
            if !report.ok {
                return Err(quality_failed(&report));
            }
            Ok(())
        }
        Command::Demo { users, scale_factor, data_dir } => {
            let temp;
            let dir = match data_dir {
                Some(d) => d,
                None => {
                    temp =
                        tempfile::Builder::new().prefix("sluice-demo-").tempdir().map_err(|e| {
                            Error::Io {
                                path: std::env::temp_dir().display().to_string(),
                                reason: e.to_string(),
                            }
                        })?;
                    temp.path().to_path_buf()
                }
            };
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            sluice_client::demo::run(&mut lock, users, scale_factor, &dir).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Library logs are for operators: the CLI reports failures itself, so the
    // embedded cluster's own error logs would only repeat them. RUST_LOG=info
    // shows everything.
    logging::init(
        cli.log_format,
        "warn,ballista_scheduler=off,ballista_core=off,ballista_executor=off",
    );
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "internal error: {info}\nThis is a bug in Sluice; please report it with the command you ran."
        );
    }));
    let runtime = match sluice_proto::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // Ctrl-C while following a backfill: it runs on; say how to follow it.
        Err(Error::Detached(hint)) => {
            eprintln!("\ndetached: {hint}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.class().exit_code() as u8)
        }
    }
}
