//! Moving a draining executor's shuffle output to a live peer
//! (`sluice.v1.ShuffleHandoff`, served on every executor's Flight port).
//!
//! Ballista lays shuffle output out as `<work dir>/<job>/<stage>/…`, and a
//! reader finds a file by that relative path on whichever executor its
//! location names. The receiver stores each file at the same relative path
//! in its own work folder, so once the scheduler points the readers at it
//! (same job, stage, partition and file id), it serves them like its own.

use std::path::{Component, Path, PathBuf};

use sluice_proto::HostPort;
use sluice_proto::pb::shuffle_handoff_client::ShuffleHandoffClient;
use sluice_proto::pb::shuffle_handoff_server::ShuffleHandoff;
use sluice_proto::pb::{self, handoff_chunk::Part};
use sluice_proto::tls::ClusterTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status, Streaming};

/// Bytes per data message.
const CHUNK: usize = 1024 * 1024;

/// Whether `name` can be a Ballista job id (and nothing else: no path tricks).
fn valid_job(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The receiving side: stores handed-off files under `work_dir`.
#[derive(Debug, Clone)]
pub struct HandoffService {
    work_dir: PathBuf,
}

impl HandoffService {
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self { work_dir: work_dir.into() }
    }

    /// `path` (relative, under `<job>/<stage>/`, plain components only)
    /// resolved under the work folder.
    fn target(&self, job: &str, stage: u32, path: &str) -> Result<PathBuf, Status> {
        let rel = Path::new(path);
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        let prefix = Path::new(job).join(stage.to_string());
        if !plain || !rel.starts_with(&prefix) || rel == prefix {
            return Err(Status::invalid_argument(format!(
                "handoff file {path:?}: expected a relative path under {}/ with no '..'",
                prefix.display()
            )));
        }
        Ok(self.work_dir.join(rel))
    }
}

/// A file being received: written to a temporary name, renamed at the end.
struct Incoming {
    file: tokio::fs::File,
    temp: PathBuf,
    target: PathBuf,
    expected: u64,
    written: u64,
}

impl Incoming {
    async fn close(mut self) -> Result<(PathBuf, PathBuf, u64), Status> {
        if self.written != self.expected {
            return Err(Status::invalid_argument(format!(
                "handoff file {}: announced {} bytes, received {}",
                self.target.display(),
                self.expected,
                self.written
            )));
        }
        self.file.flush().await.map_err(|e| Status::internal(e.to_string()))?;
        Ok((self.temp, self.target, self.written))
    }
}

async fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = tokio::fs::remove_file(p).await;
    }
}

