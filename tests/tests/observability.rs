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
    /// `scheduler` is scraped over the cluster's TLS in a suite run with it
    /// (as a production Prometheus would, with a client certificate), the
    /// executors' metrics ports over plain HTTP.
    fn start(dir: &Path, scheduler: &str, executors: &[String]) -> Self {
        let program = which("prometheus").unwrap_or_else(|| {
            panic!("prometheus is not installed: `apt-get install -y prometheus` (scripts/test.sh does it as root)")
        });
        let config = dir.join("prometheus.yml");
        let list = |targets: &[String]| {
            targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
        };
        let scheduler_tls = match sluice_tests::suite_certs() {
            Some(certs) => {
                let client = certs.member("client").expect("client certificate");
                format!(
                    "    scheme: https\n    tls_config:\n      ca_file: {}\n      \
                     cert_file: {}\n      key_file: {}\n      server_name: {}\n",
                    certs.ca.display(),
                    client.cert.display(),
                    client.key.display(),
                    sluice_proto::tls::CLUSTER_SERVER_NAME
                )
            }
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: sluice-scheduler\n    metrics_path: /metrics\n\
                 {scheduler_tls}    static_configs:\n      - targets: [{}]\n\
                 \x20 - job_name: sluice-executors\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [{}]\n",
                list(&[scheduler.to_string()]),
                list(executors)
            ),
        )
        .expect("prometheus.yml");
        let targets = executors.len() + 1;
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
        // Its discovery hands targets over after ~5 s: wait until every
        // target has been scraped once, so what follows is all recorded.
        poll("prometheus scraped every target", Duration::from_secs(60), || {
            let up = p.value("count(up == 1)")?;
            (up as usize == targets).then_some(())
        });
        p
    }

    /// The raw JSON answer to an instant PromQL query (for messages).
    fn raw(&self, promql: &str) -> String {
        let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        get(&self.addr, &format!("/api/v1/query?query={q}")).map(|(_, b)| b).unwrap_or_default()
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
    rt.block_on(sluice_tests::http_get(addr, path, Duration::from_secs(5))).ok()
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

/// A channel to the scheduler port (over the cluster's TLS when the suite
/// runs with it, as KEDA would with its client certificate).
async fn scheduler_channel(addr: &str) -> Result<tonic::transport::Channel, String> {
    let addr: sluice_proto::HostPort = addr.parse().map_err(|e| format!("{e}"))?;
    sluice_client::backfill::scheduler_channel(&addr).await.map_err(|e| e.to_string())
}

/// (desired executors, active) as the scaler answers now.
async fn scaler_reading(addr: &str) -> Result<(f64, bool), String> {
    let mut client = ExternalScalerClient::new(scheduler_channel(addr).await?);
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

    let prometheus = Prometheus::start(tmp.path(), &sched, &executor_metrics);

    // Follow the scaler through the backfill: polling IsActive and
    // GetMetrics, and on one StreamIsActive stream (answers at each change).
    let streamed: Arc<std::sync::Mutex<Vec<bool>>> = Arc::default();
    let stream_rt = sluice_proto::runtime().expect("runtime");
    {
        let (streamed, sched) = (Arc::clone(&streamed), sched.clone());
        stream_rt.spawn(async move {
            let mut client =
                ExternalScalerClient::new(scheduler_channel(&sched).await.expect("scaler stream"));
            let object = ScaledObjectRef { name: "sluice-executors".into(), ..Default::default() };
            let mut stream = client.stream_is_active(object).await.expect("stream").into_inner();
            while let Ok(Some(answer)) = stream.message().await {
                if let Ok(mut s) = streamed.lock() {
                    s.push(answer.result);
                }
            }
        });
    }
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
    let streamed = poll("StreamIsActive went inactive again", Duration::from_secs(30), || {
        let s = streamed.lock().ok()?.clone();
        (s.len() >= 3 && s.last() == Some(&false)).then_some(s)
    });
    assert_eq!(streamed.first(), Some(&false), "idle at first: {streamed:?}");
    assert!(streamed.contains(&true), "never active on the stream: {streamed:?}");
    assert!(streamed.windows(2).all(|w| w[0] != w[1]), "answers only at changes: {streamed:?}");
    let peak = seen.iter().map(|(v, _)| *v).fold(0.0, f64::max);
    assert!(peak >= 1.0, "the scaler never asked for executors: {seen:?}");
    assert!(seen.iter().any(|(_, active)| *active), "never active: {seen:?}");

    let seen_by_prometheus = format!(
        "up: {}\ntasks: {}\ntargets: {}\nlog: {}",
        prometheus.raw("up"),
        prometheus.raw("max_over_time(sluice_tasks[10m])"),
        get(&prometheus.addr, "/api/v1/targets").map(|(_, b)| b).unwrap_or_default(),
        std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default()
    );
    let pending_peak = poll(
        &format!("Prometheus saw pending tasks ({seen_by_prometheus})"),
        Duration::from_secs(30),
        || {
            prometheus
                .value("max_over_time(sluice_tasks{state=\"pending\"}[10m])")
                .filter(|v| *v > 0.0)
        },
    );
    poll("Prometheus saw completed jobs", Duration::from_secs(30), || {
        prometheus.value("sluice_jobs_total{state=\"completed\"}").filter(|v| *v > 0.0)
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

/// One span as the in-process OTLP receiver got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    name: String,
}

/// An OTLP/gRPC trace receiver (opentelemetry-proto's `TraceService`),
/// keeping every span it is sent.
#[derive(Default, Clone)]
struct Receiver(Arc<std::sync::Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Receiver
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut spans = self.0.lock().map_err(|_| tonic::Status::internal("poisoned"))?;
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                        name: s.name,
                    });
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, one backfill is one trace: the
/// CLI's submit span is the root; the scheduler's backfill, chunk, job and
/// stage spans and the executors' task spans are in its trace, each under a
/// parent the trace holds.
#[test]
fn one_backfill_is_one_trace_across_cli_scheduler_and_executors() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let cfg = ChurnConfig {
        users: 200,
        start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        days: 40,
        seed: 7,
        ..ChurnConfig::default()
    };
    sluice_client::datagen::churn::generate(&cfg, &data).expect("generate");

    // The receiver, in its own runtime for the whole test.
    let receiver = Receiver::default();
    let rt = sluice_proto::runtime().expect("runtime");
    let listener =
        rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind the receiver");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let service = TraceServiceServer::new(receiver.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
    ];
    let cluster = TestCluster::start_env(2, 1, &[], &env).expect("cluster");
    let out = tmp.path().join("out");
    let backfill = Command::new(bin("sluice"))
        .args([
            "backfill",
            &workspace_root().join("sql/jobs/churn.yaml").display().to_string(),
            "--from",
            "2024-02-01",
            "--to",
            "2024-02-06",
            "--data-dir",
            &data.display().to_string(),
            "--output",
            &out.display().to_string(),
            "--chunk-days",
            "3",
            "--catalog",
            &tmp.path().join("catalog.json").display().to_string(),
            "--scheduler",
            cluster.scheduler_addr(),
        ])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("backfill");
    assert!(
        backfill.status.success(),
        "backfill: {}\n{}",
        String::from_utf8_lossy(&backfill.stderr),
        cluster.logs()
    );

    let snapshot = || receiver.0.lock().map(|s| s.clone()).unwrap_or_default();
    let root = poll("the CLI's root span", Duration::from_secs(30), || {
        snapshot().into_iter().find(|s| s.service == "sluice" && s.name == "backfill submit")
    });
    assert!(root.parent_span_id.is_empty(), "the CLI's span has a parent: {root:?}");
    // Every process's spans arrive in the root's trace.
    let trace = poll("spans of every process in one trace", Duration::from_secs(30), || {
        let trace: Vec<ReceivedSpan> =
            snapshot().into_iter().filter(|s| s.trace_id == root.trace_id).collect();
        let has = |service: &str, name: &str| {
            trace.iter().any(|s| s.service == service && s.name.starts_with(name))
        };
        (has("sluice-scheduler", "backfill")
            && has("sluice-scheduler", "chunk write")
            && has("sluice-scheduler", "chunk check")
            && has("sluice-scheduler", "job")
            && has("sluice-scheduler", "stage ")
            && has("sluice-executor", "task"))
        .then_some(trace)
    });
    let ids: std::collections::HashSet<&[u8]> =
        trace.iter().map(|s| s.span_id.as_slice()).collect();
    for s in &trace {
        assert!(
            s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_slice()),
            "{} span '{}' has a parent outside the trace",
            s.service,
            s.name
        );
    }
    let count = |service: &str| trace.iter().filter(|s| s.service == service).count();
    eprintln!(
        "one trace: {} spans (CLI {}, scheduler {}, executors {})",
        trace.len(),
        count("sluice"),
        count("sluice-scheduler"),
        count("sluice-executor")
    );
}
