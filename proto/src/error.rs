//! Errors of this crate and the classification shared by all crates.

/// Who can fix an error, which decides exit codes and whether a retry helps.
///
/// Arroyo-style: the CLI maps `User` to exit code 2 and the others to 1; the
/// scheduler's retry policy only retries `External` errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad input: a flag, a path, a SQL statement. Retrying will not help.
    User,
    /// Something outside Sluice failed (network, scheduler down, object store).
    /// Retrying may help.
    External,
    /// A bug in Sluice or its engine.
    Internal,
}

impl ErrorClass {
    /// Whether retrying the same request can succeed.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorClass::External)
    }

    /// The process exit code for an error of this class.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorClass::User => 2,
            ErrorClass::External | ErrorClass::Internal => 1,
        }
    }
}

/// Errors raised by the shared types.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid address '{input}': {reason}; expected HOST:PORT, e.g. 127.0.0.1:50050")]
    InvalidAddress { input: String, reason: String },
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidAddress { .. } => ErrorClass::User,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
