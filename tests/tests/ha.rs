//! High availability with a real etcd and real processes: leader election,
//! failover mid-backfill, executor loss (SIGKILL, SIGSTOP past the lease
//! TTL) with the adaptive planner on and off, an etcd outage shorter than
//! the TTL, and `sluice cluster status`.
//!
//! Every test starts its own etcd on free loopback ports (`sluice_tests::Etcd`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use sluice_client::connect::run_sql_salted;
use sluice_client::datagen::churn::{ChurnConfig, TABLES};
use sluice_client::{Target, connect, run_sql};
use sluice_proto::etcd::EtcdTarget;
use sluice_sql::tables::{TableFormat, TableSource};
use sluice_tests::{
    Etcd, Proc, bin, ha_executor, ha_scheduler, readyz, wait_ready, workspace_root,
};

fn rt() -> tokio::runtime::Runtime {
    sluice_proto::runtime().expect("runtime")
}

fn generate(dir: &Path, users: u64, days: u32, zipf: f64) {
    let cfg = ChurnConfig {
        users,
        start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        days,
        seed: 11,
        zipf,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, dir).expect("generate");
}

fn table_sources(data: &Path) -> Vec<TableSource> {
    TABLES
        .iter()
        .map(|t| {
            TableSource::new(t, &data.join(t).to_string_lossy(), Some(TableFormat::Parquet))
                .expect("table")
        })
        .collect()
}

async fn local_context(data: &Path) -> SessionContext {
    let local = SessionContext::new_with_config(sluice_sql::session::local_session_config());
    for t in TABLES {
        local
            .register_parquet(
                t,
                &format!("{}/", data.join(t).display()),
                ParquetReadOptions::default(),
            )
            .await
            .expect("register");
    }
    local
}

