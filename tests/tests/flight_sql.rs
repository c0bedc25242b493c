//! The Flight SQL endpoint with real clients: Python ADBC (the driver BI
//! tools and notebooks use) over TLS with bearer tokens, against a real
//! scheduler and executors; answers compared with single-node DataFusion.
//!
//! The Python venv comes from `scripts/python-venv.sh` (run by
//! `scripts/test.sh`), which exports `SLUICE_PYTHON`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::Ticket;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use ballista_core::serde::protobuf;
use chrono::NaiveDate;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use prost::Message;
use sluice_client::catalog::FlightSqlEndpoint;
use sluice_client::datagen::churn::ChurnConfig;
use sluice_sql::catalog::{CatalogSchema, FileCatalog};
use sluice_tests::{Proc, TestCluster, bin, plain_env, workspace_root};

const READ: &str = "read-token-7f3a9c2e41d84b6f";
const ADMIN: &str = "admin-token-0b5e8d1c9a7f4e23";

/// Certificates, tokens, data and catalog of one secured cluster.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("data")).expect("data root");
        std::fs::write(
            dir.path().join("tokens"),
            format!("# test tokens\n{READ}\n{ADMIN} admin\n"),
        )
        .expect("tokens");
        // The scheduler refuses a token file other users may read.
        std::fs::set_permissions(
            dir.path().join("tokens"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod tokens");
        std::fs::write(dir.path().join("admin.token"), format!("{ADMIN}\n")).expect("token");
        write_certs(dir.path());
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn data(&self) -> PathBuf {
        self.path("data")
    }

    fn scheduler_args(&self) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            "--flight-sql-bind".into(),
            "127.0.0.1:0".into(),
            "--auth-token-file".into(),
            p("tokens"),
            "--catalog".into(),
            p("catalog.json"),
            "--data-root".into(),
            p("data"),
            "--tls-cert".into(),
            p("server.pem"),
            "--tls-key".into(),
            p("server.key"),
        ]
    }

    fn start(&self, executors: usize) -> (TestCluster, String) {
        self.start_with(executors, &[])
    }

    fn start_with(&self, executors: usize, extra: &[&str]) -> (TestCluster, String) {
        let mut args = self.scheduler_args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cluster = TestCluster::start_full(executors, 2, &args, &[]).expect("cluster");
        let flight =
            cluster.scheduler.listening("flight-sql", Duration::from_secs(30)).expect("flight-sql");
        (cluster, flight)
    }

    /// `sluice …` with the admin token and the test CA against `flight`.
    fn sluice(&self, flight: &str, args: &[&str]) -> std::process::Output {
        let ca = self.path("ca.pem").display().to_string();
        let token = self.path("admin.token").display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--flight-sql", flight, "--token-file", &token, "--tls-ca", &ca]);
        Command::new(bin("sluice"))
            .args(&all)
            .env_remove("SLUICE_SCHEDULER")
            .env_remove("SLUICE_TOKEN")
            .output()
            .expect("run sluice")
    }

    /// Runs the ADBC client; returns its JSON answer and whether it exited 0.
    fn adbc(
        &self,
        flight: &str,
        token: Option<&str>,
        tls: Tls,
        args: &[&str],
    ) -> (serde_json::Value, bool) {
        let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| {
            panic!(
                "SLUICE_PYTHON is not set: the Flight SQL tests need the ADBC venv. Run \
                 `export SLUICE_PYTHON=$(scripts/python-venv.sh)` (scripts/test.sh does this)"
            )
        });
        let script = workspace_root().join("tests/python/adbc_client.py");
        let scheme = if matches!(tls, Tls::Off) { "grpc" } else { "grpc+tls" };
        let uri = format!("{scheme}://{flight}");
        let mut cmd = Command::new(python);
        cmd.arg(script).arg(args[0]).args(["--uri", &uri]).args(&args[1..]);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        if matches!(tls, Tls::TrustTestCa | Tls::ClientCert) {
            cmd.arg("--tls-ca").arg(self.path("ca.pem"));
        }
        if matches!(tls, Tls::ClientCert) {
            cmd.arg("--cert")
                .arg(self.path("client.pem"))
                .arg("--key")
                .arg(self.path("client.key"));
        }
        let out = cmd.output().expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stdout.lines().last().unwrap_or_default();
        let value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("ADBC client {args:?}: {e}\nstdout: {stdout}\nstderr: {stderr}")
        });
        (value, out.status.success())
    }

    fn endpoint(&self, flight: &str, token: Option<&str>) -> FlightSqlEndpoint {
        FlightSqlEndpoint {
            addr: flight.parse().expect("addr"),
            token: token.map(str::to_string),
            tls_ca: Some(self.path("ca.pem")),
        }
    }
}

