//! `skew`: task balance of (a) the churn backfill and (b) a join of two
//! large inputs on the skewed key followed by an aggregation, on skewed and
//! uniform data.
//!
//! For each data set (Zipf `--zipf`, then uniform, same users and days) and
//! `sluice.skew.enabled` on and off, the runner backfills `--dates` feature
//! dates on a process cluster with `--partitions` shuffle partitions and one
//! partition per task (`ballista.scheduler.max_partitions_per_task=1`, so a
//! task time is a partition's time). It then reads the scheduler's REST stage
//! summaries (`/api/jobs`, `/api/job/{id}/stages`) of the jobs the run
//! submitted. This machine has 2 cores, so wall time cannot show balance; the
//! heaviest stage's task times decide the time on a real cluster. It reports
//! two stages: the heaviest one (largest total task time), and the heaviest
//! one that reads a shuffle hashed by the skewed key (`__k` in the backfill,
//! `user_id` in the join), the "keyed" stage where a hot key's partition
//! lands. A scan stage's tasks are file byte ranges, which no key skew
//! reaches, and the backfill's write stage reads a shuffle by feature date,
//! whose balance depends on how the chunk's dates hash, not on the key; at
//! some sizes either is the heaviest stage. Of each it prints:
//!
//! - max / median task time;
//! - the largest task's share of the stage's total task time;
//! - the makespan 64 slots would need: greedy list scheduling of the measured
//!   task times, longest first, each onto the least loaded slot.
//!
//! ```text
//! cargo run --release -p sluice-benchmarks -- skew --users 2000 --dates 92 --zipf 1.2
//! ```

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chrono::NaiveDate;
use serde_json::Value;
use sluice_client::Target;
use sluice_client::backfill::{BackfillOptions, run as backfill};
use sluice_tests::TestCluster;

/// The runner's arguments.
pub struct SkewBench {
    pub users: u64,
    pub dates: u32,
    pub zipf: f64,
    pub partitions: usize,
    pub iterations: usize,
    pub executors: usize,
    pub vcores: usize,
    /// Run (a), the backfill.
    pub backfill: bool,
    /// Run (b), the join and aggregation.
    pub join: bool,
}

/// One stage's label and task times (ms).
#[derive(Clone, Default)]
struct Stage {
    label: String,
    tasks: Vec<u64>,
}

impl Stage {
    fn median_task(&self) -> f64 {
        let mut t = self.tasks.clone();
        t.sort_unstable();
        match t.len() {
            0 => 0.0,
            n if n % 2 == 1 => t[n / 2] as f64,
            n => (t[n / 2 - 1] + t[n / 2]) as f64 / 2.0,
        }
    }

    fn max_task(&self) -> u64 {
        self.tasks.iter().copied().max().unwrap_or(0)
    }

    fn max_over_median(&self) -> f64 {
        self.max_task() as f64 / self.median_task().max(1.0)
    }

    fn largest_share(&self) -> f64 {
        let total: u64 = self.tasks.iter().sum();
        if total == 0 { 0.0 } else { self.max_task() as f64 / total as f64 }
    }

    /// Greedy list scheduling onto `slots` slots, longest task first.
    fn makespan(&self, slots: usize) -> u64 {
        let mut t = self.tasks.clone();
        t.sort_unstable_by(|a, b| b.cmp(a));
        let mut load = vec![0u64; slots.max(1)];
        for d in t {
            if let Some(min) = load.iter_mut().min() {
                *min += d;
            }
        }
        load.into_iter().max().unwrap_or(0)
    }

    fn summary(&self) -> String {
        format!(
            "{} tasks, max/median {:.2} ({} ms / {:.0} ms), largest share {:.1}%, 64-slot makespan {} ms\n      {}",
            self.tasks.len(),
            self.max_over_median(),
            self.max_task(),
            self.median_task(),
            100.0 * self.largest_share(),
            self.makespan(64),
            self.label.chars().take(200).collect::<String>(),
        )
    }
}

/// One run: wall time, its heaviest stage, its heaviest stage that reads a
/// shuffle (where a hot key's partition lands: the "keyed" stage) and its
/// jobs' times (ms, in submission order).
struct Measured {
    wall: f64,
    heaviest: Stage,
    keyed: Stage,
    jobs: Vec<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = http.get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    anyhow::ensure!(status.is_success(), "GET {url}: HTTP {status}");
    // reqwest's `json` feature would change the feature set of the reqwest
    // that object_store (and so all of DataFusion) builds against.
    let body = resp.text().await.with_context(|| format!("GET {url}: body"))?;
    serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON"))
}

