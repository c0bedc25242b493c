//! Churn backfills on a real process cluster: point-in-time correctness
//! against the naive per-date SQL, same output standalone, idempotent
//! reruns, kill -9 and resume, quality gates, and spec errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use sluice_client::backfill::BackfillOptions;
use sluice_client::datagen::churn::{ChurnConfig, TABLES};
use sluice_client::{Target, run_sql};
use sluice_tests::committed_dates;
use sluice_tests::{TestCluster, bin, workspace_root};

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
}

fn spec_path() -> PathBuf {
    workspace_root().join("sql/jobs/churn.yaml")
}

fn runtime() -> tokio::runtime::Runtime {
    sluice_proto::runtime().expect("runtime")
}

/// 300 users, 100 days from 2024-01-01: users sign up before and during the
/// range, some never act, tickets resolve days after creation.
fn generate(dir: &Path) {
    let cfg = ChurnConfig {
        users: 300,
        start: date("2024-01-01"),
        days: 100,
        seed: 11,
        ticket_rate: 0.03,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, dir).expect("generate");
}

fn options(data: &Path, out: &Path, target: Target, from: &str, to: &str) -> BackfillOptions {
    BackfillOptions {
        spec: spec_path(),
        from: date(from),
        to: date(to),
        target,
        data_dir: Some(data.to_path_buf()),
        output: Some(out.to_path_buf()),
        chunk_days: 16,
        parallel: 2,
        replace: false,
        settings: vec![],
        progress: false,
        token: None,
    }
}

const COLS: &str = "user_id, total_spend_30d, txn_count_7d, avg_txn_value_30d, days_since_last_login, \
                    page_views_30d, feature_use_count_30d, ticket_count_90d, avg_resolution_hours_90d, \
                    segment, tenure_days";

async fn local_ctx(data: &Path) -> SessionContext {
    let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
    for t in TABLES {
        ctx.register_parquet(
            t,
            &format!("{}/", data.join(t).display()),
            ParquetReadOptions::default(),
        )
        .await
        .expect("register");
    }
    ctx
}

async fn register_output(ctx: &SessionContext, name: &str, out: &Path) {
    sluice_tests::register_delta(ctx, name, out).await;
}

async fn output_rows(ctx: &SessionContext, table: &str, day: NaiveDate) -> Vec<RecordBatch> {
    run_sql(
        ctx,
        &format!("SELECT {COLS} FROM {table} WHERE feature_date = '{day}' ORDER BY user_id"),
    )
    .await
    .expect("read output")
}

/// Every file under `dir` with its size.
fn files(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.insert(p.strip_prefix(dir).expect("prefix").display().to_string() + "/", 0);
                stack.push(p);
            } else {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.insert(p.strip_prefix(dir).expect("prefix").display().to_string(), len);
            }
        }
    }
    out
}

