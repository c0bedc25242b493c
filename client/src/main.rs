//! `sluice`: the Sluice command line.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_client::Error;
use sluice_proto::logging::{self, LogFormat};

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
    Sql(cli::sql::SqlArgs),
    /// The persistent table catalog: register, list, drop.
    Table {
        #[command(subcommand)]
        what: cli::table::TableCommand,
    },
    /// Generate data sets.
    Gen {
        #[command(subcommand)]
        what: cli::datagen::GenCommand,
    },
    /// Backfill a feature job's daily partitions over a date range on the cluster.
    #[command(
        after_help = "Examples:\n  sluice gen churn --users 2000 --start 2024-01-01 --days 120 --out data/churn\n  sluice backfill sql/jobs/churn.yaml --from 2024-02-01 --to 2024-04-30 --data-dir data/churn --output out/churn\n  sluice backfill sql/jobs/churn.yaml --from 2024-02-01 --to 2024-04-30 --data-dir data/churn --scheduler 127.0.0.1:50050 --json\n  sluice backfill sql/jobs/churn.yaml --from 2024-02-01 --to 2024-04-30 --data-dir data/churn --etcd-endpoints http://127.0.0.1:2379 --detach\n  sluice backfill watch bf-1a2b3c4d5e6f --etcd-endpoints http://127.0.0.1:2379\n  sluice backfill status bf-1a2b3c4d5e6f --etcd-endpoints http://127.0.0.1:2379\n  sluice backfill cancel bf-1a2b3c4d5e6f --etcd-endpoints http://127.0.0.1:2379\n  sluice backfill list --scheduler 127.0.0.1:50050\n\nThe cluster runs the backfill (its leader scheduler; a new leader resumes it): this command submits it\nand follows it. Ctrl-C detaches and leaves it running; --detach returns at once.\nOutput: OUT/feature_date=YYYY-MM-DD/*.parquet (Hive partitioning). Dates already committed are skipped,\nso rerunning a failed or cancelled backfill completes only what is missing."
    )]
    Backfill(cli::backfill::BackfillArgs),
    /// A high-availability cluster's state in etcd.
    Cluster {
        #[command(subcommand)]
        what: cli::cluster::ClusterCommand,
    },
    /// Executors of a running cluster.
    Executor {
        #[command(subcommand)]
        what: cli::cluster::ExecutorCommand,
    },
    /// Start an embedded cluster, generate churn data, backfill churn features (quality report, sample rows, point-in-time check), then check TPC-H queries against DataFusion.
    #[command(
        after_help = "Examples:\n  sluice demo\n  sluice demo --users 5000 --data-dir /tmp/sluice-demo"
    )]
    Demo(cli::demo::DemoArgs),
}

async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Sql(args) => cli::sql::run(args).await,
        Command::Table { what } => cli::table::run(what).await,
        Command::Cluster { what } => cli::cluster::run(what).await,
        Command::Executor { what } => cli::cluster::run_executor(what).await,
        Command::Gen { what } => cli::datagen::run(what).await,
        Command::Backfill(args) => cli::backfill::run(args).await,
        Command::Demo(args) => cli::demo::run(args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    {
        // Library logs are for operators: the CLI reports failures itself, so
        // the embedded cluster's own error logs would only repeat them.
        // RUST_LOG=info shows everything. Inside the runtime: the OTLP
        // exporter (when traces are on) needs it.
        let _entered = runtime.enter();
        logging::init_service(
            cli.log_format,
            "warn,ballista_scheduler=off,ballista_core=off,ballista_executor=off",
            "sluice",
        );
    }
    let result = runtime.block_on(run(cli));
    // Spans still buffered go out before the process ends.
    logging::traces::shutdown(std::time::Duration::from_secs(5));
    match result {
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
