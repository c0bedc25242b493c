//! The cluster's internal plane against raw clients: mutual TLS between
//! scheduler, executors and clients; executor messages checked before
//! Ballista sees them (issue: "Lock the cluster's internal plane").
//!
//! Each test plays an attacker with tonic and arrow-flight clients, with and
//! without certificates, and checks both that the attack is refused and that
//! the cluster still answers what single-node DataFusion answers.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arrow_flight::Ticket;
use arrow_flight::flight_service_client::FlightServiceClient;
use ballista_core::serde::protobuf::executor_grpc_client::ExecutorGrpcClient;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelTasksParams, ExecutorOperatingSystemSpecification, ExecutorRegistration,
    ExecutorResource, ExecutorSpecification, ExecutorStoppedParams, FailedTask,
    RegisterExecutorParams, SuccessfulTask, TaskStatus, UpdateTaskStatusParams, executor_resource,
    task_status,
};
use sluice_proto::tls::{CLUSTER_SERVER_NAME, ClusterTls};
use sluice_tests::{TestCluster, bin, local_csv, plain_env, scheduler_jobs, workspace_root};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How a raw client connects.
enum Creds<'a> {
    /// Plain HTTP/2, no TLS.
    Plain,
    /// TLS trusting the cluster CA, without a client certificate.
    CaOnly(&'a TestCluster),
    /// TLS with a member's certificate.
    Member(ClusterTls),
}

async fn channel(addr: &str, creds: &Creds<'_>) -> Result<Channel, String> {
    let endpoint = |scheme: &str| {
        Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map(|e| e.connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(10)))
            .map_err(|e| e.to_string())
    };
    let endpoint = match creds {
        Creds::Plain => endpoint("http")?,
        Creds::CaOnly(cluster) => {
            let ca = cluster.certs.as_ref().map(|c| c.ca.clone()).ok_or("not a TLS cluster")?;
            let pem = std::fs::read(ca).map_err(|e| e.to_string())?;
            endpoint("https")?
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(pem))
                        .domain_name(CLUSTER_SERVER_NAME),
                )
                .map_err(|e| e.to_string())?
        }
        Creds::Member(tls) => tls.secure_endpoint(endpoint("http")?).map_err(|e| e.to_string())?,
    };
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

fn registration(id: &str) -> ExecutorRegistration {
    ExecutorRegistration {
        id: id.to_string(),
        host: Some("127.0.0.1".into()),
        port: 9,
        grpc_port: 0,
        specification: Some(ExecutorSpecification {
            resources: vec![ExecutorResource {
                resource: Some(executor_resource::Resource::Vcores(1)),
            }],
        }),
        os_info: Some(ExecutorOperatingSystemSpecification::default()),
        ballista_protocol_version: ballista_core::BALLISTA_PROTOCOL_VERSION,
    }
}

/// `RegisterExecutor` for a made-up executor, as `creds`; the gRPC code
/// (`Ok` when accepted) or the transport error.
async fn register(addr: &str, creds: &Creds<'_>, id: &str) -> Result<tonic::Code, String> {
    let mut client = SchedulerGrpcClient::new(channel(addr, creds).await?);
    let request = RegisterExecutorParams { metadata: Some(registration(id)) };
    Ok(match client.register_executor(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    })
}

/// A Flight `DoGet` with a junk ticket on an executor's port, as `creds`:
/// the reply's code and message, or the connection error.
async fn flight_get(addr: &str, creds: &Creds<'_>) -> Result<(tonic::Code, String), String> {
    let mut client = FlightServiceClient::new(channel(addr, creds).await?);
    let ticket = Ticket { ticket: b"not a ballista action".to_vec().into() };
    match client.do_get(ticket).await {
        Ok(_) => Ok((tonic::Code::Ok, String::new())),
        Err(s) => Ok((s.code(), s.message().to_string())),
    }
}

