//! TPC-H differential test: all 22 queries at scale factor 0.1 on a process
//! cluster (1 scheduler, 2 executors) against single-node DataFusion.

use datafusion::prelude::SessionContext;
use sluice_client::{Target, connect, run_sql};
use sluice_tests::TestCluster;

#[test]
fn tpch_sf01_all_22_queries_match_local() {
    let data = tempfile::tempdir().expect("tempdir");
    sluice_client::datagen::tpch::generate(0.1, data.path()).expect("generate");
    let tables = sluice_client::datagen::tpch::table_sources(data.path()).expect("tables");
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let rt = sluice_proto::runtime().expect("runtime");
    let failures = rt.block_on(async {
        let target = Target::Scheduler(cluster.scheduler_addr().parse().expect("addr"));
        let conn = connect(&target, &[], &tables).await.expect("connect");
        let local = SessionContext::new_with_config(sluice_sql::session::local_session_config());
        for t in &tables {
            t.register(&local).await.expect("register local");
        }
        let mut failures = Vec::new();
        for (n, sql) in sluice_sql::tpch::QUERIES {
            let expected = match run_sql(&local, sql).await {
                Ok(b) => b,
                Err(e) => {
                    failures.push(format!("q{n}: local engine failed: {e}"));
                    continue;
                }
            };
            let rows: usize = expected.iter().map(|b| b.num_rows()).sum();
            assert!(
                rows > 0 || n == 15 || n == 20,
                "q{n} returned no rows locally; the data set is wrong"
            );
            match run_sql(&conn.ctx, sql).await {
                Ok(actual) => {
                    if let Err(e) = sluice_client::verify::compare(
                        &expected,
                        &actual,
                        sluice_sql::tpch::is_ordered(sql),
                    ) {
                        failures.push(format!("q{n}: {e}"));
                    }
                }
                Err(e) => failures.push(format!("q{n}: cluster failed: {e}")),
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of 22 TPC-H queries differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
