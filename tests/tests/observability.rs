//! Metrics and autoscaling against real processes: Debian's Prometheus
//! scrapes a process cluster's `/metrics` during a backfill, and a client of
//! KEDA's external scaler protocol follows the leader's answers through it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use sluice_client::datagen::churn::ChurnConfig;
use sluice_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use sluice_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use sluice_tests::{TestCluster, bin, free_port, workspace_root};

/// A Prometheus server (Debian's `prometheus`) scraping `target` every
/// second, its data in `dir`; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[String]) -> Self {
        let program = which("prometheus").unwrap_or_else(|| {
            panic!("prometheus is not installed: `apt-get install -y prometheus` (scripts/test.sh does it as root)")
        });
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: sluice\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [{}]\n",
                targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
            ),
        )
        .expect("prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port().expect("port"));
        let child = Command::new(program)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("spawn prometheus");
        let p = Self { child, addr };
        poll("prometheus ready", Duration::from_secs(60), || {
            get(&p.addr, "/-/ready").filter(|(code, _)| *code == 200).map(|_| ())
        });
        p
    }

    /// The value of an instant PromQL query with one result, if any.
    fn value(&self, promql: &str) -> Option<f64> {
        let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (code, body) = get(&self.addr, &format!("/api/v1/query?query={q}"))?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let rt = sluice_proto::runtime().ok()?;
    rt.block_on(sluice_client::http::get(addr, path, Duration::from_secs(5))).ok()
}

fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `promtool check metrics` finds `text` clean.
fn promtool_check(text: &str) {
    let mut promtool = Command::new(which("promtool").expect("promtool (Debian prometheus)"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), text.as_bytes())
        .expect("write");
    let lint = promtool.wait_with_output().expect("promtool");
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
}

/// (desired executors, active) as the scaler answers now.
async fn scaler_reading(addr: &str) -> Result<(f64, bool), String> {
    let mut client =
        ExternalScalerClient::connect(format!("http://{addr}")).await.map_err(|e| e.to_string())?;
    let object = ScaledObjectRef {
        name: "sluice-executors".into(),
        namespace: "default".into(),
        scaler_metadata: [("slotsPerExecutor".to_string(), "1".to_string())].into(),
    };
    let active = client.is_active(object.clone()).await.map_err(|e| e.to_string())?;
    let metrics = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object),
            metric_name: "sluice-executors".into(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let value = metrics.get_ref().metric_values.first().map_or(-1.0, |m| m.metric_value_float);
    Ok((value, active.get_ref().result))
}