#[derive(Clone, Copy)]
enum Tls {
    TrustTestCa,
    /// Also presents the test client certificate (mTLS).
    ClientCert,
    NoCa,
    Off,
}

/// A test CA and a server certificate for 127.0.0.1 signed by it.
fn write_certs(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "sluice test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key")).expect("ca");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params");
    server.distinguished_name.push(DnType::CommonName, "sluice scheduler");
    let key = KeyPair::generate().expect("key");
    let cert = server.signed_by(&key, &ca).expect("sign");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("ca.pem");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("server.pem");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("server.key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
    client.distinguished_name.push(DnType::CommonName, "sluice test client");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    let cert = client.signed_by(&key, &ca).expect("sign");
    std::fs::write(dir.join("client.pem"), cert.pem()).expect("client.pem");
    std::fs::write(dir.join("client.key"), key.serialize_pem()).expect("client.key");
}

fn read_ipc(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).expect("open result");
    datafusion::arrow::ipc::reader::FileReader::try_new(file, None)
        .expect("arrow file")
        .collect::<Result<Vec<_>, _>>()
        .expect("batches")
}

/// Single-node DataFusion over the same catalog: the reference answers.
fn local_context(catalog: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    let schema = CatalogSchema::new(FileCatalog::new(catalog), ctx.runtime_env());
    ctx.catalog("datafusion")
        .expect("catalog")
        .register_schema("public", Arc::new(schema))
        .expect("schema");
    ctx
}

