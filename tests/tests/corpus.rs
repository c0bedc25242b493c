//! DataFusion's own sqllogictest corpus (the `test_files/` of
//! `datafusion-sqllogictest` 55.2.0) on `local` and `cluster`: the cluster
//! passes every record local passes, except the intended differences below,
//! and no record hangs. See `sluice_tests::corpus`.
//!
//! `SLUICE_CORPUS_FILES=window.slt,limit.slt` runs some files only;
//! `SLUICE_CORPUS_REPORT=FILE` writes every record's outcome there.

use std::time::Duration;

use sluice_tests::TestCluster;
use sluice_tests::corpus::{
    FILES, IntendedDifference, Outcome, Sandboxes, intended, missing_data, report, run_files,
};

/// Per record, on each engine: long enough for the slowest record of the
/// corpus on a loaded 2-core machine, short enough that a hang is seen.
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn corpus_cluster_passes_what_local_passes() {
    let files: Vec<&str> = match std::env::var("SLUICE_CORPUS_FILES") {
        Ok(list) => {
            FILES.iter().copied().filter(|f| list.split(',').any(|x| x.trim() == *f)).collect()
        }
        Err(_) => FILES.to_vec(),
    };
    assert!(!files.is_empty(), "SLUICE_CORPUS_FILES selects no file of {FILES:?}");
    // DataFusion's runner runs in `datafusion/sqllogictest`: the corpus's
    // relative paths are relative to it. The working directory is each
    // engine's sandbox in turn (this test is its own process).
    let sandboxes = Sandboxes::new().expect("corpus sandboxes");
    let cluster = TestCluster::start(2, 2).expect("cluster");
    let timeout = std::env::var("SLUICE_CORPUS_TIMEOUT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(RECORD_TIMEOUT, Duration::from_secs);
    let rt = sluice_proto::runtime().expect("runtime");
    let results = rt
        .block_on(run_files(&sandboxes, &files, cluster.scheduler_addr(), timeout))
        .expect("corpus run");
    let table = report(&results);
    eprintln!("{table}");

    if let Ok(path) = std::env::var("SLUICE_CORPUS_REPORT") {
        let mut out = table.clone();
        for r in &results {
            out.push_str(&format!(
                "\n## {}:{} local={} cluster={}\n{}\n",
                r.file,
                r.line,
                brief(&r.local),
                brief(&r.cluster),
                r.sql
            ));
            for (engine, o) in [("local", &r.local), ("cluster", &r.cluster)] {
                if let Outcome::Fail(msg) = o {
                    out.push_str(&format!("### {engine}\n{msg}\n"));
                }
            }
        }
        std::fs::write(&path, out).expect("write the report");
    }

    let mut problems = Vec::new();
    for r in &results {
        if r.cluster == Outcome::Timeout {
            problems.push(format!("{}:{} hangs on the cluster:\n{}", r.file, r.line, r.sql));
        } else if r.local.passed() && !r.cluster.passed() && intended(r).is_none() {
            let Outcome::Fail(msg) = &r.cluster else { continue };
            let what = if r.cluster_wrong_result { "WRONG RESULT" } else { "fails" };
            problems.push(format!("{}:{} {what} on the cluster:\n{msg}", r.file, r.line));
        }
    }
    for d in IntendedDifference::ALL {
        let n = results.iter().filter(|r| intended(r) == Some(d)).count();
        eprintln!("intended difference {d:?}: {n} records ({})", d.reason());
    }
    let missing: usize = results.iter().filter(|r| missing_data(&r.local).is_some()).count();
    eprintln!(
        "{} records; {missing} fail locally for a data file outside the package",
        results.len()
    );
    drop(cluster);
    assert!(problems.is_empty(), "{} records differ:\n\n{}", problems.len(), problems.join("\n\n"));
}

fn brief(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail(_) => "FAIL",
        Outcome::Timeout => "TIMEOUT",
    }
}
