//! Types every Sluice process shares on the wire: network addresses and the
//! classification of errors that drives retries and exit codes.
//!
//! This is the lowest crate of the workspace (`proto` ← `sql` ← {`scheduler`,
//! `executor`} ← `client`). Protobuf messages of Sluice's own services (the
//! etcd job registry, cluster status) will be generated here from `build.rs`
//! when they exist; today the scheduler and executors speak Ballista's
//! protocol only.

mod addr;
mod error;
pub mod logging;

pub use addr::HostPort;
pub use error::{Error, ErrorClass, Result};

/// Sluice's version, reported by every binary's `--version`.
pub const SLUICE_VERSION: &str = env!("CARGO_PKG_VERSION");