/// The table names in an `objects` reply.
fn table_names(objects: &serde_json::Value) -> Vec<String> {
    let tables = objects["tables"].as_array().expect("tables");
    tables.iter().filter_map(|t| t["table"].as_str().map(str::to_string)).collect()
}

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Acceptance: a Python ADBC session with a token reads a backfilled feature
/// table (and TPC-H Q1/Q3/Q5/Q10), equal to DataFusion; the catalog lists
/// them through `adbc_get_objects` and survives a scheduler restart.
#[test]
fn adbc_reads_backfilled_features_and_tpch_with_a_token_over_tls() {
    let setup = Setup::new();
    let data = setup.data();
    sluice_client::datagen::tpch::generate(0.01, &data.join("tpch")).expect("tpch");
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date");
    let churn = ChurnConfig { users: 300, start, days: 60, seed: 5, ..ChurnConfig::default() };
    sluice_client::datagen::churn::generate(&churn, &data.join("churn")).expect("churn");
    let (cluster, flight) = setup.start(2);

    for table in ["lineitem", "orders", "customer", "supplier", "nation", "region"] {
        let path = data.join("tpch").join(table).display().to_string();
        assert_ok(&setup.sluice(&flight, &["table", "register", table, &path]), "table register");
    }
    let out = data.join("features");
    let spec = workspace_root().join("sql/jobs/churn.yaml");
    let backfill = setup.sluice(
        &flight,
        &[
            "backfill",
            &spec.display().to_string(),
            "--from",
            "2024-02-01",
            "--to",
            "2024-02-29",
            "--data-dir",
            &data.join("churn").display().to_string(),
            "--output",
            &out.display().to_string(),
            "--scheduler",
            cluster.scheduler_addr(),
        ],
    );
    assert_ok(&backfill, "backfill");
    assert!(String::from_utf8_lossy(&backfill.stderr).contains("registered table churn_features"));

    // The catalog, as ADBC sees it.
    let (objects, ok) = setup.adbc(&flight, Some(READ), Tls::TrustTestCa, &["objects"]);
    assert!(ok, "{objects}");
    let names = table_names(&objects);
    for t in ["churn_features", "lineitem", "orders"] {
        assert!(names.iter().any(|n| n == t), "{t} missing from adbc_get_objects: {names:?}");
    }

    let local = local_context(&setup.path("catalog.json"));
    let rt = sluice_proto::runtime().expect("runtime");
    let mut queries: Vec<(String, String)> = [1, 3, 5, 10]
        .iter()
        .map(|q| (format!("q{q}"), sluice_sql::tpch::query(*q).expect("query").to_string()))
        .collect();
    queries.push((
        "features_by_date".into(),
        "SELECT feature_date, count(*) AS users, sum(total_spend_30d) AS spend \
         FROM churn_features GROUP BY feature_date ORDER BY feature_date"
            .into(),
    ));
    queries.push((
        "feature_lookup".into(),
        "SELECT * FROM churn_features WHERE user_id = 42 ORDER BY feature_date".into(),
    ));
    for (name, sql) in &queries {
        let file = setup.path(&format!("{name}.arrow"));
        let file_arg = file.display().to_string();
        let (reply, ok) = setup.adbc(
            &flight,
            Some(READ),
            Tls::TrustTestCa,
            &["query", "--sql", sql, "--out", &file_arg],
        );
        assert!(ok, "{name}: {reply}");
        let answer = read_ipc(&file);
        let expected = rt.block_on(async {
            local.sql(sql).await.expect("plan locally").collect().await.expect("run locally")
        });
        let rows: usize = expected.iter().map(RecordBatch::num_rows).sum();
        assert!(rows > 0, "{name}: the reference answer is empty; the test data is too small");
        sluice_client::verify::compare(&expected, &answer, true).unwrap_or_else(|e| {
            panic!("{name} over ADBC differs from DataFusion: {e}\n{}", cluster.logs())
        });
    }

    // `sluice sql --flight-sql` takes the same path as ADBC.
    let cli = setup
        .sluice(&flight, &["sql", "--format", "csv", "SELECT count(*) AS n FROM churn_features"]);
    let cli = {
        // `sluice sql` reads the token like any client; the helper passed the admin one.
        assert_ok(&cli, "sluice sql --flight-sql");
        String::from_utf8_lossy(&cli.stdout).to_string()
    };
    let expected = rt.block_on(async {
        local
            .sql("SELECT count(*) AS n FROM churn_features")
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run")
    });
    let n = sluice_client::verify::normalize(&expected).expect("rows").join("\n");
    assert!(cli.contains(n.trim()), "sluice sql --flight-sql printed {cli:?}, DataFusion {n:?}");

    // A new scheduler on the same catalog file serves the same tables.
    drop(cluster);
    let args = setup.scheduler_args();
    let mut all = vec!["--bind".to_string(), "127.0.0.1:0".to_string()];
    all.extend(args);
    let restarted = Proc::spawn(
        "scheduler-2",
        &bin("sluice-scheduler"),
        &all,
        setup.dir.path(),
        Duration::from_secs(60),
    )
    .expect("restart");
    let flight = restarted.listening("flight-sql", Duration::from_secs(30)).expect("flight-sql");
    let (objects, ok) = setup.adbc(&flight, Some(READ), Tls::TrustTestCa, &["objects"]);
    assert!(ok, "{objects}");
    let again = table_names(&objects);
    assert_eq!(again, names, "the catalog changed across the restart");
}