#[test]
fn backfill_is_point_in_time_correct_idempotent_and_equal_standalone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data);
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let target = Target::Scheduler(cluster.scheduler_addr().parse().expect("addr"));
    let rt = runtime();
    let out = tmp.path().join("out");
    // From the first day of data: windows cross the start of data.
    let report = rt
        .block_on(sluice_client::backfill::run(&options(
            &data,
            &out,
            target.clone(),
            "2024-01-01",
            "2024-04-09",
        )))
        .unwrap_or_else(|e| panic!("backfill: {e}\n{}", cluster.logs()));
    assert!(report.ok);
    assert_eq!(report.dates_total, 100);
    assert_eq!(report.dates_committed, 100);
    assert_eq!(committed_dates(&out).len(), 100);
    assert!(report.quality.iter().all(|q| q.passed));
    assert!(report.rows > 0);

    rt.block_on(async {
        let local = local_ctx(&data).await;
        // The data has the edge cases the checks are about.
        let edge = run_sql(
            &local,
            "SELECT (SELECT count(*) FROM users WHERE signup_date > DATE '2024-01-01') AS mid_range_signups, \
                    (SELECT count(*) FROM users WHERE user_id NOT IN (SELECT user_id FROM transactions)) AS no_txn_users, \
                    (SELECT count(*) FROM tickets WHERE CAST(resolved_ts AS DATE) > CAST(created_ts AS DATE)) AS resolved_later",
        )
        .await
        .expect("edge cases");
        let text = sluice_client::verify::normalize(&edge).expect("normalize").join("");
        assert!(!text.split('|').any(|n| n == "0"), "data lacks an edge case: {text}");

        let conn = sluice_client::connect(&target, &[], &[]).await.expect("connect");
        register_output(&conn.ctx, "features", &out).await;
        for day in ["2024-01-01", "2024-01-02", "2024-01-31", "2024-02-29", "2024-03-31", "2024-04-09"] {
            let day = date(day);
            let naive = sluice_sql::job::churn_reference_sql(day);
            let expected = run_sql(&local, &format!("SELECT {COLS} FROM ({naive}) ORDER BY user_id")).await.expect("naive");
            let actual = output_rows(&conn.ctx, "features", day).await;
            let n: usize = expected.iter().map(|b| b.num_rows()).sum();
            assert!(n > 0, "{day}: no entities");
            sluice_client::verify::compare(&expected, &actual, true)
                .unwrap_or_else(|e| panic!("{day}: backfill differs from the naive reference: {e}"));
        }
    });

    // A rerun commits nothing and changes no file.
    let before = files(&out);
    let again = rt
        .block_on(sluice_client::backfill::run(&options(
            &data,
            &out,
            target.clone(),
            "2024-01-01",
            "2024-04-09",
        )))
        .expect("rerun");
    assert_eq!(again.dates_committed, 0);
    assert_eq!(again.dates_already_committed, 100);
    assert_eq!(files(&out), before, "a rerun changed the output");

    // Standalone (embedded cluster) gives the same rows.
    let out2 = tmp.path().join("out-standalone");
    let report = rt
        .block_on(sluice_client::backfill::run(&options(
            &data,
            &out2,
            Target::Standalone,
            "2024-03-20",
            "2024-04-09",
        )))
        .expect("standalone");
    assert_eq!(report.dates_committed, 21);
    // So does plain single-process DataFusion (`--local`).
    let out3 = tmp.path().join("out-local");
    let report = rt
        .block_on(sluice_client::backfill::run(&options(
            &data,
            &out3,
            Target::Local,
            "2024-03-20",
            "2024-04-09",
        )))
        .expect("local");
    assert_eq!(report.dates_committed, 21);
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        register_output(&ctx, "a", &out).await;
        register_output(&ctx, "b", &out2).await;
        register_output(&ctx, "c", &out3).await;
        let q = |t: &str| format!("SELECT feature_date, {COLS} FROM {t} WHERE feature_date >= '2024-03-20' ORDER BY feature_date, user_id");
        let a = run_sql(&ctx, &q("a")).await.expect("a");
        let b = run_sql(&ctx, &q("b")).await.expect("b");
        let c = run_sql(&ctx, &q("c")).await.expect("c");
        sluice_client::verify::compare(&a, &b, true).expect("standalone output equals cluster output");
        sluice_client::verify::compare(&a, &c, true).expect("local output equals cluster output");
    });
}

/// The CLI is SIGKILLed mid-backfill: the cluster completes the backfill
/// (followed again with `backfill watch`), a concurrent second backfill of
/// the same output is refused, and the output equals an undisturbed run.
#[test]
fn killed_cli_leaves_the_backfill_running_without_duplicates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data);
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let out = tmp.path().join("out");
    let args = |out: &Path| -> Vec<String> {
        vec![
            "backfill".into(),
            spec_path().display().to_string(),
            "--from".into(),
            "2024-01-20".into(),
            "--to".into(),
            "2024-04-09".into(),
            "--scheduler".into(),
            cluster.scheduler_addr().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--output".into(),
            out.display().to_string(),
            "--chunk-days".into(),
            "4".into(),
            "--parallel".into(),
            "1".into(),
            "--catalog".into(),
            tmp.path().join("catalog.json").display().to_string(),
        ]
    };
    let mut child = Command::new(bin("sluice"))
        .args(args(&out))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Kill it once some, but not all, dates are committed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = committed_dates(&out).len();
        if n >= 4 {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "backfill ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no date committed within 120 s\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let partial = committed_dates(&out).len();
    assert!(partial < 81, "the backfill finished before the kill ({partial} dates)");
    // The cluster owns the backfill: it goes on without the CLI, and a
    // second one writing the same output is refused, naming the first.
    let second = Command::new(bin("sluice")).args(args(&out)).output().expect("second");
    assert!(!second.status.success(), "a second backfill of the same output was accepted");
    let said = String::from_utf8_lossy(&second.stderr).into_owned();
    let id = said
        .split_whitespace()
        .find(|w| w.starts_with("bf-"))
        .unwrap_or_else(|| panic!("the refusal names no backfill: {said}"))
        .to_string();
    assert!(said.contains("is writing"), "{said}");
    let watched = Command::new(bin("sluice"))
        .args(["backfill", "watch", &id, "--scheduler", cluster.scheduler_addr(), "--json"])
        .output()
        .expect("watch");
    assert!(watched.status.success(), "watch: {}", String::from_utf8_lossy(&watched.stderr));
    let report: serde_json::Value = serde_json::from_slice(&watched.stdout).expect("report");
    assert_eq!(report["dates_committed"], 81, "{report}");
    let out = out.as_path();
    assert_eq!(committed_dates(out).len(), 81);
    // A rerun finds every date committed and writes nothing.
    let before = files(out);
    let rerun = Command::new(bin("sluice")).args(args(out)).arg("--json").output().expect("rerun");
    assert!(rerun.status.success(), "rerun failed: {}", String::from_utf8_lossy(&rerun.stderr));
    let report: serde_json::Value = serde_json::from_slice(&rerun.stdout).expect("report");
    assert_eq!(report["dates_committed"], 0, "{report}");
    assert_eq!(files(out), before);

    let clean = tmp.path().join("clean");
    let status = Command::new(bin("sluice")).args(args(&clean)).output().expect("clean run");
    assert!(
        status.status.success(),
        "clean run failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    runtime().block_on(async {
        let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        register_output(&ctx, "resumed", out).await;
        register_output(&ctx, "clean", &clean).await;
        let q = |t: &str| {
            format!("SELECT feature_date, {COLS} FROM {t} ORDER BY feature_date, user_id")
        };
        let a = run_sql(&ctx, &q("clean")).await.expect("clean");
        let b = run_sql(&ctx, &q("resumed")).await.expect("resumed");
        sluice_client::verify::compare(&a, &b, true)
            .expect("resumed output equals an undisturbed run (no duplicates, no gaps)");
    });
    // No file of a failed or superseded attempt is left behind.
    let orphans = sluice_tests::orphan_files(out);
    assert!(orphans.is_empty(), "attempt files no version names: {orphans:?}");
}

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(bin("sluice"))
        .args(args)
        .env_remove("SLUICE_SCHEDULER")
        // Committed outputs register in a catalog: keep it out of $HOME.
        .env(
            "SLUICE_CATALOG",
            std::env::temp_dir().join(format!("sluice-test-catalog-{}.json", std::process::id())),
        )
        .output()
        .expect("run sluice")
}