impl HandoffService {
    async fn receive(
        &self,
        stream: &mut Streaming<pb::HandoffChunk>,
        temps: &mut Vec<PathBuf>,
    ) -> Result<Vec<(PathBuf, PathBuf, u64)>, Status> {
        let header = match stream.message().await? {
            Some(pb::HandoffChunk { part: Some(Part::Header(h)) }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "handoff: the first message must be the header",
                ));
            }
        };
        if !valid_job(&header.job_id) {
            return Err(Status::invalid_argument(format!(
                "handoff header: job_id {:?} is not a job id",
                header.job_id
            )));
        }
        let mut done = Vec::new();
        let mut current: Option<Incoming> = None;
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(Part::File(f)) => {
                    if let Some(c) = current.take() {
                        done.push(c.close().await?);
                    }
                    let target = self.target(&header.job_id, header.stage_id, &f.path)?;
                    if tokio::fs::try_exists(&target).await.unwrap_or(true) {
                        return Err(Status::already_exists(format!(
                            "handoff file {}: this executor has a file there already",
                            f.path
                        )));
                    }
                    if let Some(parent) = target.parent() {
                        tokio::fs::create_dir_all(parent)
                            .await
                            .map_err(|e| Status::internal(format!("{}: {e}", parent.display())))?;
                    }
                    let mut name = target.file_name().unwrap_or_default().to_os_string();
                    static NEXT: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    name.push(format!(".handoff-{}-{n}", std::process::id()));
                    let temp = target.with_file_name(name);
                    let file = tokio::fs::File::create(&temp)
                        .await
                        .map_err(|e| Status::internal(format!("{}: {e}", temp.display())))?;
                    temps.push(temp.clone());
                    current = Some(Incoming { file, temp, target, expected: f.bytes, written: 0 });
                }
                Some(Part::Data(bytes)) => {
                    let Some(c) = current.as_mut() else {
                        return Err(Status::invalid_argument("handoff: data before any file"));
                    };
                    c.written += bytes.len() as u64;
                    if c.written > c.expected {
                        return Err(Status::invalid_argument(format!(
                            "handoff file {}: more bytes than the {} announced",
                            c.target.display(),
                            c.expected
                        )));
                    }
                    c.file
                        .write_all(&bytes)
                        .await
                        .map_err(|e| Status::internal(format!("{}: {e}", c.temp.display())))?;
                }
                Some(Part::Header(_)) | None => {
                    return Err(Status::invalid_argument(
                        "handoff: a second header or an empty message",
                    ));
                }
            }
        }
        if let Some(c) = current.take() {
            done.push(c.close().await?);
        }
        Ok(done)
    }
}

#[tonic::async_trait]
impl ShuffleHandoff for HandoffService {
    async fn put(
        &self,
        request: Request<Streaming<pb::HandoffChunk>>,
    ) -> Result<Response<pb::HandoffResponse>, Status> {
        let mut stream = request.into_inner();
        let mut temps = Vec::new();
        let done = match self.receive(&mut stream, &mut temps).await {
            Ok(done) => done,
            Err(e) => {
                remove_all(&temps).await;
                return Err(e);
            }
        };
        // All arrived: put them in place.
        let mut placed = Vec::new();
        let mut bytes = 0;
        for (temp, target, n) in &done {
            if let Err(e) = tokio::fs::rename(temp, target).await {
                remove_all(&temps).await;
                remove_all(&placed).await;
                return Err(Status::internal(format!("{}: {e}", target.display())));
            }
            placed.push(target.clone());
            bytes += n;
        }
        tracing::info!(files = done.len(), bytes, "received a drained executor's shuffle output");
        Ok(Response::new(pb::HandoffResponse { files: done.len() as u32, bytes }))
    }
}

/// The stage outputs under `work_dir`: `<job>/<stage>/` folders and their
/// files (paths relative to `work_dir`, `/`-separated).
pub fn scan(work_dir: &Path) -> Vec<pb::StageOutput> {
    let mut outputs = Vec::new();
    let Ok(jobs) = std::fs::read_dir(work_dir) else { return outputs };
    for job in jobs.flatten() {
        let job_name = job.file_name().to_string_lossy().into_owned();
        if !valid_job(&job_name) || !job.path().is_dir() {
            continue;
        }
        let Ok(stages) = std::fs::read_dir(job.path()) else { continue };
        for stage in stages.flatten() {
            let Ok(stage_id) = stage.file_name().to_string_lossy().parse::<u32>() else { continue };
            let mut files = Vec::new();
            let mut bytes = 0;
            collect(work_dir, &stage.path(), &mut files, &mut bytes);
            if !files.is_empty() {
                files.sort();
                outputs.push(pb::StageOutput { job_id: job_name.clone(), stage_id, bytes, files });
            }
        }
    }
    outputs.sort_by(|a, b| a.job_id.cmp(&b.job_id).then(a.stage_id.cmp(&b.stage_id)));
    outputs
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<String>, bytes: &mut u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            collect(root, &path, files, bytes);
        } else if meta.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            let parts: Vec<String> =
                rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            files.push(parts.join("/"));
            *bytes += meta.len();
        }
    }
}