/// Whether a stage plan reads a shuffle hash-partitioned by `key` (among
/// other columns): `ShuffleReaderExec: …, partitioning: Hash([key@0, …], n)`.
fn reads_shuffle_by(plan: &str, key: &str) -> bool {
    plan.lines().any(|l| {
        l.trim_start().starts_with("ShuffleReaderExec")
            && l.split_once("Hash([").is_some_and(|(_, exprs)| {
                exprs.split(']').next().unwrap_or("").contains(&format!("{key}@"))
            })
    })
}

/// The heaviest stage (largest total task time) of the jobs submitted at or
/// after `since_ms`, the heaviest of those that read a shuffle hashed by
/// `key` (any shuffle reader when none does), and the jobs' times.
async fn stages_since(
    http: &reqwest::Client,
    rest: &str,
    since_ms: u64,
    key: &str,
) -> anyhow::Result<(Stage, Stage, Vec<u64>)> {
    let jobs = get_json(http, &format!("{rest}/api/jobs")).await?;
    let jobs = jobs.as_array().context("/api/jobs: expected an array")?;
    let (mut heaviest, mut keyed, mut reader): ((u64, Stage), (u64, Stage), (u64, Stage)) =
        Default::default();
    let mut times: Vec<(u64, u64)> = Vec::new();
    for job in jobs {
        let started = job.get("start_time").and_then(Value::as_u64).unwrap_or(0);
        if started < since_ms {
            continue;
        }
        let ended = job.get("end_time").and_then(Value::as_u64).unwrap_or(0);
        times.push((started, ended.saturating_sub(started)));
        let id = job.get("job_id").and_then(Value::as_str).context("job without job_id")?;
        let stages = get_json(http, &format!("{rest}/api/job/{id}/stages")).await?;
        let stages = stages.get("stages").and_then(Value::as_array).context("no stages")?;
        for stage in stages {
            let tasks: Vec<u64> = stage
                .get("tasks")
                .and_then(Value::as_array)
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| t.get("exec_duration").and_then(Value::as_u64))
                        .collect()
                })
                .unwrap_or_default();
            let total: u64 = tasks.iter().sum();
            let sid = stage.get("stage_id").and_then(Value::as_str).unwrap_or("?");
            let plan = stage.get("stage_plan").and_then(Value::as_str).unwrap_or("");
            let top: Vec<&str> = plan.lines().take(3).map(str::trim).collect();
            let this =
                Stage { label: format!("job {id} stage {sid}: {}", top.join(" <- ")), tasks };
            if total > heaviest.0 || heaviest.1.tasks.is_empty() {
                heaviest = (total, this.clone());
            }
            if reads_shuffle_by(plan, key) && (total > keyed.0 || keyed.1.tasks.is_empty()) {
                keyed = (total, this.clone());
            }
            if plan.contains("ShuffleReaderExec") && (total > reader.0 || reader.1.tasks.is_empty())
            {
                reader = (total, this);
            }
        }
    }
    if keyed.1.tasks.is_empty() {
        keyed = reader;
    }
    anyhow::ensure!(!heaviest.1.tasks.is_empty(), "no stage of this run found in /api/jobs");
    times.sort_unstable();
    Ok((heaviest.1, keyed.1, times.into_iter().map(|(_, t)| t).collect()))
}

