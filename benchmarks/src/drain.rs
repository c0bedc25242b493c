//! Spot drain: one churn backfill on 3 executors, run (a) undisturbed,
//! (b) with one executor SIGTERMed mid-chunk (it drains: finishes its
//! tasks, moves its shuffle output to a peer, exits) and (c) with the same
//! executor SIGKILLed at the same point (its output is recomputed). A spot
//! node does not come back, so the disturbed runs finish on 2 executors.
//!
//! Prints wall time, extra time against (a), and the scheduler's count of
//! recomputed tasks (`sluice_drain_events_total{event="rerun_tasks"}`:
//! successful tasks of stage attempts after the first).

use std::time::{Duration, Instant};

use chrono::NaiveDate;
use sluice_client::Target;
use sluice_client::backfill::BackfillOptions;
use sluice_client::datagen::churn::ChurnConfig;
use sluice_tests::TestCluster;

pub struct DrainBench {
    pub users: u64,
    pub days: u32,
    pub runs: usize,
    pub deadline_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Disturb {
    None,
    Drain,
    Kill,
}

struct Run {
    wall: Duration,
    rerun_tasks: f64,
    stage_reruns: f64,
    exit: Option<Duration>,
}

fn one(b: &DrainBench, data: &std::path::Path, disturb: Disturb) -> anyhow::Result<Run> {
    let tmp = tempfile::tempdir()?;
    let deadline = b.deadline_seconds.to_string();
    let mut cluster = TestCluster::start_full(
        3,
        1,
        &["--executor-timeout-seconds", "5"],
        &["--heartbeat-interval-seconds", "1", "--drain-deadline", &deadline],
    )?;
    let scheduler = cluster.scheduler_addr().to_string();
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date");
    let from = start + chrono::Days::new(31);
    let to = start + chrono::Days::new(u64::from(b.days) - 1);
    let opts = BackfillOptions {
        spec: sluice_tests::workspace_root().join("sql/jobs/churn.yaml"),
        from,
        to,
        target: Target::Scheduler(scheduler.parse()?),
        data_dir: Some(data.to_path_buf()),
        output: Some(tmp.path().join("out")),
        chunk_days: 365,
        parallel: 1,
        replace: false,
        settings: vec![
            ("datafusion.execution.target_partitions".into(), "6".into()),
            ("ballista.scheduler.max_partitions_per_task".into(), "1".into()),
            ("ballista.planner.adaptive.enabled".into(), "false".into()),
        ],
        progress: false,
        token: None,
    };
    let rt = sluice_proto::runtime()?;
    let (wall, exit) = rt.block_on(async {
        let started = Instant::now();
        let run_opts = opts.clone();
        let run = tokio::spawn(async move { sluice_client::backfill::run(&run_opts).await });
        let mut exit = None;
        let end = Instant::now() + Duration::from_secs(600);
        while disturb != Disturb::None
            && exit.is_none()
            && !run.is_finished()
            && Instant::now() < end
        {
            let jobs = sluice_tests::scheduler_jobs(&scheduler).await;
            if let Some(job) = jobs
                .iter()
                .rev()
                .find(|j| j.name.starts_with("sluice backfill") && j.num_stages >= 3)
                && job.status == "Running"
                && job.completed_stages >= 1
                // The executor that ran most of the job's tasks: it holds
                // the most map output.
                && let Some(victim) = cluster
                    .executors
                    .iter()
                    .map(|e| e.log_text().matches(&format!("Finished task : [TID {}/", job.id)).count())
                    .enumerate()
                    .filter(|(_, n)| *n > 0)
                    .max_by_key(|(_, n)| *n)
                    .map(|(i, _)| i)
            {
                let t = Instant::now();
                match disturb {
                    Disturb::Drain => {
                        cluster.executors[victim]
                            .sigterm_and_wait(Duration::from_secs(b.deadline_seconds + 30));
                    }
                    _ => cluster.executors[victim].kill(),
                }
                exit = Some(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = run.await??;
        anyhow::ensure!(report.ok, "backfill failed: {report:?}");
        Ok::<_, anyhow::Error>((started.elapsed(), exit))
    })?;
    if disturb != Disturb::None {
        anyhow::ensure!(exit.is_some(), "{disturb:?}: the chunk job was never seen mid-run");
    }
    let metric = |name: &str| {
        rt.block_on(sluice_tests::scheduler_metric(&scheduler, name)).unwrap_or(f64::NAN)
    };
    Ok(Run {
        wall,
        rerun_tasks: metric("sluice_drain_events_total{event=\"rerun_tasks\"}"),
        stage_reruns: metric("sluice_drain_events_total{event=\"stage_reruns\"}"),
        exit,
    })
}

pub fn run(b: &DrainBench) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let cfg = ChurnConfig {
        users: b.users,
        start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        days: b.days,
        seed: 29,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, data.path())?;
    println!(
        "churn backfill, {} users, {} days, one chunk, 3 executors x 1 slot, --drain-deadline {} s; best of {}",
        b.users, b.days, b.deadline_seconds, b.runs
    );
    let mut best: Vec<(Disturb, Run)> = Vec::new();
    for disturb in [Disturb::None, Disturb::Drain, Disturb::Kill] {
        let mut runs = Vec::new();
        for _ in 0..b.runs {
            runs.push(one(b, data.path(), disturb)?);
        }
        runs.sort_by_key(|r| r.wall);
        best.push((disturb, runs.remove(0)));
    }
    let base = best[0].1.wall.as_secs_f64();
    println!(
        "{:<12} {:>9} {:>10} {:>8} {:>14} {:>13} {:>14}",
        "run", "wall s", "extra s", "ratio", "recomputed", "stage reruns", "victim exit s"
    );
    for (d, r) in &best {
        println!(
            "{:<12} {:>9.3} {:>10.3} {:>8.2} {:>14} {:>13} {:>14}",
            format!("{d:?}").to_lowercase(),
            r.wall.as_secs_f64(),
            r.wall.as_secs_f64() - base,
            r.wall.as_secs_f64() / base,
            r.rerun_tasks,
            r.stage_reruns,
            r.exit.map_or("-".to_string(), |e| format!("{:.3}", e.as_secs_f64())),
        );
    }
    Ok(())
}
