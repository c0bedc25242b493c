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

    /// Output a job had written (a result or shuffle partition) could not be
    /// fetched from its executor, which went away: rerunning the job
    /// recomputes it.
    #[error(
        "query failed: {message}\nThe executor {executor} holding part of the job's output went away before it was read; rerunning the job recomputes it."
    )]
    ExecutorLost { message: String, executor: String },

    #[error(transparent)]
    Table(#[from] sluice_sql::Error),

    #[error("embedded cluster: {message}")]
    Embedded { message: String },

    #[error("{path}: {reason}")]
    Io { path: String, reason: String },

    #[error("{0}")]
    Usage(String),

    #[error(transparent)]
    Etcd(#[from] sluice_proto::etcd::EtcdError),

    /// Ctrl-C while following a backfill: it keeps running on the cluster;
    /// the message says how to follow or stop it.
    #[error("{0}")]
    Detached(String),
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::SchedulerUnreachable { .. } => ErrorClass::External,
            Error::Sql { .. } | Error::Usage(_) => ErrorClass::User,
            Error::Query { class, .. } => *class,
            Error::ExecutorLost { .. } => ErrorClass::External,
            Error::Table(e) => e.class(),
            Error::Embedded { .. } => ErrorClass::Internal,
            Error::Io { .. } => ErrorClass::User,
            Error::Etcd(e) => e.class(),
            Error::Detached(_) => ErrorClass::User,
        }
    }

    /// Classifies an error from DataFusion/Ballista raised while planning or
    /// running `sql`.
    pub fn from_datafusion(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        let message = sluice_sql::session::clean_df_message(&e);
        if let Some(executor) = fetch_failed(&e) {
            return Error::ExecutorLost { message, executor };
        }
        match e.find_root() {
            D::SQL(..) | D::Plan(..) | D::SchemaError(..) | D::NotImplemented(..) => {
                Error::Sql { message }
            }
            D::Configuration(..) => Error::Sql { message },
            D::IoError(..) | D::ObjectStore(..) => {
                Error::Query { message, class: ErrorClass::External }
            }
            _ if message.contains(sluice_scheduler::recovery::ADAPTIVE_JOB_LOST_INPUT) => {
                Error::Query { message, class: ErrorClass::External }
            }
            _ if message.contains("this scheduler is a standby") => {
                Error::Query { message, class: ErrorClass::External }
            }
            _ if lost_scheduler(&message) => Error::Query {
                message: format!(
                    "{message}\nThe scheduler went away while the query ran (a restart or a \
                     leader failover); the query was lost and can be retried."
                ),
                class: ErrorClass::External,
            },
            _ => Error::Query { message, class: ErrorClass::Internal },
        }
    }
}

impl Error {
    /// Whether the job was stopped because an executor loss left it unable
    /// to finish (see `sluice_scheduler::recovery`): resubmitting it works.
    pub fn lost_to_executor_loss(&self) -> bool {
        match self {
            Error::ExecutorLost { .. } => true,
            Error::Query { message, .. } => {
                message.contains(sluice_scheduler::recovery::ADAPTIVE_JOB_LOST_INPUT)
            }
            _ => false,
        }
    }
}

/// The executor a fetch of job output failed on (Ballista's typed
/// `FetchFailed`, anywhere in the error's chain), if that is the error.
fn fetch_failed(e: &datafusion::error::DataFusionError) -> Option<String> {
    use ballista_core::error::BallistaError;
    use datafusion::error::DataFusionError as D;
    let typed = |err: &(dyn std::error::Error + 'static)| match err.downcast_ref::<BallistaError>()
    {
        Some(BallistaError::FetchFailed(executor, ..)) => Some(executor.clone()),
        _ => None,
    };
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(executor) = typed(err) {
            return Some(executor);
        }
        if let Some(D::External(inner)) = err.downcast_ref::<D>()
            && let Some(executor) = typed(inner.as_ref())
        {
            return Some(executor);
        }
        current = err.source();
    }
    None
}

/// Whether a query failed because the scheduler stopped answering (not
/// because of the query): worth retrying, on the new leader after a failover.
fn lost_scheduler(message: &str) -> bool {
    const SIGNS: &[&str] = &[
        "(gRPC Unavailable)",
        "transport error",
        "Connection refused",
        "connection reset",
        "broken pipe",
        "error trying to connect",
        "stream closed because of a broken pipe",
    ];
    let lower = message.to_ascii_lowercase();
    SIGNS.iter().any(|s| lower.contains(&s.to_ascii_lowercase()))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
