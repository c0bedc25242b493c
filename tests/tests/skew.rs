//! Hot-key salting of joins on a real process cluster: on Zipf-skewed data
//! (the hottest user holds over 20% of events), inner, left, semi and anti
//! joins followed by aggregations give the same rows with salting on and
//! off and on single-node DataFusion, and EXPLAIN shows the salted joins.

use std::path::Path;

use chrono::NaiveDate;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use sluice_client::connect::run_sql_salted;
use sluice_client::datagen::churn::{ChurnConfig, TABLES};
use sluice_client::{Target, connect, run_sql};
use sluice_sql::tables::{TableFormat, TableSource};
use sluice_tests::TestCluster;

const QUERIES: [(&str, &str); 5] = [
    (
        "inner join + aggregation",
        "SELECT e.event_type, count(*) AS n, sum(t.amount) AS s FROM events e JOIN transactions t \
         ON e.user_id = t.user_id WHERE e.ts < TIMESTAMP '2024-01-08' AND t.ts < TIMESTAMP '2024-01-08' \
         GROUP BY e.event_type ORDER BY e.event_type",
    ),
    (
        "left join + aggregation",
        "SELECT e.user_id, count(*) AS n, count(k.ticket_id) AS tickets FROM events e LEFT JOIN tickets k \
         ON e.user_id = k.user_id GROUP BY e.user_id ORDER BY e.user_id",
    ),
    (
        "semi join",
        "SELECT e.user_id, count(*) AS n FROM events e WHERE EXISTS \
         (SELECT 1 FROM tickets k WHERE k.user_id = e.user_id) GROUP BY e.user_id ORDER BY e.user_id",
    ),
    (
        "anti join",
        "SELECT e.user_id, count(*) AS n FROM events e WHERE NOT EXISTS \
         (SELECT 1 FROM tickets k WHERE k.user_id = e.user_id) GROUP BY e.user_id ORDER BY e.user_id",
    ),
    (
        "grouped aggregation",
        "SELECT user_id, count(*) AS n, max(ts) AS last_seen FROM events GROUP BY user_id ORDER BY user_id",
    ),
];

#[test]
fn salted_joins_equal_unsalted_and_local_on_skewed_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let cfg = ChurnConfig {
        users: 300,
        start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        days: 30,
        seed: 9,
        zipf: 1.2,
        ticket_rate: 0.05,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");
    let tables = table_sources(&data);
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let target = Target::Scheduler(cluster.scheduler_addr().parse().expect("addr"));
    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        let parts = ("datafusion.execution.target_partitions".to_string(), "8".to_string());
        // Partitioned joins: a join expected to be broadcast is never salted.
        let shuffled =
            ("ballista.optimizer.broadcast_join_threshold_bytes".to_string(), "0".to_string());
        let on = connect(&target, &[parts.clone(), shuffled.clone()], &tables)
            .await
            .expect("connect on");
        let off = connect(
            &target,
            &[parts.clone(), shuffled, ("sluice.skew.enabled".into(), "false".into())],
            &tables,
        )
        .await
        .expect("connect off");
        // With the default threshold these small inputs are broadcast: the
        // join is not salted, and EXPLAIN says it will be broadcast.
        let broadcast = connect(&target, &[parts], &tables).await.expect("connect broadcast");
        let explain = run_sql_salted(&broadcast.ctx, &format!("EXPLAIN {}", QUERIES[0].1))
            .await
            .expect("explain broadcast");
        let text = sluice_client::verify::normalize(&explain).expect("text").join("\n");
        assert!(!text.contains("sluice_skew"), "a broadcast join was salted:\n{text}");
        assert!(text.contains("sluice_broadcast") && text.contains(": broadcast "), "{text}");
        let local = local_context(&data).await;
        let mut salted = 0;
        for (name, sql) in QUERIES {
            let explain =
                run_sql_salted(&on.ctx, &format!("EXPLAIN {sql}")).await.expect("explain");
            let text = sluice_client::verify::normalize(&explain).expect("text").join("\n");
            // Every join gets a line on its expected strategy.
            assert_eq!(
                text.contains("sluice_broadcast"),
                name.contains("join"),
                "{name}: broadcast note:\n{text}"
            );
            if text.contains("sluice_skew") {
                assert!(
                    text.contains("hot keys: 1"),
                    "{name}: the hottest user is not salted:\n{text}"
                );
                assert!(text.contains("__sluice_salt"), "{name}:\n{text}");
                salted += 1;
            }
            let a = run_sql_salted(&on.ctx, sql)
                .await
                .unwrap_or_else(|e| panic!("{name} (salting on): {e}\n{}", cluster.logs()));
            let b = run_sql_salted(&off.ctx, sql).await.expect("salting off");
            let c = run_sql(&local, sql).await.expect("local");
            assert!(a.iter().map(|b| b.num_rows()).sum::<usize>() > 0, "{name}: no rows");
            sluice_client::verify::compare(&b, &a, true)
                .unwrap_or_else(|e| panic!("{name}: salting on differs from off: {e}"));
            sluice_client::verify::compare(&c, &a, true)
                .unwrap_or_else(|e| panic!("{name}: cluster differs from local DataFusion: {e}"));
        }
        // Every join query has a plain scan on its left side and a hot key.
        assert_eq!(salted, 4, "salted joins");
    });
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

