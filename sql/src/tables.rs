//! Table sources given as `NAME=PATH[:FORMAT]` and their registration.
//!
//! PATH is a local file or folder, a `file://` URL or an object-store URL
//! (`s3://bucket/prefix`). The format comes from `:FORMAT`, else from the
//! file extension, else (for a local folder) from the files inside it.
//! Local paths are checked before anything is planned so a typo gives a
//! clear error instead of an empty table.

use std::fmt;
use std::path::{Path, PathBuf};

use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};

use crate::error::{Error, Result};

/// A file format Sluice reads tables from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Parquet,
    Csv,
    Json,
    /// A Delta Lake table (a folder with `_delta_log/`), read at its latest
    /// version.
    Delta,
}

impl TableFormat {
    fn parse(word: &str) -> Option<Self> {
        match word.to_ascii_lowercase().as_str() {
            "parquet" | "pq" => Some(Self::Parquet),
            "csv" => Some(Self::Csv),
            "json" | "ndjson" | "jsonl" => Some(Self::Json),
            "delta" => Some(Self::Delta),
            _ => None,
        }
    }

    fn from_file_name(name: &str) -> Option<(Self, &'static str)> {
        let lower = name.to_ascii_lowercase();
        [
            (".parquet", Self::Parquet),
            (".csv", Self::Csv),
            (".json", Self::Json),
            (".ndjson", Self::Json),
            (".jsonl", Self::Json),
        ]
        .into_iter()
        .find(|(ext, _)| lower.ends_with(ext))
        .map(|(ext, f)| (f, ext))
    }

    fn default_extension(self) -> &'static str {
        match self {
            Self::Parquet => ".parquet",
            Self::Csv => ".csv",
            Self::Json => ".json",
            Self::Delta => ".parquet",
        }
    }
}

impl fmt::Display for TableFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Delta => "delta",
        })
    }
}

/// A table to register: its name, where its data is and in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSource {
    pub name: String,
    /// A URL or an absolute local path.
    pub location: String,
    pub format: TableFormat,
    /// The file extension listed in a folder (`.parquet`, `.jsonl`, ...).
    pub extension: String,
}

fn is_url(path: &str) -> bool {
    path.contains("://")
}

impl TableSource {
    /// Parses `NAME=PATH[:FORMAT]`, checking that a local PATH exists.
    ///
    /// # Errors
    /// [`Error::InvalidTableSpec`], [`Error::TablePathNotFound`],
    /// [`Error::UnknownFormat`] or [`Error::CannotDetectFormat`], each naming
    /// the table and the path.
    pub fn parse(input: &str) -> Result<Self> {
        let (name, rest) = input.split_once('=').ok_or_else(|| Error::InvalidTableSpec {
            input: input.to_string(),
            reason: "missing '='".to_string(),
        })?;
        let name = name.trim();
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(Error::InvalidTableSpec {
                input: input.to_string(),
                reason: "the name must be letters, digits and '_', not starting with a digit"
                    .to_string(),
            });
        }
        let rest = rest.trim();
        if rest.is_empty() {
            return Err(Error::InvalidTableSpec {
                input: input.to_string(),
                reason: "missing PATH".to_string(),
            });
        }
        // `PATH:FORMAT` — only when the suffix looks like a format word, so
        // URLs (`s3://…`) and paths with colons keep working.
        let (path, explicit) = match rest.rsplit_once(':') {
            Some((p, word))
                if !p.is_empty()
                    && !word.contains('/')
                    && !word.contains('\\')
                    && word.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                match TableFormat::parse(word) {
                    Some(f) => (p, Some(f)),
                    None => {
                        return Err(Error::UnknownFormat {
                            name: name.to_string(),
                            path: p.to_string(),
                            format: word.to_string(),
                        });
                    }
                }
            }
            _ => (rest, None),
        };
        Self::new(name, path, explicit)
    }

    /// A source for `path`, detecting the format when `format` is `None`.
    ///
    /// # Errors
    /// As [`TableSource::parse`].
    pub fn new(name: &str, path: &str, format: Option<TableFormat>) -> Result<Self> {
        let not_found =
            || Error::TablePathNotFound { name: name.to_string(), path: path.to_string() };
        let (location, local): (String, Option<PathBuf>) =
            if let Some(p) = path.strip_prefix("file://") {
                (path.to_string(), Some(PathBuf::from(p)))
            } else if is_url(path) {
                (path.to_string(), None)
            } else {
                let abs = std::path::absolute(path).map_err(|_| not_found())?;
                (abs.to_string_lossy().into_owned(), Some(abs))
            };
        if let Some(local) = &local {
            if !local.exists() {
                return Err(not_found());
            }
        }
        let detected = TableFormat::from_file_name(path.trim_end_matches('/'));
        let (format, extension) = match (format, detected) {
            (Some(f), Some((d, ext))) if f == d => (f, ext.to_string()),
            (Some(f), _) => (f, folder_extension(local.as_deref(), f)),
            (None, Some((d, ext))) => (d, ext.to_string()),
            (None, None) => match local.as_deref().and_then(detect_folder_format) {
                Some((f, ext)) => (f, ext.to_string()),
                None => {
                    return Err(Error::CannotDetectFormat {
                        name: name.to_string(),
                        path: path.to_string(),
                    });
                }
            },
        };
        let location = match &local {
            Some(p) if p.is_dir() && !location.ends_with('/') => format!("{location}/"),
            // An object-store prefix without a file extension is a folder.
            None if detected.is_none() && !location.ends_with('/') => format!("{location}/"),
            _ => location,
        };
        Ok(Self { name: name.to_string(), location, format, extension })
    }

    /// Registers the table in `ctx` (a local or a Ballista context).
    ///
    /// # Errors
    /// [`Error::Register`] when the files cannot be read or their schema
    /// cannot be inferred.
    pub async fn register(&self, ctx: &SessionContext) -> Result<()> {
        let ext = self.extension.as_str();
        let result = match self.format {
            TableFormat::Parquet => {
                ctx.register_parquet(
                    &self.name,
                    &self.location,
                    ParquetReadOptions::default().file_extension(ext),
                )
                .await
            }
            TableFormat::Csv => {
                ctx.register_csv(
                    &self.name,
                    &self.location,
                    CsvReadOptions::new().has_header(true).file_extension(ext),
                )
                .await
            }
            TableFormat::Json => {
                ctx.register_json(
                    &self.name,
                    &self.location,
                    JsonReadOptions::default().file_extension(ext),
                )
                .await
            }
            TableFormat::Delta => {
                let runtime = ctx.runtime_env();
                let registered = async {
                    let url = crate::storage::folder_url(&self.location)?;
                    let provider = crate::delta::DeltaTableProvider::load(
                        &runtime,
                        &url,
                        crate::delta::AsOf::Latest,
                    )
                    .await?;
                    ctx.register_table(self.name.as_str(), std::sync::Arc::new(provider))?;
                    Ok::<(), datafusion::error::DataFusionError>(())
                };
                registered.await
            }
        };
        result.map_err(|source| {
            let remote = is_url(&self.location) && !self.location.starts_with("file://");
            let store =
                matches!(source.find_root(), datafusion::error::DataFusionError::ObjectStore(_));
            if remote && store {
                Error::Storage { name: self.name.clone(), path: self.location.clone(), source }
            } else {
                Error::Register { name: self.name.clone(), path: self.location.clone(), source }
            }
        })
    }
}

