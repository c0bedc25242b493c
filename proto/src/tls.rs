//! Cluster identity: mutual TLS between the scheduler, executors and
//! operators' clients.
//!
//! ```text
//!   sluice cluster certs --out DIR        mints a private CA and one certificate per member
//!
//!   scheduler port   TLS; executor calls need an executor certificate,
//!                    client calls an admin token or a client certificate
//!   executor Flight  TLS; every caller needs a certificate of the cluster CA
//!   executor tasks   none: with cluster TLS executors pull their tasks
//! ```
//!
//! Every certificate the CA signs names its **role** in a URI subject
//! alternative name (`urn:sluice:role:executor`, `…:scheduler`, `…:client`)
//! and its **member name** in the common name. Each also carries the DNS name
//! [`CLUSTER_SERVER_NAME`], which is the name clients verify servers
//! against: members find each other by IP address or pod name, and the CA is
//! the cluster's own, so the name a certificate was issued for is the
//! cluster rather than a host (as with Kafka's or CockroachDB's node
//! certificates). Extra host names can be added for outside tools.
//!
//! Private keys must not be readable by other users; [`ClusterTls::load`]
//! refuses one that is.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The DNS name in every cluster certificate, verified by every client.
pub const CLUSTER_SERVER_NAME: &str = "sluice-cluster";

const ROLE_URN_PREFIX: &str = "urn:sluice:role:";

/// What a cluster certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A scheduler: fetches results from executors.
    Scheduler,
    /// An executor: registers, pulls tasks, reports their status, fetches shuffles.
    Executor,
    /// An operator's client (the `sluice` CLI): submits jobs, fetches results.
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Executor => "executor",
            Role::Client => "client",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "scheduler" => Some(Role::Scheduler),
            "executor" => Some(Role::Executor),
            "client" => Some(Role::Client),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is on the other end of a verified connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub role: Role,
    /// The certificate's common name (`executor-1`, `scheduler`, …).
    pub name: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

/// Reads the role and name out of a certificate the TLS layer has already
/// verified against the cluster CA; `None` for a certificate without a
/// Sluice role.
pub fn peer_identity(der: &[u8]) -> Option<PeerIdentity> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    let san = cert.subject_alternative_name().ok()??;
    let role = san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) => uri.strip_prefix(ROLE_URN_PREFIX).and_then(Role::parse),
        _ => None,
    })?;
    Some(PeerIdentity { role, name })
}

/// Why cluster TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {reason}")]
    File { flag: &'static str, path: PathBuf, reason: String },
    #[error(
        "cluster TLS needs all three of --cluster-ca, --cluster-cert and --cluster-key (missing {missing})"
    )]
    Incomplete { missing: &'static str },
    #[error("cluster TLS: {reason}")]
    Config { reason: String },
}