/// Runs the benchmark and prints its figures.
pub fn run(b: &SkewBench) -> anyhow::Result<()> {
    let start = NaiveDate::from_ymd_opt(2023, 1, 1).context("date")?;
    let lookback = 100i64;
    let first = start + chrono::Duration::days(lookback);
    let last = first + chrono::Duration::days(i64::from(b.dates) - 1);
    let spec_path = sluice_tests::workspace_root().join("sql/jobs/churn.yaml");
    let mut sets = Vec::new();
    for (name, zipf) in [("zipf", b.zipf), ("uniform", 0.0)] {
        let dir = sluice_tests::workspace_root()
            .join(format!("benchmarks/data/skew-u{}-d{}-z{zipf}/raw", b.users, b.dates));
        if !dir.join("events").is_dir() {
            eprintln!("generating {name} churn data (zipf {zipf}) into {} ...", dir.display());
            let cfg = sluice_client::datagen::churn::ChurnConfig {
                users: b.users,
                start,
                days: b.dates + lookback as u32,
                seed: 1,
                zipf,
                ..Default::default()
            };
            sluice_client::datagen::churn::generate(&cfg, &dir)?;
        }
        sets.push((name, zipf, dir));
    }

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let vcores = if b.vcores == 0 { cores } else { b.vcores };
    let cluster = TestCluster::start(b.executors, vcores).context("start the process cluster")?;
    let rest = format!("http://{}", cluster.scheduler_addr());
    let target = Target::Scheduler(cluster.scheduler_addr().parse()?);
    let work = tempfile::Builder::new().prefix("sluice-skew-bench-").tempdir()?;
    let rt = sluice_proto::runtime()?;
    let http = reqwest::Client::new();
    println!(
        "skew: churn backfill, {} users, {} feature dates ({first}..{last}), {} shuffle partitions, 1 partition per task, process cluster 1 scheduler + {} executors x {vcores} slots",
        b.users, b.dates, b.partitions, b.executors
    );

    let mut results: Vec<(&str, bool, Measured)> = Vec::new();
    let mut n = 0;
    for (name, zipf, data) in sets.iter().filter(|_| b.backfill) {
        for skew in [true, false] {
            let mut runs = Vec::new();
            // One untimed run per configuration first (page cache, connections).
            for i in 0..=b.iterations {
                n += 1;
                let opts = BackfillOptions {
                    spec: spec_path.clone(),
                    from: first,
                    to: last,
                    target: target.clone(),
                    data_dir: Some(data.clone()),
                    output: Some(work.path().join(format!("out-{n}"))),
                    chunk_days: 92,
                    parallel: 2,
                    replace: false,
                    settings: vec![
                        ("datafusion.execution.target_partitions".into(), b.partitions.to_string()),
                        ("ballista.scheduler.max_partitions_per_task".into(), "1".into()),
                        ("sluice.skew.enabled".into(), skew.to_string()),
                    ],
                    progress: false,
                    token: None,
                };
                let since = now_ms();
                let t = Instant::now();
                let report = rt.block_on(backfill(&opts))?;
                let wall = t.elapsed().as_secs_f64();
                anyhow::ensure!(report.ok, "quality failed on {name} (skew {skew})");
                let (heaviest, keyed, jobs) =
                    rt.block_on(stages_since(&http, &rest, since, "__k"))?;
                if i > 0 {
                    runs.push(Measured { wall, heaviest, keyed, jobs });
                }
            }
            runs.sort_by(|a, b| a.wall.total_cmp(&b.wall));
            let walls: Vec<String> = runs.iter().map(|m| format!("{:.2}", m.wall)).collect();
            let m = runs.swap_remove(runs.len() / 2);
            println!(
                "{name:<7} (zipf {zipf}) skew {:<3}: wall {:.2} s (median of [{}]; jobs {:?} ms)\n    heaviest stage: {}\n    keyed stage:    {}",
                if skew { "on" } else { "off" },
                m.wall,
                walls.join(", "),
                m.jobs,
                m.heaviest.summary(),
                m.keyed.summary(),
            );
            results.push((name, skew, m));
        }
    }
    // (b) A join of two large inputs on the skewed key, then an aggregation.
    // Broadcast is off so the join is partitioned (a small side would be
    // broadcast and never skewed).
    let join_sql = "SELECT e.event_type, count(*) AS n, sum(s.spend) AS spend FROM events e \
                    JOIN (SELECT user_id, sum(amount) AS spend FROM transactions GROUP BY user_id) s \
                    ON e.user_id = s.user_id GROUP BY e.event_type ORDER BY e.event_type";
    let mut joins: Vec<(&str, bool, Measured)> = Vec::new();
    for (name, zipf, data) in sets.iter().filter(|_| b.join) {
        let tables: Vec<sluice_sql::tables::TableSource> = sluice_client::datagen::churn::TABLES
            .iter()
            .map(|t| {
                sluice_sql::tables::TableSource::new(
                    t,
                    &data.join(t).to_string_lossy(),
                    Some(sluice_sql::tables::TableFormat::Parquet),
                )
            })
            .collect::<Result<_, _>>()?;
        let mut answers = Vec::new();
        for skew in [true, false] {
            let settings = vec![
                ("datafusion.execution.target_partitions".to_string(), b.partitions.to_string()),
                ("ballista.scheduler.max_partitions_per_task".into(), "1".into()),
                ("ballista.optimizer.broadcast_join_threshold_bytes".into(), "0".into()),
                ("sluice.skew.enabled".into(), skew.to_string()),
            ];
            let conn = rt.block_on(sluice_client::connect(&target, &settings, &tables))?;
            let mut runs = Vec::new();
            for i in 0..=b.iterations {
                let since = now_ms();
                let t = Instant::now();
                let out =
                    rt.block_on(sluice_client::connect::run_sql_salted(&conn.ctx, join_sql))?;
                let wall = t.elapsed().as_secs_f64();
                let (heaviest, keyed, jobs) =
                    rt.block_on(stages_since(&http, &rest, since, "user_id"))?;
                if i == 0 {
                    answers.push(out);
                } else {
                    runs.push(Measured { wall, heaviest, keyed, jobs });
                }
            }
            runs.sort_by(|a, b| a.wall.total_cmp(&b.wall));
            let walls: Vec<String> = runs.iter().map(|m| format!("{:.2}", m.wall)).collect();
            let m = runs.swap_remove(runs.len() / 2);
            println!(
                "join+agg {name:<7} (zipf {zipf}) skew {:<3}: wall {:.2} s (median of [{}]; jobs {:?} ms)\n    heaviest stage: {}\n    keyed stage:    {}",
                if skew { "on" } else { "off" },
                m.wall,
                walls.join(", "),
                m.jobs,
                m.heaviest.summary(),
                m.keyed.summary(),
            );
            joins.push((name, skew, m));
        }
        sluice_client::verify::compare(&answers[1], &answers[0], true)
            .context("join+agg: salting on differs from off")?;
    }
    print_ratios("join+agg ", &joins);
    print_ratios("", &results);
    Ok(())
}

