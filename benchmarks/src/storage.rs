//! Object storage: the churn backfill into a Delta table on SeaweedFS (input
//! read from the same server) against the same backfill on local disk, on
//! one process cluster; and the Delta commit latency per chunk, from the
//! scheduler's `chunk committed … ms=N` lines.

use std::path::Path;

use anyhow::Context;
use chrono::NaiveDate;
use sluice_client::Target;
use sluice_client::backfill::{BackfillOptions, run};
use sluice_tests::TestCluster;
use sluice_tests::s3::{Kind, S3Server};

pub struct StorageBench {
    pub users: u64,
    pub dates: u32,
    pub chunk_days: u32,
    pub iterations: usize,
    pub executors: usize,
    pub vcores: usize,
}

/// Commit latencies (ms) in `log` after byte `from`.
fn commit_ms(log: &str, from: usize) -> Vec<f64> {
    strip_ansi(log.get(from..).unwrap_or_default())
        .lines()
        .filter(|l| l.contains("chunk committed"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("ms="))
                .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse::<f64>().ok())
        })
        .collect()
}

/// `text` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p90(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

pub fn run_bench(b: &StorageBench) -> anyhow::Result<()> {
    let start = NaiveDate::from_ymd_opt(2023, 1, 1).context("date")?;
    let lookback = 100;
    let first = start + chrono::Duration::days(lookback);
    let last = first + chrono::Duration::days(i64::from(b.dates) - 1);
    let root = sluice_tests::workspace_root()
        .join(format!("benchmarks/data/churn-u{}-d{}", b.users, b.dates));
    let data = root.join("raw");
    if !data.join("events").is_dir() {
        let cfg = sluice_client::datagen::churn::ChurnConfig {
            users: b.users,
            start,
            days: b.dates + lookback as u32,
            seed: 1,
            ..Default::default()
        };
        sluice_client::datagen::churn::generate(&cfg, &data)?;
    }
    let work = tempfile::Builder::new().prefix("sluice-storage-bench-").tempdir()?;
    let server = S3Server::start(Kind::Seaweed, "127.0.0.1", &work.path().join("seaweed"))?;
    server.upload(&data, "raw")?;
    let s3 = sluice_sql::storage::s3_settings_from(&server.env());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let vcores = if b.vcores == 0 { cores } else { b.vcores };
    let cluster = TestCluster::start(b.executors, vcores).context("start the process cluster")?;
    let target = Target::Scheduler(cluster.scheduler_addr().parse()?);
    let rt = sluice_proto::runtime()?;
    let spec = sluice_tests::workspace_root().join("sql/jobs/churn.yaml");
    let opts = |input: &Path, out: String, settings: Vec<(String, String)>| BackfillOptions {
        spec: spec.clone(),
        from: first,
        to: last,
        target: target.clone(),
        data_dir: Some(input.to_path_buf()),
        output: Some(out.into()),
        chunk_days: b.chunk_days,
        parallel: 2,
        replace: false,
        settings,
        progress: false,
        token: None,
    };
    println!(
        "storage: churn backfill, {} users, {} feature dates, process cluster 1 scheduler + {} executors x {vcores} slots, SeaweedFS {} (weed mini) on this machine",
        b.users, b.dates, b.executors, server.endpoint
    );
    let s3_input = Path::new("s3://lake/raw");
    // Warm-up: one of each.
    anyhow::ensure!(
        rt.block_on(run(&opts(&data, work.path().join("warm").display().to_string(), vec![])))?.ok
    );
    anyhow::ensure!(rt.block_on(run(&opts(s3_input, "s3://lake/warm".into(), s3.clone())))?.ok);
    let (mut local, mut remote, mut local_ms, mut remote_ms) = (vec![], vec![], vec![], vec![]);
    for i in 0..b.iterations {
        let mark = cluster.scheduler.log_text().len();
        let r = rt.block_on(run(&opts(
            &data,
            work.path().join(format!("local-{i}")).display().to_string(),
            vec![],
        )))?;
        anyhow::ensure!(r.ok, "quality failed");
        local.push(r.seconds);
        local_ms.extend(commit_ms(&cluster.scheduler.log_text(), mark));
        let mark = cluster.scheduler.log_text().len();
        let r = rt.block_on(run(&opts(s3_input, format!("s3://lake/out-{i}"), s3.clone())))?;
        anyhow::ensure!(r.ok, "quality failed");
        remote.push(r.seconds);
        remote_ms.extend(commit_ms(&cluster.scheduler.log_text(), mark));
        println!(
            "  run {i}: local disk {:.2} s, SeaweedFS {:.2} s, {} chunks",
            local[i], remote[i], r.chunks
        );
    }
    let (l, s) = (median(local.clone()), median(remote.clone()));
    println!("local disk (input and Delta output): {l:.2} s (median of {local:.2?})");
    println!("SeaweedFS (input and Delta output):  {s:.2} s (median of {remote:.2?})");
    println!("ratio SeaweedFS / local: {:.2}x", s / l);
    println!(
        "Delta commit per chunk: local median {:.0} ms (p90 {:.0}), SeaweedFS median {:.0} ms (p90 {:.0}), {} + {} commits",
        median(local_ms.clone()),
        p90(local_ms.clone()),
        median(remote_ms.clone()),
        p90(remote_ms.clone()),
        local_ms.len(),
        remote_ms.len()
    );
    Ok(())
}
