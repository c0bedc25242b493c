//! Data generators (`sluice gen ...`). Output is written to a hidden staging
//! folder inside the output folder and moved into place table by table, so an
//! interrupted run never leaves a half-written table behind.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub mod churn;
pub mod tpch;

/// What a generator wrote for one table.
#[derive(Debug, Clone)]
pub struct Generated {
    pub table: &'static str,
    pub path: PathBuf,
    pub rows: u64,
    pub files: usize,
}

pub(crate) fn io_error(path: &Path, e: &dyn std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), reason: e.to_string() }
}

/// Creates `out` and a hidden staging folder inside it (removed on drop).
pub(crate) fn staging_dir(out: &Path) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(out).map_err(|e| io_error(out, &e))?;
    tempfile::Builder::new().prefix(".sluice-gen-").tempdir_in(out).map_err(|e| io_error(out, &e))
}

/// Replaces each table's folder in the output with the staged one.
pub(crate) fn move_into_place(staging: &Path, generated: &[Generated]) -> Result<()> {
    for g in generated {
        if g.path.exists() {
            std::fs::remove_dir_all(&g.path).map_err(|e| io_error(&g.path, &e))?;
        }
        std::fs::rename(staging.join(g.table), &g.path).map_err(|e| io_error(&g.path, &e))?;
    }
    Ok(())
}
