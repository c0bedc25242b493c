//! Draining executors (spot notices, scale-in) on a process cluster: a
//! TPC-H query with an executor SIGTERMed mid-job (adaptive planner on and
//! off) answers as single-node DataFusion; draining the last executor
//! leaves the work queued until a new one registers; `sluice executor
//! drain` drains a named executor. (Backfill drains: `backfill.rs`.)

use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use sluice_client::{Target, connect, run_sql};
use sluice_tests::{Proc, TestCluster, bin};

/// TPC-H q9 (six-way join: several shuffle stages) at SF 0.2; an executor
/// that ran tasks of its job gets SIGTERM once a stage is done.
fn tpch_query_with_an_executor_drained(adaptive: bool) {
    let data = tempfile::tempdir().expect("tempdir");
    sluice_client::datagen::tpch::generate(0.2, data.path()).expect("generate");
    let tables = sluice_client::datagen::tpch::table_sources(data.path()).expect("tables");
    let mut cluster = TestCluster::start_full(
        3,
        1,
        &["--executor-timeout-seconds", "5"],
        &["--heartbeat-interval-seconds", "1", "--drain-deadline", "15"],
    )
    .expect("cluster");
    let scheduler = cluster.scheduler_addr().to_string();
    let (n, sql) = sluice_sql::tpch::QUERIES.iter().find(|(n, _)| *n == 9).expect("q9");
    let rt = sluice_proto::runtime().expect("runtime");
    let (expected, actual, drained) = rt.block_on(async {
        let local = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        for t in &tables {
            t.register(&local).await.expect("register local");
        }
        let expected = run_sql(&local, sql).await.expect("local");
        let settings = [
            ("datafusion.execution.target_partitions".to_string(), "6".to_string()),
            ("ballista.scheduler.max_partitions_per_task".to_string(), "1".to_string()),
            ("ballista.planner.adaptive.enabled".to_string(), adaptive.to_string()),
        ];
        let target = Target::Scheduler(scheduler.parse().expect("addr"));
        let conn = connect(&target, &settings, &tables).await.expect("connect");
        let before: Vec<String> =
            sluice_tests::scheduler_jobs(&scheduler).await.into_iter().map(|j| j.id).collect();
        let ctx = conn.ctx.clone();
        let sql = sql.to_string();
        let query = tokio::spawn(async move { run_sql(&ctx, &sql).await });
        let end = Instant::now() + Duration::from_secs(120);
        let mut drained = None;
        while Instant::now() < end && !query.is_finished() && drained.is_none() {
            let jobs = sluice_tests::scheduler_jobs(&scheduler).await;
            if let Some(job) = jobs.iter().rev().find(|j| !before.contains(&j.id))
                && job.status == "Running"
                && job.completed_stages >= 1
                && let Some(victim) = cluster
                    .executors
                    .iter()
                    .position(|e| e.log_text().contains(&format!("TID {}/", job.id)))
            {
                let (exit, took) =
                    cluster.executors[victim].sigterm_and_wait(Duration::from_secs(45));
                drained = Some((victim, exit, took));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let actual = tokio::time::timeout(Duration::from_secs(180), query)
            .await
            .unwrap_or_else(|_| panic!("q{n} stalled after the drain\n{}", cluster.logs()))
            .expect("join")
            .unwrap_or_else(|e| panic!("q{n} failed after the drain: {e}\n{}", cluster.logs()));
        (expected, actual, drained)
    });
    let (victim, exit, took) =
        drained.unwrap_or_else(|| panic!("q{n}'s job was never seen running\n{}", cluster.logs()));
    let summary = cluster.executors[victim].stdout_text();
    eprintln!("adaptive={adaptive}: executor-{victim} drained: {summary}");
    if std::env::var_os("SLUICE_TEST_SHOW_LOGS").is_some() {
        eprintln!("{}", cluster.logs());
    }
    assert!(exit.is_some_and(|s| s.success()), "exit {exit:?} after {took:?}");
    assert!(took < Duration::from_secs(15), "exited after {took:?}, past its 15 s deadline");
    // Its output moved (or no running job needed it any more): no stage ran
    // again, and no adaptive job was failed for resubmission.
    assert!(summary.contains("recompute=false"), "{summary}\n{}", cluster.logs());
    assert!(
        !cluster.scheduler.log_text().contains("stage running again"),
        "a stage ran again after the drain\n{}",
        cluster.logs()
    );
    assert!(
        // `sluice_scheduler::recovery::ADAPTIVE_JOB_LOST_INPUT`
        !cluster.log_contains("job stopped after an executor loss"),
        "the job was failed for resubmission\n{}",
        cluster.logs()
    );
    sluice_client::verify::compare(&expected, &actual, sluice_sql::tpch::is_ordered(sql))
        .unwrap_or_else(|e| panic!("q{n} (adaptive={adaptive}) differs after the drain: {e}"));
}

#[test]
fn tpch_query_with_an_executor_drained_static_planner() {
    tpch_query_with_an_executor_drained(false);
}

#[test]
fn tpch_query_with_an_executor_drained_adaptive_planner() {
    tpch_query_with_an_executor_drained(true);
}

/// The last executor drains mid-query: no peer can take its output, so it
/// is recomputed; the job waits (it is not failed) and completes once a new
/// executor registers.
#[test]
fn draining_the_last_executor_queues_the_work_until_a_new_one_registers() {
    let data = tempfile::tempdir().expect("tempdir");
    sluice_client::datagen::tpch::generate(0.05, data.path()).expect("generate");
    let tables = sluice_client::datagen::tpch::table_sources(data.path()).expect("tables");
    let mut cluster = TestCluster::start_full(
        1,
        1,
        &["--executor-timeout-seconds", "30"],
        &["--heartbeat-interval-seconds", "1", "--drain-deadline", "3"],
    )
    .expect("cluster");
    let scheduler = cluster.scheduler_addr().to_string();
    let (n, sql) = sluice_sql::tpch::QUERIES.iter().find(|(n, _)| *n == 9).expect("q9");
    let rt = sluice_proto::runtime().expect("runtime");
    let (expected, actual) = rt.block_on(async {
        let local = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        for t in &tables {
            t.register(&local).await.expect("register local");
        }
        let expected = run_sql(&local, sql).await.expect("local");
        let settings = [
            ("datafusion.execution.target_partitions".to_string(), "6".to_string()),
            ("ballista.scheduler.max_partitions_per_task".to_string(), "1".to_string()),
            ("ballista.planner.adaptive.enabled".to_string(), "false".to_string()),
        ];
        let target = Target::Scheduler(scheduler.parse().expect("addr"));
        let conn = connect(&target, &settings, &tables).await.expect("connect");
        let before: Vec<String> =
            sluice_tests::scheduler_jobs(&scheduler).await.into_iter().map(|j| j.id).collect();
        let ctx = conn.ctx.clone();
        let sql = sql.to_string();
        let query = tokio::spawn(async move { run_sql(&ctx, &sql).await });
        // The job is running with a stage done: drain its only executor.
        let end = Instant::now() + Duration::from_secs(120);
        let mut job_id = None;
        while Instant::now() < end && !query.is_finished() {
            let jobs = sluice_tests::scheduler_jobs(&scheduler).await;
            if let Some(job) = jobs.iter().rev().find(|j| !before.contains(&j.id))
                && job.status == "Running"
                && job.completed_stages >= 1
            {
                job_id = Some(job.id.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let job_id = job_id.unwrap_or_else(|| panic!("q{n}'s job never ran\n{}", cluster.logs()));
        let (exit, took) = cluster.executors[0].sigterm_and_wait(Duration::from_secs(30));
        assert!(exit.is_some_and(|s| s.success()), "exit {exit:?} after {took:?}");
        assert!(took < Duration::from_secs(3), "exited after {took:?}, past its 3 s deadline");
        // No executor now: the job waits, it is not failed.
        let wait_until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < wait_until {
            let jobs = sluice_tests::scheduler_jobs(&scheduler).await;
            let job = jobs.iter().find(|j| j.id == job_id).expect("the job is listed");
            assert!(
                job.status == "Running" || job.status == "Queued",
                "with no executor the job must wait, it is {}\n{}",
                job.status,
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!query.is_finished(), "the query ended with no executor");
        // A new executor registers: the job completes.
        let fresh = Proc::spawn(
            "executor-new",
            &bin("sluice-executor"),
            &[
                "--scheduler".to_string(),
                scheduler.clone(),
                "--bind".into(),
                "127.0.0.1:0".into(),
                "--vcores".into(),
                "2".into(),
                "--work-dir".into(),
                cluster.dir.path().join("work-new").display().to_string(),
            ],
            cluster.dir.path(),
            Duration::from_secs(60),
        )
        .expect("new executor");
        cluster.executors.push(fresh);
        let actual = tokio::time::timeout(Duration::from_secs(180), query)
            .await
            .unwrap_or_else(|_| {
                panic!("q{n} never completed on the new executor\n{}", cluster.logs())
            })
            .expect("join")
            .unwrap_or_else(|e| panic!("q{n} failed: {e}\n{}", cluster.logs()));
        (expected, actual)
    });
    sluice_client::verify::compare(&expected, &actual, sluice_sql::tpch::is_ordered(sql))
        .unwrap_or_else(|e| panic!("q{n} differs after the last executor drained: {e}"));
}

/// `sluice executor drain ID` (scale-in): the scheduler reports the executor
/// draining on /metrics and the executor exits 0 on its own, inside its
/// deadline; an unknown id is a clear error.
#[test]
fn an_administrator_drains_a_named_executor() {
    let mut cluster =
        TestCluster::start_full(2, 1, &[], &["--drain-deadline", "10"]).expect("cluster");
    let scheduler = cluster.scheduler_addr().to_string();
    let rt = sluice_proto::runtime().expect("runtime");
    // The executor's id, from the scheduler's REST API.
    let id = rt.block_on(async {
        let (_, body) =
            sluice_client::http::get(&scheduler, "/api/executors", Duration::from_secs(10))
                .await
                .expect("executors");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let flight = cluster.executors[1].addr.clone();
        let list = v.as_array().cloned().unwrap_or_default();
        list.iter()
            .find(|e| {
                let host = e["host"].as_str().unwrap_or_default();
                let port = e["port"].as_u64().unwrap_or_default();
                format!("{host}:{port}") == flight
            })
            .and_then(|e| e["id"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("executor at {flight} not in {body}"))
    });
    let sluice = |args: &[&str]| {
        std::process::Command::new(bin("sluice")).args(args).output().expect("run sluice")
    };
    let bad = sluice(&["executor", "drain", "no-such-executor", "--scheduler", &scheduler]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("no executor no-such-executor is registered"), "{err}");
    let ok = sluice(&["executor", "drain", &id, "--scheduler", &scheduler]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("asked to drain"));
    // It sees the request within 2 s and exits 0 inside its 10 s deadline.
    let started = Instant::now();
    let exit = loop {
        if let Ok(Some(status)) = cluster.executors[1].child.try_wait() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(20) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.is_some_and(|s| s.success()), "exit {exit:?}\n{}", cluster.logs());
    assert!(started.elapsed() < Duration::from_secs(13), "took {:?}", started.elapsed());
    assert!(
        cluster.executors[1].stdout_text().contains("sluice-executor drained"),
        "{}",
        cluster.executors[1].stdout_text()
    );
    let started = rt.block_on(sluice_tests::scheduler_metric(
        &scheduler,
        "sluice_drain_events_total{event=\"started\"}",
    ));
    assert_eq!(started, Some(1.0));
    // The drained executor takes no task: a query still runs (on the other).
    rt.block_on(async {
        let target = Target::Scheduler(scheduler.parse().expect("addr"));
        let conn = connect(&target, &[], &[]).await.expect("connect");
        let out = run_sql(&conn.ctx, "SELECT count(*) FROM (VALUES (1), (2), (3)) t(x)")
            .await
            .expect("query");
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    });
}
