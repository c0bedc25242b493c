//! Leader failover time on a real etcd cluster: 2 schedulers (`--state
//! etcd`), 2 executors following the leader, and a client submitting queries
//! in a loop through etcd. Each run SIGKILLs the leader and measures, from
//! the kill:
//!
//! * **standby ready**: the standby's `/readyz` answers 200 (elected, its
//!   executors re-registered);
//! * **first new task**: the new leader's first job has started (a task of
//!   it ran; read from its REST API);
//! * **first answer**: the client's first query that succeeds after the kill;
//! * **backfill resumed**: a backfill submitted with `--detach` before the
//!   kill (no client follows it) has a chunk job running on the new leader;
//! * **backfill done**: that backfill has committed its last date.
//!
//! Prints min / median / max over the runs.

use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_client::{Target, connect, run_sql};
use sluice_proto::etcd::EtcdTarget;
use sluice_sql::tables::{TableFormat, TableSource};
use sluice_tests::{Etcd, ha_executor, ha_scheduler, readyz, wait_ready};

pub struct FailoverBench {
    pub runs: usize,
    pub ttl_seconds: u64,
}

fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < end, "not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Jobs on `scheduler` that have started a task.
fn started_jobs(rt: &tokio::runtime::Runtime, scheduler: &str) -> usize {
    rt.block_on(async {
        let Ok((200, body)) =
            sluice_client::http::get(scheduler, "/api/jobs", Duration::from_secs(1)).await
        else {
            return 0;
        };
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        jobs.iter()
            .filter(|j| {
                j["status"].as_str() != Some("Queued")
                    && (j["completed_stages"].as_u64().unwrap_or(0) > 0
                        || j["status"].as_str() == Some("Running")
                        || j["status"].as_str() == Some("Completed"))
            })
            .count()
    })
}

struct Run {
    ready: Duration,
    first_task: Duration,
    first_answer: Duration,
    backfill_resumed: Duration,
    backfill_done: Duration,
}

/// Whether `scheduler` has started a job of backfill `id` (its job names carry it).
fn backfill_job_started(rt: &tokio::runtime::Runtime, scheduler: &str, id: &str) -> bool {
    rt.block_on(async {
        let Ok((200, body)) =
            sluice_client::http::get(scheduler, "/api/jobs", Duration::from_secs(1)).await
        else {
            return false;
        };
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        jobs.iter().any(|j| {
            j["job_name"].as_str().is_some_and(|n| n.contains(id))
                && j["status"].as_str() != Some("Queued")
        })
    })
}

