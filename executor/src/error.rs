//! Errors of the executor process.

use std::path::PathBuf;

use ballista_core::error::BallistaError;
use sluice_proto::{ErrorClass, HostPort};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind on {addr}: {source}; pick another --bind address")]
    Bind {
        addr: HostPort,
        #[source]
        source: std::io::Error,
    },

    #[error("work dir {}: {source}", path.display())]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid executor configuration: {source}")]
    InvalidConfig {
        #[source]
        source: BallistaError,
    },

    #[error(
        "cannot reach the scheduler: {reason}; start one with `sluice-scheduler --bind HOST:PORT` and pass that address as --scheduler"
    )]
    SchedulerUnreachable { reason: String },

    #[error("executor failed: {source}")]
    Executor {
        #[source]
        source: BallistaError,
    },

    #[error("executor stopped unexpectedly: {reason}")]
    Stopped { reason: String },

    #[error(transparent)]
    Etcd(#[from] sluice_proto::etcd::EtcdError),

    #[error("{reason}")]
    Tls { reason: String },
}

impl Error {
    pub(crate) fn from_ballista(source: BallistaError, _addr: &HostPort) -> Self {
        match &source {
            BallistaError::GrpcConnectionError(reason) => {
                Error::SchedulerUnreachable { reason: reason.clone() }
            }
            BallistaError::General(reason) if reason.contains("connect to scheduler") => {
                Error::SchedulerUnreachable { reason: reason.clone() }
            }
            _ => Error::Executor { source },
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Bind { .. }
            | Error::WorkDir { .. }
            | Error::InvalidConfig { .. }
            | Error::Tls { .. } => ErrorClass::User,
            Error::SchedulerUnreachable { .. } => ErrorClass::External,
            Error::Executor { .. } | Error::Stopped { .. } => ErrorClass::Internal,
            Error::Etcd(e) => e.class(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