/// Acceptance: unauthenticated and wrong-token calls, forged tickets, paths
/// outside the data roots, statements above the token's role, and clients
/// that do not trust the server's certificate all get no data.
#[test]
fn flight_sql_refuses_bad_tokens_forged_tickets_and_paths_outside_roots() {
    let setup = Setup::new();
    let data = setup.data();
    sluice_client::datagen::tpch::generate(0.01, &data.join("tpch")).expect("tpch");
    let (cluster, flight) = setup.start(1);
    let nation = data.join("tpch/nation").display().to_string();
    assert_ok(&setup.sluice(&flight, &["table", "register", "nation", &nation]), "register");
    let query = ["error", "--sql", "SELECT * FROM nation"];

    // The same query works with a good token (so the refusals below are about the token).
    let (ok_reply, _) = setup.adbc(
        &flight,
        Some(READ),
        Tls::TrustTestCa,
        &["error", "--sql", "SELECT count(*) FROM nation"],
    );
    assert_eq!(ok_reply["rows"], 1, "a read token cannot query: {ok_reply}");

    for (label, token) in
        [("no token", None), ("wrong token", Some("not-a-token-0123456789abcdef"))]
    {
        let (reply, refused) = setup.adbc(&flight, token, Tls::TrustTestCa, &query);
        assert!(refused, "{label}: got data: {reply}");
        assert_eq!(reply["status"], "UNAUTHENTICATED", "{label}: {reply}");
    }

    // Statements above the token's role.
    let ddl = format!("CREATE EXTERNAL TABLE n2 STORED AS PARQUET LOCATION '{nation}/'");
    let (reply, refused) =
        setup.adbc(&flight, Some(READ), Tls::TrustTestCa, &["error", "--sql", &ddl]);
    assert!(
        refused && reply["error"].as_str().unwrap_or_default().contains("admin role"),
        "{reply}"
    );

    // Paths outside the data roots: DDL with the admin token, and the catalog.
    let outside = "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'";
    let (reply, refused) =
        setup.adbc(&flight, Some(ADMIN), Tls::TrustTestCa, &["error", "--sql", outside]);
    assert!(refused, "{reply}");
    assert!(
        reply["error"].as_str().unwrap_or_default().contains("outside the data roots"),
        "{reply}"
    );
    let escape = format!("{}/../tokens", data.display());
    let register =
        setup.sluice(&flight, &["table", "register", "tokens", &escape, "--format", "csv"]);
    assert!(!register.status.success(), "registered a path outside the roots");
    assert!(String::from_utf8_lossy(&register.stderr).contains("outside the data roots"));
    let list = setup.sluice(&flight, &["table", "list"]);
    assert_ok(&list, "table list");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("tokens"),
        "a refused table was registered"
    );

    // Forged tickets: a partition fetch naming a host that is no executor,
    // and a raw Ballista ticket (the unauthenticated fallback path).
    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        let fetch = protobuf::FetchPartition {
            job_id: "forged".into(),
            stage_id: 1,
            partition_id: 0,
            host: "169.254.169.254".into(),
            port: 80,
            ..Default::default()
        };
        let action = protobuf::Action {
            action_type: Some(protobuf::action::ActionType::FetchPartition(fetch)),
            ..Default::default()
        };
        let mut handle = vec![0u8];
        handle.extend(action.encode_to_vec());
        let statement = TicketStatementQuery { statement_handle: handle.into() };
        let tickets = [
            ("forged executor", statement.as_any().encode_to_vec(), "not issued by this scheduler"),
            ("raw Ballista ticket", action.encode_to_vec(), "not a Flight SQL ticket"),
        ];
        let channel = setup.endpoint(&flight, None).channel().await.expect("channel");
        for (label, ticket, why) in tickets {
            let mut client = FlightServiceClient::new(channel.clone());
            let mut request = tonic::Request::new(Ticket { ticket: ticket.clone().into() });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {ADMIN}").parse().expect("header"));
            let err =
                client.do_get(request).await.err().unwrap_or_else(|| panic!("{label}: accepted"));
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{label}: {err}");
            assert!(err.message().contains(why), "{label}: {err}");
            // Without a token the same ticket is unauthenticated.
            let err = client.do_get(Ticket { ticket: ticket.into() }).await.expect_err("no token");
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{label}: {err}");
        }
    });
    assert!(
        !cluster.scheduler.log_text().contains("169.254.169.254:80"),
        "the scheduler tried to connect to the forged host"
    );

    // TLS: a client that does not trust the test CA, and a plaintext client, get nothing.
    let (reply, refused) = setup.adbc(&flight, Some(READ), Tls::NoCa, &query);
    assert!(refused, "untrusted certificate accepted: {reply}");
    let (reply, refused) = setup.adbc(&flight, Some(READ), Tls::Off, &query);
    assert!(refused, "plaintext accepted on the TLS port: {reply}");
}

