//! The `sluice` commands, one module each.

pub mod args;
pub mod backfill;
pub mod cluster;
pub mod datagen;
pub mod demo;
pub mod sql;
pub mod table;

use sluice_client::Error;

/// `value` as pretty JSON for stdout.
pub fn to_json(value: &impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Error::Io { path: "stdout".into(), reason: e.to_string() })
}