fn sluice(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(bin("sluice"))
        .args(args)
        .envs(plain_env())
        .env_remove("SLUICE_SCHEDULER")
        .env("SLUICE_CATALOG", std::env::temp_dir().join("sluice-security-no-catalog.json"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run sluice")
}

const SHUFFLE_SQL: &str = "SELECT segment, count(*) AS n, sum(customer_id) AS s \
                           FROM c GROUP BY segment ORDER BY segment";

fn customers() -> String {
    format!("c={}", workspace_root().join("tests/data/customers.csv").display())
}

fn run_sql(target: &[&str], sql: &str, env: &[(String, String)]) -> Output {
    let table = customers();
    let mut args = vec!["sql"];
    args.extend_from_slice(target);
    args.extend_from_slice(&["--table", &table, "--format", "csv", sql]);
    sluice(&args, env)
}

fn ok_stdout(out: &Output, cluster: &TestCluster) -> String {
    assert!(
        out.status.success(),
        "sluice sql failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Findings 1 and 2 (critical, high): with cluster TLS, the scheduler's
/// executor calls and the executors' Flight ports refuse anyone without a
/// cluster certificate of the right role, an executor id belongs to the
/// certificate that registered it, and the cluster answers as local
/// DataFusion does. Executors' task ports (push scheduling) take only the
/// scheduler's certificate.
#[test]
fn mutual_tls_refuses_strangers_and_answers_like_local() {
    let cluster = TestCluster::start_tls(2, 2).expect("TLS cluster");
    let sched = cluster.scheduler_addr().to_string();
    let flight = cluster.executors[0].addr.clone();
    let rt = sluice_proto::runtime().expect("runtime");
    let member = |name: &str| Creds::Member(cluster.member_tls(name).expect("member"));

    rt.block_on(async {
        // Scheduler port: plain, CA-only and client certificates cannot
        // register an executor; an executor certificate can.
        let plain = register(&sched, &Creds::Plain, "intruder").await;
        assert!(plain != Ok(tonic::Code::Ok), "plain: {plain:?}");
        assert_eq!(
            register(&sched, &Creds::CaOnly(&cluster), "intruder").await,
            Ok(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            register(&sched, &member("client"), "intruder").await,
            Ok(tonic::Code::PermissionDenied)
        );

        // Executor-0's task port (push scheduling), from its log.
        let task_port: u32 = {
            let log = cluster.executors[0].log_text();
            log.split("grpc_port=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|p| p.parse().ok())
                .expect("the executor logs its task port")
        };
        // The spare executor certificate (executor-3) claims an id by
        // registering it (at executor-0's task port, which the scheduler
        // checks it can reach) ...
        let mut spare = SchedulerGrpcClient::new(
            channel(&sched, &member("executor-3")).await.expect("spare channel"),
        );
        spare
            .register_executor(RegisterExecutorParams {
                metadata: Some(ExecutorRegistration {
                    grpc_port: task_port,
                    ..registration("victim")
                }),
            })
            .await
            .expect("the owner registers");
        // ... which another executor's certificate can neither stop nor
        // report for.
        let mut other = SchedulerGrpcClient::new(
            channel(&sched, &member("executor-2")).await.expect("channel"),
        );
        let stop = other
            .executor_stopped(ExecutorStoppedParams {
                executor_id: "victim".into(),
                reason: "evicted by a neighbour".into(),
            })
            .await
            .expect_err("stopping another executor");
        assert_eq!(stop.code(), tonic::Code::PermissionDenied, "{stop}");
        let report = other
            .update_task_status(UpdateTaskStatusParams {
                executor_id: "victim".into(),
                task_status: vec![],
            })
            .await
            .expect_err("reporting for another executor");
        assert_eq!(report.code(), tonic::Code::PermissionDenied, "{report}");
        spare
            .executor_stopped(ExecutorStoppedParams {
                executor_id: "victim".into(),
                reason: "test over".into(),
            })
            .await
            .expect("the owner stops itself");

        // Executor task port (push scheduling): only the scheduler's
        // certificate reaches Ballista's task service; plain, CA-only,
        // client and executor certificates do not.
        let task_port = format!("127.0.0.1:{task_port}");
        let cancel = |creds: Creds<'static>| {
            let task_port = task_port.clone();
            async move {
                let mut client = ExecutorGrpcClient::new(channel(&task_port, &creds).await?);
                client
                    .cancel_tasks(CancelTasksParams { task_infos: vec![] })
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{s:?}"))
            }
        };
        let scheduler_member = Creds::Member(cluster.member_tls("scheduler").expect("member"));
        cancel(scheduler_member).await.expect("the scheduler's certificate reaches the task port");
        for name in ["client", "executor-2"] {
            let reply = cancel(Creds::Member(cluster.member_tls(name).expect("member"))).await;
            assert!(reply.is_err(), "{name}: the task service answered");
        }
        assert!(cancel(Creds::Plain).await.is_err(), "plain: the task service answered");

        // Executor Flight port: a member reaches the service, which rejects
        // the junk ticket with its own reply ...
        let service = flight_get(&flight, &member("client")).await.expect("member connects");
        assert_ne!(service.0, tonic::Code::Ok, "{service:?}");
        // ... which a client without a certificate never gets: plain HTTP/2
        // fails on the TLS handshake bytes, TLS without a certificate on the
        // handshake itself.
        for (label, creds) in [("plain", Creds::Plain), ("no certificate", Creds::CaOnly(&cluster))]
        {
            let reply = flight_get(&flight, &creds).await;
            assert!(
                reply.as_ref() != Ok(&service),
                "{label}: the Flight service answered: {reply:?}"
            );
        }
    });

    // Without the client's credentials the CLI cannot submit ...
    let sched_args = ["--scheduler", sched.as_str()];
    let refused = run_sql(&sched_args, SHUFFLE_SQL, &[]);
    assert!(!refused.status.success(), "a client without a certificate ran a query");
    // ... with them it gets the local answer (results fetched from the
    // executors over TLS with the client certificate).
    let on_cluster = ok_stdout(&run_sql(&sched_args, SHUFFLE_SQL, &cluster.client_env()), &cluster);
    assert_eq!(on_cluster, local_csv(SHUFFLE_SQL, &[&customers()]));
    assert!(on_cluster.lines().count() > 2, "{on_cluster}");
    // Ballista's own task server listens on loopback only, not on the
    // advertised address.
    assert!(
        cluster.log_contains("Executor Grpc Server listening on 127.0.0.2:"),
        "Ballista's task server is not behind the TLS task port\n{}",
        cluster.logs()
    );
}

/// Finding 2 (high), on a cluster without TLS: task statuses that Ballista
/// would index out of range, that carry no status, or that claim another
/// executor's task are dropped. On main the first one panicked the
/// scheduler's event loop and the running job never finished; the third
/// could mark a task done with made-up output.
#[test]
fn bad_task_statuses_neither_panic_the_scheduler_nor_poison_results() {
    // Without TLS even in a suite run with it (plain clients forge here).
    let cluster = TestCluster::start_env(1, 1, &[], &plain_env()).expect("cluster");
    let sched = cluster.scheduler_addr().to_string();
    // A job that runs for a while: a cross join of two in-memory tables.
    let slow = "CREATE TABLE a AS SELECT value AS v FROM generate_series(1, 5000); \
                SELECT count(*) AS n FROM a x, a y WHERE (x.v * y.v) % 7 = 3";
    let table = customers();
    let mut child = Command::new(bin("sluice"))
        .args(["sql", "--scheduler", &sched, "--table", &table, "--format", "csv", slow])
        .env("SLUICE_CATALOG", std::env::temp_dir().join("sluice-security-no-catalog.json"))
        .envs(plain_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let job = loop {
            // The CLI runs two jobs: the quick CREATE TABLE, then the slow
            // query. Only the second one is slow enough to receive statuses.
            let jobs = scheduler_jobs(&sched).await;
            if jobs.len() >= 2 {
                if let Some(job) = jobs.iter().find(|j| j.status == "Running") {
                    break job.id.clone();
                }
            }
            assert!(Instant::now() < deadline, "no running job: {jobs:?}\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut client =
            SchedulerGrpcClient::new(channel(&sched, &Creds::Plain).await.expect("channel"));
        let status = |task_id: u32, status: Option<task_status::Status>| TaskStatus {
            task_id,
            job_id: job.clone(),
            stage_id: 1,
            status,
            ..Default::default()
        };
        let forged_success = task_status::Status::Successful(SuccessfulTask {
            executor_id: "ghost".into(),
            partitions: vec![],
            ..Default::default()
        });
        let forged_failure = task_status::Status::Failed(FailedTask {
            error: "forged".into(),
            retryable: false,
            count_to_failures: true,
            failed_reason: None,
        });
        for (executor_id, statuses) in [
            ("ghost", vec![status(4_000_000, Some(forged_failure.clone()))]),
            ("ghost", vec![status(0, None)]),
            ("ghost", vec![status(0, Some(forged_success)), status(1, Some(forged_failure))]),
        ] {
            client
                .update_task_status(UpdateTaskStatusParams {
                    executor_id: executor_id.into(),
                    task_status: statuses,
                })
                .await
                .expect("the scheduler answers (the statuses are dropped)");
        }
        // The statuses reached a job that was running (else they prove nothing).
        let jobs = scheduler_jobs(&sched).await;
        assert!(
            jobs.iter().any(|j| j.id == job && j.status == "Running"),
            "the job ended before the statuses were sent; make it slower: {jobs:?}"
        );
        // A registration without what Ballista unwraps is refused, not a panic.
        let mut broken = registration("broken");
        broken.specification = None;
        let refused = client
            .register_executor(RegisterExecutorParams { metadata: Some(broken) })
            .await
            .expect_err("registration without a specification");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    });

    // The running job still finishes, with the right answer.
    let deadline = Instant::now() + Duration::from_secs(240);
    let out = loop {
        if let Some(_status) = child.try_wait().expect("wait") {
            break child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the job never finished after the bad statuses\n{}", cluster.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ok_stdout(&out, &cluster), local_csv(slow, &[]));
    // And the scheduler schedules new jobs.
    let again = ok_stdout(&run_sql(&["--scheduler", &sched], SHUFFLE_SQL, &[]), &cluster);
    assert_eq!(again, local_csv(SHUFFLE_SQL, &[&customers()]));
    assert!(cluster.log_contains("ignored a task status"), "{}", cluster.logs());
}

/// Finding 5 (medium), the token half: tokens never cross a non-loopback
/// network in cleartext, and a token file other users can read is refused
/// (on main all three started).
#[test]
fn tokens_need_tls_off_loopback_and_a_private_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "admin-token-0b5e8d1c9a7f4e23 admin\n").expect("tokens");
    let chmod = |mode: u32| {
        std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod")
    };
    let start = |args: &[&str]| {
        let out = Command::new(bin("sluice-scheduler"))
            .args(args)
            .env_remove("SLUICE_AUTH_TOKEN_FILE")
            .env_remove("SLUICE_CLUSTER_CA")
            .env_remove("SLUICE_CLUSTER_CERT")
            .env_remove("SLUICE_CLUSTER_KEY")
            .output()
            .expect("run scheduler");
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let file = tokens.display().to_string();
    chmod(0o644);
    let stderr = start(&["--bind", "127.0.0.1:0", "--auth-token-file", &file]);
    assert!(stderr.contains("readable by other users") && stderr.contains("chmod 600"), "{stderr}");
    chmod(0o600);
    // The scheduler port on a wildcard address without cluster TLS.
    let stderr = start(&["--bind", "0.0.0.0:0", "--auth-token-file", &file]);
    assert!(stderr.contains("cleartext") && stderr.contains("--cluster-ca"), "{stderr}");
    // Flight SQL on a wildcard address without --tls-cert.
    let stderr = start(&[
        "--bind",
        "127.0.0.1:0",
        "--flight-sql-bind",
        "0.0.0.0:0",
        "--auth-token-file",
        &file,
    ]);
    assert!(stderr.contains("cleartext") && stderr.contains("--tls-cert"), "{stderr}");
}

/// `sluice cluster certs` writes a CA and member certificates whose keys
/// only their owner can read, and a scheduler refuses another member's
/// certificate.
#[test]
fn cluster_certs_are_minted_private_and_role_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("certs");
    let out = sluice(
        &["cluster", "certs", "--out", &out_dir.display().to_string(), "--executors", "2"],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["ca.pem", "scheduler.pem", "executor-1.pem", "executor-2.pem", "client.pem"] {
        assert!(out_dir.join(name).is_file(), "{name} missing");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out_dir.join("executor-1.key")).expect("key").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let p = |n: &str| out_dir.join(n).display().to_string();
    let sched = Command::new(bin("sluice-scheduler"))
        .args(["--bind", "127.0.0.1:0", "--cluster-ca", &p("ca.pem")])
        .args(["--cluster-cert", &p("executor-1.pem"), "--cluster-key", &p("executor-1.key")])
        .output()
        .expect("run scheduler");
    assert!(!sched.status.success(), "a scheduler started with an executor's certificate");
    let stderr = String::from_utf8_lossy(&sched.stderr);
    assert!(stderr.contains("needs a scheduler one"), "{stderr}");
}

/// An etcd connection with `tls` (none: plain), checked with a read.
async fn etcd_reachable(
    endpoint: &str,
    tls: Option<sluice_proto::etcd::EtcdTls>,
) -> Result<(), String> {
    let target = sluice_proto::etcd::EtcdTarget::parse(endpoint, "sec")
        .and_then(|t| t.with_tls(tls))
        .map_err(|e| e.to_string())?;
    target.connect(Duration::from_secs(3)).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Finding 5 (medium), the etcd half: etcd runs with TLS and
/// `--client-cert-auth`; clients without a certificate of the cluster CA
/// (plain, CA only, another CA's certificate) cannot read or write it, so
/// nobody else can write a leader record. Schedulers, executors and the CLI
/// reach it with their cluster certificates, elect a leader, register, and
/// answer as local DataFusion does. On main `https://` endpoints were
/// refused ("TLS to etcd is not supported yet") and etcd had no auth.
#[test]
fn etcd_over_tls_needs_a_cluster_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = sluice_proto::tls::mint(&tmp.path().join("certs"), &[], 1).expect("certs");
    let strangers = sluice_proto::tls::mint(&tmp.path().join("strangers"), &[], 1).expect("certs");
    let etcd = sluice_tests::Etcd::start_tls(tmp.path(), &certs).expect("etcd with TLS");
    assert!(etcd.endpoint.starts_with("https://"), "{}", etcd.endpoint);
    let load = |set: &sluice_proto::tls::Minted, name: &str| {
        let m = set.member(name).expect("member");
        ClusterTls::load(&set.ca, &m.cert, &m.key).expect("loads")
    };
    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        use sluice_proto::etcd::EtcdTls;
        let plain = etcd_reachable(&etcd.endpoint.replace("https://", "http://"), None).await;
        assert!(plain.is_err(), "plain http reached etcd");
        let ca_only = EtcdTls::load(&certs.ca, None, None).expect("CA");
        let no_cert = etcd_reachable(&etcd.endpoint, Some(ca_only)).await;
        assert!(no_cert.is_err(), "TLS without a client certificate reached etcd");
        // A certificate of another CA, trusting etcd's CA: refused by etcd.
        let stranger_cert = strangers.member("client").expect("client");
        let stranger =
            EtcdTls::load(&certs.ca, Some(&stranger_cert.cert), Some(&stranger_cert.key))
                .expect("files");
        assert!(
            etcd_reachable(&etcd.endpoint, Some(stranger)).await.is_err(),
            "another CA's certificate reached etcd"
        );
        // Cluster TLS trusting another CA: etcd's certificate is refused.
        let wrong_ca = EtcdTls::of_cluster(&load(&strangers, "client"));
        assert!(etcd_reachable(&etcd.endpoint, Some(wrong_ca)).await.is_err());
        let member = EtcdTls::of_cluster(&load(&certs, "client"));
        etcd_reachable(&etcd.endpoint, Some(member)).await.expect("a member reaches etcd");
    });

    let member_args = |name: &str| -> Vec<String> {
        let m = certs.member(name).expect("member");
        vec![
            "--cluster-ca".into(),
            certs.ca.display().to_string(),
            "--cluster-cert".into(),
            m.cert.display().to_string(),
            "--cluster-key".into(),
            m.key.display().to_string(),
        ]
    };
    // https:// endpoints without any TLS: a clear error naming the flag.
    let refused = Command::new(bin("sluice-scheduler"))
        .args(["--bind", "127.0.0.1:0", "--state", "etcd", "--etcd-endpoints", &etcd.endpoint])
        .env_remove("SLUICE_CLUSTER_CA")
        .env_remove("SLUICE_CLUSTER_CERT")
        .env_remove("SLUICE_CLUSTER_KEY")
        .output()
        .expect("scheduler");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started without etcd TLS: {stderr}");
    assert!(stderr.contains("--etcd-endpoints") && stderr.contains("--etcd-ca"), "{stderr}");

    let scheduler_args: Vec<String> = member_args("scheduler");
    let scheduler_args: Vec<&str> = scheduler_args.iter().map(String::as_str).collect();
    let scheduler =
        sluice_tests::ha_scheduler("scheduler", &etcd, "sec", 10, tmp.path(), &scheduler_args)
            .expect("scheduler on etcd over TLS");
    let mut executor_args: Vec<String> = [
        "--etcd-endpoints",
        &etcd.endpoint,
        "--cluster",
        "sec",
        "--bind",
        "127.0.0.1:0",
        "--vcores",
        "2",
        "--work-dir",
        &tmp.path().join("work").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    executor_args.extend(member_args("executor-1"));
    let executor = sluice_tests::Proc::spawn(
        "executor",
        &bin("sluice-executor"),
        &executor_args,
        tmp.path(),
        Duration::from_secs(60),
    )
    .expect("executor on etcd over TLS");
    let client = load(&certs, "client");
    rt.block_on(sluice_client::http::wait_ready_with(
        &scheduler.addr,
        Some(&client),
        Duration::from_secs(60),
    ))
    .unwrap_or_else(|e| {
        panic!("leader not ready: {e}\n{}\n{}", scheduler.log_text(), executor.log_text())
    });

    let client_env = vec![
        ("SLUICE_CLUSTER_CA".to_string(), certs.ca.display().to_string()),
        (
            "SLUICE_CLUSTER_CERT".into(),
            certs.member("client").expect("c").cert.display().to_string(),
        ),
        ("SLUICE_CLUSTER_KEY".into(), certs.member("client").expect("c").key.display().to_string()),
    ];
    let status = sluice(
        &["cluster", "status", "--etcd-endpoints", &etcd.endpoint, "--cluster", "sec", "--json"],
        &client_env,
    );
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status["executors"].as_array().map(Vec::len), Some(1), "{status}");
    assert!(status["leader"].is_object(), "{status}");
    let no_creds =
        sluice(&["cluster", "status", "--etcd-endpoints", &etcd.endpoint, "--cluster", "sec"], &[]);
    assert!(!no_creds.status.success(), "the CLI read etcd without credentials");

    let target = ["--etcd-endpoints", etcd.endpoint.as_str(), "--cluster", "sec"];
    let out = run_sql(&target, SHUFFLE_SQL, &client_env);
    assert!(
        out.status.success(),
        "sluice sql through etcd over TLS: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        scheduler.log_text(),
        executor.log_text()
    );
    let on_cluster = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(on_cluster, local_csv(SHUFFLE_SQL, &[&customers()]));
}
