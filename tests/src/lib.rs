//! Test support shared by Sluice's cross-crate tests and the benchmark
//! runners: a [`TestCluster`] of real `sluice-scheduler` and
//! `sluice-executor` processes, paths to the workspace binaries, and the
//! sqllogictest engines ([`slt`]).
//!
//! Processes bind port 0 and report the port they picked on stdout; the
//! cluster waits on the scheduler's `/readyz` (which turns ready once the
//! expected number of executors registered) with a deadline, never a sleep.

pub mod corpus;
pub mod slt;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The folder holding the workspace's binaries for the running profile
/// (`target/<profile>`), found from the test executable's own path
/// (`target/<profile>/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SLUICE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let mut dir = exe.parent().expect("parent").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary (`sluice`, `sluice-scheduler`, `sluice-executor`).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo nextest/cargo test --workspace builds them)",
        path.display()
    );
    path
}

/// A child process whose output goes to a log file; killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// The address it printed in its first `listening on` line.
    pub addr: String,
    /// Later `<prefix> listening on HOST:PORT` lines, as (prefix, address).
    listening: std::sync::Mutex<mpsc::Receiver<(String, String)>>,
}

impl Proc {
    /// Spawns `bin args…`, waiting up to `deadline` for the line
    /// `<prefix> listening on HOST:PORT` on stdout.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        log_dir: &Path,
        deadline: Duration,
    ) -> anyhow::Result<Self> {
        Self::spawn_env(name, bin, args, &[], log_dir, deadline)
    }

    /// As [`Proc::spawn`], with extra environment variables.
    pub fn spawn_env(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
        deadline: Duration,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let plain = env.iter().any(|(k, v)| k == "SLUICE_CLUSTER_CERT" && v.is_empty());
        let mut command = Command::new(bin);
        command.args(args);
        if !plain {
            command.args(suite_member_args(bin, args)?);
        }
        for (k, v) in env {
            // An empty value removes the variable (see `plain_env`).
            if v.is_empty() {
                command.env_remove(k);
            } else {
                command.env(k, v);
            }
        }
        let mut child = command
            .env("RUST_LOG", std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        let out_log = log_dir.join(format!("{name}.stdout"));
        std::thread::spawn(move || {
            let mut file = File::create(out_log).ok();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if let Some((prefix, addr)) = line.split_once(" listening on ") {
                    let _ = tx.send((prefix.trim().to_string(), addr.trim().to_string()));
                }
            }
        });
        match rx.recv_timeout(deadline) {
            Ok((_, addr)) => Ok(Self {
                name: name.to_string(),
                child,
                log,
                addr,
                listening: std::sync::Mutex::new(rx),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("{name} did not report its address within {deadline:?}; its log:\n{tail}")
            }
        }
    }

    /// Waits up to `deadline` for a later `<prefix> listening on HOST:PORT`
    /// line and returns the address.
    pub fn listening(&self, prefix: &str, deadline: Duration) -> anyhow::Result<String> {
        let rx = self.listening.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let end = std::time::Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok((p, addr)) if p == prefix => return Ok(addr),
                Ok(_) => continue,
                Err(_) => bail!(
                    "{} printed no `{prefix} listening on` line within {deadline:?}; its log:\n{}",
                    self.name,
                    self.log_text()
                ),
            }
        }
    }

    /// Sends SIGTERM (a spot node's notice, `kubectl delete pod`) and
    /// reaps the process, SIGKILLing it if it has not exited within
    /// `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let end = std::time::Instant::now() + grace;
        while std::time::Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Sends SIGTERM and waits up to `deadline` for the process to exit;
    /// returns its exit status (None: still running, then SIGKILLed) and how
    /// long it took.
    pub fn sigterm_and_wait(
        &mut self,
        deadline: Duration,
    ) -> (Option<std::process::ExitStatus>, Duration) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let start = std::time::Instant::now();
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (Some(status), start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        (None, start.elapsed())
    }

    /// Its standard output so far (every line, `listening on` ones too).
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("stdout")).unwrap_or_default()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of sample `name` (with its labels, as printed, e.g.
/// `sluice_drain_events_total{event="moved"}`) on a scheduler's `/metrics`.
pub async fn scheduler_metric(addr: &str, name: &str) -> Option<f64> {
    let (status, text) = http_get(addr, "/metrics", Duration::from_secs(10)).await.ok()?;
    if status != 200 {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The certificates of a suite run with mutual TLS everywhere
/// (`scripts/test.sh --cluster-tls`): `sluice cluster certs` output in the
/// folder named by `SLUICE_TEST_CLUSTER_CERTS`. The script also exports the
/// client's credentials as `SLUICE_CLUSTER_CA`/`_CERT`/`_KEY`, which every
/// `sluice` CLI and the HTTP helpers (`sluice_client::http`) then use.
pub fn suite_certs() -> Option<sluice_proto::tls::Minted> {
    use sluice_proto::tls::{Minted, MintedMember, PeerIdentity, Role};
    let dir = PathBuf::from(std::env::var_os("SLUICE_TEST_CLUSTER_CERTS")?);
    let member = |name: String, role: Role| MintedMember {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        identity: PeerIdentity { role, name },
    };
    let mut members =
        vec![member("scheduler".into(), Role::Scheduler), member("client".into(), Role::Client)];
    let mut n = 1;
    while dir.join(format!("executor-{n}.pem")).is_file() {
        members.push(member(format!("executor-{n}"), Role::Executor));
        n += 1;
    }
    Some(Minted { ca: dir.join("ca.pem"), members })
}

/// Environment for processes that must run without cluster TLS even in a
/// suite run with it ([`suite_certs`]): tests of the plain cluster (tokens
/// on the scheduler port, forged messages from plain clients). Passed to
/// [`Proc::spawn_env`] or [`TestCluster::start_env`] it removes the client's
/// `SLUICE_CLUSTER_*` and adds no certificate flags; the `sluice` CLI reads
/// the empty values as unset.
pub fn plain_env() -> Vec<(String, String)> {
    ["SLUICE_CLUSTER_CA", "SLUICE_CLUSTER_CERT", "SLUICE_CLUSTER_KEY"]
        .iter()
        .map(|k| (k.to_string(), String::new()))
        .collect()
}

/// `GET` on a member's HTTP port: over the suite's cluster TLS when it
/// runs with it, else (or for a plain cluster in such a run) plain HTTP.
///
/// # Errors
/// The plain attempt's I/O error.
pub async fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    if suite_certs().is_some()
        && let Ok(reply) = sluice_client::http::get(addr, path, timeout).await
    {
        return Ok(reply);
    }
    sluice_client::http::get_with(addr, path, None, None, timeout).await
}

/// In a suite run with mutual TLS ([`suite_certs`]): the certificate flags
/// for a `sluice-scheduler` or `sluice-executor` started without them
/// (executors take the suite's executor certificates in turn).
fn suite_member_args(bin: &Path, args: &[String]) -> anyhow::Result<Vec<String>> {
    static NEXT_EXECUTOR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(certs) = suite_certs() else { return Ok(Vec::new()) };
    if args.iter().any(|a| a == "--cluster-cert") {
        return Ok(Vec::new());
    }
    // The member's binary, also when started through a wrapper
    // (`ip netns exec NS sluice-executor …`).
    let program = std::iter::once(bin.as_os_str())
        .chain(args.iter().map(|a| std::ffi::OsStr::new(a.as_str())))
        .filter_map(|a| Path::new(a).file_name().and_then(|n| n.to_str()))
        .find(|n| matches!(*n, "sluice-scheduler" | "sluice-executor"));
    let name = match program {
        Some("sluice-scheduler") => "scheduler".to_string(),
        Some("sluice-executor") => {
            let executors = certs.members.len().saturating_sub(2).max(1);
            let n = NEXT_EXECUTOR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("executor-{}", n % executors + 1)
        }
        _ => return Ok(Vec::new()),
    };
    let m = certs.member(&name).with_context(|| format!("no suite certificate for {name}"))?;
    Ok(vec![
        "--cluster-ca".into(),
        certs.ca.display().to_string(),
        "--cluster-cert".into(),
        m.cert.display().to_string(),
        "--cluster-key".into(),
        m.key.display().to_string(),
    ])
}

/// A real cluster: one `sluice-scheduler` and N `sluice-executor`
/// processes on free loopback ports, stopped on drop (logs printed when the
/// test is failing).
pub struct TestCluster {
    pub scheduler: Proc,
    pub executors: Vec<Proc>,
    pub dir: tempfile::TempDir,
    /// The cluster's certificates when it runs with mutual TLS.
    pub certs: Option<sluice_proto::tls::Minted>,
}

impl TestCluster {
    /// Starts a scheduler and `executors` executors with `vcores` slots each.
    pub fn start(executors: usize, vcores: usize) -> anyhow::Result<Self> {
        Self::start_with(executors, vcores, &[])
    }

    /// As [`TestCluster::start`], with extra executor flags.
    pub fn start_with(
        executors: usize,
        vcores: usize,
        executor_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_full(executors, vcores, &[], executor_args)
    }

    /// As [`TestCluster::start`], for tests that kill an executor: a short
    /// executor timeout on the scheduler (5 s) and heartbeats well inside it
    /// (1 s), so a killed executor's tasks are rescheduled within seconds.
    pub fn start_for_executor_loss(executors: usize, vcores: usize) -> anyhow::Result<Self> {
        Self::start_full(
            executors,
            vcores,
            &["--executor-timeout-seconds", "5"],
            &["--heartbeat-interval-seconds", "1"],
        )
    }

    /// As [`TestCluster::start`], with extra scheduler and executor flags.
    pub fn start_full(
        executors: usize,
        vcores: usize,
        scheduler_args: &[&str],
        executor_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_inner(executors, vcores, scheduler_args, executor_args, false, &[])
    }

    /// As [`TestCluster::start_full`], with extra environment variables for
    /// every process ([`plain_env`] for a cluster without TLS in any run).
    pub fn start_full_env(
        executors: usize,
        vcores: usize,
        scheduler_args: &[&str],
        executor_args: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        Self::start_inner(executors, vcores, scheduler_args, executor_args, false, env)
    }

    /// As [`TestCluster::start_with`], with extra environment variables for
    /// every process (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn start_env(
        executors: usize,
        vcores: usize,
        executor_args: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        Self::start_inner(executors, vcores, &[], executor_args, false, env)
    }

    /// As [`TestCluster::start`], with mutual TLS between all members
    /// (`sluice cluster certs`: executor-1..N for the executors, one spare
    /// executor certificate, and `client` for clients).
    pub fn start_tls(executors: usize, vcores: usize) -> anyhow::Result<Self> {
        Self::start_inner(executors, vcores, &[], &[], true, &[])
    }

    fn start_inner(
        executors: usize,
        vcores: usize,
        scheduler_args: &[&str],
        executor_args: &[&str],
        tls: bool,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("sluice-test-cluster-").tempdir()?;
        let deadline = Duration::from_secs(60);
        let plain = env.iter().any(|(k, v)| k == "SLUICE_CLUSTER_CERT" && v.is_empty());
        let certs = match suite_certs() {
            // The whole suite runs with mutual TLS: every cluster uses its certificates.
            Some(certs) if !plain => Some(certs),
            _ if tls => {
                Some(sluice_proto::tls::mint(&dir.path().join("certs"), &[], executors + 1)?)
            }
            _ => None,
        };
        let member_args = |name: &str| -> anyhow::Result<Vec<String>> {
            let Some(certs) = &certs else { return Ok(Vec::new()) };
            let m = certs.member(name).with_context(|| format!("no certificate for {name}"))?;
            Ok(vec![
                "--cluster-ca".into(),
                certs.ca.display().to_string(),
                "--cluster-cert".into(),
                m.cert.display().to_string(),
                "--cluster-key".into(),
                m.key.display().to_string(),
            ])
        };
        let mut args: Vec<String> =
            ["--bind", "127.0.0.1:0", "--min-ready-executors", &executors.to_string()]
                .iter()
                .chain(scheduler_args)
                .map(|s| s.to_string())
                .collect();
        args.extend(member_args("scheduler")?);
        let scheduler = Proc::spawn_env(
            "scheduler",
            &bin("sluice-scheduler"),
            &args,
            env,
            dir.path(),
            deadline,
        )?;
        let mut procs = Vec::new();
        for i in 0..executors {
            let mut args = vec![
                "--scheduler".to_string(),
                scheduler.addr.clone(),
                "--bind".into(),
                "127.0.0.1:0".into(),
                "--vcores".into(),
                vcores.to_string(),
                "--work-dir".into(),
                dir.path().join(format!("work-{i}")).display().to_string(),
            ];
            args.extend(executor_args.iter().map(|s| s.to_string()));
            args.extend(member_args(&format!("executor-{}", i + 1))?);
            procs.push(Proc::spawn_env(
                &format!("executor-{i}"),
                &bin("sluice-executor"),
                &args,
                env,
                dir.path(),
                deadline,
            )?);
        }
        let cluster = Self { scheduler, executors: procs, dir, certs };
        cluster.wait_ready(deadline)?;
        Ok(cluster)
    }

    /// The credentials of member `name` (`client`, `executor-2`, …) of a
    /// mutual-TLS cluster.
    pub fn member_tls(&self, name: &str) -> anyhow::Result<sluice_proto::tls::ClusterTls> {
        let certs = self.certs.as_ref().context("not a TLS cluster")?;
        let m = certs.member(name).with_context(|| format!("no certificate for {name}"))?;
        Ok(sluice_proto::tls::ClusterTls::load(&certs.ca, &m.cert, &m.key)?)
    }

    /// `SLUICE_CLUSTER_*` for a `sluice` CLI process talking to this cluster
    /// as the operator's client (empty without TLS).
    pub fn client_env(&self) -> Vec<(String, String)> {
        let Some(certs) = &self.certs else { return Vec::new() };
        let Some(m) = certs.member("client") else { return Vec::new() };
        vec![
            ("SLUICE_CLUSTER_CA".into(), certs.ca.display().to_string()),
            ("SLUICE_CLUSTER_CERT".into(), m.cert.display().to_string()),
            ("SLUICE_CLUSTER_KEY".into(), m.key.display().to_string()),
        ]
    }

    /// The scheduler's `HOST:PORT`.
    pub fn scheduler_addr(&self) -> &str {
        &self.scheduler.addr
    }

    fn wait_ready(&self, deadline: Duration) -> anyhow::Result<()> {
        let rt = sluice_proto::runtime()?;
        let start = Instant::now();
        let tls = match &self.certs {
            Some(_) => Some(self.member_tls("client")?),
            None => None,
        };
        rt.block_on(sluice_client::http::wait_ready_with(
            &self.scheduler.addr,
            tls.as_ref(),
            deadline,
        ))
        .with_context(|| format!("cluster not ready after {:?}", start.elapsed()))?;
        Ok(())
    }

    /// All process logs, for failure messages.
    /// Whether any process's whole log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        std::iter::once(&self.scheduler)
            .chain(&self.executors)
            .any(|p| p.log_text().contains(needle))
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.scheduler).chain(&self.executors) {
            let text = p.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("----- {} ({}) -----\n", p.name, p.log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A free loopback port (bound and released; fine for tests on loopback).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A real single-member etcd (Debian `etcd-server`) on free loopback ports
/// with its data in a temp folder; killed on drop. The test command installs
/// it; a missing `etcd` fails the test with the install line (never a skip).
pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Plain `/health` when the client port needs certificates.
    metrics_port: u16,
    /// `--trusted-ca-file`, `--cert-file`, `--key-file`: TLS with client
    /// certificates required (`--client-cert-auth`).
    tls: Option<[PathBuf; 3]>,
    log: PathBuf,
}

impl Etcd {
    /// Starts etcd and waits (deadline 30 s) until it answers `/health`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_inner(dir, None)
    }

    /// As [`Etcd::start`], serving `https://` with the `etcd` certificate of
    /// `certs` (`sluice cluster certs`) and requiring client certificates
    /// signed by its CA (`--client-cert-auth`).
    pub fn start_tls(dir: &Path, certs: &sluice_proto::tls::Minted) -> anyhow::Result<Self> {
        let folder = certs.ca.parent().context("certificate folder")?;
        Self::start_inner(
            dir,
            Some([certs.ca.clone(), folder.join("etcd.pem"), folder.join("etcd.key")]),
        )
    }

    fn start_inner(dir: &Path, tls: Option<[PathBuf; 3]>) -> anyhow::Result<Self> {
        let mut etcd = Self {
            child: None,
            endpoint: String::new(),
            data_dir: dir.join("etcd-data"),
            client_port: free_port()?,
            peer_port: free_port()?,
            metrics_port: free_port()?,
            tls,
            log: dir.join("etcd.log"),
        };
        let scheme = if etcd.tls.is_some() { "https" } else { "http" };
        etcd.endpoint = format!("{scheme}://127.0.0.1:{}", etcd.client_port);
        etcd.launch()?;
        Ok(etcd)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let program = which("etcd").context(
            "etcd is not installed: `apt-get install -y etcd-server` (scripts/test.sh does it as root)",
        )?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let metrics = format!("http://127.0.0.1:{}", self.metrics_port);
        let mut tls_args: Vec<String> = Vec::new();
        if let Some([ca, cert, key]) = &self.tls {
            for (flag, path) in
                [("--trusted-ca-file", ca), ("--cert-file", cert), ("--key-file", key)]
            {
                tls_args.push(flag.into());
                tls_args.push(path.display().to_string());
            }
            tls_args.push("--client-cert-auth".into());
        }
        let child = Command::new(program)
            .args(&tls_args)
            .args([
                "--name",
                "sluice-test",
                "--data-dir",
                &self.data_dir.display().to_string(),
                "--listen-client-urls",
                &self.endpoint,
                "--advertise-client-urls",
                &self.endpoint,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("sluice-test={peer}"),
                // Fast elections: a restarted member leads again in well under a second.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--listen-metrics-urls",
                &metrics,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn etcd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = format!("127.0.0.1:{}", self.metrics_port);
        let rt = sluice_proto::runtime()?;
        loop {
            let healthy = rt.block_on(async {
                matches!(
                    sluice_client::http::get_with(&addr, "/health", None, None, Duration::from_secs(1))
                        .await,
                    Ok((200, body)) if body.contains("true")
                )
            });
            if healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd not healthy within 30 s; its log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs etcd (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Starts a `sluice-scheduler --state etcd` named `name`.
pub fn ha_scheduler(
    name: &str,
    etcd: &Etcd,
    cluster: &str,
    ttl_seconds: u64,
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1:0",
        "--state",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--cluster",
        cluster,
        "--lease-ttl-seconds",
        &ttl_seconds.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(name, &bin("sluice-scheduler"), &args, dir, Duration::from_secs(60))
}

/// Starts a `sluice-executor` that follows the cluster's leader through etcd.
pub fn ha_executor(
    name: &str,
    etcd: &Etcd,
    cluster: &str,
    ttl_seconds: u64,
    vcores: usize,
    dir: &Path,
) -> anyhow::Result<Proc> {
    let args: Vec<String> = [
        "--etcd-endpoints",
        &etcd.endpoint,
        "--cluster",
        cluster,
        "--lease-ttl-seconds",
        &ttl_seconds.to_string(),
        "--bind",
        "127.0.0.1:0",
        "--vcores",
        &vcores.to_string(),
        "--heartbeat-interval-seconds",
        "1",
        "--work-dir",
        &dir.join(format!("work-{name}")).display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::spawn(name, &bin("sluice-executor"), &args, dir, Duration::from_secs(60))
}

/// Polls `HOST:PORT/readyz` until it answers 200 (the leader with its
/// executors registered), for up to `deadline`.
pub fn wait_ready(addr: &str, deadline: Duration) -> anyhow::Result<()> {
    let rt = sluice_proto::runtime()?;
    rt.block_on(sluice_client::http::wait_ready(addr, deadline))
        .with_context(|| format!("{addr} not ready within {deadline:?}"))?;
    Ok(())
}

/// `/readyz`'s status code and body (`None` when nothing answers).
pub fn readyz(addr: &str) -> Option<(u16, String)> {
    let rt = sluice_proto::runtime().ok()?;
    rt.block_on(http_get(addr, "/readyz", Duration::from_secs(2))).ok()
}

/// One job as the scheduler's REST API (`/api/jobs`) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    /// The status word (`Running`, `Completed`, `Failed`, …).
    pub status: String,
    pub completed_stages: usize,
    /// The job's stage count (0 while the adaptive planner has not planned
    /// them all).
    pub num_stages: usize,
    pub start_time: u64,
}

/// Every job the scheduler at `addr` knows, oldest first; empty when its
/// REST API does not answer.
pub async fn scheduler_jobs(addr: &str) -> Vec<JobRow> {
    let Ok((200, body)) = http_get(addr, "/api/jobs", Duration::from_secs(2)).await else {
        return Vec::new();
    };
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
    let mut jobs: Vec<JobRow> = list
        .iter()
        .map(|j| JobRow {
            id: j["job_id"].as_str().unwrap_or_default().to_string(),
            name: j["job_name"].as_str().unwrap_or_default().to_string(),
            status: j["status"].as_str().unwrap_or_default().to_string(),
            completed_stages: j["completed_stages"].as_u64().unwrap_or_default() as usize,
            num_stages: j["num_stages"].as_u64().unwrap_or_default() as usize,
            start_time: j["start_time"].as_u64().unwrap_or_default(),
        })
        .collect();
    jobs.sort_by_key(|j| j.start_time);
    jobs
}

/// Dates with rows in the Delta table at `out` (a folder or URL; empty when
/// there is no table). Runs on a thread of its own, so it may be called from
/// sync or async code alike.
pub fn committed_dates(out: &Path) -> std::collections::BTreeSet<chrono::NaiveDate> {
    let out = out.to_string_lossy().into_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        rt.block_on(sluice_client::backfill::committed_dates(&out)).ok()
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Registers the Delta table at `out` (a backfill's output) as `name`.
///
/// # Panics
/// When it is not a readable Delta table.
pub async fn register_delta(ctx: &datafusion::prelude::SessionContext, name: &str, out: &Path) {
    sluice_sql::tables::TableSource::new(
        name,
        &out.to_string_lossy(),
        Some(sluice_sql::tables::TableFormat::Delta),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", out.display()))
    .register(ctx)
    .await
    .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

/// Files under `out/_sluice/` that no version of the Delta table names
/// (what failed attempts would leave behind).
pub fn orphan_files(out: &Path) -> Vec<String> {
    let url = match sluice_sql::storage::folder_url(&out.to_string_lossy()) {
        Ok(u) => u,
        Err(e) => return vec![format!("{}: {e}", out.display())],
    };
    let referenced = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let config = sluice_sql::session::local_session_config();
        let runtime = sluice_sql::session::runtime_env(&config, None).ok()?;
        rt.block_on(sluice_sql::delta::attempts_in_table(&runtime, &url, "_sluice")).ok()
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or_default();
    let mut orphans = Vec::new();
    for e in std::fs::read_dir(out.join("_sluice")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !referenced.contains(&name) {
            orphans.push(name);
        }
    }
    orphans
}
pub mod s3;

/// The data files of the Delta table's latest version at `out`.
pub fn live_files(out: &Path) -> std::collections::BTreeSet<String> {
    let Ok(url) = sluice_sql::storage::folder_url(&out.to_string_lossy()) else {
        return Default::default();
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let config = sluice_sql::session::local_session_config();
        let runtime = sluice_sql::session::runtime_env(&config, None).ok()?;
        rt.block_on(sluice_sql::delta::live_files(&runtime, &url)).ok()
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// `sql` on plain single-process DataFusion (the reference engine) with
/// `tables` (`NAME=PATH` as `--table` takes them), printed as `sluice sql
/// --format csv` prints it.
pub fn local_csv(sql: &str, tables: &[&str]) -> String {
    let rt = sluice_proto::runtime().expect("runtime");
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new_with_config(
            sluice_sql::session::local_session_config(),
        );
        for t in tables {
            let src = sluice_sql::tables::TableSource::parse(t).expect("table");
            src.register(&ctx).await.expect("register");
        }
        let mut out = Vec::new();
        for (_, batches) in
            sluice_client::connect::collect_statements(&ctx, sql).await.expect("local run")
        {
            if batches.first().is_some_and(|b| b.num_columns() > 0) {
                sluice_client::format::write(
                    &mut out,
                    &batches,
                    sluice_client::format::OutputFormat::Csv,
                )
                .expect("csv");
            }
        }
        String::from_utf8(out).expect("utf8")
    })
}
