//! `sluice`: the Sluice command line.

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
        /// The SQL statement.
        sql: String,
    },
    /// Generate data sets.
    Gen {
        #[command(subcommand)]
        what: GenCommand,
    },
    /// Start an embedded cluster, generate a small data set and run distributed queries, checking each against DataFusion.
    #[command(
        after_help = "Examples:\n  sluice demo\n  sluice demo --scale-factor 0.1 --data-dir /tmp/tpch"
    )]
    Demo {
        /// TPC-H scale factor of the generated data.
        #[arg(long, default_value_t = 0.05)]
        scale_factor: f64,
        /// Keep the generated data here (default: a temp folder, removed afterwards).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
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
}

async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Sql { scheduler, standalone: _, tables, settings, format, sql } => {
            let target = match scheduler {
                Some(addr) => Target::Scheduler(addr),
                None => Target::Standalone,
            };
            let tables =
                tables.iter().map(|t| TableSource::parse(t)).collect::<Result<Vec<_>, _>>()?;
            let settings = settings
                .iter()
                .map(|s| sluice_sql::session::parse_setting(s))
                .collect::<Result<Vec<_>, _>>()?;
            let conn = sluice_client::connect(&target, &settings, &tables).await?;
            let batches = sluice_client::run_sql(&conn.ctx, &sql).await?;
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            sluice_client::format::write(&mut lock, &batches, format)
                .map_err(|e| Error::Io { path: "stdout".into(), reason: e.to_string() })?;
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
        Command::Demo { scale_factor, data_dir } => {
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
            sluice_client::demo::run(&mut lock, scale_factor, &dir).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Library logs are for operators; the CLI shows warnings unless RUST_LOG says otherwise.
    logging::init(cli.log_format, "warn");
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "internal error: {info}\nThis is a bug in Sluice; please report it with the command you ran."
        );
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.class().exit_code() as u8)
        }
    }
}
