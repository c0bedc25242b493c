//! The cluster answers what single-process DataFusion answers: the wrong
//! answers and failures DataFusion's own corpus found on the cluster path
//! (issue: "Wrong answers on the cluster path"), each checked against local
//! DataFusion, through `sluice sql` as a user runs it.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use sluice_tests::{TestCluster, bin, workspace_root};

fn sluice(args: &[&str]) -> Output {
    Command::new(bin("sluice"))
        .args(args)
        .env_remove("SLUICE_SCHEDULER")
        .env("SLUICE_CATALOG", std::env::temp_dir().join("sluice-cluster-sql-no-catalog.json"))
        .output()
        .expect("run sluice")
}

fn customers() -> String {
    format!("c={}", workspace_root().join("tests/data/customers.csv").display())
}

/// `sql` through `sluice sql --format csv` on the cluster.
fn on_cluster(cluster: &TestCluster, sql: &str, extra: &[&str]) -> Output {
    let table = customers();
    let mut args =
        vec!["sql", "--scheduler", cluster.scheduler_addr(), "--table", &table, "--format", "csv"];
    args.extend_from_slice(extra);
    args.push(sql);
    sluice(&args)
}

/// `sql` on plain DataFusion (the reference), printed as `sluice sql`
/// prints it.
fn local(sql: &str) -> String {
    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        let src = sluice_sql::tables::TableSource::parse(&customers()).expect("table");
        src.register(&ctx).await.expect("register");
        let mut out = Vec::new();
        for (_, batches) in
            sluice_client::connect::collect_statements(&ctx, sql).await.expect("local run")
        {
            if batches.first().is_some_and(|b| b.num_columns() > 0) {
                sluice_client::format::write(
                    &mut out,
                    &batches,
                    sluice_client::format::OutputFormat::Csv,
                )
                .expect("csv");
            }
        }
        String::from_utf8(out).expect("utf8")
    })
}

