//! Hot-key salting of joins on a real process cluster: on Zipf-skewed data
//! (the hottest user holds over 20% of events), inner, left, semi and anti
//! joins followed by aggregations give the same rows with salting on and
//! off and on single-node DataFusion, and EXPLAIN shows the salted joins.

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
    let tables: Vec<TableSource> = TABLES
        .iter()
        .map(|t| {
            TableSource::new(t, &data.join(t).to_string_lossy(), Some(TableFormat::Parquet))
                .expect("table")
        })
        .collect();
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let target = Target::Scheduler(cluster.scheduler_addr().parse().expect("addr"));
    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        let parts = ("datafusion.execution.target_partitions".to_string(), "8".to_string());
        let on = connect(&target, &[parts.clone()], &tables).await.expect("connect on");
        let off =
            connect(&target, &[parts, ("sluice.skew.enabled".into(), "false".into())], &tables)
                .await
                .expect("connect off");
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
        let mut salted = 0;
        for (name, sql) in QUERIES {
            let explain =
                run_sql_salted(&on.ctx, &format!("EXPLAIN {sql}")).await.expect("explain");
            let text = sluice_client::verify::normalize(&explain).expect("text").join("\n");
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