/// Refuses a secret file (private key, token file) that users other than
/// its owner may read: anyone on the host could then act as this member.
///
/// # Errors
/// [`TlsError::File`] naming the file and the `chmod` that fixes it.
pub fn check_private_file(flag: &'static str, path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| TlsError::File {
            flag,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(TlsError::File {
                flag,
                path: path.to_path_buf(),
                reason: format!(
                    "is readable by other users (mode {:o}); run `chmod 600 {}`",
                    mode & 0o777,
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// A member's cluster credentials: the CA, its certificate and its key.
#[derive(Clone)]
pub struct ClusterTls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    identity: PeerIdentity,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls").field("identity", &self.identity).finish_non_exhaustive()
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        flag,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl ClusterTls {
    /// `None` when no cluster TLS option is set; the credentials when all
    /// three are.
    ///
    /// # Errors
    /// [`TlsError::Incomplete`] when only some are set; see [`ClusterTls::load`].
    pub fn from_options(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Self::load(ca, cert, key).map(Some),
            (None, _, _) => Err(TlsError::Incomplete { missing: "--cluster-ca" }),
            (_, None, _) => Err(TlsError::Incomplete { missing: "--cluster-cert" }),
            (_, _, None) => Err(TlsError::Incomplete { missing: "--cluster-key" }),
        }
    }

    /// Loads and checks a member's credentials.
    ///
    /// # Errors
    /// [`TlsError::File`] naming the file that is unreadable, not PEM, a key
    /// readable by others, or a certificate without a Sluice role or not
    /// signed by the CA.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        crate::install_crypto();
        check_private_file("--cluster-key", key)?;
        let ca_pem = read("--cluster-ca", ca)?;
        let cert_pem = read("--cluster-cert", cert)?;
        let key_pem = read("--cluster-key", key)?;
        let bad = |flag: &'static str, path: &Path, reason: String| TlsError::File {
            flag,
            path: path.to_path_buf(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        let ca_certs = rustls_pemfile_certs(&ca_pem)
            .map_err(|e| bad("--cluster-ca", ca, format!("not PEM certificates: {e}")))?;
        if ca_certs.is_empty() {
            return Err(bad("--cluster-ca", ca, "holds no certificate".into()));
        }
        for c in ca_certs {
            roots.add(c).map_err(|e| bad("--cluster-ca", ca, e.to_string()))?;
        }
        let chain = rustls_pemfile_certs(&cert_pem)
            .map_err(|e| bad("--cluster-cert", cert, format!("not PEM certificates: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(bad("--cluster-cert", cert, "holds no certificate".into()));
        };
        let identity = peer_identity(leaf).ok_or_else(|| {
            bad(
                "--cluster-cert",
                cert,
                "has no Sluice role (mint cluster certificates with `sluice cluster certs`)".into(),
            )
        })?;
        let key_der = {
            use rustls::pki_types::pem::PemObject;
            PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| bad("--cluster-key", key, format!("not a PEM private key: {e}")))?
        };
        let roots = Arc::new(roots);
        // The certificate must be one the cluster's other members accept.
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::clone(&roots))
            .build()
            .map_err(|e| TlsError::Config { reason: e.to_string() })?;
        verifier
            .verify_client_cert(leaf, &chain[1..], rustls::pki_types::UnixTime::now())
            .map_err(|e| {
                bad("--cluster-cert", cert, format!("not valid under --cluster-ca: {e}"))
            })?;
        Ok(Self { ca_pem, cert_pem, key_pem, roots, chain, key: Arc::new(key_der), identity })
    }

    /// This member's role and name.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// A rustls server configuration presenting this member's certificate
    /// and verifying clients' against the CA (`client_cert_required`: every
    /// client must present one; otherwise clients without one are let in and
    /// judged by the caller, e.g. by token). ALPN `h2` (gRPC).
    ///
    /// # Errors
    /// [`TlsError::Config`] when rustls rejects the key.
    pub fn server_config(
        &self,
        client_cert_required: bool,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let builder = rustls::server::WebPkiClientVerifier::builder(Arc::clone(&self.roots));
        let builder = if client_cert_required { builder } else { builder.allow_unauthenticated() };
        let verifier = builder.build().map_err(|e| TlsError::Config { reason: e.to_string() })?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config { reason: e.to_string() })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// A rustls client configuration: trusts only the CA, presents this
    /// member's certificate; verify servers as [`CLUSTER_SERVER_NAME`].
    ///
    /// # Errors
    /// [`TlsError::Config`] when rustls rejects the key.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        rustls::ClientConfig::builder()
            .with_root_certificates(self.roots.as_ref().clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config { reason: e.to_string() })
    }

    /// Tonic's server TLS: this member's certificate, clients must present
    /// one signed by the CA.
    pub fn tonic_server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
    }

    /// Tonic's client TLS: trusts only the CA, verifies the server as
    /// [`CLUSTER_SERVER_NAME`], presents this member's certificate.
    pub fn tonic_client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(CLUSTER_SERVER_NAME)
    }

    /// An `https` endpoint for `endpoint`'s address with this member's
    /// client TLS. Tonic speaks TLS only to `https` URIs, and Ballista builds
    /// `http` ones: the endpoint is rebuilt with Ballista's default client
    /// settings (timeouts, keep-alive, windows), which its override hook
    /// cannot read back.
    ///
    /// # Errors
    /// The URI or TLS error from tonic.
    pub fn secure_endpoint(
        &self,
        endpoint: tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Endpoint, Box<dyn std::error::Error + Send + Sync>> {
        use std::time::Duration;
        let uri = endpoint.uri();
        let endpoint = if uri.scheme_str() == Some("https") {
            endpoint
        } else {
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            tonic::transport::Endpoint::from_shared(format!("https://{authority}{path}"))?
                .connect_timeout(Duration::from_secs(20))
                .timeout(Duration::from_secs(20))
                .tcp_nodelay(true)
                .tcp_keepalive(Some(Duration::from_secs(3600)))
                .http2_keep_alive_interval(Duration::from_secs(300))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
                .initial_connection_window_size(Some(64 * 1024 * 1024))
                .initial_stream_window_size(Some(8 * 1024 * 1024))
        };
        Ok(endpoint.tls_config(self.tonic_client())?)
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

/// The files [`mint`] writes for one member.
#[derive(Debug, Clone)]
pub struct MintedMember {
    pub identity: PeerIdentity,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What [`mint`] wrote.
#[derive(Debug, Clone)]
pub struct Minted {
    pub ca: PathBuf,
    pub members: Vec<MintedMember>,
}

impl Minted {
    /// The files of the member named `name`.
    pub fn member(&self, name: &str) -> Option<&MintedMember> {
        self.members.iter().find(|m| m.identity.name == name)
    }
}

/// Mints a development CA and certificates into `out`: `scheduler`,
/// `executor-1` … `executor-N`, `client`, and `etcd` (etcd's server and
/// client certificate). Keys are written mode 0600; the CA's key is not
/// kept (mint again to add members). `hosts` are added to every
/// certificate's names, for tools that verify by host (etcd clients).
///
/// # Errors
/// [`TlsError::File`] when `out` cannot be written; [`TlsError::Config`]
/// when a host is not a valid name.
pub fn mint(out: &Path, hosts: &[String], executors: usize) -> Result<Minted, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let config = |e: rcgen::Error| TlsError::Config { reason: e.to_string() };
    let write = |path: PathBuf, text: &str, private: bool| -> Result<PathBuf, TlsError> {
        let err = |e: std::io::Error| TlsError::File {
            flag: "--out",
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let _ = private;
        let mut file = options.open(&path).map_err(err)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(err)?;
        Ok(path)
    };
    std::fs::create_dir_all(out).map_err(|e| TlsError::File {
        flag: "--out",
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(config)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "sluice cluster CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(config)?).map_err(config)?;
    let ca_path = write(out.join("ca.pem"), &ca.pem(), false)?;

    let mut names: Vec<(Option<Role>, String)> = vec![(Some(Role::Scheduler), "scheduler".into())];
    for i in 1..=executors {
        names.push((Some(Role::Executor), format!("executor-{i}")));
    }
    names.push((Some(Role::Client), "client".into()));
    names.push((None, "etcd".into()));
    let mut members = Vec::new();
    for (role, name) in names {
        let mut sans =
            vec![CLUSTER_SERVER_NAME.to_string(), "localhost".into(), "127.0.0.1".into()];
        sans.extend(hosts.iter().cloned());
        let mut params = CertificateParams::new(sans).map_err(config)?;
        params.distinguished_name.push(DnType::CommonName, name.clone());
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if let Some(role) = role {
            let urn = format!("{ROLE_URN_PREFIX}{role}");
            params.subject_alt_names.push(SanType::URI(urn.as_str().try_into().map_err(config)?));
        }
        let key = KeyPair::generate().map_err(config)?;
        let cert = params.signed_by(&key, &ca).map_err(config)?;
        let cert_path = write(out.join(format!("{name}.pem")), &cert.pem(), false)?;
        let key_path = write(out.join(format!("{name}.key")), &key.serialize_pem(), true)?;
        if let Some(role) = role {
            members.push(MintedMember {
                identity: PeerIdentity { role, name },
                cert: cert_path,
                key: key_path,
            });
        }
    }
    Ok(Minted { ca: ca_path, members })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_certificates_load_with_their_roles() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
        let minted = mint(&dir, &["10.0.0.5".to_string()], 2).expect("mint");
        let exec = minted.member("executor-2").expect("executor-2");
        let tls = ClusterTls::load(&minted.ca, &exec.cert, &exec.key).expect("load");
        assert_eq!(
            tls.identity(),
            &PeerIdentity { role: Role::Executor, name: "executor-2".into() }
        );
        let client = minted.member("client").expect("client");
        let tls = ClusterTls::load(&minted.ca, &client.cert, &client.key).expect("load");
        assert_eq!(tls.identity().role, Role::Client);
        tls.server_config(true).expect("server config");

        // etcd's certificate has no Sluice role: not a cluster member.
        let err = ClusterTls::load(&minted.ca, &dir.join("etcd.pem"), &dir.join("etcd.key"))
            .expect_err("no role");
        assert!(err.to_string().contains("no Sluice role"), "{err}");

        // A key others may read is refused, naming the fix.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&exec.key, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            let err = ClusterTls::load(&minted.ca, &exec.cert, &exec.key).expect_err("0644");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }

        // A certificate of another CA is refused.
        let other = mint(&dir.join("other"), &[], 1).expect("mint");
        let sched = minted.member("scheduler").expect("scheduler");
        let err = ClusterTls::load(&other.ca, &sched.cert, &sched.key).expect_err("other CA");
        assert!(err.to_string().contains("not valid under --cluster-ca"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
