//! `sluice demo`: the first command a newcomer runs. It starts an embedded
//! cluster (one scheduler, two executors, all in this process, talking gRPC
//! and Arrow Flight over loopback), generates a small TPC-H data set, runs a
//! few queries distributed, and checks every answer against single-node
//! DataFusion.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use datafusion::prelude::SessionContext;
use sluice_sql::session;

use crate::cluster::EmbeddedCluster;
use crate::connect::{EMBEDDED_EXECUTORS, Target, connect, embedded_vcores, run_sql};
use crate::error::{Error, Result};
use crate::format::{OutputFormat, write};

/// The queries the demo runs: a label and the SQL.
fn demo_queries() -> Vec<(String, String)> {
    let mut queries = vec![(
        "orders by status and priority".to_string(),
        "SELECT o_orderstatus, o_orderpriority, count(*) AS orders, sum(o_totalprice) AS total \
         FROM orders GROUP BY 1, 2 ORDER BY 1, 2"
            .to_string(),
    )];
    for n in [1, 3, 5, 10, 18] {
        if let Some(sql) = sluice_sql::tpch::query(n) {
            queries.push((format!("TPC-H Q{n}"), sql.to_string()));
        }
    }
    queries
}

fn out_err(e: std::io::Error) -> Error {
    Error::Io { path: "stdout".into(), reason: e.to_string() }
}

/// Runs the demo, writing its narration to `out`.
///
/// # Errors
/// Any failure to start the cluster, generate data or run a query; a wrong
/// answer is an error too.
pub async fn run(out: &mut dyn Write, scale_factor: f64, data_dir: &Path) -> Result<()> {
    let started = Instant::now();
    writeln!(out, "Sluice demo: an embedded cluster ({EMBEDDED_EXECUTORS} executors × {} slots) in this process", embedded_vcores()).map_err(out_err)?;

    let t = Instant::now();
    let generated = crate::datagen::tpch::generate(scale_factor, data_dir)?;
    let rows: u64 = generated.iter().map(|g| g.rows).sum();
    writeln!(
        out,
        "  generated TPC-H scale factor {scale_factor}: {} tables, {rows} rows, Parquet in {} ({:.1} s)",
        generated.len(),
        data_dir.display(),
        t.elapsed().as_secs_f64()
    )
    .map_err(out_err)?;
    let tables = crate::datagen::tpch::table_sources(data_dir)?;

    let t = Instant::now();
    let cluster = EmbeddedCluster::start(EMBEDDED_EXECUTORS, embedded_vcores()).await?;
    let executors: Vec<String> =
        cluster.executor_addresses().iter().map(|a| a.to_string()).collect();
    writeln!(
        out,
        "  started scheduler at {} and executors at {} ({:.1} s)",
        cluster.scheduler(),
        executors.join(", "),
        t.elapsed().as_secs_f64()
    )
    .map_err(out_err)?;

    let conn = connect(&Target::Scheduler(cluster.scheduler().clone()), &[], &tables).await?;
    let local = SessionContext::new_with_config(session::local_session_config());
    for t in &tables {
        t.register(&local).await?;
    }

    writeln!(
        out,
        "\nRunning each query on the cluster, then on single-node DataFusion to check the answer:"
    )
    .map_err(out_err)?;
    let mut first = true;
    for (label, sql) in demo_queries() {
        let t = Instant::now();
        let distributed = run_sql(&conn.ctx, &sql).await?;
        let cluster_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let reference = run_sql(&local, &sql).await?;
        let local_s = t.elapsed().as_secs_f64();
        crate::verify::compare(&reference, &distributed, sluice_sql::tpch::is_ordered(&sql))
            .map_err(|e| Error::Query {
                message: format!("{label}: the cluster's answer differs from DataFusion's: {e}"),
                class: sluice_proto::ErrorClass::Internal,
            })?;
        let n: usize = distributed.iter().map(|b| b.num_rows()).sum();
        writeln!(out, "  {label:<32} {n:>5} rows  cluster {cluster_s:>6.2} s  local {local_s:>6.2} s  same answer ✓").map_err(out_err)?;
        if first {
            write(out, &distributed, OutputFormat::Table)
                .map_err(|e| Error::Io { path: "stdout".into(), reason: e.to_string() })?;
            first = false;
        }
    }
    writeln!(
        out,
        "\nDone in {:.1} s. Next: `sluice demo --data-dir data/tpch` keeps the data; then \
         `sluice sql --table lineitem=data/tpch/lineitem \"SELECT count(*) FROM lineitem\"`",
        started.elapsed().as_secs_f64()
    )
    .map_err(out_err)?;
    Ok(())
}
