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
//!
//! `churn` times the tiled backfill against the naive per-date loop; `skew`
//! measures task balance of the backfill on Zipf-skewed and uniform data with
//! skew handling on and off (see `skew.rs`); `flight-sql` measures ADBC latency
//! and throughput through the Flight SQL endpoint (see `flight.rs`);
//! `failover` measures leader failover on a real etcd (see `failover.rs`).

mod drain;
mod failover;
mod flight;
mod skew;
mod storage;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Spot drain: a backfill undisturbed, with an executor drained
    /// (SIGTERM) mid-chunk, and with it SIGKILLed: wall time and recomputed tasks.
    Drain {
        #[arg(long, default_value_t = 20_000)]
        users: u64,
        #[arg(long, default_value_t = 120)]
        days: u32,
        /// Runs of each kind; the fastest is reported.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        #[arg(long, default_value_t = 25)]
        deadline_seconds: u64,
    },
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
        /// Run the cluster with mutual TLS (certificates minted for the run;
        /// executors' task ports behind the TLS relay).
        #[arg(long)]
        cluster_tls: bool,
    },
    /// Churn backfill: tiled backfill vs the naive per-date loop, and 3x windows vs 1x.
    Churn {
        #[arg(long, default_value_t = 2000)]
        users: u64,
        /// Feature dates to backfill (the data covers these plus 100 days before).
        #[arg(long, default_value_t = 365)]
        dates: u32,
        /// Feature dates per chunk job (0: the CLI's automatic choice).
        #[arg(long, default_value_t = 0)]
        chunk_days: u32,
        /// Run the naive loop on every Nth date only and extrapolate (1 = all dates).
        #[arg(long, default_value_t = 1)]
        naive_every: u32,
        /// Runs of each tiled backfill; the median is reported (this machine's timings vary
        /// by up to ±30% from minute to minute).
        #[arg(long, default_value_t = 3)]
        iterations: usize,
        #[arg(long, default_value_t = 2)]
        executors: usize,
        #[arg(long, default_value_t = 0)]
        vcores: usize,
    },
    /// Flight SQL: ADBC latency (SELECT 1, feature point lookup) and result throughput.
    FlightSql {
        /// Statements per latency measurement.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Size of the bulk result, in GB of Arrow data.
        #[arg(long, default_value_t = 1.0)]
        result_gb: f64,
        /// Users in the churn data behind the feature table.
        #[arg(long, default_value_t = 2000)]
        users: u64,
        #[arg(long, default_value_t = 2)]
        executors: usize,
        #[arg(long, default_value_t = 0)]
        vcores: usize,
    },
    /// Object storage: the churn backfill to a Delta table on SeaweedFS (S3) against the
    /// same backfill on local disk, and the Delta commit latency per chunk.
    Storage {
        #[arg(long, default_value_t = 2000)]
        users: u64,
        #[arg(long, default_value_t = 365)]
        dates: u32,
        /// Feature dates per chunk job (0: automatic).
        #[arg(long, default_value_t = 0)]
        chunk_days: u32,
        /// Runs of each; the median is reported.
        #[arg(long, default_value_t = 3)]
        iterations: usize,
        #[arg(long, default_value_t = 2)]
        executors: usize,
        #[arg(long, default_value_t = 0)]
        vcores: usize,
    },
    /// Failover: SIGKILL the leader scheduler of an etcd cluster and time the takeover.
    Failover {
        /// Kill/takeover rounds (a fresh cluster each).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Lease TTL of schedulers and executors, seconds.
        #[arg(long, default_value_t = 10)]
        ttl_seconds: u64,
    },
    /// Skew: per-task balance of the churn backfill's heaviest stage on Zipf-skewed and
    /// uniform data, skew handling (sluice.skew.enabled) on and off.
    Skew {
        #[arg(long, default_value_t = 2000)]
        users: u64,
        /// Feature dates to backfill (the data covers these plus 100 days before).
        #[arg(long, default_value_t = 92)]
        dates: u32,
        /// Zipf exponent of the skewed data set (1.2: the hottest user holds ~20% of rows).
        #[arg(long, default_value_t = 1.2)]
        zipf: f64,
        /// Shuffle partitions (datafusion.execution.target_partitions).
        #[arg(long, default_value_t = 32)]
        partitions: usize,
        /// Runs of each configuration; the one with the median wall time is reported.
        #[arg(long, default_value_t = 3)]
        iterations: usize,
        #[arg(long, default_value_t = 2)]
        executors: usize,
        /// Slots per executor; 1 (one per core with 2 executors on 2 cores) so a task's time is
        /// its work, not its wait for a core.
        #[arg(long, default_value_t = 1)]
        vcores: usize,
        /// Which runs: `backfill` (a), `join` (b) or `both`.
        #[arg(long, default_value = "both", value_parser = ["backfill", "join", "both"])]
        only: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Drain { users, days, runs, deadline_seconds } => {
            drain::run(&drain::DrainBench { users, days, runs: runs.max(1), deadline_seconds })
        }
        Bench::Storage { users, dates, chunk_days, iterations, executors, vcores } => {
            storage::run_bench(&storage::StorageBench {
                users,
                dates,
                chunk_days,
                iterations: iterations.max(1),
                executors,
                vcores,
            })
        }
        Bench::Failover { runs, ttl_seconds } => {
            failover::run(&failover::FailoverBench { runs: runs.max(1), ttl_seconds })
        }
        Bench::FlightSql { runs, result_gb, users, executors, vcores } => {
            flight::run(&flight::FlightBench {
                runs: runs.max(1),
                result_gb,
                users,
                executors,
                vcores,
            })
        }
        Bench::Skew { users, dates, zipf, partitions, iterations, executors, vcores, only } => {
            skew::run(&skew::SkewBench {
                users,
                dates,
                zipf,
                partitions,
                iterations: iterations.max(1),
                executors,
                vcores,
                backfill: only != "join",
                join: only != "backfill",
            })
        }
        Bench::Churn { users, dates, chunk_days, naive_every, iterations, executors, vcores } => {
            churn(
                users,
                dates,
                chunk_days,
                naive_every.max(1),
                iterations.max(1),
                executors,
                vcores,
            )
        }
        Bench::Tpch {
            scale_factor,
            data,
            iterations,
            executors,
            vcores,
            settings,
            queries,
            cluster_tls,
        } => tpch(
            scale_factor,
            data,
            iterations.max(1),
            executors,
            vcores,
            &settings,
            &queries,
            cluster_tls,
        ),
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
    cluster_tls: bool,
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
    let cluster = if cluster_tls {
        TestCluster::start_tls(executors, vcores)
    } else {
        TestCluster::start(executors, vcores)
    }
    .context("start the process cluster")?;
    let tls = if cluster_tls { Some(cluster.member_tls("client")?) } else { None };
    let rt = sluice_proto::runtime()?;
    rt.block_on(async {
        let target = Target::Scheduler(cluster.scheduler_addr().parse()?);
        let conn =
            sluice_client::connect::connect_with(&target, None, tls.as_ref(), &settings, &tables)
                .await?;
        let local = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        for t in &tables {
            t.register(&local).await?;
        }
        let plane = if cluster_tls { "mutual TLS, push scheduling" } else { "plain, push scheduling" };
        println!("TPC-H SF {sf}: local DataFusion ({cores} cores) vs process cluster (1 scheduler + {executors} executors x {vcores} slots; {plane}), best of {iterations}");
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

fn churn(
    users: u64,
    dates: u32,
    chunk_days: u32,
    naive_every: u32,
    iterations: usize,
    executors: usize,
    vcores: usize,
) -> anyhow::Result<()> {
    use chrono::NaiveDate;
    use sluice_client::backfill::{BackfillOptions, run};
    use sluice_sql::job::spec::{JobSpec, Window};

    let start = NaiveDate::from_ymd_opt(2023, 1, 1).context("date")?;
    let lookback = 100;
    let first = start + chrono::Duration::days(lookback);
    let last = first + chrono::Duration::days(i64::from(dates) - 1);
    let root =
        sluice_tests::workspace_root().join(format!("benchmarks/data/churn-u{users}-d{dates}"));
    let data = root.join("raw");
    if !data.join("events").is_dir() {
        eprintln!(
            "generating churn data ({users} users, {} days) into {} ...",
            dates + lookback as u32,
            data.display()
        );
        let cfg = sluice_client::datagen::churn::ChurnConfig {
            users,
            start,
            days: dates + lookback as u32,
            seed: 1,
            ..Default::default()
        };
        sluice_client::datagen::churn::generate(&cfg, &data)?;
    }
    let work = tempfile::Builder::new().prefix("sluice-churn-bench-").tempdir()?;
    let spec_path = sluice_tests::workspace_root().join("sql/jobs/churn.yaml");
    let spec = JobSpec::from_file(&spec_path)?;
    let mut tripled = spec.clone();
    for f in &mut tripled.features {
        if let Window::Days(w) = f.window {
            f.window = Window::Days(w * 3);
        }
    }
    let tripled_path = work.path().join("churn-3x.yaml");
    std::fs::write(&tripled_path, serde_yaml::to_string(&tripled)?)?;

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let vcores = if vcores == 0 { cores } else { vcores };
    let cluster = TestCluster::start(executors, vcores).context("start the process cluster")?;
    let target = Target::Scheduler(cluster.scheduler_addr().parse()?);
    let rt = sluice_proto::runtime()?;
    let opts = |spec: &std::path::Path, out: &str| BackfillOptions {
        spec: spec.to_path_buf(),
        from: first,
        to: last,
        target: target.clone(),
        data_dir: Some(data.clone()),
        output: Some(work.path().join(out)),
        chunk_days,
        parallel: 2,
        replace: false,
        settings: vec![],
        progress: false,
        token: None,
    };
    let chunk = match chunk_days {
        0 => format!(
            "chunk {} days (auto)",
            sluice_client::backfill::auto_chunk_days(dates as usize, 2)
        ),
        n => format!("chunk {n} days"),
    };
    println!(
        "churn backfill: {users} users, {dates} feature dates ({first}..{last}), process cluster 1 scheduler + {executors} executors x {vcores} slots, {chunk}"
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // One untimed run first: page cache, executor memory pools and connections warm up.
    anyhow::ensure!(rt.block_on(run(&opts(&spec_path, "warm-up")))?.ok, "quality failed");
    let mut runs = Vec::new();
    let mut rows = 0;
    let mut chunks = 0;
    for i in 0..iterations {
        let report = rt.block_on(run(&opts(&spec_path, &format!("tiled-{i}"))))?;
        anyhow::ensure!(report.ok, "quality failed");
        runs.push(report.seconds);
        rows = report.rows;
        chunks = report.chunks;
    }
    let tiled = median(runs.clone());
    println!(
        "tiled backfill (30/7/90-day windows): {tiled:.2} s (median of {runs:.2?}), {rows} rows, {chunks} chunks"
    );
    let mut runs3 = Vec::new();
    for i in 0..iterations {
        runs3.push(rt.block_on(run(&opts(&tripled_path, &format!("tiled-3x-{i}"))))?.seconds);
    }
    let tiled3 = median(runs3.clone());
    println!(
        "tiled backfill, every window x3 (90/21/270 days): {tiled3:.2} s (median of {runs3:.2?})"
    );

    // The naive loop: one query per feature date over the raw tables, written out the same way.
    let naive_secs = rt.block_on(async {
        let mut tables = Vec::new();
        for t in sluice_client::datagen::churn::TABLES {
            tables.push(sluice_sql::tables::TableSource::new(
                t,
                &data.join(t).to_string_lossy(),
                Some(sluice_sql::tables::TableFormat::Parquet),
            )?);
        }
        let conn = connect(&target, &[], &tables).await?;
        let out = work.path().join("naive");
        let mut per_date = Vec::new();
        for (i, day) in first.iter_days().take_while(|d| *d <= last).enumerate() {
            if i as u32 % naive_every != 0 {
                continue;
            }
            let sql = sluice_sql::job::churn_reference_sql(day);
            let dir = out.join(format!("feature_date={day}"));
            let t = Instant::now();
            run_sql(&conn.ctx, &format!("COPY ({sql}) TO '{}/' STORED AS PARQUET", dir.display()))
                .await?;
            per_date.push(t.elapsed().as_secs_f64());
        }
        let mean = per_date.iter().sum::<f64>() / per_date.len().max(1) as f64;
        println!(
            "naive per-date query: mean {mean:.3} s, median {:.3} s over {} dates",
            median(per_date.clone()),
            per_date.len()
        );
        anyhow::Ok(mean * f64::from(dates))
    })?;
    let note = if naive_every > 1 {
        format!(" (every {naive_every}th date run; mean per date x {dates} dates)")
    } else {
        String::new()
    };
    println!("naive per-date loop: {naive_secs:.2} s{note}");
    println!("RATIO naive/tiled = {:.1}x (target >= 20)", naive_secs / tiled);
    println!("RATIO windows x3 / x1 = {:.2} (target <= 1.2)", tiled3 / tiled);
    Ok(())
}
