//! Sluice's SQL layer, shared by the client, the scheduler and the executors.
//!
//! It owns the pieces that must be identical in every process of a cluster:
//! the `sluice.*` session options ([`SluiceOptions`]), the session
//! configuration and runtime environment each process builds
//! ([`session`]), how a `NAME=PATH[:FORMAT]` table source is parsed and
//! registered ([`tables`]), and the TPC-H query texts used by tests and
//! benchmarks ([`tpch`]), and the parallel partitioned write every process
//! plans and decodes alike ([`write`]).
//!
//! Ballista drops unknown configuration keys silently on the scheduler and
//! executors, so every process must build its `SessionConfig` through
//! [`session::cluster_session_config`], which registers every extension.

pub mod broadcast;
pub mod catalog;
pub mod cluster_plan;
pub mod copy;
pub mod delta;
pub mod error;
pub mod hotkeys;
pub mod inline;
pub mod job;
pub mod options;
pub mod recursive;
pub mod remote_error;
pub mod roots;
pub mod session;
pub mod single_task;
pub mod skew;
pub mod storage;
pub mod tables;
pub mod tpch;
pub mod typed;
pub mod udf;
pub mod write;

pub use error::{Error, Result};
pub use options::SluiceOptions;