/// The scheduler port checks the same tokens on the calls clients make
/// there (Ballista's gRPC and REST), while executors keep registering and
/// running tasks on it.
#[test]
fn scheduler_port_checks_tokens_on_client_calls() {
    let setup = Setup::new();
    let data = setup.data();
    sluice_client::datagen::tpch::generate(0.01, &data.join("tpch")).expect("tpch");
    std::fs::write(setup.path("read.token"), format!("{READ}\n")).expect("token");
    // Without cluster TLS, even in a suite run with it: a client
    // certificate would stand for the admin token.
    let args = setup.scheduler_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = TestCluster::start_full_env(1, 2, &args, &[], &plain_env()).expect("cluster");
    let nation = format!("nation={}", data.join("tpch/nation").display());
    let sql = |token: Option<&str>| {
        let mut cmd = Command::new(bin("sluice"));
        cmd.args(["sql", "--scheduler", cluster.scheduler_addr(), "--format", "csv"])
            .args(["--table", &nation, "SELECT count(*) AS n FROM nation"])
            .envs(plain_env())
            .env_remove("SLUICE_SCHEDULER")
            .env_remove("SLUICE_TOKEN");
        if let Some(t) = token {
            cmd.arg("--token-file").arg(setup.path(t));
        }
        cmd.output().expect("run sluice")
    };

    let out = sql(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without a token: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("missing token"), "{stderr}");
    let out = sql(Some("read.token"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a read token submitted a plan");
    assert!(stderr.contains("needs an admin token"), "{stderr}");
    let out = sql(Some("admin.token"));
    assert_ok(&out, "sluice sql --scheduler with the admin token");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n25");

    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        use sluice_client::http::get_with;
        let addr = cluster.scheduler_addr();
        let t = Duration::from_secs(10);
        let (status, body) = get_with(addr, "/api/jobs", None, None, t).await.expect("GET");
        assert_eq!(status, 401, "REST without a token: {body}");
        let (status, body) = get_with(addr, "/api/jobs", Some(READ), None, t).await.expect("GET");
        assert_eq!(status, 200, "REST with a read token: {body}");
        let (status, _) = get_with(addr, "/readyz", None, None, t).await.expect("GET");
        assert_eq!(status, 200, "probes stay open");

        // A job's settings (S3 secret keys among them) are the admin's.
        let (_, body) = get_with(addr, "/api/jobs", Some(READ), None, t).await.expect("GET");
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&body).expect("jobs JSON");
        let job = jobs.first().and_then(|j| j["job_id"].as_str()).expect("a job").to_string();
        let config = format!("/api/job/{job}/config");
        let (status, body) = get_with(addr, &config, Some(READ), None, t).await.expect("GET");
        assert_eq!(status, 403, "a read token read a job's settings: {body}");
        let (status, body) = get_with(addr, &config, Some(ADMIN), None, t).await.expect("GET");
        assert_eq!(status, 200, "the admin reads them: {body}");
    });
}

