//! The executor's task port under cluster TLS.
//!
//! With push scheduling the scheduler launches tasks (and stops executors,
//! cancels tasks, removes job data) on the executor's task port. Ballista
//! serves that port itself, without TLS and without any check of the caller.
//! With cluster TLS, Sluice therefore binds Ballista's server to a loopback
//! address only ([`internal_host`]) and serves the advertised task port
//! here: a TLS endpoint that requires a certificate of the cluster with the
//! scheduler role, and relays each accepted connection to Ballista's server
//! on the same port number.
//!
//! Who can still reach Ballista's plain server: processes on the executor's
//! own host (its loopback). In a Kubernetes pod that is the pod itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::tls::{ClusterTls, Role};
use tokio::net::{TcpListener, TcpStream};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The loopback address Ballista's plain task server binds, given the
/// address the TLS task port listens on (a different address, so both may
/// use the same port number).
pub fn internal_host(public: IpAddr) -> IpAddr {
    if public == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// Relays TLS connections from schedulers on `listener` to `backend`
/// (Ballista's task server) until the process ends.
///
/// # Errors
/// The TLS configuration error, before anything is accepted.
pub fn serve(
    listener: std::net::TcpListener,
    tls: &ClusterTls,
    backend: SocketAddr,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let config = tls.server_config(true).map_err(|e| std::io::Error::other(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: try again soon.
                    tracing::warn!(%error, "task port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Err(reason) = relay(acceptor, tcp, backend).await {
                    tracing::warn!(%peer, %reason, "task port: connection refused");
                }
            });
        }
    }))
}

async fn relay(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    backend: SocketAddr,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| sluice_proto::tls::peer_identity(cert.as_ref()));
    match identity {
        Some(id) if id.role == Role::Scheduler => {}
        Some(id) => return Err(format!("{id} may not launch tasks (a scheduler's may)")),
        None => return Err("no certificate role".into()),
    }
    let mut inner = TcpStream::connect(backend)
        .await
        .map_err(|e| format!("Ballista's task server at {backend}: {e}"))?;
    let _ = inner.set_nodelay(true);
    // Ends when either side closes; errors are the connection's end.
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut inner).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballista_binds_another_loopback_address() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(internal_host(lo), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        let pod: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(internal_host(pod), lo);
    }
}
