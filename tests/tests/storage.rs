//! Backfills on object storage into Delta tables, with real S3 servers
//! (SeaweedFS and moto's server) and real external readers (Python
//! `deltalake` and `polars`).
//!
//! The first test is the template of a multi-node deployment: scheduler and
//! executors each in a network namespace of their own, with separate work
//! folders, input and output only on the S3 server. It needs root (`ip
//! netns`); it fails, never skips, without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use sluice_client::connect::run_sql;
use sluice_tests::s3::{self, Kind, Outage, S3Server};
use sluice_tests::{Proc, TestCluster, bin, workspace_root};

const COLS: &str = "user_id, total_spend_30d, txn_count_7d, avg_txn_value_30d, days_since_last_login, \
                    page_views_30d, feature_use_count_30d, ticket_count_90d, avg_resolution_hours_90d, \
                    segment, tenure_days";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt")
}

fn spec() -> PathBuf {
    workspace_root().join("sql/jobs/churn.yaml")
}

fn generate(dir: &Path) {
    let cfg = sluice_client::datagen::churn::ChurnConfig {
        users: 300,
        start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        days: 60,
        seed: 11,
        ..Default::default()
    };
    sluice_client::datagen::churn::generate(&cfg, dir).expect("generate");
}

/// `sluice ARGS…` with the server's `AWS_*` variables.
fn sluice(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(bin("sluice")).envs(env.iter().cloned()).args(args).output().expect("sluice")
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A local DataFusion session that reads the server's bucket.
fn s3_ctx(server: &S3Server) -> SessionContext {
    let mut config = sluice_sql::session::local_session_config();
    for (k, v) in sluice_sql::storage::s3_settings_from(&server.env()) {
        config = config.set_str(&k, &v);
    }
    let runtime = sluice_sql::session::runtime_env(&config, None).expect("runtime");
    SessionContext::new_with_config_rt(config, runtime)
}

/// Every date of `from..=to` is in the Delta table at `out` exactly once
/// per user, each equal to the naive per-date SQL over the local copy of
/// the input.
async fn assert_equals_naive(ctx: &SessionContext, data: &Path, out: &str, from: &str, to: &str) {
    for t in ["users", "transactions", "events", "tickets"] {
        ctx.register_parquet(
            t,
            &format!("{}/", data.join(t).display()),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await
        .expect("register input");
    }
    let table = sluice_sql::tables::TableSource::new(
        "features",
        out,
        Some(sluice_sql::tables::TableFormat::Delta),
    )
    .expect("source");
    table.register(ctx).await.expect("register output");
    let dup = run_sql(
        ctx,
        "SELECT count(*) FROM (SELECT user_id, feature_date FROM features \
         GROUP BY user_id, feature_date HAVING count(*) > 1)",
    )
    .await
    .expect("duplicates");
    assert_eq!(sluice_client::verify::normalize(&dup).expect("n"), vec!["0".to_string()]);
    let from = NaiveDate::parse_from_str(from, "%Y-%m-%d").expect("from");
    let to = NaiveDate::parse_from_str(to, "%Y-%m-%d").expect("to");
    for day in from.iter_days().take_while(|d| *d <= to) {
        let naive = sluice_sql::job::churn_reference_sql(day);
        let expected = run_sql(ctx, &format!("SELECT {COLS} FROM ({naive}) ORDER BY user_id"))
            .await
            .expect("naive");
        let actual = run_sql(
            ctx,
            &format!("SELECT {COLS} FROM features WHERE feature_date = '{day}' ORDER BY user_id"),
        )
        .await
        .expect("output");
        assert!(expected.iter().map(|b| b.num_rows()).sum::<usize>() > 0, "{day}: no entities");
        sluice_client::verify::compare(&expected, &actual, true)
            .unwrap_or_else(|e| panic!("{day}: the Delta table differs from the naive SQL: {e}"));
    }
}

/// Python `deltalake` and `polars` read the table: (version, rows,
/// distinct (user, date) pairs, dates).
fn python_reads(server: &S3Server, url: &str) -> (i64, u64, u64, u64) {
    let python =
        std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "/var/tmp/sluice-venv/bin/python".into());
    let script = format!(
        r#"
import json, deltalake, polars as pl
so = json.loads('{opts}')
t = deltalake.DeltaTable('{url}', storage_options=so)
df = pl.read_delta('{url}', storage_options=so)
pairs = df.select(['user_id', 'feature_date']).unique().height
print(t.version(), df.height, pairs, df['feature_date'].n_unique())
"#,
        opts = server.python_options(),
    );
    let o = Command::new(&python).args(["-c", &script]).output().unwrap_or_else(|e| {
        panic!("{python}: {e}; run scripts/python-venv.sh (deltalake and polars)")
    });
    let out = ok(&o, "python deltalake/polars");
    let n: Vec<i64> = out.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(n.len(), 4, "{out}");
    (n[0], n[1] as u64, n[2] as u64, n[3] as u64)
}

fn backfill_args<'a>(
    data: &'a str,
    out: &'a str,
    from: &'a str,
    to: &'a str,
    scheduler: &'a str,
) -> Vec<&'a str> {
    vec![
        "backfill",
        "SPEC",
        "--from",
        from,
        "--to",
        to,
        "--data-dir",
        data,
        "--output",
        out,
        "--chunk-days",
        "4",
        "--parallel",
        "2",
        "--no-register",
        "--json",
        "--scheduler",
        scheduler,
    ]
}