#[test]
fn failing_expectation_commits_nothing_and_names_the_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data);
    let spec = tmp.path().join("strict.yaml");
    let text = std::fs::read_to_string(spec_path()).expect("spec").replace(
        "{ type: between, column: total_spend_30d, min: 0 }",
        "{ type: between, column: total_spend_30d, min: 0, max: 5 }",
    );
    std::fs::write(&spec, text).expect("write");
    let out = tmp.path().join("out");
    let o = sluice(&[
        "backfill",
        &spec.display().to_string(),
        "--from",
        "2024-03-01",
        "--to",
        "2024-03-10",
        "--data-dir",
        &data.display().to_string(),
        "--output",
        &out.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a failing expectation must fail the job: {stderr}");
    assert!(
        stderr.contains("FAIL between")
            && stderr.contains("total_spend_30d")
            && stderr.contains("e.g."),
        "{stderr}"
    );
    assert!(committed_dates(&out).is_empty(), "a failing chunk was committed");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_backfill_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let cfg = ChurnConfig { users: 20, days: 10, ..ChurnConfig::default() };
    sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");
    let good = std::fs::read_to_string(spec_path()).expect("spec");
    let write = |name: &str, text: &str| -> String {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let data_s = data.display().to_string();
    let run = |spec: &str, from: &str, to: &str, data_dir: &str| {
        sluice(&[
            "backfill",
            spec,
            "--from",
            from,
            "--to",
            to,
            "--data-dir",
            data_dir,
            "--output",
            &tmp.path().join("o").display().to_string(),
        ])
    };
    let cases: Vec<(String, &str, &str, String, Vec<&str>)> = vec![
        (
            write("malformed.yaml", "name: x\nsources: [\n"),
            "2024-01-05",
            "2024-01-06",
            data_s.clone(),
            vec!["malformed.yaml", "line"],
        ),
        (
            write("fn.yaml", &good.replace("function: sum", "function: median")),
            "2024-01-05",
            "2024-01-06",
            data_s.clone(),
            vec!["fn.yaml", "median", "line"],
        ),
        (
            write(
                "col.yaml",
                &good.replace(
                    "column: amount\n    window: 30\n    default: 0",
                    "column: amount_usd\n    window: 30\n    default: 0",
                ),
            ),
            "2024-01-05",
            "2024-01-06",
            data_s.clone(),
            vec!["col.yaml", "features[0] (total_spend_30d).column", "amount_usd"],
        ),
        (
            write(
                "type.yaml",
                &good.replace(
                    "column: amount\n    window: 30\n  - name: last",
                    "column: ts\n    window: 30\n  - name: last",
                ),
            ),
            "2024-01-05",
            "2024-01-06",
            data_s.clone(),
            vec!["type.yaml", "avg_txn_value_30d", "needs a number"],
        ),
        (
            spec_path().display().to_string(),
            "2024-02-01",
            "2024-01-01",
            data_s.clone(),
            vec!["--from 2024-02-01 is after --to 2024-01-01"],
        ),
        (
            spec_path().display().to_string(),
            "2024-13-01",
            "2024-12-31",
            data_s.clone(),
            vec!["--from '2024-13-01' is not a date", "YYYY-MM-DD"],
        ),
        (
            spec_path().display().to_string(),
            "2024-01-05",
            "2024-01-06",
            "/no/such/data".into(),
            vec!["sources.", "/no/such/data", "does not exist"],
        ),
    ];
    for (spec, from, to, data_dir, expected) in cases {
        let o = run(&spec, from, to, &data_dir);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{spec}: succeeded");
        assert!(stderr.starts_with("error: "), "{spec}: {stderr}");
        for word in expected {
            assert!(stderr.contains(word), "{spec}: stderr lacks {word:?}: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(committed_dates(&tmp.path().join("o")).is_empty());
    }
}

#[test]
fn churn_generator_is_deterministic_and_skewable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = ChurnConfig { users: 500, days: 20, seed: 3, zipf: 1.2, ..ChurnConfig::default() };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    sluice_client::datagen::churn::generate(&cfg, &a).expect("a");
    sluice_client::datagen::churn::generate(&cfg, &b).expect("b");
    runtime().block_on(async {
        let ca = local_ctx(&a).await;
        let cb = local_ctx(&b).await;
        for t in TABLES {
            let q = format!("SELECT * FROM {t} ORDER BY 1, 2, 3");
            let ra = run_sql(&ca, &q).await.expect("a");
            let rb = run_sql(&cb, &q).await.expect("b");
            sluice_client::verify::compare(&ra, &rb, true).unwrap_or_else(|e| panic!("{t} differs between runs: {e}"));
        }
        // Zipf 1.2: the hottest user owns at least 20% of events; nobody acts before signing up.
        let share = run_sql(&ca, "SELECT CAST(max(n) AS DOUBLE) / sum(n) AS share FROM (SELECT user_id, count(*) AS n FROM events GROUP BY 1)").await.expect("share");
        let text = sluice_client::verify::normalize(&share).expect("n").join("");
        let share: f64 = text.parse().expect("float");
        assert!(share >= 0.2, "hottest user share {share}");
        let early = run_sql(&ca, "SELECT count(*) FROM events e JOIN users u USING (user_id) WHERE CAST(e.ts AS DATE) < u.signup_date").await.expect("early");
        assert_eq!(sluice_client::verify::normalize(&early).expect("n"), vec!["0".to_string()]);
    });
}

/// A salted backfill (hot users spread over salts by a hash of the day):
/// an executor that ran tasks of the chunk's job is SIGKILLed once that job
/// has finished a stage; the lost map output is recomputed (static planner)
/// from the same rows,
/// the salt puts every row in the same bucket again, and the features equal
/// the naive per-date SQL.
#[test]
fn executor_killed_mid_salted_backfill_gives_identical_results() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let cfg = ChurnConfig {
        users: 2000,
        start: date("2024-01-01"),
        days: 90,
        seed: 13,
        zipf: 1.2,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");
    let mut cluster = TestCluster::start_for_executor_loss(2, 1).expect("cluster");
    let scheduler = cluster.scheduler_addr().to_string();
    let target = Target::Scheduler(scheduler.parse().expect("addr"));
    let out = tmp.path().join("out");
    let mut opts = options(&data, &out, target, "2024-02-01", "2024-03-30");
    opts.chunk_days = 60;
    opts.parallel = 1;
    opts.settings = vec![
        ("datafusion.execution.target_partitions".into(), "8".into()),
        ("ballista.scheduler.max_partitions_per_task".into(), "1".into()),
        ("ballista.planner.adaptive.enabled".into(), "false".into()),
    ];
    let rt = runtime();
    let text = rt.block_on(sluice_client::backfill::explain(&opts, false)).expect("explain");
    assert!(text.contains("-- salted tiles aggregation on user_id: "), "not salted:\n{text}");

    let (report, killed) = rt.block_on(async {
        let before: Vec<String> =
            sluice_tests::scheduler_jobs(&scheduler).await.into_iter().map(|j| j.id).collect();
        let run_opts = opts.clone();
        let run = tokio::spawn(async move { sluice_client::backfill::run(&run_opts).await });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut killed = None;
        while Instant::now() < deadline && !run.is_finished() {
            // The chunk's write job (scan, tiles, write: 3 stages; the
            // checks before it are smaller jobs), once its scan is done.
            let jobs = sluice_tests::scheduler_jobs(&scheduler).await;
            if let Some(job) = jobs.iter().rev().find(|j| {
                !before.contains(&j.id)
                    && j.name.starts_with("sluice backfill")
                    && j.num_stages >= 3
            }) && job.status == "Running"
                && job.completed_stages >= 1
                // An executor that ran a map task of it: its shuffle output
                // is lost with it (Ballista logs `[TID job/stage.attempt/…]`).
                && let Some(victim) = cluster
                    .executors
                    .iter()
                    .position(|e| e.log_text().contains(&format!("TID {}/", job.id)))
            {
                killed = Some((job.id.clone(), job.completed_stages, victim));
                cluster.executors[victim].kill();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = tokio::time::timeout(Duration::from_secs(180), run)
            .await
            .unwrap_or_else(|_| panic!("the backfill stalled after the kill\n{}", cluster.logs()))
            .expect("join")
            .unwrap_or_else(|e| panic!("backfill failed after the kill: {e}\n{}", cluster.logs()));
        (report, killed)
    });
    let (job, done, victim) =
        killed.expect("no running chunk job was seen: nothing was killed mid-job");
    assert!(report.ok && report.dates_committed == 59, "{report:?}");
    assert!(
        cluster.scheduler.log_text().contains("Removing executor"),
        "the scheduler never removed executor-{victim}:\n{}",
        cluster.logs()
    );
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        register_output(&ctx, "out", &out).await;
        let local = local_ctx(&data).await;
        for day in ["2024-02-01", "2024-03-01", "2024-03-30"] {
            let naive = sluice_sql::job::churn_reference_sql(date(day));
            let expected =
                run_sql(&local, &format!("SELECT {COLS} FROM ({naive}) ORDER BY user_id"))
                    .await
                    .expect("naive");
            let actual = output_rows(&ctx, "out", date(day)).await;
            sluice_client::verify::compare(&expected, &actual, true).unwrap_or_else(|e| {
                panic!("{day}: differs from the naive reference after killing executor-{victim} in job {job} ({done} stage(s) done): {e}")
            });
        }
    });
}

/// The phase of a chunk in which an executor is lost.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The chunk's write job, once a stage of it is done.
    Write,
    /// A quality-check job of the chunk, while it runs.
    Check,
    /// After a chunk's checks finished, before the next chunk's write job.
    BetweenCheckAndCommit,
}

/// An executor is lost (SIGKILL, or SIGTERM) in one phase of a chunk of a
/// backfill with the adaptive planner on (the default): the backfill
/// completes with every date committed once and the features equal the
/// naive per-date SQL. (Issue 20: a check stopped by an executor loss was
/// retried and its staged table's name was still registered, "The table
/// stg_… already exists".)
fn executor_lost_in_phase(phase: Phase, sigkill: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let cfg = ChurnConfig {
        users: 2000,
        start: date("2024-01-01"),
        days: 90,
        seed: 23,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");
    let mut cluster = TestCluster::start_for_executor_loss(3, 1).expect("cluster");
    let scheduler = cluster.scheduler_addr().to_string();
    let target = Target::Scheduler(scheduler.parse().expect("addr"));
    let out = tmp.path().join("out");
    let mut opts = options(&data, &out, target, "2024-02-01", "2024-03-30");
    opts.chunk_days = 15;
    opts.parallel = 1;
    opts.settings = vec![("datafusion.execution.target_partitions".into(), "6".into())];
    let rt = runtime();
    let (report, lost) = rt.block_on(async {
        let before: Vec<String> =
            sluice_tests::scheduler_jobs(&scheduler).await.into_iter().map(|j| j.id).collect();
        let run_opts = opts.clone();
        let run = tokio::spawn(async move { sluice_client::backfill::run(&run_opts).await });
        let deadline = Instant::now() + Duration::from_secs(150);
        let mut lost = None;
        while Instant::now() < deadline && !run.is_finished() && lost.is_none() {
            let jobs: Vec<_> = sluice_tests::scheduler_jobs(&scheduler)
                .await
                .into_iter()
                .filter(|j| !before.contains(&j.id) && j.name.starts_with("sluice backfill"))
                .collect();
            // Jobs in submission order: each chunk runs its write job,
            // then its check job (stage counts are no guide: the adaptive
            // planner reports them as it plans).
            let job = match phase {
                Phase::Write => {
                    jobs.first().filter(|j| j.status == "Running" && j.completed_stages >= 1)
                }
                Phase::Check => jobs.get(1).filter(|j| j.status == "Running"),
                // Polled every 10 ms: caught as the client commits.
                Phase::BetweenCheckAndCommit => jobs.get(1).filter(|j| j.status == "Completed"),
            };
            if let Some(job) = job {
                // An executor that ran tasks of that job (for the phase
                // between jobs: one that ran the write job's).
                let id = if phase == Phase::BetweenCheckAndCommit {
                    jobs[0].id.clone()
                } else {
                    job.id.clone()
                };
                if let Some(victim) = cluster
                    .executors
                    .iter()
                    .position(|e| e.log_text().contains(&format!("TID {id}/")))
                {
                    if sigkill {
                        cluster.executors[victim].kill();
                    } else {
                        cluster.executors[victim].terminate(Duration::from_secs(30));
                    }
                    lost = Some((job.id.clone(), job.status.clone(), victim));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = tokio::time::timeout(Duration::from_secs(240), run)
            .await
            .unwrap_or_else(|_| panic!("the backfill stalled after the loss\n{}", cluster.logs()))
            .expect("join")
            .unwrap_or_else(|e| panic!("backfill failed after the loss: {e}\n{}", cluster.logs()));
        (report, lost)
    });
    let (job, status, victim) = lost.unwrap_or_else(|| {
        panic!("phase {phase:?} was never seen: nothing was lost\n{}", cluster.logs())
    });
    eprintln!("lost executor-{victim} in {phase:?}: job {job} ({status})");
    assert!(report.ok && report.dates_committed == 59, "{report:?}");
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        register_output(&ctx, "out", &out).await;
        let counted = run_sql(&ctx, "SELECT count(DISTINCT feature_date), count(*) FROM out")
            .await
            .expect("count");
        let local = local_ctx(&data).await;
        for day in ["2024-02-01", "2024-02-20", "2024-03-30"] {
            let naive = sluice_sql::job::churn_reference_sql(date(day));
            let expected =
                run_sql(&local, &format!("SELECT {COLS} FROM ({naive}) ORDER BY user_id"))
                    .await
                    .expect("naive");
            let actual = output_rows(&ctx, "out", date(day)).await;
            sluice_client::verify::compare(&expected, &actual, true).unwrap_or_else(|e| {
                panic!("{day}: differs from the naive reference after losing executor-{victim} in {phase:?} (job {job}, {status}): {e}")
            });
        }
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&counted)
            .expect("format")
            .to_string();
        assert!(text.contains("| 59 "), "every date once: {text}");
    });
}

#[test]
fn executor_sigkilled_in_a_chunk_write_job() {
    executor_lost_in_phase(Phase::Write, true);
}

#[test]
fn executor_sigtermed_in_a_chunk_write_job() {
    executor_lost_in_phase(Phase::Write, false);
}

#[test]
fn executor_sigkilled_in_a_chunk_check() {
    executor_lost_in_phase(Phase::Check, true);
}

#[test]
fn executor_sigtermed_in_a_chunk_check() {
    executor_lost_in_phase(Phase::Check, false);
}

#[test]
fn executor_sigkilled_between_check_and_commit() {
    executor_lost_in_phase(Phase::BetweenCheckAndCommit, true);
}

#[test]
fn executor_sigtermed_between_check_and_commit() {
    executor_lost_in_phase(Phase::BetweenCheckAndCommit, false);
}

/// Zipf-skewed data (the hottest user holds over 20% of events): the backfill
/// gives the same rows with skew handling on (hot users salted by day,
/// values combined per entity and day before the shuffle) and off, equal to
/// the naive reference, and `--explain` names the hot users and the salting.
#[test]
fn skewed_backfill_is_equal_with_skew_handling_on_and_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let cfg = ChurnConfig {
        users: 300,
        start: date("2024-01-01"),
        days: 100,
        seed: 5,
        zipf: 1.2,
        ticket_rate: 0.03,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");
    let rt = runtime();

    // --explain names the hot users and what the plan does about them.
    let mut local_opts =
        options(&data, &tmp.path().join("unused"), Target::Local, "2024-02-01", "2024-04-09");
    let text = rt.block_on(sluice_client::backfill::explain(&local_opts, false)).expect("explain");
    assert!(text.contains("hot keys") && text.contains("user_id=1 ("), "{text}");
    assert!(text.contains("skew handling on") && !text.contains(";combine=0"), "{text}");
    // ... salts them: grouped by (entity, salt), windows merged per day.
    assert!(text.contains("-- salted tiles aggregation on user_id: "), "{text}");
    assert!(text.contains("GROUP BY __k, __s") && text.contains("sluice_hot_salts("), "{text}");
    assert!(text.contains("sluice_merge_salted(") && text.contains("GROUP BY __dt"), "{text}");
    // ... and that the users dimension join is expected to be broadcast.
    assert!(
        text.lines().any(|l| l.starts_with("-- Right join on") && l.contains("broadcast users (")),
        "{text}"
    );
    local_opts.settings = vec![("sluice.skew.enabled".into(), "false".into())];
    let text =
        rt.block_on(sluice_client::backfill::explain(&local_opts, false)).expect("explain off");
    assert!(text.contains("skew handling off") && text.contains(";combine=0'"), "{text}");
    assert!(!text.contains("sluice_hot_salt"), "salted with skew handling off: {text}");

    let cluster = TestCluster::start(2, 2).expect("cluster");
    let target = Target::Scheduler(cluster.scheduler_addr().parse().expect("addr"));

    // On the cluster, --explain --analyze runs the first chunk and shows the
    // plan the scheduler executed: the users join broadcast, and the hot users.
    let unused = tmp.path().join("unused-cluster");
    let explain_opts = options(&data, &unused, target.clone(), "2024-02-01", "2024-02-10");
    let text = rt
        .block_on(sluice_client::backfill::explain(&explain_opts, true))
        .unwrap_or_else(|e| panic!("explain --analyze: {e}\n{}", cluster.logs()));
    assert!(text.contains("hot keys") && text.contains("user_id=1 ("), "{text}");
    // The executed plan groups the tiles by (entity, salt).
    assert!(
        text.lines().any(|l| l
            .contains("AggregateExec: mode=FinalPartitioned, gby=[__k@0 as __k, __s@1 as __s]")),
        "{text}"
    );
    let broadcast = text
        .lines()
        .find(|l| l.starts_with("-- broadcast join (Right)"))
        .unwrap_or_else(|| panic!("no broadcast join in the executed plan:\n{text}"));
    assert!(broadcast.contains("users"), "the broadcast side is not users: {broadcast}");
    assert!(text.contains("HashJoinExec: mode=CollectLeft, join_type=Right"), "{text}");
    assert!(!unused.exists(), "--explain --analyze wrote to the output");

    let mut outs = Vec::new();
    for skew in ["true", "false"] {
        let out = tmp.path().join(format!("out-skew-{skew}"));
        let mut opts = options(&data, &out, target.clone(), "2024-02-01", "2024-04-09");
        opts.settings = vec![
            ("sluice.skew.enabled".into(), skew.into()),
            ("datafusion.execution.target_partitions".into(), "8".into()),
        ];
        let report = rt
            .block_on(sluice_client::backfill::run(&opts))
            .unwrap_or_else(|e| panic!("backfill (skew {skew}): {e}\n{}", cluster.logs()));
        assert!(report.ok && report.dates_committed == 69, "{report:?}");
        outs.push(out);
    }
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        register_output(&ctx, "on", &outs[0]).await;
        register_output(&ctx, "off", &outs[1]).await;
        let q = |t: &str| {
            format!("SELECT feature_date, {COLS} FROM {t} ORDER BY feature_date, user_id")
        };
        let on = run_sql(&ctx, &q("on")).await.expect("on");
        let off = run_sql(&ctx, &q("off")).await.expect("off");
        assert!(on.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
        sluice_client::verify::compare(&on, &off, true).expect("skew on equals skew off");

        let local = local_ctx(&data).await;
        for day in ["2024-02-01", "2024-03-15", "2024-04-09"] {
            let naive = sluice_sql::job::churn_reference_sql(date(day));
            let expected =
                run_sql(&local, &format!("SELECT {COLS} FROM ({naive}) ORDER BY user_id"))
                    .await
                    .expect("naive");
            let actual = output_rows(&ctx, "on", date(day)).await;
            sluice_client::verify::compare(&expected, &actual, true).unwrap_or_else(|e| {
                panic!("{day}: skewed backfill differs from the naive reference: {e}")
            });
        }
    });
}

/// How a drained executor left, and what the scheduler counted.
struct Drained {
    victim: usize,
    job: String,
    exit: Option<std::process::ExitStatus>,
    took: Duration,
    summary: String,
    stage_reruns: f64,
    moved: f64,
    /// The scheduler's warnings and drain lines, for failure messages.
    log: String,
}

/// A backfill on 3 executors (static planner, so that stage attempts are
/// the scheduler's and comparable): once the chunk's write job has finished
/// its map stage, an executor that ran map tasks of it gets SIGTERM with
/// `--drain-deadline deadline_secs`. The backfill must complete with output
/// equal to the naive per-date SQL.
fn drain_mid_chunk(deadline_secs: u64, scheduler_args: &[&str]) -> Drained {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let cfg = ChurnConfig {
        users: 2000,
        start: date("2024-01-01"),
        days: 90,
        seed: 29,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");
    let deadline = deadline_secs.to_string();
    let mut sched_args = vec!["--executor-timeout-seconds", "5"];
    sched_args.extend_from_slice(scheduler_args);
    let mut cluster = TestCluster::start_full(
        3,
        1,
        &sched_args,
        &["--heartbeat-interval-seconds", "1", "--drain-deadline", &deadline],
    )
    .expect("cluster");
    let scheduler = cluster.scheduler_addr().to_string();
    let target = Target::Scheduler(scheduler.parse().expect("addr"));
    let out = tmp.path().join("out");
    let mut opts = options(&data, &out, target, "2024-02-01", "2024-03-30");
    opts.chunk_days = 60;
    opts.parallel = 1;
    opts.settings = vec![
        ("datafusion.execution.target_partitions".into(), "6".into()),
        ("ballista.scheduler.max_partitions_per_task".into(), "1".into()),
        ("ballista.planner.adaptive.enabled".into(), "false".into()),
    ];
    let rt = runtime();
    let (report, drained) = rt.block_on(async {
        let before: Vec<String> =
            sluice_tests::scheduler_jobs(&scheduler).await.into_iter().map(|j| j.id).collect();
        let run_opts = opts.clone();
        let run = tokio::spawn(async move { sluice_client::backfill::run(&run_opts).await });
        let end = Instant::now() + Duration::from_secs(150);
        let mut drained = None;
        while Instant::now() < end && !run.is_finished() && drained.is_none() {
            let jobs = sluice_tests::scheduler_jobs(&scheduler).await;
            if let Some(job) = jobs.iter().rev().find(|j| {
                !before.contains(&j.id)
                    && j.name.starts_with("sluice backfill")
                    && j.num_stages >= 3
            }) && job.status == "Running"
                && job.completed_stages >= 1
                && let Some(victim) = cluster
                    .executors
                    .iter()
                    .position(|e| e.log_text().contains(&format!("TID {}/", job.id)))
            {
                let (exit, took) = cluster.executors[victim]
                    .sigterm_and_wait(Duration::from_secs(deadline_secs + 30));
                drained = Some((victim, job.id.clone(), exit, took));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = tokio::time::timeout(Duration::from_secs(240), run)
            .await
            .unwrap_or_else(|_| panic!("the backfill stalled after the drain\n{}", cluster.logs()))
            .expect("join")
            .unwrap_or_else(|e| panic!("backfill failed after the drain: {e}\n{}", cluster.logs()));
        (report, drained)
    });
    let (victim, job, exit, took) = drained
        .unwrap_or_else(|| panic!("no chunk write job was seen running\n{}", cluster.logs()));
    assert!(report.ok && report.dates_committed == 59, "{report:?}\n{}", cluster.logs());
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        register_output(&ctx, "out", &out).await;
        let local = local_ctx(&data).await;
        for day in ["2024-02-01", "2024-03-01", "2024-03-30"] {
            let naive = sluice_sql::job::churn_reference_sql(date(day));
            let expected =
                run_sql(&local, &format!("SELECT {COLS} FROM ({naive}) ORDER BY user_id"))
                    .await
                    .expect("naive");
            let actual = output_rows(&ctx, "out", date(day)).await;
            sluice_client::verify::compare(&expected, &actual, true).unwrap_or_else(|e| {
                panic!("{day}: differs from the naive reference after draining executor-{victim} in job {job}: {e}")
            });
        }
    });
    let metric = |name: &str| {
        rt.block_on(sluice_tests::scheduler_metric(&scheduler, name))
            .unwrap_or_else(|| panic!("no {name} on /metrics"))
    };
    let summary = cluster.executors[victim]
        .stdout_text()
        .lines()
        .find(|l| l.starts_with("sluice-executor drained"))
        .unwrap_or_default()
        .to_string();
    Drained {
        victim,
        job,
        exit,
        took,
        summary,
        stage_reruns: metric("sluice_drain_events_total{event=\"stage_reruns\"}"),
        moved: metric("sluice_drain_events_total{event=\"moved\"}"),
        log: cluster
            .scheduler
            .log_text()
            .lines()
            .filter(|l| {
                l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("drain")
                    || l.contains("Removing executor")
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// SIGTERM in the middle of a chunk, after its map stage finished: the
/// executor moves its shuffle output to a peer and exits 0 before its
/// deadline; the scheduler points readers at the peer, so no stage runs
/// again (its stage attempts), and the features are the reference's.
#[test]
fn executor_drained_mid_chunk_moves_its_output_and_no_stage_reruns() {
    let d = drain_mid_chunk(20, &[]);
    assert!(d.exit.is_some_and(|s| s.success()), "exit {:?} after {:?}", d.exit, d.took);
    assert!(d.took < Duration::from_secs(20), "exited after {:?}, past the 20 s deadline", d.took);
    assert!(
        d.summary.contains("recompute=false"),
        "executor-{} in job {}: {}",
        d.victim,
        d.job,
        d.summary
    );
    assert!(!d.summary.contains(" 0 of "), "nothing moved: {}", d.summary);
    assert_eq!(d.moved, 1.0, "drains that moved everything; {}", d.summary);
    assert_eq!(d.stage_reruns, 0.0, "a stage ran again after the drain; {}\n{}", d.summary, d.log);
}

/// The same with a deadline too short to move anything (2 s, and the
/// scheduler told that executors send each other 1 KiB/s): the executor
/// still exits 0 in time, its output is recomputed and the backfill
/// completes with the reference's features.
#[test]
fn executor_drained_with_no_time_to_move_is_recomputed() {
    let d = drain_mid_chunk(2, &["--drain-handoff-bytes-per-second", "1024"]);
    assert!(d.exit.is_some_and(|s| s.success()), "exit {:?} after {:?}", d.exit, d.took);
    assert!(d.took < Duration::from_secs(2), "exited after {:?} with a 2 s deadline", d.took);
    assert!(d.summary.contains("recompute=true"), "{}", d.summary);
    assert_eq!(d.moved, 0.0, "{}", d.summary);
    // Left to Ballista's recovery: removed as lost (what it wrote is
    // recomputed, what it ran is rescheduled).
    assert!(
        d.log.contains("heartbeat timed out") || d.log.contains("Removing executor"),
        "the drained executor was not handed to recovery: {}\n{}",
        d.summary,
        d.log
    );
}