/// The target lines of one benchmark: balance with skew handling on, and
/// the on/off ratios on skewed and uniform data, for the heaviest stage and
/// for the keyed stage.
fn print_ratios(label: &str, runs: &[(&str, bool, Measured)]) {
    let get = |name: &str, skew: bool| runs.iter().find(|r| r.0 == name && r.1 == skew);
    if let (Some((_, _, on)), Some((_, _, off))) = (get("zipf", true), get("zipf", false)) {
        for (which, on, off) in
            [("heaviest", &on.heaviest, &off.heaviest), ("keyed", &on.keyed, &off.keyed)]
        {
            println!(
                "{label}zipf, skew on, {which} stage: max/median = {:.2} (target <= 2), largest share = {:.1}% (target <= 5%)",
                on.max_over_median(),
                100.0 * on.largest_share()
            );
            println!(
                "RATIO {label}zipf {which}-stage 64-slot makespan off/on = {:.1}x (target >= 5)",
                off.makespan(64) as f64 / on.makespan(64).max(1) as f64
            );
        }
        println!("RATIO {label}zipf wall on/off = {:.2} (target <= 1.0)", on.wall / off.wall);
    }
    if let (Some((_, _, on)), Some((_, _, off))) = (get("uniform", true), get("uniform", false)) {
        println!("RATIO {label}uniform wall on/off = {:.2} (target <= 1.05)", on.wall / off.wall);
    }
}

#[cfg(test)]
mod tests {
    use super::reads_shuffle_by;

    #[test]
    fn the_keyed_stage_reads_a_shuffle_hashed_by_the_key() {
        let tiles = "ShuffleWriterExec: partitioning=Hash([__dt@0], 4)\n  \
                     ShuffleReaderExec: upstream_stage: 0, partitioning: Hash([__k@0, __s@1], 4)";
        let write = "ShuffleWriterExec: partitioning: UnknownPartitioning(4)\n  \
                     ShuffleReaderExec: upstream_stage: 1, partitioning: Hash([__dt@0], 4)";
        assert!(reads_shuffle_by(tiles, "__k"));
        assert!(!reads_shuffle_by(write, "__k"));
        assert!(!reads_shuffle_by("SortShuffleWriterExec: partitioning=Hash([__k@0], 4)", "__k"));
    }
}
