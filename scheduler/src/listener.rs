//! The scheduler port's listener: plain TCP, or TLS with the cluster's
//! certificates, each connection tagged with who is on the other end.
//!
//! With cluster TLS a client certificate is optional at the TLS layer: an
//! executor presents one (and is known by it), a client may come with a
//! token only. What each caller may do is decided per call by `gate`, from
//! the [`Peer`] recorded here.
//!
//! TLS handshakes run in their own tasks, bounded by [`HANDSHAKE_TIMEOUT`],
//! so a peer that connects and never speaks cannot stall the port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use sluice_proto::tls::{ClusterTls, PeerIdentity};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::either::Either;

use crate::error::{Error, Result};

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified certificate's role and name; `None` without TLS or
    /// without a client certificate.
    pub identity: Option<PeerIdentity>,
}

type Conn = Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

/// An accepted (and, with TLS, handshaken) connection stream.
pub struct ClusterListener {
    local_addr: SocketAddr,
    rx: mpsc::Receiver<(Conn, Peer)>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ClusterListener {
    /// Starts accepting on `listener`; with `tls`, every connection is a
    /// TLS one (plain connections fail the handshake).
    ///
    /// # Errors
    /// [`Error::ConfigFile`] when the TLS configuration cannot be built.
    pub fn new(listener: TcpListener, tls: Option<&ClusterTls>) -> Result<Self> {
        let local_addr =
            listener.local_addr().map_err(|e| Error::Stopped { reason: e.to_string() })?;
        let acceptor = match tls {
            Some(tls) => {
                let config = tls.server_config(false).map_err(|e| Error::ConfigFile {
                    path: "--cluster-cert".into(),
                    reason: e.to_string(),
                })?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(64);
        let accept = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(Self { local_addr, rx, accept })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<(Conn, Peer)>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, as axum does.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small gRPC replies must not wait for the peer's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let Some(acceptor) = acceptor.clone() else {
            if tx.send((Either::Left(tcp), Peer { addr, identity: None })).await.is_err() {
                return;
            }
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| sluice_proto::tls::peer_identity(leaf));
                    let _ = tx.send((Either::Right(stream), Peer { addr, identity })).await;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake refused"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for ClusterListener {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.local_addr, identity: None })
    }
}

impl Connected<IncomingStream<'_, ClusterListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, ClusterListener>) -> Self {
        stream.remote_addr().clone()
    }
}