fn run_backfill(env: &[(String, String)], args: &[&str]) -> Output {
    let spec = spec().display().to_string();
    let args: Vec<&str> =
        args.iter().map(|a| if *a == "SPEC" { spec.as_str() } else { a }).collect();
    sluice(env, &args)
}

// ---------------------------------------------------------------------------
// A cluster in separate network namespaces.

/// A bridge in this namespace and one namespace per process, joined to it
/// by veth pairs: `10.77.X.1` is this side, `10.77.X.2..` the namespaces.
struct Netns {
    names: Vec<String>,
    bridge: String,
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("ip: {e}"));
    assert!(
        o.status.success(),
        "ip {}: {}; the multi-host tests need root (ip netns, veth)",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Netns {
    /// `count` namespaces on subnet 10.77.`net`.0/24.
    fn create(net: u8, count: usize) -> Self {
        let tag = format!("{}{}", std::process::id() % 10000, net);
        let bridge = format!("sb{tag}");
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.77.{net}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let mut names = Vec::new();
        for i in 0..count {
            let ns = format!("sn{tag}x{i}");
            let (a, b) = (format!("sv{tag}a{i}"), format!("sv{tag}b{i}"));
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "master", &bridge]);
            ip(&["link", "set", &a, "up"]);
            ip(&["link", "set", &b, "netns", &ns]);
            let addr = format!("10.77.{net}.{}/24", i + 2);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &b]);
            ip(&["-n", &ns, "link", "set", &b, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            names.push(ns);
        }
        Self { names, bridge }
    }

    fn addr(net: u8, i: usize) -> String {
        format!("10.77.{net}.{}", i + 2)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

#[test]
fn churn_backfill_from_s3_to_delta_in_separate_network_namespaces() {
    const NET: u8 = 16;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data);
    let netns = Netns::create(NET, 3);
    let host = format!("10.77.{NET}.1");
    let server = S3Server::start(Kind::Seaweed, &host, &tmp.path().join("seaweed")).expect("weed");
    assert!(server.upload(&data, "raw").expect("upload") >= 4);
    // Scheduler in namespace 0, executors in 1 and 2; each its own folder.
    let deadline = Duration::from_secs(60);
    let in_ns = |ns: &str, binary: &str, args: Vec<String>| -> Vec<String> {
        let mut v =
            vec!["netns".into(), "exec".into(), ns.into(), bin(binary).display().to_string()];
        v.extend(args);
        v
    };
    let sched_dir = tmp.path().join("scheduler");
    std::fs::create_dir_all(&sched_dir).expect("dir");
    let scheduler = Proc::spawn(
        "scheduler",
        Path::new("/usr/sbin/ip")
            .exists()
            .then(|| Path::new("/usr/sbin/ip"))
            .unwrap_or(Path::new("ip")),
        &in_ns(
            &netns.names[0],
            "sluice-scheduler",
            vec![
                "--bind".into(),
                format!("{}:0", Netns::addr(NET, 0)),
                "--min-ready-executors".into(),
                "2".into(),
            ],
        ),
        &sched_dir,
        deadline,
    )
    .expect("scheduler");
    let mut executors = Vec::new();
    for i in 1..=2 {
        let dir = tmp.path().join(format!("executor-{i}"));
        std::fs::create_dir_all(&dir).expect("dir");
        executors.push(
            Proc::spawn(
                &format!("executor-{i}"),
                Path::new("ip"),
                &in_ns(
                    &netns.names[i],
                    "sluice-executor",
                    vec![
                        "--scheduler".into(),
                        scheduler.addr.clone(),
                        "--bind".into(),
                        format!("{}:0", Netns::addr(NET, i)),
                        "--vcores".into(),
                        "2".into(),
                        "--work-dir".into(),
                        dir.join("work").display().to_string(),
                    ],
                ),
                &dir,
                deadline,
            )
            .expect("executor"),
        );
    }
    sluice_tests::wait_ready(&scheduler.addr, deadline).expect("cluster ready");
    let env = server.env();
    let out = "s3://lake/features";
    let o = run_backfill(
        &env,
        &backfill_args("s3://lake/raw", out, "2024-01-25", "2024-02-20", &scheduler.addr),
    );
    let logs = || {
        let mut s = scheduler.log_text();
        for e in &executors {
            s.push_str(&e.log_text());
        }
        s
    };
    assert!(o.status.success(), "backfill: {}\n{}", String::from_utf8_lossy(&o.stderr), logs());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report");
    assert_eq!(report["dates_committed"], 27, "{report}");
    // Nothing of it on any local disk: only the S3 server has the table.
    for dir in ["scheduler", "executor-1", "executor-2"] {
        let parquet =
            walk(&tmp.path().join(dir)).into_iter().filter(|p| p.ends_with(".parquet")).count();
        assert_eq!(parquet, 0, "{dir} holds Parquet files");
    }
    assert!(server.keys("features/_delta_log").expect("log").len() >= 2);
    let (version, rows, pairs, dates) = python_reads(&server, out);
    assert!(version >= 1, "{version}");
    assert_eq!((rows, dates), (pairs, 27), "python sees duplicates or missing dates");
    rt().block_on(assert_equals_naive(&s3_ctx(&server), &data, out, "2024-01-25", "2024-02-20"));
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Faults, on both servers.

/// The S3 endpoint goes away mid-backfill: chunks fail with a retryable
/// error and are retried; after it returns the backfill completes with each
/// date once, nothing half-visible.
fn s3_outage_mid_backfill(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data);
    let server = S3Server::start(kind, "127.0.0.1", &tmp.path().join("s3")).expect("s3");
    server.upload(&data, "raw").expect("upload");
    let proxy = Outage::start(&server.endpoint).expect("proxy");
    let env = server.env_for(&proxy.endpoint);
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let out = "s3://lake/outage";
    let args =
        backfill_args("s3://lake/raw", out, "2024-01-05", "2024-02-05", cluster.scheduler_addr());
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let spec = spec().display().to_string();
    for a in &mut args {
        if a == "SPEC" {
            *a = spec.clone();
        }
    }
    args.retain(|a| a != "--parallel" && a != "2");
    args.extend(["--parallel".into(), "1".into()]);
    let child = Command::new(bin("sluice"))
        .envs(env.iter().cloned())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("backfill");
    // Cut the endpoint once the first chunk is committed, for 8 s: longer
    // than the store client's own retries (1.5 s), so requests fail and
    // tasks or chunks are retried.
    let log = server.keys("outage/_delta_log");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = server.keys("outage/_delta_log").map(|k| k.len()).unwrap_or(0);
        if n >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no chunk committed in 120 s ({log:?})\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next chunk's write job is running now.
    std::thread::sleep(Duration::from_millis(300));
    proxy.cut();
    std::thread::sleep(Duration::from_secs(8));
    proxy.restore();
    let o = child.wait_with_output().expect("wait");
    assert!(
        o.status.success(),
        "{kind:?}: the backfill did not survive the outage: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        cluster.logs()
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report");
    assert_eq!(report["dates_committed"], 32, "{report}");
    // The outage failed requests: chunks were resubmitted by the runner,
    // or tasks by Ballista.
    assert!(
        cluster.log_contains("resubmitting") || cluster.log_contains("error sending request"),
        "{kind:?}: the outage made nothing fail and retry\n{}",
        cluster.logs()
    );
    let (_, rows, pairs, dates) = python_reads(&server, out);
    assert_eq!((rows, dates), (pairs, 32));
    rt().block_on(assert_equals_naive(&s3_ctx(&server), &data, out, "2024-01-05", "2024-02-05"));
}

#[test]
fn s3_outage_mid_backfill_seaweedfs() {
    s3_outage_mid_backfill(Kind::Seaweed);
}

#[test]
fn s3_outage_mid_backfill_moto() {
    s3_outage_mid_backfill(Kind::Moto);
}

/// Two backfills of overlapping dates race on one table: both finish, no
/// (user, date) twice, Python reads the log cleanly; then a rerun with a
/// changed spec replaces the values while the earlier version still reads
/// the old ones (by version and by timestamp).
fn racing_backfills_and_time_travel(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data);
    let server = S3Server::start(kind, "127.0.0.1", &tmp.path().join("s3")).expect("s3");
    server.upload(&data, "raw").expect("upload");
    let env = server.env();
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let out = "s3://lake/race";
    let spec = spec().display().to_string();
    let spawn = |from: &str, to: &str| {
        let mut args = backfill_args("s3://lake/raw", out, from, to, cluster.scheduler_addr());
        args[1] = spec.as_str();
        args.push("--replace");
        Command::new(bin("sluice"))
            .envs(env.iter().cloned())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    // The scheduler refuses a second backfill of one output while one
    // runs; two schedulers' backfills race through the store only. Here:
    // one cluster, one table, and one backfill through `--local` (plain
    // DataFusion in the CLI's process), both committing to the same log.
    let a = spawn("2024-01-10", "2024-02-10");
    let mut local_args = backfill_args("s3://lake/raw", out, "2024-01-20", "2024-02-20", "");
    local_args[1] = spec.as_str();
    local_args.truncate(local_args.len() - 2);
    local_args.extend(["--local", "--replace"]);
    let b = Command::new(bin("sluice"))
        .envs(env.iter().cloned())
        .args(&local_args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn local");
    for (name, child) in [("cluster", a), ("local", b)] {
        let o = child.wait_with_output().expect("wait");
        assert!(
            o.status.success(),
            "{kind:?} {name} backfill: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            cluster.logs()
        );
    }
    let (v1, rows, pairs, dates) = python_reads(&server, out);
    assert_eq!((rows, dates), (pairs, 42), "{kind:?}: duplicates after the race");
    rt().block_on(assert_equals_naive(&s3_ctx(&server), &data, out, "2024-01-10", "2024-02-20"));

    // Time travel: a rerun with a changed spec (a 3-day count instead of 7).
    let changed = tmp.path().join("churn-3d.yaml");
    let text = std::fs::read_to_string(spec_path()).expect("spec");
    assert!(text.contains("window: 7"));
    std::fs::write(&changed, text.replacen("window: 7", "window: 3", 1)).expect("write spec");
    let before = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(1100));
    let mut args =
        backfill_args("s3://lake/raw", out, "2024-01-10", "2024-02-20", cluster.scheduler_addr());
    let changed_s = changed.display().to_string();
    args[1] = changed_s.as_str();
    args.push("--replace");
    let data_dir = data.display().to_string();
    let _ = data_dir;
    ok(&sluice(&env, &args), "rerun with a changed spec");
    let catalog = tmp.path().join("catalog.json").display().to_string();
    ok(
        &sluice(
            &env,
            &["table", "register", "race", out, "--format", "delta", "--catalog", &catalog],
        ),
        "register",
    );
    let sum = |table: &str| -> String {
        let o = sluice(
            &env,
            &[
                "sql",
                "--scheduler",
                cluster.scheduler_addr(),
                "--catalog",
                &catalog,
                "--format",
                "csv",
                &format!("SELECT sum(txn_count_7d) FROM \"{table}\""),
            ],
        );
        ok(&o, &format!("sum over {table}")).lines().last().unwrap_or_default().to_string()
    };
    let old = sum(&format!("race@v{v1}"));
    let at = sum(&format!("race@{}", before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    let new = sum("race");
    assert_eq!(old, at, "by version and by timestamp differ");
    assert_ne!(old, new, "the rerun changed nothing");
    let expected_new: String = rt().block_on(async {
        let ctx = s3_ctx(&server);
        let t = sluice_sql::tables::TableSource::new(
            "t",
            out,
            Some(sluice_sql::tables::TableFormat::Delta),
        )
        .expect("t");
        t.register(&ctx).await.expect("register");
        let b = run_sql(&ctx, "SELECT sum(txn_count_7d) FROM t").await.expect("sum");
        sluice_client::verify::normalize(&b).expect("n").join("")
    });
    assert_eq!(new, expected_new);
    let bad = sluice(&env, &["sql", "--catalog", &catalog, "SELECT 1 FROM \"race@v999\""]);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("version 999") && said.contains("race"), "{said}");
}

fn spec_path() -> PathBuf {
    spec()
}

#[test]
fn racing_backfills_and_time_travel_seaweedfs() {
    racing_backfills_and_time_travel(Kind::Seaweed);
}

#[test]
fn racing_backfills_and_time_travel_moto() {
    racing_backfills_and_time_travel(Kind::Moto);
}

/// Wrong credentials, a missing bucket, a non-Delta folder as the output:
/// one clear error naming the URL, non-zero exit, nothing written.
fn bad_storage_input(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    generate(&data);
    let server = S3Server::start(kind, "127.0.0.1", &tmp.path().join("s3")).expect("s3");
    server.upload(&data, "raw").expect("upload");
    let env = server.env();
    let spec = spec().display().to_string();
    let run = |env: &[(String, String)], data: &str, out: &str| {
        sluice(
            env,
            &[
                "backfill",
                &spec,
                "--from",
                "2024-01-05",
                "--to",
                "2024-01-08",
                "--data-dir",
                data,
                "--output",
                out,
                "--local",
                "--no-register",
            ],
        )
    };
    let mut cases: Vec<(Vec<(String, String)>, &str, &str, Vec<&str>)> = vec![
        (
            env.clone(),
            "s3://lake/raw",
            "s3://no-such-bucket/f",
            vec!["s3://no-such-bucket/f", "bucket"],
        ),
        (
            env.clone(),
            "s3://lake/raw",
            "s3://lake/raw/users",
            vec!["s3://lake/raw/users", "not a Delta table"],
        ),
        (
            env.clone(),
            "s3://lake/nothing-here",
            "s3://lake/out",
            vec!["s3://lake/nothing-here/", "No files found"],
        ),
    ];
    if kind == Kind::Seaweed {
        let wrong: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| {
                (k.clone(), if k == "AWS_SECRET_ACCESS_KEY" { "wrong".into() } else { v.clone() })
            })
            .collect();
        cases.push((wrong, "s3://lake/raw", "s3://lake/out", vec!["s3://lake/", "credentials"]));
    }
    for (env, data, out, expected) in cases {
        let o = run(&env, data, out);
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{kind:?} {data} -> {out}: succeeded");
        assert!(said.starts_with("error: "), "{said}");
        for w in expected {
            assert!(said.contains(w), "{kind:?} {data} -> {out}: stderr lacks {w:?}: {said}");
        }
        assert!(!said.contains(s3::SECRET_KEY) && !said.contains("panicked"), "{said}");
    }
    let written: Vec<String> =
        server.keys("").expect("keys").into_iter().filter(|k| !k.starts_with("raw/")).collect();
    assert!(written.is_empty(), "{kind:?}: written despite the errors: {written:?}");
}

#[test]
fn bad_storage_input_is_a_clear_error_seaweedfs() {
    bad_storage_input(Kind::Seaweed);
}

#[test]
fn bad_storage_input_is_a_clear_error_moto() {
    bad_storage_input(Kind::Moto);
}
