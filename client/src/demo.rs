//! `sluice demo`: the first command a newcomer runs. In one process it
//! starts an embedded cluster (a scheduler and two executors talking gRPC
//! and Arrow Flight over loopback), generates a small churn data set,
//! backfills daily churn features with `sql/jobs/churn.yaml` (quality report
//! included), prints a few feature rows and checks one date against the
//! naive per-date SQL; then runs two TPC-H queries distributed and checks
//! them against single-node DataFusion.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use sluice_sql::session;

use crate::backfill::{BackfillOptions, quality_report};
use crate::cluster::EmbeddedCluster;
use crate::connect::{EMBEDDED_EXECUTORS, Target, connect, embedded_vcores, run_sql};
use crate::datagen::churn::ChurnConfig;
use crate::error::{Error, Result};
use crate::format::{OutputFormat, write};

/// The churn job spec shipped with Sluice (written next to the data).
const CHURN_SPEC: &str = include_str!("../../sql/jobs/churn.yaml");

fn out_err(e: impl std::fmt::Display) -> Error {
    Error::Io { path: "stdout".into(), reason: e.to_string() }
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
}

/// Runs the demo, writing its narration to `out`.
///
/// # Errors
/// Any failure to start the cluster, generate data or run a job; a wrong
/// answer is an error too.
pub async fn run(
    out: &mut dyn Write,
    users: u64,
    tpch_scale_factor: f64,
    dir: &Path,
) -> Result<()> {
    let started = Instant::now();
    writeln!(out, "Sluice demo: an embedded cluster ({EMBEDDED_EXECUTORS} executors × {} slots) in this process", embedded_vcores()).map_err(out_err)?;
    let t = Instant::now();
    let cluster = EmbeddedCluster::start(EMBEDDED_EXECUTORS, embedded_vcores()).await?;
    let executors: Vec<String> =
        cluster.executor_addresses().iter().map(|a| a.to_string()).collect();
    writeln!(
        out,
        "  scheduler at {}, executors at {} ({:.1} s)",
        cluster.scheduler(),
        executors.join(", "),
        t.elapsed().as_secs_f64()
    )
    .map_err(out_err)?;
    let target = Target::Scheduler(cluster.scheduler().clone());

    // 1. Raw churn data.
    let data = dir.join("churn");
    let cfg = ChurnConfig {
        users,
        start: date(2024, 1, 1),
        days: 120,
        seed: 7,
        ..ChurnConfig::default()
    };
    let t = Instant::now();
    let generated = crate::datagen::churn::generate(&cfg, &data)?;
    let summary: Vec<String> =
        generated.iter().map(|g| format!("{} {}", g.table, g.rows)).collect();
    writeln!(
        out,
        "\n1. generated churn data for {users} users, 120 days from 2024-01-01: {} ({:.1} s)",
        summary.join(", "),
        t.elapsed().as_secs_f64()
    )
    .map_err(out_err)?;

    // 2. The backfill.
    let spec = dir.join("churn.yaml");
    std::fs::write(&spec, CHURN_SPEC)
        .map_err(|e| Error::Io { path: spec.display().to_string(), reason: e.to_string() })?;
    let output = dir.join("features");
    let (from, to) = (date(2024, 2, 1), date(2024, 4, 30));
    let opts = BackfillOptions {
        spec: spec.clone(),
        from,
        to,
        target: target.clone(),
        data_dir: Some(data.clone()),
        output: Some(output.clone()),
        chunk_days: 31,
        parallel: 2,
        replace: false,
        settings: vec![],
        progress: true,
        token: None,
    };
    writeln!(out, "\n2. sluice backfill churn.yaml --from {from} --to {to}  (daily features, 30/7/90-day windows, tiled)").map_err(out_err)?;
    let report = crate::backfill::run(&opts).await?;
    write!(out, "{}", quality_report(&report)).map_err(out_err)?;
    writeln!(
        out,
        "   {} dates committed, {} rows in {} chunks, {:.1} s → {}",
        report.dates_committed, report.rows, report.chunks, report.seconds, report.output
    )
    .map_err(out_err)?;
    if !report.ok {
        return Err(Error::Query {
            message: "a quality expectation failed".into(),
            class: sluice_proto::ErrorClass::Internal,
        });
    }

    // 3. A few feature rows, read back from the Delta table (its latest version).
    let features = sluice_sql::tables::TableSource::new(
        "churn_features",
        &output.to_string_lossy(),
        Some(sluice_sql::tables::TableFormat::Delta),
    )?;
    let conn = connect(&target, &[], std::slice::from_ref(&features)).await?;
    let rows = run_sql(
        &conn.ctx,
        "SELECT user_id, feature_date, total_spend_30d, txn_count_7d, round(avg_txn_value_30d, 2) AS avg_txn_30d, \
         days_since_last_login, page_views_30d, ticket_count_90d, segment, tenure_days \
         FROM churn_features WHERE feature_date = '2024-04-30' ORDER BY total_spend_30d DESC, user_id LIMIT 5",
    )
    .await?;
    writeln!(out, "\n3. top spenders on 2024-04-30 (SELECT ... FROM churn_features):")
        .map_err(out_err)?;
    write(out, &rows, OutputFormat::Table).map_err(out_err)?;

    // 4. Point-in-time check of one date against the naive per-date SQL.
    let check = date(2024, 4, 30);
    let naive = sluice_sql::job::churn_reference_sql(check);
    let mut local_tables = Vec::new();
    for t in crate::datagen::churn::TABLES {
        local_tables.push(sluice_sql::tables::TableSource::new(
            t,
            &data.join(t).to_string_lossy(),
            Some(sluice_sql::tables::TableFormat::Parquet),
        )?);
    }
    let local = SessionContext::new_with_config(session::local_session_config());
    for t in &local_tables {
        t.register(&local).await?;
    }
    let cols = "user_id, total_spend_30d, txn_count_7d, avg_txn_value_30d, days_since_last_login, page_views_30d, \
                feature_use_count_30d, ticket_count_90d, avg_resolution_hours_90d, segment, tenure_days";
    let expected =
        run_sql(&local, &format!("SELECT {cols} FROM ({naive}) ORDER BY user_id")).await?;
    let actual = run_sql(
        &conn.ctx,
        &format!(
            "SELECT {cols} FROM churn_features WHERE feature_date = '{check}' ORDER BY user_id"
        ),
    )
    .await?;
    crate::verify::compare(&expected, &actual, true).map_err(|e| Error::Query {
        message: format!("backfill differs from the naive per-date SQL on {check}: {e}"),
        class: sluice_proto::ErrorClass::Internal,
    })?;
    let n: usize = actual.iter().map(|b| b.num_rows()).sum();
    writeln!(
        out,
        "\n4. {check}: all {n} rows equal the naive per-date SQL on single-node DataFusion ✓"
    )
    .map_err(out_err)?;

    // 5. TPC-H, distributed vs local.
    let tpch = dir.join("tpch");
    crate::datagen::tpch::generate(tpch_scale_factor, &tpch)?;
    let tables = crate::datagen::tpch::table_sources(&tpch)?;
    let conn = connect(&target, &[], &tables).await?;
    let local = SessionContext::new_with_config(session::local_session_config());
    for t in &tables {
        t.register(&local).await?;
    }
    writeln!(
        out,
        "\n5. TPC-H scale factor {tpch_scale_factor}, on the cluster and on single-node DataFusion:"
    )
    .map_err(out_err)?;
    for n in [1, 3, 5, 18] {
        let Some(sql) = sluice_sql::tpch::query(n) else { continue };
        let t = Instant::now();
        let distributed = run_sql(&conn.ctx, sql).await?;
        let cluster_s = t.elapsed().as_secs_f64();
        let reference = run_sql(&local, sql).await?;
        crate::verify::compare(&reference, &distributed, sluice_sql::tpch::is_ordered(sql))
            .map_err(|e| Error::Query {
                message: format!("TPC-H Q{n}: the cluster's answer differs from DataFusion's: {e}"),
                class: sluice_proto::ErrorClass::Internal,
            })?;
        let rows: usize = distributed.iter().map(|b| b.num_rows()).sum();
        writeln!(out, "   Q{n:<3} {rows:>4} rows  {cluster_s:>5.2} s  same answer ✓")
            .map_err(out_err)?;
    }
    writeln!(out, "\nDone in {:.1} s. Try: sluice gen churn --out data/churn && sluice backfill sql/jobs/churn.yaml --from 2024-02-01 --to 2024-03-31 --data-dir data/churn --output out/churn", started.elapsed().as_secs_f64()).map_err(out_err)?;
    Ok(())
}