fn stdout(out: &Output, cluster: &TestCluster) -> String {
    assert!(
        out.status.success(),
        "sluice sql failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Each query of the issue that came back wrong on the cluster now equals
/// local DataFusion (row order normalised where the query leaves it open).
#[test]
fn former_wrong_answers_equal_local_datafusion() {
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let cases: &[(&str, &str, bool)] = &[
        (
            "window aggregate FILTER",
            "SELECT customer_id, count(*) FILTER (WHERE credit > 1000) OVER () AS n, \
             sum(credit) FILTER (WHERE credit > 1000) OVER (PARTITION BY country) AS s \
             FROM c ORDER BY customer_id",
            false,
        ),
        ("LIMIT over VALUES", "SELECT * FROM (VALUES (1), (2), (3)) LIMIT 1", false),
        (
            "LIMIT by an expression",
            "SELECT * FROM (VALUES (1), (2), (3)) LIMIT abs(-4) + 4 / -2",
            true,
        ),
        ("OFFSET over a CSV table", "SELECT customer_id FROM c OFFSET 2", true),
        (
            "UNION / EXCEPT / INTERSECT of constant rows",
            "SELECT 1 a, 0 b, 0 c UNION ALL ((SELECT 2, 0, 0 UNION ALL SELECT 3, 0, 0) \
             EXCEPT SELECT 3, 0, 0) UNION ALL (SELECT 4, 0, 0 INTERSECT SELECT 4, 0, 0)",
            true,
        ),
        ("scalar subquery", "SELECT (SELECT DISTINCT 42 FROM (VALUES (1),(2),(3)) t(x))", false),
        (
            "Float16 MIN/MAX keep their type",
            "WITH d AS (SELECT arrow_cast(1, 'Float16') AS f UNION ALL SELECT arrow_cast(6, 'Float16')) \
             SELECT min(f), max(f), arrow_typeof(min(f)) FROM d",
            false,
        ),
        (
            "window function IGNORE NULLS",
            "SELECT id, lag(a) IGNORE NULLS OVER (ORDER BY id) AS l, \
             first_value(a) IGNORE NULLS OVER (ORDER BY id) AS f FROM \
             (SELECT 2 id, 'b' a UNION ALL SELECT 1, NULL UNION ALL SELECT 3, NULL UNION ALL SELECT 4, 'x') \
             ORDER BY id",
            false,
        ),
        (
            "window functions next to a window in the other order (came back reversed)",
            "CREATE TABLE w(id INT, a TEXT) AS VALUES (2, 'b'), (1, NULL), (3, NULL), (4, 'x'); \
             SELECT id, lag(a, 2, 'def') OVER (ORDER BY id) AS l, \
             nth_value(a, 2) OVER (ORDER BY id) AS n, last_value(a) OVER (ORDER BY id DESC) AS lv, \
             sum(id) OVER (ORDER BY id DESC) AS s FROM w ORDER BY id",
            false,
        ),
        (
            "nested-loop semi join (rows came back once per task)",
            "CREATE TABLE t1(id INT, n TEXT) AS VALUES (11, 'a'), (22, 'b'), (33, 'c'), (44, 'd'); \
             CREATE TABLE t2(id INT) AS VALUES (11), (22), (44), (55); \
             CREATE TABLE t3(id INT) AS VALUES (11), (22), (44), (55); \
             SELECT t1.id, t1.n FROM t1 WHERE EXISTS (SELECT * FROM t2 WHERE t1.id = t2.id OR \
             EXISTS (SELECT * FROM t3 WHERE t2.id = t3.id)) ORDER BY t1.id",
            false,
        ),
        (
            "nested-loop left join over a partitioned probe side",
            "SELECT c.customer_id, count(o.x) FROM c LEFT JOIN \
             (SELECT customer_id + 1 AS x FROM c UNION ALL SELECT customer_id FROM c) o \
             ON o.x > c.customer_id * 2 GROUP BY c.customer_id ORDER BY 1",
            false,
        ),
        (
            "sort over a union of branches with constants (hung)",
            "SELECT 2 AS a, customer_id FROM c UNION ALL SELECT 1 AS a, customer_id FROM c \
             ORDER BY a, customer_id",
            false,
        ),
        (
            "group and sort by a dictionary column (failed: RowConverter mismatch)",
            "CREATE TABLE d AS SELECT arrow_cast(country, 'Dictionary(Int32, Utf8)') AS k FROM c; \
             SELECT k, count(*) FROM d GROUP BY k ORDER BY k",
            false,
        ),
        (
            "a dictionary of dictionaries crosses shuffles (failed: IPC cannot encode it)",
            "SELECT customer_id, CAST(x AS VARCHAR) AS s, arrow_typeof(x) AS t FROM \
             (SELECT customer_id, arrow_cast(arrow_cast(country, 'Dictionary(UInt32, Utf8)'), \
             'Dictionary(Int32, Dictionary(UInt32, Utf8))') AS x FROM c) ORDER BY customer_id",
            false,
        ),
        (
            "nested recursive queries (failed: empty work table)",
            "WITH RECURSIVE o AS (SELECT 1 AS a UNION ALL (WITH RECURSIVE n AS (SELECT 1 AS a \
             UNION ALL SELECT a + 2 AS a FROM n WHERE a < 3) SELECT o.a + 2 AS a FROM o JOIN n \
             USING (a) WHERE n.a < 4)) SELECT a FROM o ORDER BY a",
            false,
        ),
        (
            "aggregate over struct fields (failed: scheduler could not parse the plan)",
            "SELECT t.s['c0'] AS k, sum(CASE WHEN t.s['c0'] IS NOT NULL THEN t.s['c1'] END) AS v \
             FROM (SELECT struct(country, credit) AS s FROM c) t WHERE t.s['c0'] IS NOT NULL \
             GROUP BY t.s['c0'] ORDER BY k",
            false,
        ),
        (
            "window over a union of constant rows (hung)",
            "SELECT lead(a, 1, NULL) OVER (ORDER BY a) FROM (SELECT 1 a UNION ALL SELECT 2 a)",
            true,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, sql, unordered) in cases {
        let got = stdout(&on_cluster(&cluster, sql, &[]), &cluster);
        let want = local(sql);
        let norm = |s: &str| {
            let mut lines: Vec<&str> = s.lines().collect();
            if *unordered && lines.len() > 1 {
                lines[1..].sort_unstable();
            }
            lines.join("\n")
        };
        if norm(&got) != norm(&want) {
            wrong.push(format!("{what}: {sql}\n  cluster: {got:?}\n  local:   {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} differ:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

/// `COPY … STORED AS CSV` run on an executor writes dates and timestamps
/// (they were written as empty fields, read back as NULL).
#[test]
fn csv_copy_on_the_cluster_keeps_timestamps() {
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("ts.csv");
    let sql = format!(
        "CREATE TABLE s (t TIMESTAMP, d DATE, c INT) AS VALUES \
         ('2020-12-10T00:00:00Z', '2020-01-01', 0), ('2020-12-19T12:30:00Z', NULL, 9); \
         COPY (SELECT * FROM s) TO '{f}' STORED AS CSV; \
         CREATE EXTERNAL TABLE back (t TIMESTAMP, d DATE, c INT) STORED AS CSV LOCATION '{f}' \
         OPTIONS ('format.has_header' 'true'); \
         SELECT date_trunc('week', t) AS w, d, c FROM back ORDER BY c",
        f = file.display()
    );
    let got = stdout(&on_cluster(&cluster, &sql, &[]), &cluster);
    assert!(got.contains("2020-12-14T00:00:00"), "{got}");
    assert_eq!(got, local(&sql));
}

/// An error raised on an executor reads as DataFusion raises it: no
/// Ballista wrapping, no Rust debug form, no encoded message.
#[test]
fn errors_read_as_datafusion_raised_them() {
    let cluster = TestCluster::start(1, 2).expect("cluster");
    for (sql, expected) in [
        ("SELECT customer_id / 0 FROM c", "Arrow error: Divide by zero error"),
        ("SELECT CAST(name AS INT) FROM c", "Cast error: Cannot cast string 'Alice Smith'"),
    ] {
        let out = on_cluster(&cluster, sql, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sql} succeeded");
        assert!(stderr.contains(expected), "{sql}: {stderr}");
        for wrapper in
            ["Job ", "Task failed", "DataFusionError(", "sluice.v1.RemoteError", "External error"]
        {
            assert!(!stderr.contains(wrapper), "{sql}: {wrapper:?} in {stderr}");
        }
    }
}

/// In-memory tables reach the cluster: created, appended to and read in
/// one `sluice sql` run; a table over the inline limit is written under
/// `sluice.memory_tables.stage_url`, or refused with what to set.
#[test]
fn memory_tables_reach_the_cluster() {
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let sql = "CREATE TABLE t AS VALUES (1, 'a'), (2, 'b'), (3, NULL); \
               INSERT INTO t VALUES (4, 'd'), (5, 'e'); \
               CREATE TABLE u AS SELECT column1 * 10 AS x, column2 FROM t WHERE column1 > 1; \
               SELECT count(*), sum(x), max(t.column2) FROM u JOIN t ON u.x = t.column1 * 10";
    let got = stdout(&on_cluster(&cluster, sql, &[]), &cluster);
    assert_eq!(got, local(sql), "{sql}");
    assert!(got.contains("4,140,e"), "{got}");

    // 50,000 rows of two integer columns: ~800 KB, over a 64 KB limit.
    let big = "CREATE TABLE g AS SELECT value AS v, value % 7 AS k FROM generate_series(1, 50000); \
               SELECT k, count(*), sum(v) FROM g GROUP BY k ORDER BY k";
    let limit = ["--set", "sluice.memory_tables.inline_max_bytes=65536"];
    let refused = on_cluster(&cluster, big, &limit);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "an over-limit table was not refused");
    assert!(stderr.contains("sluice.memory_tables.stage_url"), "{stderr}");

    // Inline past what one job submission may hold: refused before it is
    // sent, with the way out (the transport used to cut it: "h2 protocol error").
    let tight = [
        "--set",
        "sluice.memory_tables.inline_max_bytes=67108864",
        "--set",
        "ballista.client.grpc_max_message_size=1000000",
    ];
    let too_big = on_cluster(&cluster, big, &tight);
    let stderr = String::from_utf8_lossy(&too_big.stderr);
    assert!(!too_big.status.success(), "a plan over the message limit was sent");
    assert!(stderr.contains("a job submission may hold"), "{stderr}");
    assert!(!stderr.contains("h2 protocol"), "{stderr}");

    let stage = tempfile::tempdir().expect("stage dir");
    let stage_url = format!("sluice.memory_tables.stage_url={}", stage.path().display());
    let staged = on_cluster(&cluster, big, &[limit[0], limit[1], "--set", &stage_url]);
    assert_eq!(stdout(&staged, &cluster), local(big));
    // Staged (one folder per table read), then removed with the query.
    let folders: Vec<_> = std::fs::read_dir(stage.path()).expect("stage").flatten().collect();
    assert!(!folders.is_empty(), "nothing was staged under {}", stage.path().display());
    for folder in folders {
        let left: Vec<_> = std::fs::read_dir(folder.path()).expect("folder").flatten().collect();
        assert!(left.is_empty(), "staged files left behind: {left:?}");
    }
}

/// A job whose stage bookkeeping goes inconsistent fails with an error
/// within the stall timeout instead of hanging. (The adaptive planner
/// rejects its own re-plan of a window over a union of one-row aggregates:
/// the task succeeds, the graph update fails, nothing is left to run.)
#[test]
fn a_stalled_job_fails_instead_of_hanging() {
    let cluster =
        TestCluster::start_full(2, 2, &["--job-stall-timeout-seconds", "5"], &[]).expect("cluster");
    let sql = "SELECT m, lead(m) OVER (ORDER BY m) FROM \
               (SELECT max(customer_id) m FROM c UNION ALL SELECT min(customer_id) FROM c)";
    let started = Instant::now();
    // Sluice runs this shape on the static planner; the stall needs the
    // adaptive one.
    let out =
        on_cluster(&cluster, sql, &["--set", "sluice.planner.static_for_adaptive_hazards=false"]);
    let took = started.elapsed();
    if out.status.success() {
        // The stall is gone (an engine fix): then the answer must be right.
        assert_eq!(stdout(&out, &cluster), local(sql));
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped making progress"), "{stderr}\n{}", cluster.logs());
    assert!(took < Duration::from_secs(40), "took {took:?}");
}
