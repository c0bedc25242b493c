//! `sluice gen`: data sets.

use clap::Subcommand;
use std::path::PathBuf;

use sluice_client::Error;

#[derive(Debug, Subcommand)]
pub enum GenCommand {
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

pub async fn run(what: GenCommand) -> Result<(), Error> {
    match what {
        GenCommand::Tpch { scale_factor, out } => {
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
    }
}
