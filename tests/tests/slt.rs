//! The sqllogictest suite on both engines. Expected output comes from the
//! `local` engine; `SLUICE_SLT_COMPLETE=1 cargo nextest run -p sluice-tests
//! slt_local` rewrites it.

use sluice_tests::TestCluster;
use sluice_tests::slt::{EngineKind, complete_file, run_file, slt_files};

const MIN_QUERIES: usize = 150;

fn runtime() -> tokio::runtime::Runtime {
    sluice_proto::runtime().expect("runtime")
}

fn run_all(kind: &EngineKind) -> usize {
    let files = slt_files();
    assert!(!files.is_empty(), "no .slt files under tests/sqllogictest");
    let rt = runtime();
    let mut failures = Vec::new();
    let mut queries = 0;
    for f in &files {
        let started = std::time::Instant::now();
        eprintln!("[{}] {} …", kind.name(), f.display());
        match rt.block_on(run_file(f, kind)) {
            Ok(n) => {
                eprintln!(
                    "[{}] {}: {n} queries in {:?}",
                    kind.name(),
                    f.display(),
                    started.elapsed()
                );
                queries += n
            }
            Err(e) => failures.push(format!("{}:\n{e:#}", f.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} files failed on {}:\n\n{}",
        failures.len(),
        files.len(),
        kind.name(),
        failures.join("\n\n")
    );
    queries
}

#[test]
fn slt_local() {
    if std::env::var("SLUICE_SLT_COMPLETE").is_ok_and(|v| v == "1") {
        let rt = runtime();
        for f in slt_files() {
            rt.block_on(complete_file(&f)).expect("complete");
        }
    }
    let queries = run_all(&EngineKind::Local);
    assert!(
        queries >= MIN_QUERIES,
        "only {queries} queries; the suite must keep at least {MIN_QUERIES}"
    );
}

#[test]
fn slt_cluster() {
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let queries = run_all(&EngineKind::Cluster { scheduler: cluster.scheduler_addr().to_string() });
    assert!(queries >= MIN_QUERIES, "only {queries} queries ran on the cluster");
    // The queries were distributed: every executor process ran tasks.
    for e in &cluster.executors {
        assert!(
            e.log_text().contains("Execute task"),
            "{} ran no task:\n{}",
            e.name,
            cluster.logs()
        );
    }
}