/// A gRPC channel to `addr`, over the cluster's TLS when there is one.
///
/// # Errors
/// The connection error, as text.
pub async fn channel(
    addr: &HostPort,
    tls: Option<&ClusterTls>,
) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let endpoint = match tls {
        Some(tls) => tls.secure_endpoint(endpoint).map_err(|e| format!("{addr}: {e}"))?,
        None => endpoint,
    };
    endpoint.connect().await.map_err(|e| format!("{addr}: {e}"))
}

/// Sends one stage output to `to`; returns the files and bytes sent.
///
/// # Errors
/// What failed (connection, a file, the receiver's refusal), as text.
pub async fn send(
    to: &HostPort,
    tls: Option<&ClusterTls>,
    from: &str,
    output: &pb::StageOutput,
    work_dir: &Path,
) -> Result<(u32, u64), String> {
    let mut client = ShuffleHandoffClient::new(channel(to, tls).await?)
        .max_decoding_message_size(4 * CHUNK)
        .max_encoding_message_size(4 * CHUNK);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::HandoffChunk>(4);
    let header = pb::HandoffHeader {
        from_executor_id: from.to_string(),
        job_id: output.job_id.clone(),
        stage_id: output.stage_id,
    };
    let files = output.files.clone();
    let root = work_dir.to_path_buf();
    let producer = tokio::spawn(async move {
        let send = |part| {
            let tx = tx.clone();
            async move {
                tx.send(pb::HandoffChunk { part: Some(part) })
                    .await
                    .map_err(|_| "receiver closed".to_string())
            }
        };
        send(Part::Header(header)).await?;
        for rel in &files {
            let path = root.join(rel);
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let len = file.metadata().await.map_err(|e| format!("{}: {e}", path.display()))?.len();
            send(Part::File(pb::HandoffFile { path: rel.clone(), bytes: len })).await?;
            let mut left = len;
            while left > 0 {
                let mut buf = vec![0u8; CHUNK.min(left as usize)];
                file.read_exact(&mut buf).await.map_err(|e| format!("{}: {e}", path.display()))?;
                left -= buf.len() as u64;
                send(Part::Data(buf)).await?;
            }
        }
        Ok::<(), String>(())
    });
    let result = client.put(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    let produced = producer.await.map_err(|e| e.to_string())?;
    let reply = result.map_err(|s| format!("{to} refused: {}", s.message()))?.into_inner();
    produced?;
    Ok((reply.files, reply.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_paths_stay_under_the_stage_folder() {
        let svc = HandoffService::new("/w");
        assert_eq!(
            svc.target("j1", 3, "j1/3/0/data.arrow").ok(),
            Some(PathBuf::from("/w/j1/3/0/data.arrow"))
        );
        for bad in ["j1/3/../../etc/passwd", "/etc/passwd", "j1/4/0/data.arrow", "j2/3/x", "j1/3"] {
            assert!(svc.target("j1", 3, bad).is_err(), "{bad} accepted");
        }
        assert!(!valid_job("../x") && !valid_job("") && valid_job("aB3-_x"));
    }

    #[test]
    fn scan_finds_stage_outputs_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("abc/2/0")).expect("mkdir");
        std::fs::write(root.join("abc/2/0/data.arrow"), b"12345").expect("write");
        std::fs::write(root.join("abc/2/0/data.arrow.index"), b"12").expect("write");
        std::fs::create_dir_all(root.join("abc/notastage")).expect("mkdir");
        std::fs::create_dir_all(root.join(".tmpXYZ/1")).expect("mkdir");
        std::fs::write(root.join(".tmpXYZ/1/spill"), b"1").expect("write");
        let found = scan(root);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].job_id, "abc");
        assert_eq!(found[0].stage_id, 2);
        assert_eq!(found[0].bytes, 7);
        assert_eq!(found[0].files, vec!["abc/2/0/data.arrow", "abc/2/0/data.arrow.index"]);
    }
}
