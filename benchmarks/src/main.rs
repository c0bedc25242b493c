//! `sluice-benchmarks`: benchmark runners.
//!
//! `tpch` runs the 22 TPC-H queries on (a) single-node DataFusion in this
//! process and (b) a real process cluster (1 `sluice-scheduler`, N
//! `sluice-executor`s) on this machine, checks that both give the same
//! answers, and prints per-query times and the total ratio cluster/local.
//!
//! ```text
//! cargo run --release -p sluice-benchmarks -- tpch --scale-factor 1
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use datafusion::prelude::SessionContext;
use sluice_client::{Target, connect, run_sql};
use sluice_tests::TestCluster;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-benchmarks",
    after_help = "Example:\n  cargo run --release -p sluice-benchmarks -- tpch --scale-factor 1"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// TPC-H: local DataFusion vs a scheduler + executors process cluster.
    Tpch {
        #[arg(long, default_value_t = 1.0)]
        scale_factor: f64,
        /// Data folder (generated when missing; default benchmarks/data/tpch-sf<SF>).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Runs per query per engine; the fastest is reported.
        #[arg(long, default_value_t = 3)]
        iterations: usize,
        #[arg(long, default_value_t = 2)]
        executors: usize,
        /// Slots per executor (0 = all cores).
        #[arg(long, default_value_t = 0)]
        vcores: usize,
        /// Session settings for the cluster run (KEY=VALUE).
        #[arg(long = "set")]
        settings: Vec<String>,
        /// Only these queries (e.g. --query 1 --query 6).
        #[arg(long = "query")]
        queries: Vec<u32>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Tpch { scale_factor, data, iterations, executors, vcores, settings, queries } => {
            tpch(scale_factor, data, iterations.max(1), executors, vcores, &settings, &queries)
        }
    }
}

fn tpch(
    sf: f64,
    data: Option<PathBuf>,
    iterations: usize,
    executors: usize,
    vcores: usize,
    settings: &[String],
    only: &[u32],
) -> anyhow::Result<()> {
    let dir = data.unwrap_or_else(|| {
        sluice_tests::workspace_root().join(format!("benchmarks/data/tpch-sf{sf}"))
    });
    if !dir.join("lineitem").is_dir() {
        let t = Instant::now();
        eprintln!("generating TPC-H SF {sf} into {} ...", dir.display());
        sluice_client::datagen::tpch::generate(sf, &dir)?;
        eprintln!("generated in {:.1} s", t.elapsed().as_secs_f64());
    }
    let tables = sluice_client::datagen::tpch::table_sources(&dir)?;
    let settings = settings
        .iter()
        .map(|s| sluice_sql::session::parse_setting(s))
        .collect::<Result<Vec<_>, _>>()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let vcores = if vcores == 0 { cores } else { vcores };
    let cluster = TestCluster::start(executors, vcores).context("start the process cluster")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let target = Target::Scheduler(cluster.scheduler_addr().parse()?);
        let conn = connect(&target, &settings, &tables).await?;
        let local = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        for t in &tables {
            t.register(&local).await?;
        }
        println!("TPC-H SF {sf}: local DataFusion ({cores} cores) vs process cluster (1 scheduler + {executors} executors x {vcores} slots), best of {iterations}");
        println!("settings: {settings:?}");
        println!("{:<6} {:>10} {:>10} {:>7} {:>6}", "query", "local s", "cluster s", "ratio", "rows");
        let (mut total_local, mut total_cluster) = (0.0, 0.0);
        let mut mismatches = Vec::new();
        for (n, sql) in sluice_sql::tpch::QUERIES {
            if !only.is_empty() && !only.contains(&n) {
                continue;
            }
            let mut best_local = f64::MAX;
            let mut best_cluster = f64::MAX;
            let mut expected = Vec::new();
            let mut actual = Vec::new();
            for _ in 0..iterations {
                let t = Instant::now();
                expected = run_sql(&local, sql).await?;
                best_local = best_local.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                actual = run_sql(&conn.ctx, sql).await?;
                best_cluster = best_cluster.min(t.elapsed().as_secs_f64());
            }
            if let Err(e) = sluice_client::verify::compare(&expected, &actual, sluice_sql::tpch::is_ordered(sql)) {
                mismatches.push(format!("q{n}: {e}"));
            }
            let rows: usize = actual.iter().map(|b| b.num_rows()).sum();
            println!("q{n:<5} {best_local:>10.3} {best_cluster:>10.3} {:>7.2} {rows:>6}", best_cluster / best_local);
            total_local += best_local;
            total_cluster += best_cluster;
        }
        println!("{:<6} {total_local:>10.3} {total_cluster:>10.3} {:>7.2}", "total", total_cluster / total_local);
        println!("answers: {}", if mismatches.is_empty() { "all equal".to_string() } else { mismatches.join("; ") });
        println!("RATIO cluster/local = {:.2}", total_cluster / total_local);
        anyhow::ensure!(mismatches.is_empty(), "answers differ");
        Ok(())
    })
}
