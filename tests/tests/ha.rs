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
        .env_remove("SLUICE_CLUSTER_CA")
        .env_remove("SLUICE_CLUSTER_CERT")
        .env_remove("SLUICE_CLUSTER_KEY")
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
    sluice_tests::committed_dates(out).len()
}

/// Jobs of backfill `id` on `scheduler` (their names carry it): (job id, status).
async fn backfill_jobs(scheduler: &str, id: &str) -> Vec<(String, String)> {
    let Ok((200, body)) =
        sluice_client::http::get(scheduler, "/api/jobs", Duration::from_secs(2)).await
    else {
        return Vec::new();
    };
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
    list.iter()
        .filter(|j| j["job_name"].as_str().is_some_and(|n| n.contains(id)))
        .map(|j| {
            (
                j["job_id"].as_str().unwrap_or_default().to_string(),
                j["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// `sluice backfill status ID --json` on the cluster (through its leader).
fn backfill_status(etcd: &Etcd, cluster: &str, id: &str) -> Option<serde_json::Value> {
    let out = Command::new(bin("sluice"))
        .args(["backfill", "status", id, "--etcd-endpoints", &etcd.endpoint, "--cluster", cluster])
        .arg("--json")
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Every date of `from..=to` is in `out` once, each equal to the naive
/// per-date SQL on local DataFusion (no duplicates, no gaps).
fn assert_equals_naive_reference(data: &Path, out: &Path, from: &str, to: &str) {
    let from = chrono::NaiveDate::parse_from_str(from, "%Y-%m-%d").expect("from");
    let to = chrono::NaiveDate::parse_from_str(to, "%Y-%m-%d").expect("to");
    let days: Vec<chrono::NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    assert_eq!(committed(out), days.len(), "dates in {}", out.display());
    rt().block_on(async {
        let ctx = local_context(data).await;
        sluice_tests::register_delta(&ctx, "features", out).await;
        let dup = run_sql(
            &ctx,
            "SELECT count(*) AS n FROM (SELECT user_id, feature_date FROM features \
             GROUP BY user_id, feature_date HAVING count(*) > 1)",
        )
        .await
        .expect("duplicates");
        assert_eq!(sluice_client::verify::normalize(&dup).expect("n"), vec!["0".to_string()]);
        for day in days {
            let naive = sluice_sql::job::churn_reference_sql(day);
            let cols = "user_id, total_spend_30d, txn_count_7d, avg_txn_value_30d, \
                        days_since_last_login, page_views_30d, feature_use_count_30d, \
                        ticket_count_90d, avg_resolution_hours_90d, segment, tenure_days";
            let expected = run_sql(&ctx, &format!("SELECT {cols} FROM ({naive}) ORDER BY user_id"))
                .await
                .expect("naive");
            let actual = run_sql(
                &ctx,
                &format!(
                    "SELECT {cols} FROM features WHERE feature_date = '{day}' ORDER BY user_id"
                ),
            )
            .await
            .expect("output");
            sluice_client::verify::compare(&expected, &actual, true).unwrap_or_else(|e| {
                panic!("{day}: output differs from the naive per-date SQL: {e}")
            });
        }
    });
}

/// A two-scheduler, two-executor cluster on real etcd.
struct HaCluster {
    etcd: Etcd,
    s1: Proc,
    s2: Proc,
    _executors: [Proc; 2],
}

fn ha_cluster(dir: &Path, name: &str, ttl: u64) -> HaCluster {
    let etcd = Etcd::start(dir).expect("etcd");
    let s1 = ha_scheduler("scheduler-1", &etcd, name, ttl, dir, &["--min-ready-executors", "2"])
        .expect("s1");
    let leader = poll("s1 leads", Duration::from_secs(20), || leader_endpoint(&etcd, name));
    assert_eq!(leader, s1.addr);
    let s2 = ha_scheduler("scheduler-2", &etcd, name, ttl, dir, &["--min-ready-executors", "2"])
        .expect("s2");
    let e0 = ha_executor("executor-0", &etcd, name, ttl, 2, dir).expect("e0");
    let e1 = ha_executor("executor-1", &etcd, name, ttl, 2, dir).expect("e1");
    wait_ready(&s1.addr, Duration::from_secs(60)).expect("ready");
    HaCluster { etcd, s1, s2, _executors: [e0, e1] }
}

/// The CLI that submitted a backfill is SIGKILLed once 3 dates are
/// committed: the cluster completes the backfill on its own, `backfill
/// status` says done, and the output equals the naive per-date SQL.
#[test]
fn backfill_outlives_the_cli_that_submitted_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data, 400, 90, 0.0);
    let c = ha_cluster(tmp.path(), "cli", 10);
    let out = tmp.path().join("out");
    let (from, to) = ("2024-02-01", "2024-03-31");
    let mut args = backfill_args(&data, &out, &tmp.path().join("catalog.json"), from, to);
    args.retain(|a| a != "--json");
    let mut cli = Command::new(bin("sluice"))
        .args(&args)
        .args(["--etcd-endpoints", &c.etcd.endpoint, "--cluster", "cli"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("cli.log")).expect("log"))
        .spawn()
        .expect("backfill");
    poll("3 dates committed", Duration::from_secs(120), || (committed(&out) >= 3).then_some(()));
    cli.kill().expect("SIGKILL the CLI");
    let _ = cli.wait();
    assert!(committed(&out) < 60, "the backfill finished before the CLI was killed");
    let listed = Command::new(bin("sluice"))
        .args([
            "backfill",
            "list",
            "--etcd-endpoints",
            &c.etcd.endpoint,
            "--cluster",
            "cli",
            "--json",
        ])
        .output()
        .expect("list");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("list json");
    let id = listed[0]["id"].as_str().expect("a recorded backfill").to_string();
    let record = poll("the cluster completes it", Duration::from_secs(240), || {
        backfill_status(&c.etcd, "cli", &id).filter(|r| r["state"] == "done")
    });
    assert_eq!(record["dates_committed"], 60, "{record}");
    assert_eq!(record["owner"], format!("scheduler-{}", c.s1.addr), "{record}");
    let text = Command::new(bin("sluice"))
        .args(["backfill", "status", &id, "--etcd-endpoints", &c.etcd.endpoint, "--cluster", "cli"])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains(&format!("backfill {id}  done")), "{text}");
    assert_equals_naive_reference(&data, &out, from, to);
    drop(c.s2);
}

/// A `--detach`ed backfill, its leader SIGKILLed once 3 dates are
/// committed, no client process alive: the standby takes over, resumes the
/// backfill from etcd and completes it; committed dates are not recomputed
/// and every date is committed once, equal to the naive per-date SQL.
#[test]
fn leader_killed_mid_backfill_standby_resumes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data, 400, 90, 0.0);
    let ttl = 10;
    let mut c = ha_cluster(tmp.path(), "fo", ttl);

    // `sluice cluster status`: the live picture of 2 schedulers, 2 executors.
    let status = Command::new(bin("sluice"))
        .args([
            "cluster",
            "status",
            "--etcd-endpoints",
            &c.etcd.endpoint,
            "--cluster",
            "fo",
            "--json",
        ])
        .output()
        .expect("status");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(json["leader"]["endpoint"], c.s1.addr.as_str(), "{json}");
    assert_eq!(json["standbys"][0]["endpoint"], c.s2.addr.as_str(), "{json}");
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
    let (from, to) = ("2024-02-01", "2024-03-31");
    let mut args = backfill_args(&data, &out, &tmp.path().join("catalog.json"), from, to);
    args.retain(|a| a != "--json");
    let submitted = Command::new(bin("sluice"))
        .args(&args)
        .args(["--etcd-endpoints", &c.etcd.endpoint, "--cluster", "fo", "--detach"])
        .output()
        .expect("detach");
    assert!(submitted.status.success(), "{}", String::from_utf8_lossy(&submitted.stderr));
    let id = String::from_utf8_lossy(&submitted.stdout).trim().to_string();
    assert!(id.starts_with("bf-"), "no id printed: {id:?}");
    // The submitting process has exited: nothing but the cluster drives it.
    poll("3 dates committed", Duration::from_secs(120), || (committed(&out) >= 3).then_some(()));
    // The files of the dates committed so far (Delta's latest version).
    let before = sluice_tests::live_files(&out);
    assert!(!before.is_empty());
    assert!(committed(&out) < 60, "the backfill finished before the kill");
    let killed = Instant::now();
    c.s1.kill();
    // Kill -> the first chunk job the new leader runs for this backfill.
    let first_job = poll("the standby resumes a chunk job", Duration::from_secs(60), || {
        rt().block_on(async {
            (!backfill_jobs(&c.s2.addr, &id).await.is_empty()).then(Instant::now)
        })
    });
    let resumed = first_job.duration_since(killed);
    eprintln!(
        "failover: kill -> first resumed chunk job on the new leader {:.2} s (TTL {ttl} s)",
        resumed.as_secs_f64()
    );
    let record = poll("the standby completes it", Duration::from_secs(240), || {
        backfill_status(&c.etcd, "fo", &id).filter(|r| {
            r["state"] != "running"
                && r["state"].as_str().is_some_and(|s| !s.starts_with("running"))
        })
    });
    assert_eq!(record["state"], "done", "{record}\n{}", logs(&[&c.s2]));
    assert_eq!(record["owner"], format!("scheduler-{}", c.s2.addr), "{record}");
    assert!(record["resumptions"].as_u64() >= Some(1), "{record}");
    assert_eq!(record["dates_committed"], 60, "{record}");
    let chunks = record["chunks"].as_array().expect("chunks");
    assert!(chunks.iter().all(|c| c["state"] == "committed"), "{record}");
    let resubmitted: u64 = chunks.iter().map(|c| c["submissions"].as_u64().unwrap_or(1) - 1).sum();
    eprintln!("chunks resubmitted after the failover: {resubmitted}");
    assert!(resumed < Duration::from_secs(ttl + 10), "resume took {resumed:?}");
    // Committed dates were not recomputed: their files are still the table's.
    let after = sluice_tests::live_files(&out);
    let replaced: Vec<&String> = before.difference(&after).collect();
    assert!(replaced.is_empty(), "rewritten after the failover: {replaced:?}");
    assert_equals_naive_reference(&data, &out, from, to);
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

/// `Cancel` through the service: a follower (`sluice backfill watch`) sees
/// it, the backfill's running chunk jobs stop, committed dates stay, its
/// staging is gone, and a second cancel is a clear error.
#[test]
fn cancel_stops_jobs_keeps_committed_dates_and_refuses_a_second_cancel() {
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
    let watcher = Command::new(bin("sluice"))
        .args(["backfill", "watch", &id])
        .args(cluster)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch");
    poll("a chunk committed", Duration::from_secs(120), || {
        let record = backfill_status(&etcd, "bg", &id)?;
        (record["dates_committed"].as_u64()? >= 3).then_some(())
    });
    let text = Command::new(bin("sluice"))
        .args(["backfill", "status", &id])
        .args(cluster)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains(&id) && text.contains("running") && text.contains("committed"), "{text}");
    let cancel = Command::new(bin("sluice"))
        .args(["backfill", "cancel", &id])
        .args(cluster)
        .output()
        .expect("cancel");
    assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));
    // Cancel returns once the jobs have stopped.
    let live: Vec<(String, String)> = rt()
        .block_on(backfill_jobs(&scheduler.addr, &id))
        .into_iter()
        .filter(|(_, status)| status == "Running" || status == "Queued")
        .collect();
    assert!(live.is_empty(), "chunk jobs still running after the cancel: {live:?}");
    let record = backfill_status(&etcd, "bg", &id).expect("status");
    assert_eq!(record["state"], "cancelled", "{record}");
    let committed_now = committed(&out);
    assert!(committed_now < 60, "finished before the cancel");
    assert!(committed_now >= 3);
    assert_eq!(record["dates_committed"].as_u64(), Some(committed_now as u64), "{record}");
    // The follower saw the cancel and says so.
    let watched = watcher.wait_with_output().expect("watch ends");
    assert!(!watched.status.success());
    let said = String::from_utf8_lossy(&watched.stderr);
    assert!(said.contains("was cancelled"), "{said}");
    // Only committed dates are visible: the table's dates are the record's
    // (files a stopped task wrote after the cancel are in no version).
    let again = Command::new(bin("sluice"))
        .args(["backfill", "cancel", &id])
        .args(cluster)
        .output()
        .expect("cancel");
    assert!(!again.status.success(), "cancelling a cancelled backfill succeeded");
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("not running") && said.contains("cancelled"), "{said}");
    drop(e0);
}