fn logs(procs: &[&Proc]) -> String {
    let mut out = String::new();
    for p in procs {
        let text = p.log_text();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        out.push_str(&format!("----- {} -----\n", p.name));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The leader record's endpoint, read through etcd.
fn leader_endpoint(etcd: &Etcd, cluster: &str) -> Option<String> {
    let target = EtcdTarget::parse(&etcd.endpoint, cluster).expect("target");
    rt().block_on(async {
        let mut client = target.connect(Duration::from_secs(5)).await.ok()?;
        target.leader(&mut client).await.ok().flatten().map(|(l, _)| l.endpoint)
    })
}

fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_schedulers_started_at_once_elect_exactly_one_leader() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(tmp.path()).expect("etcd");
    for round in 0..20 {
        let cluster = format!("race-{round}");
        // Spawned back to back: both campaign within milliseconds.
        let a = ha_scheduler(
            &format!("a{round}"),
            &etcd,
            &cluster,
            5,
            tmp.path(),
            &["--min-ready-executors", "0"],
        )
        .expect("a");
        let b = ha_scheduler(
            &format!("b{round}"),
            &etcd,
            &cluster,
            5,
            tmp.path(),
            &["--min-ready-executors", "0"],
        )
        .expect("b");
        let leader =
            poll("a leader elected", Duration::from_secs(20), || leader_endpoint(&etcd, &cluster));
        // The leader turns ready; the other stays a standby naming it.
        let (leader_proc, standby_proc) = if leader == a.addr { (&a, &b) } else { (&b, &a) };
        assert_eq!(
            leader_proc.addr, leader,
            "round {round}: the leader key names neither scheduler"
        );
        poll("the leader ready", Duration::from_secs(20), || {
            readyz(&leader_proc.addr).filter(|(code, _)| *code == 200)
        });
        // The other is a standby, never ready, and soon names the leader.
        poll("the standby names the leader", Duration::from_secs(10), || {
            let (code, body) = readyz(&standby_proc.addr)?;
            assert_eq!(code, 503, "round {round}: two leaders; the standby says {body}");
            (body.contains("standby") && body.contains(&leader)).then_some(())
        });
        // Both stay that way (no flapping) a moment later.
        assert_eq!(leader_endpoint(&etcd, &cluster).as_deref(), Some(leader.as_str()));
    }
}

#[test]
fn scheduler_exits_naming_an_unreachable_etcd() {
    let port = sluice_tests::free_port().expect("port");
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = Command::new(bin("sluice-scheduler"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--etcd-endpoints",
            &endpoint,
            "--etcd-connect-timeout-seconds",
            "2",
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit 0 with etcd down: {stderr}");
    assert!(stderr.contains(&endpoint) && stderr.contains("cannot reach etcd"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

/// SIGKILL or SIGSTOP (frozen past the lease TTL) of an executor mid-job,
/// on an etcd cluster whose Ballista heartbeat timeout (60 s) is far longer
/// than the lease TTL (4 s): the lease decides the loss.
fn executor_lost_mid_job(adaptive: bool, freeze: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data, 3000, 60, 1.2);
    let etcd = Etcd::start(tmp.path()).expect("etcd");
    let ttl = 4;
    let scheduler =
        ha_scheduler("scheduler", &etcd, "loss", ttl, tmp.path(), &["--min-ready-executors", "2"])
            .expect("scheduler");
    let e0 = ha_executor("executor-0", &etcd, "loss", ttl, 1, tmp.path()).expect("e0");
    let mut e1 = ha_executor("executor-1", &etcd, "loss", ttl, 1, tmp.path()).expect("e1");
    wait_ready(&scheduler.addr, Duration::from_secs(60)).expect("ready");
    let addr = scheduler.addr.clone();
    let target = Target::Cluster(EtcdTarget::parse(&etcd.endpoint, "loss").expect("target"));
    let sql = "SELECT e.event_type, count(*) AS n, sum(s.total) AS t, count(DISTINCT e.user_id) AS u \
               FROM events e JOIN (SELECT user_id, sum(amount) AS total FROM transactions GROUP BY user_id) s \
               ON e.user_id = s.user_id GROUP BY e.event_type ORDER BY 1";
    let runtime = rt();
    let local =
        runtime.block_on(async { run_sql(&local_context(&data).await, sql).await.expect("local") });
    let settings = [
        ("datafusion.execution.target_partitions".to_string(), "8".to_string()),
        ("ballista.scheduler.max_partitions_per_task".to_string(), "1".to_string()),
        ("ballista.planner.adaptive.enabled".to_string(), adaptive.to_string()),
    ];
    let all = |e1: &Proc| logs(&[&scheduler, &e0, e1]);
    let (answer, hit) = runtime.block_on(async {
        let on = connect(&target, &settings, &table_sources(&data)).await.expect("connect");
        let ctx = on.ctx.clone();
        let query = tokio::spawn(async move { run_sql_salted(&ctx, sql).await });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut hit = None;
        while Instant::now() < deadline && !query.is_finished() {
            let jobs = jobs(&addr).await;
            // The join's job: the latest one (hot keys are sampled in the
            // client at this size; a fallback count job would come first).
            if let Some(j) = jobs.last()
                && j.1 == "Running"
                && j.2 >= 1
            {
                hit = Some(j.0.clone());
                let pid = nix::unistd::Pid::from_raw(e1.child.id() as i32);
                let signal =
                    if freeze { nix::sys::signal::SIGSTOP } else { nix::sys::signal::SIGKILL };
                nix::sys::signal::kill(pid, signal).expect("signal");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answer = tokio::time::timeout(Duration::from_secs(180), query)
            .await
            .unwrap_or_else(|_| panic!("the job stalled after the executor was lost\n{}", all(&e1)))
            .expect("join")
            .unwrap_or_else(|e| panic!("query failed after the loss: {e}\n{}", all(&e1)));
        (answer, hit)
    });
    let job = hit.expect("no running job was seen: nothing was lost mid-job");
    sluice_client::verify::compare(&local, &answer, true)
        .unwrap_or_else(|e| panic!("after losing an executor in job {job}: {e}"));
    // Ballista may notice the loss first (a failed fetch or launch); the
    // lease expiry follows within the TTL.
    poll("the lease expiry declares the executor lost", Duration::from_secs(30), || {
        scheduler.log_text().contains("declaring it lost").then_some(())
    });
    let scheduler_log = scheduler.log_text();
    eprintln!(
        "lost during job {job}: stalled adaptive jobs failed and resubmitted {} time(s); \
         recovery repairs: leaked vcores returned {} time(s), stale shuffle inputs dropped {} time(s)",
        scheduler_log.matches("failed an adaptive job").count(),
        scheduler_log.matches("returning vcores held by no running task").count(),
        scheduler_log.matches("dropped shuffle locations of map tasks that were rerun").count()
    );
    assert!(
        scheduler_log.contains("declaring it lost"),
        "the lease expiry was not what removed the executor:\n{}",
        all(&e1)
    );
    if freeze {
        // Thawed, it finds its lease gone and rejoins under a new id; the
        // cluster answers correctly with it.
        let pid = nix::unistd::Pid::from_raw(e1.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGCONT).expect("SIGCONT");
        poll("the thawed executor rejoins", Duration::from_secs(60), || {
            let text = e1.log_text();
            (text.contains("rejoining under a new id")
                && text.matches("following the leader").count() >= 2)
                .then_some(())
        });
        wait_ready(&scheduler.addr, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("2 executors again: {e}\n{}", all(&e1)));
        let again = runtime.block_on(async {
            let on = connect(&target, &settings, &table_sources(&data)).await.expect("connect");
            run_sql_salted(&on.ctx, sql).await.expect("query after the thaw")
        });
        sluice_client::verify::compare(&local, &again, true).expect("equal after the thaw");
    } else {
        e1.kill();
    }
}

/// Id, status word and completed stages of every job, oldest first.
async fn jobs(scheduler: &str) -> Vec<(String, String, usize)> {
    let Ok((200, body)) =
        sluice_client::http::get(scheduler, "/api/jobs", Duration::from_secs(2)).await
    else {
        return Vec::new();
    };
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
    let mut jobs: Vec<_> = list
        .iter()
        .map(|j| {
            (
                j["start_time"].as_u64().unwrap_or_default(),
                j["job_id"].as_str().unwrap_or_default().to_string(),
                j["status"].as_str().unwrap_or_default().to_string(),
                j["completed_stages"].as_u64().unwrap_or_default() as usize,
            )
        })
        .collect();
    jobs.sort();
    jobs.into_iter().map(|(_, id, status, done)| (id, status, done)).collect()
}

#[test]
fn executor_killed_mid_job_static_planner() {
    executor_lost_mid_job(false, false);
}

#[test]
fn executor_killed_mid_job_adaptive_planner() {
    executor_lost_mid_job(true, false);
}

#[test]
fn executor_frozen_past_its_lease_static_planner() {
    executor_lost_mid_job(false, true);
}

#[test]
fn executor_frozen_past_its_lease_adaptive_planner() {
    executor_lost_mid_job(true, true);
}

fn backfill_args(data: &Path, out: &Path, catalog: &Path, from: &str, to: &str) -> Vec<String> {
    [
        "backfill",
        &workspace_root().join("sql/jobs/churn.yaml").display().to_string(),
        "--from",
        from,
        "--to",
        to,
        "--data-dir",
        &data.display().to_string(),
        "--output",
        &out.display().to_string(),
        "--chunk-days",
        "3",
        "--parallel",
        "2",
        "--catalog",
        &catalog.display().to_string(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn committed(out: &Path) -> usize {
    sluice_client::backfill::committed_dates(out).len()
}

/// The leader is SIGKILLed mid-backfill with a standby running: the standby
/// takes over within the lease TTL, the executors follow it, the backfill
/// resubmits the chunks that were in flight and finishes with every date
/// committed once and the output equal to a run on local DataFusion.
#[test]
fn leader_killed_mid_backfill_standby_takes_over() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data, 400, 90, 0.0);
    let etcd = Etcd::start(tmp.path()).expect("etcd");
    let ttl = 10;
    let mut s1 =
        ha_scheduler("scheduler-1", &etcd, "fo", ttl, tmp.path(), &["--min-ready-executors", "2"])
            .expect("s1");
    let leader = poll("s1 leads", Duration::from_secs(20), || leader_endpoint(&etcd, "fo"));
    assert_eq!(leader, s1.addr);
    let s2 =
        ha_scheduler("scheduler-2", &etcd, "fo", ttl, tmp.path(), &["--min-ready-executors", "2"])
            .expect("s2");
    let e0 = ha_executor("executor-0", &etcd, "fo", ttl, 2, tmp.path()).expect("e0");
    let e1 = ha_executor("executor-1", &etcd, "fo", ttl, 2, tmp.path()).expect("e1");
    wait_ready(&s1.addr, Duration::from_secs(60)).expect("ready");

    // `sluice cluster status`: the live picture of 2 schedulers, 2 executors.
    let status = Command::new(bin("sluice"))
        .args([
            "cluster",
            "status",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--cluster",
            "fo",
            "--json",
        ])
        .output()
        .expect("status");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(json["leader"]["endpoint"], s1.addr.as_str(), "{json}");
    assert_eq!(json["standbys"][0]["endpoint"], s2.addr.as_str(), "{json}");
    let executors = json["executors"].as_array().expect("executors");
    assert_eq!(executors.len(), 2, "{json}");
    for e in executors {
        assert_eq!(e["vcores"], 2, "{json}");
        assert!(
            e["last_keep_alive_seconds_ago"].as_i64().is_some_and(|s| s <= ttl as i64),
            "{json}"
        );
    }

    let out = tmp.path().join("out");
    let catalog = tmp.path().join("catalog.json");
    let (from, to) = ("2024-02-01", "2024-03-31");
    let dates = 60;
    let child = Command::new(bin("sluice"))
        .args(backfill_args(&data, &out, &catalog, from, to))
        .args(["--etcd-endpoints", &etcd.endpoint, "--cluster", "fo"])
        .env("RUST_LOG", "warn,sluice_client=info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("backfill.log")).expect("log"))
        .spawn()
        .expect("backfill");
    poll("a chunk committed", Duration::from_secs(120), || (committed(&out) >= 3).then_some(()));
    let before = committed(&out);
    assert!(before < dates, "the backfill finished before the kill");
    let killed = Instant::now();
    s1.kill();
    // Time from the kill to the first job the new leader runs.
    let first_job = poll("the standby runs a job", Duration::from_secs(60), || {
        rt().block_on(async { (!jobs(&s2.addr).await.is_empty()).then(Instant::now) })
    });
    let failover = first_job.duration_since(killed);
    eprintln!(
        "failover: kill -> first job on the new leader {:.2} s (TTL {ttl} s)",
        failover.as_secs_f64()
    );
    let result = child.wait_with_output().expect("backfill ends");
    let backfill_log = std::fs::read_to_string(tmp.path().join("backfill.log")).unwrap_or_default();
    for line in
        backfill_log.lines().filter(|l| l.contains("resubmitting") || l.contains("reconnected"))
    {
        eprintln!("backfill: {line}");
    }
    assert!(
        result.status.success(),
        "backfill failed across the failover:\n{backfill_log}\n{}",
        logs(&[&s2, &e0, &e1])
    );
    assert!(failover < Duration::from_secs(ttl + 5), "failover took {failover:?}");
    let report: serde_json::Value = serde_json::from_slice(&result.stdout).expect("report");
    assert_eq!(report["dates_committed"], dates, "{report}");
    assert_eq!(committed(&out), dates);
    assert_eq!(leader_endpoint(&etcd, "fo").as_deref(), Some(s2.addr.as_str()));

    // The registry shows every chunk committed; some were resubmitted.
    let target = EtcdTarget::parse(&etcd.endpoint, "fo").expect("target");
    let records = rt().block_on(async {
        let mut client = target.connect(Duration::from_secs(5)).await.expect("etcd");
        sluice_client::registry::list(&target, &mut client).await.expect("list")
    });
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.state, "done");
    assert!(record.chunks.values().all(|c| c.state == "committed"), "{record:?}");
    let resubmitted: u32 = record.chunks.values().map(|c| c.submissions - 1).sum();
    eprintln!("chunks resubmitted after the failover: {resubmitted}");

    // Equal to local DataFusion on the same data.
    let local_out = tmp.path().join("local");
    let local = Command::new(bin("sluice"))
        .args(backfill_args(&data, &local_out, &catalog, from, to))
        .args(["--local", "--no-register"])
        .output()
        .expect("local backfill");
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    rt().block_on(async {
        let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        for (name, dir) in [("ha", &out), ("local", &local_out)] {
            let opts = ParquetReadOptions::default().table_partition_cols(vec![(
                "feature_date".to_string(),
                datafusion::arrow::datatypes::DataType::Utf8,
            )]);
            ctx.register_parquet(name, &format!("{}/", dir.display()), opts)
                .await
                .expect("register");
        }
        let q = |t: &str| format!("SELECT * FROM {t} ORDER BY feature_date, user_id");
        let a = run_sql(&ctx, &q("local")).await.expect("local rows");
        let b = run_sql(&ctx, &q("ha")).await.expect("ha rows");
        sluice_client::verify::compare(&a, &b, true)
            .expect("output after a failover equals local DataFusion's (no duplicates, no gaps)");
    });
}

/// etcd down for 10 s, shorter than the 20 s TTL: nobody is evicted, the
/// leader stays, and a query running across the outage completes.
#[test]
fn etcd_outage_shorter_than_the_ttl_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data, 3000, 60, 0.0);
    let mut etcd = Etcd::start(tmp.path()).expect("etcd");
    let ttl = 20;
    let scheduler =
        ha_scheduler("scheduler", &etcd, "out", ttl, tmp.path(), &["--min-ready-executors", "2"])
            .expect("scheduler");
    let e0 = ha_executor("executor-0", &etcd, "out", ttl, 1, tmp.path()).expect("e0");
    let e1 = ha_executor("executor-1", &etcd, "out", ttl, 1, tmp.path()).expect("e1");
    wait_ready(&scheduler.addr, Duration::from_secs(60)).expect("ready");
    let target = EtcdTarget::parse(&etcd.endpoint, "out").expect("target");
    let sql = "SELECT e.event_type, count(*) AS n, count(DISTINCT t.txn_id) AS t FROM events e \
               JOIN transactions t ON e.user_id = t.user_id GROUP BY e.event_type ORDER BY 1";
    let runtime = rt();
    let local =
        runtime.block_on(async { run_sql(&local_context(&data).await, sql).await.expect("local") });
    let on = runtime
        .block_on(connect(&Target::Cluster(target.clone()), &[], &table_sources(&data)))
        .expect("connect");
    let ctx = on.ctx.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let until = done.clone();
    let query = runtime.spawn(async move {
        let mut answers = Vec::new();
        // Queries keep running through the outage, one after another.
        while answers.len() < 2 || !until.load(std::sync::atomic::Ordering::SeqCst) {
            answers.push(run_sql(&ctx, sql).await);
        }
        answers
    });
    etcd.stop();
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(10) {
        // The leader keeps scheduling while etcd is down.
        assert_eq!(readyz(&scheduler.addr).map(|r| r.0), Some(200), "{}", logs(&[&scheduler]));
        std::thread::sleep(Duration::from_millis(500));
    }
    etcd.restart().expect("etcd restart");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = runtime.block_on(query).expect("queries");
    eprintln!("{} queries ran across the outage", answers.len());
    for a in answers {
        let a = a.unwrap_or_else(|e| {
            panic!("query failed across the outage: {e}\n{}", logs(&[&scheduler, &e0, &e1]))
        });
        sluice_client::verify::compare(&local, &a, true).expect("equal across the outage");
    }
    // Give lease bookkeeping a couple of keep-alive rounds after the restart.
    let status = poll("both executors still members", Duration::from_secs(30), || {
        let s = runtime.block_on(sluice_client::status::read(&target)).ok()?;
        (s.executors.len() == 2 && s.executors.iter().all(|e| e.lease_ttl_seconds.is_some()))
            .then_some(s)
    });
    assert_eq!(status.leader.map(|l| l.endpoint), Some(scheduler.addr.clone()));
    for p in [&scheduler, &e0, &e1] {
        let text = p.log_text();
        assert!(!text.contains("declaring it lost"), "{} evicted an executor:\n{text}", p.name);
        assert!(!text.contains("stepped down"), "{} stepped down:\n{text}", p.name);
        assert!(!text.contains("rejoining"), "{} rejoined:\n{text}", p.name);
    }
}

/// A leader frozen (SIGSTOP) past its TTL is replaced; thawed, it finds it
/// lost the lease and stands by, and its writes are fenced off.
#[test]
fn frozen_leader_is_replaced_and_fenced_when_it_wakes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(tmp.path()).expect("etcd");
    let ttl = 3;
    let s1 = ha_scheduler(
        "scheduler-1",
        &etcd,
        "fence",
        ttl,
        tmp.path(),
        &["--min-ready-executors", "0"],
    )
    .expect("s1");
    poll("s1 leads", Duration::from_secs(20), || {
        leader_endpoint(&etcd, "fence").filter(|l| *l == s1.addr)
    });
    let s2 = ha_scheduler(
        "scheduler-2",
        &etcd,
        "fence",
        ttl,
        tmp.path(),
        &["--min-ready-executors", "0"],
    )
    .expect("s2");
    let pid = nix::unistd::Pid::from_raw(s1.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGSTOP).expect("SIGSTOP");
    poll("s2 takes over", Duration::from_secs(30), || {
        leader_endpoint(&etcd, "fence").filter(|l| *l == s2.addr)
    });
    nix::sys::signal::kill(pid, nix::sys::signal::SIGCONT).expect("SIGCONT");
    poll("the thawed leader stands by", Duration::from_secs(30), || {
        readyz(&s1.addr).filter(|(code, body)| *code == 503 && body.contains(&s2.addr))
    });
    let target = EtcdTarget::parse(&etcd.endpoint, "fence").expect("target");
    let status = rt().block_on(sluice_client::status::read(&target)).expect("status");
    assert_eq!(status.leader.map(|l| l.endpoint), Some(s2.addr.clone()));
    assert!(status.leader_status.is_some_and(|s| s.id.contains(&s2.addr)));
    assert!(s1.log_text().contains("stepped down"), "{}", s1.log_text());
}

/// `sluice backfill --detach` returns an id; `backfill status ID` shows the
/// progress recorded in etcd; `backfill cancel ID` stops the backfill with
/// every committed date complete and nothing half-written left behind.
#[test]
fn detached_backfill_reports_progress_and_cancels() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data, 400, 90, 0.0);
    let etcd = Etcd::start(tmp.path()).expect("etcd");
    let scheduler = ha_scheduler("scheduler", &etcd, "bg", 10, tmp.path(), &[]).expect("scheduler");
    let e0 = ha_executor("executor-0", &etcd, "bg", 10, 2, tmp.path()).expect("e0");
    wait_ready(&scheduler.addr, Duration::from_secs(60)).expect("ready");
    let out = tmp.path().join("out");
    let mut args =
        backfill_args(&data, &out, &tmp.path().join("catalog.json"), "2024-02-01", "2024-03-31");
    args.retain(|a| a != "--json");
    let cluster = ["--etcd-endpoints", etcd.endpoint.as_str(), "--cluster", "bg"];
    let started = Command::new(bin("sluice"))
        .args(&args)
        .args(cluster)
        .arg("--detach")
        .output()
        .expect("detach");
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let id = String::from_utf8_lossy(&started.stdout).trim().to_string();
    assert!(id.starts_with("bf-"), "no id printed: {id:?}");
    let status = |json: bool| {
        let mut cmd = Command::new(bin("sluice"));
        cmd.args(["backfill", "status", &id]).args(cluster);
        if json {
            cmd.arg("--json");
        }
        cmd.output().expect("status")
    };
    poll("a chunk committed", Duration::from_secs(120), || {
        let out = status(true);
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (record["dates_committed"].as_u64()? >= 3).then_some(())
    });
    let text = String::from_utf8_lossy(&status(false).stdout).into_owned();
    assert!(text.contains(&id) && text.contains("running") && text.contains("committed"), "{text}");
    let cancel = Command::new(bin("sluice"))
        .args(["backfill", "cancel", &id])
        .args(cluster)
        .output()
        .expect("cancel");
    assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));
    let record = poll("the backfill stops", Duration::from_secs(60), || {
        let record: serde_json::Value = serde_json::from_slice(&status(true).stdout).ok()?;
        (record["state"] == "cancelled").then_some(record)
    });
    let committed_now = committed(&out);
    assert!(committed_now < 60, "finished before the cancel");
    assert_eq!(record["dates_committed"].as_u64(), Some(committed_now as u64), "{record}");
    // Committed dates only: no staging or lock left next to the output.
    poll("the driver cleans up", Duration::from_secs(30), || {
        let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".out."))
            .collect();
        leftovers.is_empty().then_some(())
    });
    let again = Command::new(bin("sluice"))
        .args(["backfill", "cancel", &id])
        .args(cluster)
        .output()
        .expect("cancel");
    assert!(!again.status.success(), "cancelling a cancelled backfill succeeded");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not running"));
    drop(e0);
}
