//! A minimal HTTP/1.1 GET for the scheduler's own probes (`/readyz`,
//! `/api/executors`) — enough to wait for a cluster without pulling an HTTP
//! client stack into the CLI.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET http://{addr}{path}`; returns the status code and body.
///
/// # Errors
/// The I/O error, or `InvalidData` for a response that is not HTTP.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    get_as(addr, path, None, timeout).await
}

/// [`get`] with a bearer token; over the cluster's mutual TLS when
/// `SLUICE_CLUSTER_*` are set (see [`crate::connect::cluster_tls_from_env`]).
///
/// # Errors
/// As [`get`].
pub async fn get_as(
    addr: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let tls = crate::connect::cluster_tls_from_env()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    get_with(addr, path, token, tls.as_ref(), timeout).await
}

/// [`get_as`] with explicit cluster TLS credentials (`https://`).
///
/// # Errors
/// As [`get`]; `InvalidInput` when the credentials cannot make a TLS client.
pub async fn get_with(
    addr: &str,
    path: &str,
    token: Option<&str>,
    tls: Option<&sluice_proto::tls::ClusterTls>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut stream: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some(tls) => {
                let config = tls.client_config().map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?;
                let name =
                    rustls::pki_types::ServerName::try_from(sluice_proto::tls::CLUSTER_SERVER_NAME)
                        .map_err(|e| {
                            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                        })?;
                let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
                Box::new(connector.connect(name, tcp).await?)
            }
        };
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        // A TLS peer may close without close_notify after the response.
        if let Err(e) = stream.read_to_end(&mut buf).await
            && (buf.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof)
        {
            return Err(e);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status =
            text.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or_else(
                || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"),
            )?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Polls `/readyz` until it answers 200 or `deadline` passes.
///
/// # Errors
/// `TimedOut` with the last status seen.
pub async fn wait_ready(addr: &str, deadline: Duration) -> std::io::Result<()> {
    let tls = crate::connect::cluster_tls_from_env()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    wait_ready_with(addr, tls.as_ref(), deadline).await
}

/// [`wait_ready`] with explicit cluster TLS credentials.
///
/// # Errors
/// As [`wait_ready`].
pub async fn wait_ready_with(
    addr: &str,
    tls: Option<&sluice_proto::tls::ClusterTls>,
    deadline: Duration,
) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    let mut last = String::from("no answer");
    while start.elapsed() < deadline {
        match get_with(addr, "/readyz", None, tls, Duration::from_secs(2)).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => last = format!("HTTP {status}: {}", body.trim()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("scheduler at {addr} not ready after {deadline:?} ({last})"),
    ))
}