/// Finding 3 (high): a result ticket is redeemed only as the scheduler
/// issued it. A read-token client that alters the job, stage, partition or
/// executor inside its ticket (job ids are listed by `/api/jobs`) is
/// refused; on main the altered ticket read the other job's results.
/// Finding 4 (high): a read token cannot read the settings view, where
/// `s3.secret_access_key` lives.
#[test]
fn result_tickets_are_signed_and_settings_are_the_admins() {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use futures::TryStreamExt;
    let setup = Setup::new();
    let (_cluster, flight) = setup.start(1);
    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        let channel = setup.endpoint(&flight, None).channel().await.expect("channel");
        let mut client = FlightSqlServiceClient::new(channel.clone());
        client.set_header("authorization", format!("Bearer {READ}"));
        let info = client
            .execute("SELECT 6 * 7 AS answer".to_string(), None)
            .await
            .expect("a read-token query");
        let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
        let batches: Vec<RecordBatch> = client
            .do_get(ticket.clone())
            .await
            .expect("the issued ticket")
            .try_collect()
            .await
            .expect("batches");
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);

        // Alter one byte of the handle (e.g. a job id's last character).
        let any = arrow_flight::sql::Any::decode(ticket.ticket.clone()).expect("Any");
        let mut statement: TicketStatementQuery = any.unpack().expect("unpack").expect("statement");
        let mut handle = statement.statement_handle.to_vec();
        let last = handle.len() - 1;
        handle[last] ^= 1;
        statement.statement_handle = handle.into();
        let altered = Ticket { ticket: statement.as_any().encode_to_vec().into() };
        let mut raw = FlightServiceClient::new(channel.clone());
        let mut request = tonic::Request::new(altered);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {READ}").parse().expect("header"));
        let err = raw.do_get(request).await.err().expect("an altered ticket was redeemed");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
        assert!(err.message().contains("not issued by this scheduler"), "{err}");

        // Finding 6: information_schema queries run on the scheduler itself;
        // a read token's are bounded (an 8-way self-join of the ~7 tables
        // information_schema lists: millions of rows, refused at once).
        let one = client
            .execute("SELECT table_name FROM information_schema.tables".to_string(), None)
            .await
            .expect("a small information_schema query");
        assert!(!one.endpoint.is_empty());
        let started = std::time::Instant::now();
        let huge = client
            .execute(
                format!(
                    "SELECT a.table_name FROM {}",
                    (0..8)
                        .map(|i| format!("information_schema.tables t{i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .replace("SELECT a.", "SELECT t0."),
                None,
            )
            .await
            .expect_err("an unbounded information_schema query ran on the scheduler");
        assert!(huge.to_string().contains("at most 100000 rows"), "{huge}");
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    });

    let settings = ["error", "--sql", "SELECT name, value FROM information_schema.df_settings"];
    let (reply, refused) = setup.adbc(&flight, Some(READ), Tls::TrustTestCa, &settings);
    assert!(
        refused && reply["error"].as_str().unwrap_or_default().contains("admin role"),
        "a read token read the settings: {reply}"
    );
    let (reply, refused) = setup.adbc(&flight, Some(ADMIN), Tls::TrustTestCa, &settings);
    assert!(!refused, "the admin cannot read the settings: {reply}");
}

