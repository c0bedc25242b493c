//! The `sluice` command line as a user runs it: error paths print one clear
//! paragraph and exit non-zero; a hand-started cluster answers queries.

use std::process::{Command, Output};

use datafusion::prelude::SessionContext;
use sluice_tests::{TestCluster, bin, workspace_root};

/// A catalog path that does not exist: an empty catalog.
fn no_catalog() -> std::path::PathBuf {
    std::env::temp_dir().join("sluice-cli-tests-no-catalog.json")
}

fn sluice(args: &[&str]) -> Output {
    sluice_with_catalog(args, &no_catalog())
}

/// `sluice …` with `SLUICE_CATALOG` set (never the user's own catalog).
fn sluice_with_catalog(args: &[&str], catalog: &std::path::Path) -> Output {
    Command::new(bin("sluice"))
        .args(args)
        .env_remove("SLUICE_SCHEDULER")
        .env("SLUICE_CATALOG", catalog)
        .output()
        .expect("run sluice")
}

fn assert_clear_error(args: &[&str], expected: &[&str]) {
    assert_clear_error_with(args, &no_catalog(), expected);
}

fn assert_clear_error_with(args: &[&str], catalog: &std::path::Path, expected: &[&str]) {
    let out = sluice_with_catalog(args, catalog);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded; stderr: {stderr}");
    assert!(
        stderr.starts_with("error: "),
        "{args:?}: stderr does not start with 'error: ': {stderr}"
    );
    for word in expected {
        assert!(stderr.contains(word), "{args:?}: stderr lacks {word:?}: {stderr}");
    }
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{args:?}: stderr has {bad:?}: {stderr}");
    }
    assert!(
        out.stdout.is_empty(),
        "{args:?}: printed a partial result: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn customers() -> String {
    format!("customers={}", workspace_root().join("tests/data/customers.csv").display())
}

fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    addr
}

#[test]
fn unreachable_scheduler_is_a_clear_error() {
    let addr = closed_port();
    assert_clear_error(
        &["sql", "--scheduler", &addr, "select 1"],
        &["cannot reach the Sluice scheduler", &addr, "sluice-scheduler --bind"],
    );
}

#[test]
fn bad_sql_is_a_clear_error() {
    let t = customers();
    assert_clear_error(
        &["sql", "--standalone", "--table", &t, "SELEC name FROM customers"],
        &["SQL error", "SELEC"],
    );
    assert_clear_error(
        &["sql", "--standalone", "--table", &t, "select nope from customers"],
        &["SQL error", "nope"],
    );
    assert_clear_error(
        &["sql", "--standalone", "select * from no_such_table"],
        &["SQL error", "no_such_table"],
    );
}

#[test]
fn missing_table_path_is_a_clear_error() {
    assert_clear_error(
        &["sql", "--standalone", "--table", "lineitem=/no/such/dir/lineitem.parquet", "select 1"],
        &["table 'lineitem'", "/no/such/dir/lineitem.parquet", "does not exist"],
    );
}