/// The extension to list in a folder of the given format: the one its files
/// use, or the format's default.
fn folder_extension(dir: Option<&Path>, format: TableFormat) -> String {
    dir.and_then(detect_folder_format)
        .filter(|(f, _)| *f == format)
        .map(|(_, ext)| ext.to_string())
        .unwrap_or_else(|| format.default_extension().to_string())
}

/// The format of the first data file found in a local folder (searching
/// Hive-style partition sub-folders too).
fn detect_folder_format(dir: &Path) -> Option<(TableFormat, &'static str)> {
    if !dir.is_dir() {
        return None;
    }
    if dir.join("_delta_log").is_dir() {
        return Some((TableFormat::Delta, ".parquet"));
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d).ok()?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let file_name = p.file_name()?.to_string_lossy().into_owned();
            if file_name.starts_with('.') || file_name.starts_with('_') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Some(found) = TableFormat::from_file_name(&file_name) {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_from_extensions_and_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t.csv");
        std::fs::write(&file, "a\n1\n").expect("write");
        let sub = dir.path().join("folder");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(sub.join("part-0.jsonl"), "{\"a\":1}\n").expect("write");

        let t = TableSource::parse(&format!("t={}", file.display())).expect("csv");
        assert_eq!(t.format, TableFormat::Csv);
        let t = TableSource::parse(&format!("t={}", sub.display())).expect("folder");
        assert_eq!((t.format, t.extension.as_str()), (TableFormat::Json, ".jsonl"));
        assert!(t.location.ends_with('/'));
        let t = TableSource::parse(&format!("t={}:csv", file.display())).expect("explicit");
        assert_eq!(t.format, TableFormat::Csv);
        let t = TableSource::parse("t=s3://bucket/prefix/:parquet").expect("url");
        assert_eq!(t.location, "s3://bucket/prefix/");
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let err = TableSource::parse("lineitem=/no/such/file.parquet").expect_err("missing");
        assert!(matches!(err, Error::TablePathNotFound { .. }), "{err}");
        assert!(err.to_string().contains("/no/such/file.parquet"));
        let err = TableSource::parse("t=/tmp:xlsx").expect_err("format");
        assert!(err.to_string().contains("unknown format 'xlsx'"), "{err}");
        let err = TableSource::parse("just-a-path").expect_err("no =");
        assert!(err.to_string().contains("missing '='"), "{err}");
        let err = TableSource::parse("t=s3://bucket/prefix").expect_err("no format");
        assert!(matches!(err, Error::CannotDetectFormat { .. }), "{err}");
    }
}