/// A client that goes away mid-query cancels its job on the cluster, and
/// the cluster is free for the next query.
#[test]
fn client_cancel_stops_the_job() {
    let setup = Setup::new();
    let data = setup.data();
    sluice_client::datagen::tpch::generate(0.01, &data.join("tpch")).expect("tpch");
    let (cluster, flight) = setup.start(1);
    let lineitem = data.join("tpch/lineitem").display().to_string();
    assert_ok(&setup.sluice(&flight, &["table", "register", "lineitem", &lineitem]), "register");
    // ~500 M join pairs: minutes on this machine, so only a cancel ends it soon.
    let long = "SELECT count(*) FROM lineitem a JOIN lineitem b ON a.l_linenumber = b.l_linenumber";
    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        use sluice_client::http::get_as;
        let addr = cluster.scheduler_addr().to_string();
        let jobs = || async {
            let (status, body) =
                get_as(&addr, "/api/jobs", Some(READ), Duration::from_secs(10)).await.expect("GET");
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).expect("jobs JSON")
        };
        let endpoint = setup.endpoint(&flight, Some(READ));
        let query = tokio::spawn(async move {
            sluice_client::catalog::run_sql_flight(&endpoint, long).await.map(|_| ())
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let job_id = loop {
            let all = jobs().await;
            let running = all.as_array().into_iter().flatten().find(|j| j["status"] == "Running");
            if let Some(j) = running {
                break j["job_id"].as_str().expect("job_id").to_string();
            }
            assert!(!query.is_finished(), "the long query ended by itself: {all}");
            assert!(std::time::Instant::now() < deadline, "the query never ran: {all}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        query.abort();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let all = jobs().await;
            let job = all
                .as_array()
                .into_iter()
                .flatten()
                .find(|j| j["job_id"] == job_id.as_str())
                .cloned()
                .unwrap_or_default();
            // Ended, or already cleaned up (then absent from the list).
            if job["status"] != "Running" && job["status"] != "Queued" {
                let text = job["job_status"].as_str().unwrap_or_default().to_lowercase();
                let log = cluster.scheduler.log_text();
                let cancelled_in_log = log.contains(&format!("Job cancelled: [{job_id}]"));
                let log: Vec<&str> = log
                    .lines()
                    .filter(|l| l.to_lowercase().contains("cancel") || l.contains("went away"))
                    .collect();
                assert!(
                    text.contains("cancel") || (job.is_null() && cancelled_in_log),
                    "job ended but not cancelled: {job}\n{log:#?}"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the job still runs 30 s after the cancel: {job}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The slots are free again: a small query answers.
        let small = setup.endpoint(&flight, Some(READ));
        let batches = tokio::time::timeout(
            Duration::from_secs(60),
            sluice_client::catalog::run_sql_flight(&small, "SELECT count(*) FROM lineitem"),
        )
        .await
        .expect("a query after the cancel waited 60 s")
        .expect("query after the cancel");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    });
}

/// Without tokens the Flight SQL endpoint refuses a non-loopback address
/// unless told `--allow-anonymous`.
#[test]
fn anonymous_endpoint_must_be_loopback() {
    let out = Command::new(bin("sluice-scheduler"))
        .args(["--bind", "127.0.0.1:0", "--flight-sql-bind", "0.0.0.0:0"])
        .env_remove("SLUICE_CLUSTER_CA")
        .env_remove("SLUICE_CLUSTER_CERT")
        .env_remove("SLUICE_CLUSTER_KEY")
        .output()
        .expect("run scheduler");
    assert!(!out.status.success(), "an anonymous endpoint bound to 0.0.0.0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-anonymous") && stderr.contains("0.0.0.0"), "{stderr}");
}

/// With `--tls-client-ca` only clients presenting a certificate signed by
/// that CA get in (mTLS), token or not.
#[test]
fn mtls_requires_a_client_certificate() {
    let setup = Setup::new();
    let ca = setup.path("ca.pem").display().to_string();
    let (_cluster, flight) = setup.start_with(1, &["--tls-client-ca", &ca]);
    let query = ["error", "--sql", "SELECT 41 + 1 AS x"];
    let (reply, refused) = setup.adbc(&flight, Some(READ), Tls::TrustTestCa, &query);
    assert!(refused, "a client without a certificate got in: {reply}");
    let (reply, refused) = setup.adbc(&flight, Some(READ), Tls::ClientCert, &query);
    assert!(!refused && reply["rows"] == 1, "the client certificate was refused: {reply}");
    let (reply, refused) = setup.adbc(&flight, None, Tls::ClientCert, &query);
    assert!(
        refused && reply["status"] == "UNAUTHENTICATED",
        "a certificate replaced the token: {reply}"
    );
}

/// An error raised on an executor reads, over Flight SQL, as DataFusion
/// raised it. (Memory tables are not created over Flight SQL: Ballista's
/// frontend refuses `CREATE TABLE … AS`, with a reason, as checked here.)
#[test]
fn flight_sql_sessions_see_datafusion_errors() {
    let setup = Setup::new();
    let (_cluster, flight) = setup.start(2);
    let (answer, failed) = setup.adbc(
        &flight,
        Some(ADMIN),
        Tls::TrustTestCa,
        &["error", "--sql", "CREATE TABLE m AS VALUES (1, 'a'), (2, 'b')"],
    );
    assert!(failed, "CREATE TABLE AS over Flight SQL succeeded: {answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("CREATE EXTERNAL TABLE"), "{error}");

    let (answer, failed) = setup.adbc(
        &flight,
        Some(ADMIN),
        Tls::TrustTestCa,
        &["error", "--sql", "SELECT column1 / 0 FROM (VALUES (1), (2)) AS t(column1)"],
    );
    assert!(failed, "the division by zero returned rows: {answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("Divide by zero error"), "{error}");
    for wrapper in ["Task failed", "DataFusionError(", "sluice.v1.RemoteError"] {
        assert!(!error.contains(wrapper), "{wrapper:?} in {error}");
    }
}

/// Finding 7 (issue 17): the data roots hold for every plan the scheduler
/// runs, not only for tables named through Flight SQL and the catalog: a plan
/// submitted on the scheduler port (admin token) that scans a file outside
/// the roots is refused, and a symbolic link inside a registered table's
/// folder to a file outside is refused when the scan is planned (on main the
/// first returned the file's rows and the second read through the link).
#[test]
fn data_roots_hold_for_scheduler_port_plans_and_links_out_of_a_table() {
    let setup = Setup::new();
    let data = setup.data();
    std::fs::create_dir_all(data.join("inside")).expect("dir");
    std::fs::write(data.join("inside/part-0.csv"), "id,secret\n1,public\n").expect("inside");
    // Outside the root (its parent folder holds the token files).
    let outside = setup.path("outside.csv");
    std::fs::write(&outside, "id,secret\n2,top-secret\n").expect("outside");
    let (cluster, flight) = setup.start(1);
    let sql_on_port = |table: &str| {
        Command::new(bin("sluice"))
            .args(["sql", "--scheduler", cluster.scheduler_addr(), "--format", "csv"])
            .args(["--table", table, "SELECT * FROM t"])
            .arg("--token-file")
            .arg(setup.path("admin.token"))
            .env_remove("SLUICE_SCHEDULER")
            .env_remove("SLUICE_TOKEN")
            .output()
            .expect("run sluice")
    };
    let inside = sql_on_port(&format!("t={}", data.join("inside/part-0.csv").display()));
    assert_ok(&inside, "a plan inside the roots");
    assert!(String::from_utf8_lossy(&inside.stdout).contains("public"));
    let refused = sql_on_port(&format!("t={}", outside.display()));
    let stdout = String::from_utf8_lossy(&refused.stdout);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && !stdout.contains("top-secret"), "read outside: {stdout}");
    assert!(stderr.contains("outside the data roots"), "{stderr}");

    // A link in a table's folder to a file outside the root.
    std::fs::create_dir_all(data.join("linked")).expect("dir");
    std::fs::write(data.join("linked/part-0.csv"), "id,secret\n3,fine\n").expect("part");
    std::os::unix::fs::symlink(&outside, data.join("linked/part-1.csv")).expect("symlink");
    let linked = data.join("linked").display().to_string();
    assert_ok(
        &setup.sluice(&flight, &["table", "register", "linked", &linked, "--format", "csv"]),
        "register linked",
    );
    let (reply, refused) = setup.adbc(
        &flight,
        Some(READ),
        Tls::TrustTestCa,
        &["error", "--sql", "SELECT * FROM linked"],
    );
    assert!(refused, "read through a link out of the root: {reply}");
    assert!(
        reply["error"].as_str().unwrap_or_default().contains("outside the data roots"),
        "{reply}"
    );
    assert!(!reply.to_string().contains("top-secret"), "{reply}");
}
