//! `flight-sql`: what a Python ADBC client sees of the Flight SQL endpoint
//! on a real process cluster (1 scheduler with `--flight-sql-bind` and a
//! token file, N executors):
//!
//! * latency of `SELECT 1` and of a point lookup on a backfilled feature
//!   table (p50/p99 over `--runs` statements on one connection);
//! * throughput (MB/s of Arrow data) of a `--result-gb` result
//!   (`SELECT *` over a generated Parquet table), fetched by ADBC.
//!
//! ```text
//! cargo run --release -p sluice-benchmarks -- flight-sql
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use sluice_client::Target;
use sluice_client::backfill::{BackfillOptions, run as backfill};
use sluice_client::datagen::churn::{ChurnConfig, generate};
use sluice_sql::catalog::{CatalogEntry, FileCatalog};
use sluice_tests::{TestCluster, workspace_root};

const TOKEN: &str = "bench-token-5c1d9e7a3b2f4a60";

pub struct FlightBench {
    pub runs: usize,
    pub result_gb: f64,
    pub users: u64,
    pub executors: usize,
    pub vcores: usize,
}

fn python() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("SLUICE_PYTHON") {
        return Ok(p);
    }
    let out = Command::new(workspace_root().join("scripts/python-venv.sh"))
        .output()
        .context("run scripts/python-venv.sh")?;
    if !out.status.success() {
        bail!("scripts/python-venv.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn adbc(python: &str, flight: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(python)
        .arg(workspace_root().join("tests/python/adbc_client.py"))
        .arg(args[0])
        .args(["--uri", &format!("grpc://{flight}"), "--token", TOKEN])
        .args(&args[1..])
        .output()
        .context("run the ADBC client")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("ADBC {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("ADBC output: {stdout}"))
}

/// Writes `rows` rows of 8 numeric columns (64 bytes a row in Arrow) as Parquet.
async fn wide_table(dir: &Path, rows: u64) -> anyhow::Result<()> {
    let ctx = datafusion::prelude::SessionContext::new();
    let sql = format!(
        "COPY (SELECT value AS id, value * 2 AS a, value * 3 AS b, value % 1000 AS c, \
         CAST(value AS DOUBLE) / 7 AS d, CAST(value AS DOUBLE) * 1.5 AS e, value + 11 AS f, \
         value % 12345 AS g FROM generate_series(1, {rows})) TO '{}/' STORED AS PARQUET",
        dir.display()
    );
    ctx.sql(&sql).await?.collect().await?;
    Ok(())
}

pub fn run(b: &FlightBench) -> anyhow::Result<()> {
    let python = python()?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let catalog = FileCatalog::new(tmp.path().join("catalog.json"));
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).context("date")?;
    let cfg = ChurnConfig { users: b.users, start, days: 120, seed: 7, ..ChurnConfig::default() };
    generate(&cfg, &data.join("churn"))?;
    let rows = (b.result_gb * 1e9 / 64.0) as u64;
    let rt = sluice_proto::runtime()?;
    eprintln!("writing the {rows}-row result table ...");
    rt.block_on(wide_table(&data.join("wide"), rows))?;

    std::fs::write(tmp.path().join("tokens"), format!("{TOKEN} admin\n"))?;
    // The scheduler refuses a token file other users may read.
    std::fs::set_permissions(
        tmp.path().join("tokens"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let p = |x: &Path| x.display().to_string();
    let args = [
        "--flight-sql-bind".to_string(),
        "127.0.0.1:0".into(),
        "--auth-token-file".into(),
        p(&tmp.path().join("tokens")),
        "--catalog".into(),
        p(catalog.path()),
        "--data-root".into(),
        p(&data),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = TestCluster::start_full(b.executors, b.vcores, &args, &[])?;
    let flight = cluster.scheduler.listening("flight-sql", std::time::Duration::from_secs(30))?;

    let features = data.join("features");
    let from = NaiveDate::from_ymd_opt(2024, 3, 1).context("date")?;
    let to = NaiveDate::from_ymd_opt(2024, 4, 29).context("date")?;
    let report = rt.block_on(backfill(&BackfillOptions {
        spec: workspace_root().join("sql/jobs/churn.yaml"),
        from,
        to,
        target: Target::Scheduler(cluster.scheduler_addr().parse()?),
        data_dir: Some(data.join("churn")),
        output: Some(features.clone()),
        chunk_days: 92,
        parallel: 2,
        replace: false,
        settings: Vec::new(),
        progress: false,
        token: Some(TOKEN.to_string()),
    }))?;
    let entry = |name: &str, path: &PathBuf, partitioned: bool| CatalogEntry {
        name: name.into(),
        path: p(path),
        format: "parquet".into(),
        partitioned_by: if partitioned { vec!["feature_date".into()] } else { Vec::new() },
    };
    catalog.register(entry("churn_features", &features, true))?;
    catalog.register(entry("wide", &data.join("wide"), false))?;
    eprintln!("{} feature rows over {} dates; measuring ...", report.rows, report.dates_committed);

    let runs = b.runs.to_string();
    let one = adbc(&python, &flight, &["latency", "--sql", "SELECT 1", "--runs", &runs])?;
    let lookup_sql = format!(
        "SELECT * FROM churn_features WHERE user_id = {} AND feature_date = '2024-04-15'",
        b.users / 2
    );
    let lookup = adbc(&python, &flight, &["latency", "--sql", &lookup_sql, "--runs", &runs])?;
    let started = Instant::now();
    let bulk = adbc(&python, &flight, &["throughput", "--sql", "SELECT * FROM wide"])?;
    let bulk_wall = started.elapsed().as_secs_f64();

    let ms = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!("flight-sql over ADBC (Python), token auth, plaintext, {} executor(s):", b.executors);
    println!(
        "  SELECT 1          p50 {:>7.1} ms  p99 {:>7.1} ms  ({} runs)",
        ms(&one, "p50_ms"),
        ms(&one, "p99_ms"),
        b.runs
    );
    println!(
        "  point lookup      p50 {:>7.1} ms  p99 {:>7.1} ms  ({} runs; {} rows in churn_features)",
        ms(&lookup, "p50_ms"),
        ms(&lookup, "p99_ms"),
        b.runs,
        report.rows
    );
    println!(
        "  bulk result       {:.0} MB of Arrow ({} rows) in {:.1} s: {:.0} MB/s  (process wall {:.1} s)",
        ms(&bulk, "bytes") / 1e6,
        bulk["rows"],
        ms(&bulk, "seconds"),
        ms(&bulk, "mb_per_s"),
        bulk_wall
    );
    println!("{}", serde_json::json!({"select1": one, "lookup": lookup, "throughput": bulk}));
    drop(cluster);
    Ok(())
}