/// A churn backfill on two one-slot executors: Prometheus sees pending tasks
/// above 0 while it runs and 0 after; the scaler's desired executors rise
/// above 0 (active) and fall back to 0 (inactive) when it ends; promtool
/// finds the exposition clean.
#[test]
fn prometheus_and_the_keda_scaler_follow_a_backfill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let cfg = ChurnConfig {
        users: 400,
        start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        days: 60,
        seed: 5,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");
    let cluster = TestCluster::start_with(2, 1, &["--metrics-port", "0"]).expect("cluster");
    let sched = cluster.scheduler_addr().to_string();
    let executor_metrics: Vec<String> = cluster
        .executors
        .iter()
        .map(|e| e.listening("sluice-executor metrics", Duration::from_secs(10)).expect("metrics"))
        .collect();

    // The expositions pass promtool's lint.
    let (code, text) = get(&sched, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("sluice_tasks{state=\"pending\"} 0"), "{text}");
    promtool_check(&text);
    let (code, text) = get(&executor_metrics[0], "/metrics").expect("GET executor /metrics");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("sluice_executor_slots 1"), "{text}");
    promtool_check(&text);

    let mut targets = vec![sched.clone()];
    targets.extend(executor_metrics.iter().cloned());
    let prometheus = Prometheus::start(tmp.path(), &targets);

    // Follow the scaler through the backfill.
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (stop, sched) = (Arc::clone(&stop), sched.clone());
        std::thread::spawn(move || {
            let rt = sluice_proto::runtime().expect("runtime");
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match rt.block_on(scaler_reading(&sched)) {
                    Ok(r) => seen.push(r),
                    Err(e) => panic!("scaler: {e}"),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        })
    };
    assert_eq!(
        sluice_proto::runtime().expect("rt").block_on(scaler_reading(&sched)),
        Ok((0.0, false)),
        "an idle cluster wants executors"
    );

    let out = tmp.path().join("out");
    let backfill = Command::new(bin("sluice"))
        .args([
            "backfill",
            &workspace_root().join("sql/jobs/churn.yaml").display().to_string(),
            "--from",
            "2024-02-01",
            "--to",
            "2024-02-24",
            "--data-dir",
            &data.display().to_string(),
            "--output",
            &out.display().to_string(),
            "--chunk-days",
            "4",
            "--parallel",
            "2",
            "--catalog",
            &tmp.path().join("catalog.json").display().to_string(),
            "--scheduler",
            &sched,
        ])
        .output()
        .expect("backfill");
    assert!(
        backfill.status.success(),
        "backfill: {}\n{}",
        String::from_utf8_lossy(&backfill.stderr),
        cluster.logs()
    );
    assert_eq!(sluice_tests::committed_dates(&out).len(), 24);

    // After it: the scaler reaches zero and inactive, Prometheus sees 0 pending.
    poll("the scaler falls to 0", Duration::from_secs(30), || {
        let rt = sluice_proto::runtime().ok()?;
        (rt.block_on(scaler_reading(&sched)).ok()? == (0.0, false)).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let seen = follower.join().expect("follower");
    let peak = seen.iter().map(|(v, _)| *v).fold(0.0, f64::max);
    assert!(peak >= 1.0, "the scaler never asked for executors: {seen:?}");
    assert!(seen.iter().any(|(_, active)| *active), "never active: {seen:?}");

    let pending_peak = poll("Prometheus saw pending tasks", Duration::from_secs(30), || {
        prometheus.value("max_over_time(sluice_tasks{state=\"pending\"}[10m])").filter(|v| *v > 0.0)
    });
    let committed_peak = poll("Prometheus saw committed dates", Duration::from_secs(30), || {
        prometheus
            .value("max_over_time(sluice_backfill_dates{state=\"committed\"}[10m])")
            .filter(|v| *v > 0.0)
    });
    // Two scrapes after the end, the latest sample is 0.
    poll("Prometheus sees 0 pending after", Duration::from_secs(30), || {
        let now = prometheus.value("sluice_tasks{state=\"pending\"}")?;
        let window = prometheus.value("max_over_time(sluice_tasks{state=\"pending\"}[3s])")?;
        (now == 0.0 && window == 0.0).then_some(())
    });
    // The executors counted their tasks, shuffle output and shuffle input.
    let executor_totals =
        poll("Prometheus saw the executors' work", Duration::from_secs(30), || {
            let tasks = prometheus.value("sum(sluice_executor_task_duration_seconds_count)")?;
            let written = prometheus.value("sum(sluice_executor_shuffle_written_bytes_total)")?;
            let read = prometheus.value("sum(sluice_executor_shuffle_read_bytes_total)")?;
            let ok = prometheus.value("sum(sluice_executor_tasks_total{outcome=\"succeeded\"})")?;
            (tasks > 0.0 && written > 0.0 && read > 0.0 && ok > 0.0)
                .then_some((tasks, written, read))
        });
    eprintln!(
        "executors: {} tasks, {} shuffle bytes written, {} read",
        executor_totals.0, executor_totals.1, executor_totals.2
    );
    eprintln!(
        "scaler readings: {}, peak desired executors {peak}; Prometheus: peak pending tasks \
         {pending_peak}, peak committed dates of running backfills {committed_peak}",
        seen.len()
    );
}
