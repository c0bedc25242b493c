//! The Sluice client: connects to a scheduler (or starts an embedded
//! cluster), registers tables, runs SQL and formats results. The `sluice`
//! binary (`main.rs`) is a thin command line over this library.

pub mod backfill;
pub mod catalog;
pub mod cluster;
pub mod connect;
pub mod datagen;
pub mod demo;
pub mod error;
pub mod format;
pub mod http;
pub mod planner;
pub mod status;
pub mod verify;

pub use cluster::EmbeddedCluster;
pub use connect::{Target, connect, run_sql};
pub use error::{Error, Result};