fn one(bench: &FailoverBench, round: usize, data: &std::path::Path) -> anyhow::Result<Run> {
    let tmp = tempfile::Builder::new().prefix("sluice-failover-").tempdir()?;
    let etcd = Etcd::start(tmp.path())?;
    let cluster = format!("failover-{round}");
    let ttl = bench.ttl_seconds;
    let ready2 = ["--min-ready-executors", "2"];
    let mut s1 = ha_scheduler("scheduler-1", &etcd, &cluster, ttl, tmp.path(), &ready2)?;
    let target = EtcdTarget::parse(&etcd.endpoint, &cluster)?;
    let rt = sluice_proto::runtime()?;
    poll(Duration::from_secs(20), || {
        rt.block_on(async {
            let mut c = target.connect(Duration::from_secs(5)).await.ok()?;
            target.leader(&mut c).await.ok().flatten()
        })
        .filter(|(l, _)| l.endpoint == s1.addr)
    })
    .context("scheduler-1 elected")?;
    let s2 = ha_scheduler("scheduler-2", &etcd, &cluster, ttl, tmp.path(), &ready2)?;
    let _e0 = ha_executor("executor-0", &etcd, &cluster, ttl, 1, tmp.path())?;
    let _e1 = ha_executor("executor-1", &etcd, &cluster, ttl, 1, tmp.path())?;
    wait_ready(&s1.addr, Duration::from_secs(60))?;

    let tables = vec![TableSource::new(
        "events",
        &data.join("events").to_string_lossy(),
        Some(TableFormat::Parquet),
    )?];
    let sql = "SELECT event_type, count(*) FROM events GROUP BY event_type";
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let client = {
        let (stop, answers, target) = (stop.clone(), answers.clone(), target.clone());
        rt.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // A fresh session per query finds the current leader.
                let Ok(conn) = connect(&Target::Cluster(target.clone()), &[], &tables).await else {
                    continue;
                };
                if run_sql(&conn.ctx, sql).await.is_ok()
                    && let Ok(mut a) = answers.lock()
                {
                    a.push(Instant::now());
                }
            }
        })
    };
    poll(Duration::from_secs(60), || answers.lock().ok().filter(|a| a.len() >= 2).map(|_| ()))
        .context("queries answered before the kill")?;
    // A backfill the cluster owns: submitted, then nobody follows it.
    let out = tmp.path().join("features");
    let opts = sluice_client::backfill::BackfillOptions {
        spec: sluice_tests::workspace_root().join("sql/jobs/churn.yaml"),
        from: chrono::NaiveDate::from_ymd_opt(2024, 1, 5).context("date")?,
        to: chrono::NaiveDate::from_ymd_opt(2024, 1, 30).context("date")?,
        target: Target::Cluster(target.clone()),
        data_dir: Some(data.to_path_buf()),
        output: Some(out.clone()),
        chunk_days: 2,
        parallel: 1,
        replace: false,
        settings: vec![],
        progress: false,
        token: None,
    };
    let (record, _) = rt.block_on(sluice_client::backfill::submit(&opts))?;
    let id = record.id.clone();
    poll(Duration::from_secs(120), || (committed(&rt, &out) >= 2).then_some(()))
        .context("backfill dates committed before the kill")?;
    let killed = Instant::now();
    s1.kill();
    let ready = poll(Duration::from_secs(120), || {
        readyz(&s2.addr).filter(|(code, _)| *code == 200).map(|_| killed.elapsed())
    })
    .context("standby ready")?;
    let first_task = poll(Duration::from_secs(120), || {
        (started_jobs(&rt, &s2.addr) > 0).then(|| killed.elapsed())
    })
    .context("first job on the new leader")?;
    let first_answer = poll(Duration::from_secs(120), || {
        answers.lock().ok()?.iter().find(|t| **t > killed).map(|t| t.duration_since(killed))
    })
    .context("first answer after the kill")?;
    let backfill_resumed = poll(Duration::from_secs(120), || {
        backfill_job_started(&rt, &s2.addr, &id).then(|| killed.elapsed())
    })
    .context("a chunk job of the backfill on the new leader")?;
    let backfill_done =
        poll(Duration::from_secs(300), || (committed(&rt, &out) == 26).then(|| killed.elapsed()))
            .context("the backfill completed by the new leader")?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), client).await });
    Ok(Run { ready, first_task, first_answer, backfill_resumed, backfill_done })
}

fn stats(label: &str, mut xs: Vec<Duration>) {
    xs.sort();
    let secs = |d: &Duration| d.as_secs_f64();
    println!(
        "{label:<34} min {:>6.2} s   median {:>6.2} s   max {:>6.2} s",
        secs(&xs[0]),
        secs(&xs[xs.len() / 2]),
        secs(&xs[xs.len() - 1])
    );
}

pub fn run(bench: &FailoverBench) -> anyhow::Result<()> {
    let data_dir = tempfile::Builder::new().prefix("sluice-failover-data-").tempdir()?;
    let cfg = sluice_client::datagen::churn::ChurnConfig {
        users: 2000,
        days: 30,
        ..sluice_client::datagen::churn::ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, data_dir.path())?;
    let mut runs = Vec::new();
    for round in 0..bench.runs {
        let r = one(bench, round, data_dir.path()).with_context(|| format!("run {round}"))?;
        println!(
            "run {round}: standby ready {:.2} s, first new task {:.2} s, first answer {:.2} s, backfill resumed {:.2} s, backfill done {:.2} s",
            r.ready.as_secs_f64(),
            r.first_task.as_secs_f64(),
            r.first_answer.as_secs_f64(),
            r.backfill_resumed.as_secs_f64(),
            r.backfill_done.as_secs_f64()
        );
        runs.push(r);
    }
    println!("\nleader SIGKILL -> (lease TTL {} s, {} runs)", bench.ttl_seconds, runs.len());
    stats("standby ready (/readyz 200)", runs.iter().map(|r| r.ready).collect());
    stats("first new task on the new leader", runs.iter().map(|r| r.first_task).collect());
    stats("first query answered", runs.iter().map(|r| r.first_answer).collect());
    stats("backfill resumed (a chunk job runs)", runs.iter().map(|r| r.backfill_resumed).collect());
    stats("backfill done (26 dates)", runs.iter().map(|r| r.backfill_done).collect());
    Ok(())
}

/// Dates in the Delta table at `out` (0 while it cannot be read).
fn committed(rt: &tokio::runtime::Runtime, out: &std::path::Path) -> usize {
    rt.block_on(sluice_client::backfill::committed_dates(&out.to_string_lossy()))
        .map(|d| d.len())
        .unwrap_or(0)
}