#[test]
fn unknown_format_is_a_clear_error() {
    let path = workspace_root().join("tests/data/customers.csv");
    let spec = format!("t={}:xlsx", path.display());
    assert_clear_error(
        &["sql", "--standalone", "--table", &spec, "select 1"],
        &["unknown format 'xlsx'", "parquet, csv, json"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let odd = dir.path().join("data.bin");
    std::fs::write(&odd, b"x").expect("write");
    let spec = format!("t={}", odd.display());
    assert_clear_error(
        &["sql", "--standalone", "--table", &spec, "select 1"],
        &["cannot tell the format", ":parquet"],
    );
}

#[test]
fn unknown_setting_is_a_clear_error() {
    for key in ["datafusion.execution.no_such_key", "ballista.no_such_key", "sluice.no_such_key"] {
        let set = format!("{key}=1");
        assert_clear_error(
            &["sql", "--standalone", "--set", &set, "select 1"],
            &["setting", "no_such_key"],
        );
    }
}

#[test]
fn bad_scheduler_address_is_a_usage_error() {
    let out = sluice(&["sql", "--scheduler", "localhost", "select 1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected HOST:PORT"));
}

/// Acceptance: a scheduler and two executors started by hand, `sluice sql`
/// against them prints the right answer, and both executors ran tasks.
#[test]
fn hand_started_cluster_answers_and_executors_run_tasks() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = sluice(&[
        "gen",
        "tpch",
        "--scale-factor",
        "0.05",
        "--out",
        &data.path().display().to_string(),
    ]);
    assert!(out.status.success(), "gen failed: {}", String::from_utf8_lossy(&out.stderr));
    let lineitem = data.path().join("lineitem");
    assert!(lineitem.is_dir());

    let cluster = TestCluster::start(2, 2).expect("cluster");
    let sql = "select l_returnflag, count(*) as n from lineitem group by 1 order by 1";
    let table = format!("lineitem={}", lineitem.display());
    let out = sluice(&[
        "sql",
        "--scheduler",
        cluster.scheduler_addr(),
        "--table",
        &table,
        "--format",
        "csv",
        sql,
    ]);
    assert!(
        out.status.success(),
        "sluice sql failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();

    // The same query on single-node DataFusion.
    let rt = sluice_proto::runtime().expect("runtime");
    let expected = rt.block_on(async {
        let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        let src = sluice_sql::tables::TableSource::parse(&table).expect("table");
        src.register(&ctx).await.expect("register");
        let batches = ctx.sql(sql).await.expect("plan").collect().await.expect("run");
        let mut buf = Vec::new();
        sluice_client::format::write(&mut buf, &batches, sluice_client::format::OutputFormat::Csv)
            .expect("csv");
        String::from_utf8(buf).expect("utf8")
    });
    assert_eq!(printed, expected);
    assert_eq!(printed.lines().count(), 4, "header + A, N, R: {printed}");

    for e in &cluster.executors {
        let log = e.log_text();
        assert!(log.contains("Execute task"), "{} ran no task:\n{}", e.name, cluster.logs());
    }
}

/// `sluice sql` sees the tables of the local catalog (what `sluice table
/// register` and `sluice backfill` wrote); `--table` shadows one of the
/// same name; a broken catalog file is a clear error naming it.
#[test]
fn sluice_sql_sees_the_local_catalog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("catalog.json");
    let data = |f: &str| workspace_root().join("tests/data").join(f).display().to_string();
    let (customers, orders) = (data("customers.csv"), data("orders.csv"));
    let out =
        sluice_with_catalog(&["table", "register", "t", &customers, "--format", "csv"], &catalog);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let count = |args: &[&str]| {
        let out = sluice_with_catalog(args, &catalog);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let local = |path: &str| {
        let rt = sluice_proto::runtime().expect("runtime");
        rt.block_on(async {
            let ctx = SessionContext::new();
            ctx.register_csv("t", path, datafusion::prelude::CsvReadOptions::new())
                .await
                .expect("csv");
            let batches = ctx.sql(QUERY).await.expect("sql").collect().await.expect("collect");
            let mut out = Vec::new();
            sluice_client::format::write(
                &mut out,
                &batches,
                sluice_client::format::OutputFormat::Csv,
            )
            .expect("csv");
            String::from_utf8_lossy(&out).trim().to_string()
        })
    };
    const QUERY: &str = "SELECT count(*) AS n FROM t";
    assert_eq!(count(&["sql", "--format", "csv", QUERY]), local(&customers), "catalog table");
    let shadow = format!("t={orders}");
    assert_eq!(
        count(&["sql", "--format", "csv", "--table", &shadow, QUERY]),
        local(&orders),
        "--table shadows the catalog"
    );

    std::fs::write(&catalog, "{not json").expect("write");
    assert_clear_error_with(
        &["sql", QUERY],
        &catalog,
        &["catalog", &catalog.display().to_string(), "line 1"],
    );
}

/// The README's first command: `sluice demo` (embedded cluster) generates
/// data, backfills churn features into a Delta table, reads them back and
/// checks them and TPC-H against single-node DataFusion.
#[test]
fn demo_runs_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Command::new(bin("sluice"))
        .args(["demo", "--users", "300", "--scale-factor", "0.01"])
        // A newcomer's shell: no cluster credentials (the embedded cluster
        // has no TLS; see the README's security section).
        .envs(sluice_tests::plain_env())
        .current_dir(dir.path())
        .output()
        .expect("demo");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "demo failed: {said}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(said.contains("dates committed"), "{said}");
    assert!(said.contains("equal the naive per-date SQL"), "{said}");
    assert_eq!(said.matches("same answer").count(), 4, "{said}");
}
