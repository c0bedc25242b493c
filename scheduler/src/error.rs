//! Errors of the scheduler process.

use sluice_proto::{ErrorClass, HostPort};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot listen on {addr}: {source}; pick another --bind address or port (port 0 picks a free one)"
    )]
    Bind {
        addr: HostPort,
        #[source]
        source: std::io::Error,
    },

    #[error("config file {path}: {reason}")]
    ConfigFile { path: String, reason: String },

    #[error("scheduler failed: {source}")]
    Server {
        #[source]
        source: ballista_core::error::BallistaError,
    },

    #[error("scheduler stopped unexpectedly: {reason}")]
    Stopped { reason: String },

    #[error(transparent)]
    Etcd(#[from] sluice_proto::etcd::EtcdError),
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Bind { .. } | Error::ConfigFile { .. } => ErrorClass::User,
            Error::Server { .. } | Error::Stopped { .. } => ErrorClass::Internal,
            Error::Etcd(e) => e.class(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