/// Randomized: data sets with random size and skew, random bucket counts,
/// hot-key thresholds and partition counts, and join queries with random
/// predicates; the salted cluster answer must equal local DataFusion's.
/// The seed is printed on failure; `SLUICE_RANDOM_SEED=N` replays a run.
#[test]
fn randomized_salted_joins_equal_local() {
    use rand::{Rng, SeedableRng};

    let seed: u64 = match std::env::var("SLUICE_RANDOM_SEED") {
        Ok(v) => v.parse().expect("SLUICE_RANDOM_SEED is an integer"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let target = Target::Scheduler(cluster.scheduler_addr().parse().expect("addr"));
    let rt = sluice_proto::runtime().expect("runtime");
    let mut salted_rounds = 0;
    for round in 0..3 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let days = rng.random_range(10..=30u32);
        let cfg = ChurnConfig {
            users: rng.random_range(50..=400u64),
            start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
            days,
            seed: rng.random(),
            zipf: rng.random_range(0.8..1.6),
            ticket_rate: 0.05,
            ..ChurnConfig::default()
        };
        sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");
        let buckets = rng.random_range(2..=16u32);
        // Round 0 always has hot keys (a Zipf ≥ 0.8 top user holds > 0.5%).
        let share =
            if round == 0 { 0.005 } else { [0.005, 0.02, 0.05, 0.2][rng.random_range(0..4)] };
        let partitions = [2, 4, 8][rng.random_range(0..3)];
        let cut = format!("2024-01-{:02}", rng.random_range(2..=days.min(28)));
        let amount = rng.random_range(0..200);
        let event_type = ["login", "page_view", "feature_use"][rng.random_range(0..3)];
        let priority = ["low", "medium", "high"][rng.random_range(0..3)];
        let queries = [
            format!(
                "SELECT e.event_type, count(*) AS n, sum(t.amount) AS s FROM events e JOIN transactions t \
                 ON e.user_id = t.user_id WHERE e.ts < TIMESTAMP '{cut}' AND t.amount > {amount} \
                 GROUP BY e.event_type ORDER BY 1"
            ),
            format!(
                "SELECT e.user_id, count(*) AS n, count(k.ticket_id) AS k, max(k.priority) AS p FROM events e \
                 LEFT JOIN tickets k ON e.user_id = k.user_id WHERE e.event_type = '{event_type}' \
                 GROUP BY e.user_id ORDER BY 1"
            ),
            format!(
                "SELECT e.event_type, count(*) AS n FROM events e WHERE EXISTS (SELECT 1 FROM transactions t \
                 WHERE t.user_id = e.user_id AND t.amount > {amount}) GROUP BY e.event_type ORDER BY 1"
            ),
            format!(
                "SELECT e.user_id, count(*) AS n FROM events e WHERE NOT EXISTS (SELECT 1 FROM tickets k \
                 WHERE k.user_id = e.user_id AND k.priority = '{priority}') GROUP BY e.user_id ORDER BY 1"
            ),
            format!(
                "SELECT e.event_type, count(*) AS n, sum(s.total) AS t FROM events e JOIN \
                 (SELECT user_id, sum(amount) AS total FROM transactions WHERE ts < TIMESTAMP '{cut}' \
                 GROUP BY user_id) s ON e.user_id = s.user_id GROUP BY e.event_type ORDER BY 1"
            ),
        ];
        let context = format!(
            "seed {seed} round {round}: {} users, {days} days, zipf {:.2}, buckets {buckets}, \
             hot share {share}, {partitions} partitions",
            cfg.users, cfg.zipf
        );
        rt.block_on(async {
            let settings = [
                ("datafusion.execution.target_partitions".to_string(), partitions.to_string()),
                ("ballista.optimizer.broadcast_join_threshold_bytes".to_string(), "0".to_string()),
                ("sluice.skew.buckets".to_string(), buckets.to_string()),
                ("sluice.skew.hot_key_share".to_string(), share.to_string()),
            ];
            let on = connect(&target, &settings, &table_sources(&data)).await.expect("connect");
            let local = local_context(&data).await;
            let mut salted = false;
            for sql in &queries {
                let explain =
                    run_sql_salted(&on.ctx, &format!("EXPLAIN {sql}")).await.expect("explain");
                let text = sluice_client::verify::normalize(&explain).expect("text").join("\n");
                salted |= text.contains("sluice_skew");
                let a = run_sql_salted(&on.ctx, sql)
                    .await
                    .unwrap_or_else(|e| panic!("{context}\n{sql}: {e}\n{}", cluster.logs()));
                let c = run_sql(&local, sql).await.expect("local");
                sluice_client::verify::compare(&c, &a, true).unwrap_or_else(|e| {
                    panic!("{context}\n{sql}\nsalted cluster differs from local: {e}\n{text}")
                });
            }
            if salted {
                salted_rounds += 1;
            }
        });
    }
    assert!(salted_rounds > 0, "seed {seed}: no round salted a join");
}

/// An executor SIGKILLed after the salted join's map stage ran: its shuffle
/// files are gone, so the scheduler recomputes them on the other executor.
/// The salt is a function of the row, so recomputed map tasks partition
/// exactly as the lost ones did, and the answer equals local DataFusion's.
/// Static planner (`ballista.planner.adaptive.enabled=false`).
#[test]
fn executor_killed_mid_job_gives_identical_salted_results() {
    executor_killed_mid_salted_job(false);
}

/// The same with Ballista's adaptive planner (the 55 default). Ballista 55
/// cannot resume an adaptive job whose finished stage's output was lost; the
/// scheduler fails such a job at once (`sluice_scheduler::recovery`) and the
/// client resubmits it, instead of the job hanging.
#[test]
fn executor_killed_mid_job_gives_identical_salted_results_adaptive() {
    executor_killed_mid_salted_job(true);
}

fn executor_killed_mid_salted_job(adaptive: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let cfg = ChurnConfig {
        users: 3000,
        start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        days: 60,
        seed: 11,
        zipf: 1.2,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");
    let mut cluster = TestCluster::start_for_executor_loss(2, 1).expect("cluster");
    let scheduler = cluster.scheduler_addr().to_string();
    let target = Target::Scheduler(scheduler.parse().expect("addr"));
    let sql = "SELECT e.event_type, count(*) AS n, sum(s.total) AS t, count(DISTINCT e.user_id) AS u \
               FROM events e JOIN (SELECT user_id, sum(amount) AS total FROM transactions GROUP BY user_id) s \
               ON e.user_id = s.user_id GROUP BY e.event_type ORDER BY 1";
    let rt = sluice_proto::runtime().expect("runtime");
    let (answer, killed_during) = rt.block_on(async {
        let settings = [
            ("datafusion.execution.target_partitions".to_string(), "8".to_string()),
            ("ballista.optimizer.broadcast_join_threshold_bytes".to_string(), "0".to_string()),
            ("ballista.scheduler.max_partitions_per_task".to_string(), "1".to_string()),
            ("ballista.planner.adaptive.enabled".to_string(), adaptive.to_string()),
        ];
        let on = connect(&target, &settings, &table_sources(&data)).await.expect("connect");
        let explain = run_sql_salted(&on.ctx, &format!("EXPLAIN {sql}")).await.expect("explain");
        let text = sluice_client::verify::normalize(&explain).expect("text").join("\n");
        assert!(text.contains("sluice_skew"), "the join is not salted:\n{text}");
        let before: Vec<String> =
            sluice_tests::scheduler_jobs(&scheduler).await.into_iter().map(|j| j.id).collect();
        let ctx = on.ctx.clone();
        let query = tokio::spawn(async move { run_sql_salted(&ctx, sql).await });
        // Kill executor 1 once the query's job has finished a stage and is
        // still running (poll with a deadline).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let mut killed_during = None;
        while std::time::Instant::now() < deadline && !query.is_finished() {
            // Hot keys are sampled in the client (no job at this size), so
            // the join's job is the latest one: kill inside it.
            let new: Vec<_> = sluice_tests::scheduler_jobs(&scheduler)
                .await
                .into_iter()
                .filter(|j| !before.contains(&j.id))
                .collect();
            if let Some(job) = new.last()
                && job.status == "Running"
                && job.completed_stages >= 2
            {
                killed_during = Some((job.id.clone(), job.completed_stages));
                cluster.executors[1].kill();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let answer = tokio::time::timeout(std::time::Duration::from_secs(180), query)
            .await
            .unwrap_or_else(|_| {
                panic!("the job stalled after the executor was killed\n{}", cluster.logs())
            })
            .expect("join")
            .unwrap_or_else(|e| panic!("query failed after the kill: {e}\n{}", cluster.logs()));
        (answer, killed_during)
    });
    let (job, done) = killed_during.expect("no running job was seen: nothing was killed mid-job");
    let local = rt.block_on(async {
        let local = local_context(&data).await;
        run_sql(&local, sql).await.expect("local")
    });
    sluice_client::verify::compare(&local, &answer, true).unwrap_or_else(|e| {
        panic!("after killing an executor in job {job} (stage {done} done): {e}")
    });
    // The scheduler saw the loss while the job ran, and the killed executor
    // had run tasks: its work and shuffle files were lost.
    let scheduler_log = cluster.scheduler.log_text();
    eprintln!(
        "killed during {job} after {done} stage(s); recovery repairs: stalled adaptive jobs failed \
         and resubmitted {} time(s), leaked vcores returned {} time(s), stale shuffle inputs dropped \
         {} time(s)",
        scheduler_log.matches("failed an adaptive job").count(),
        scheduler_log.matches("returning vcores held by no running task").count(),
        scheduler_log.matches("dropped shuffle locations of map tasks that were rerun").count()
    );
    assert!(
        scheduler_log.contains("Removing executor"),
        "the scheduler never removed the killed executor:\n{}",
        cluster.logs()
    );
    assert!(
        cluster.executors[1].log_text().contains("Execute task"),
        "executor-1 ran no task before it was killed:\n{}",
        cluster.logs()
    );
}
