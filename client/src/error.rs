//! Errors of the client, each worded for the person at the terminal: what
//! went wrong, where, and what to do.

use sluice_proto::{ErrorClass, HostPort};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach the Sluice scheduler at {addr}: {reason}.\nStart one with `sluice-scheduler --bind {addr}` (plus at least one `sluice-executor --scheduler {addr}`), pass the right address with --scheduler HOST:PORT, or run without a cluster using --standalone."
    )]
    SchedulerUnreachable { addr: HostPort, reason: String },

    #[error("SQL error: {message}")]
    Sql { message: String },

    #[error("query failed: {message}")]
    Query { message: String, class: ErrorClass },

    #[error(transparent)]
    Table(#[from] sluice_sql::Error),

    #[error("embedded cluster: {message}")]
    Embedded { message: String },

    #[error("{path}: {reason}")]
    Io { path: String, reason: String },

    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::SchedulerUnreachable { .. } => ErrorClass::External,
            Error::Sql { .. } | Error::Usage(_) => ErrorClass::User,
            Error::Query { class, .. } => *class,
            Error::Table(e) => e.class(),
            Error::Embedded { .. } => ErrorClass::Internal,
            Error::Io { .. } => ErrorClass::User,
        }
    }

    /// Classifies an error from DataFusion/Ballista raised while planning or
    /// running `sql`.
    pub fn from_datafusion(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        let message = sluice_sql::session::clean_df_message(&e);
        match e.find_root() {
            D::SQL(..) | D::Plan(..) | D::SchemaError(..) | D::NotImplemented(..) => {
                Error::Sql { message }
            }
            D::Configuration(..) => Error::Sql { message },
            D::IoError(..) | D::ObjectStore(..) => {
                Error::Query { message, class: ErrorClass::External }
            }
            _ => Error::Query { message, class: ErrorClass::Internal },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
