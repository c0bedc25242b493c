//! The feature-job spec (YAML) and its static validation.
//!
//! A spec names its sources (paths relative to a data dir), the entity set
//! (one row per entity and feature date, from the entity source's
//! `active_from` date on), windowed aggregate features, derived features
//! (SQL over other features and dimension columns), dimension columns,
//! the output and quality expectations. See `sql/README.md` for the format.
//!
//! Validation that needs the data (columns exist, types fit) happens in
//! [`crate::job::plan::validate_against_schemas`]; this module checks what
//! the YAML alone can tell.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Errors in a spec, each naming the file and the field (and line when the
/// YAML parser knows it).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: cannot read the spec: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Yaml { path: String, reason: String },
    #[error("{path}: {field}: {reason}")]
    Invalid { path: String, field: String, reason: String },
}

/// An aggregate function of a windowed feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    Sum,
    Count,
    Avg,
    Min,
    Max,
    /// The latest value of a timestamp/date column (a max).
    Latest,
}

impl Function {
    /// Sliding sums (sum, count, avg) are computed with running deltas;
    /// the others with a RANGE window over daily partials.
    pub fn is_additive(self) -> bool {
        matches!(self, Function::Sum | Function::Count | Function::Avg)
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Function::Sum => "sum",
            Function::Count => "count",
            Function::Avg => "avg",
            Function::Min => "min",
            Function::Max => "max",
            Function::Latest => "latest",
        };
        f.write_str(s)
    }
}

/// A window: a number of days ending on the feature date, or unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Window {
    Days(u32),
    Unbounded(UnboundedWord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnboundedWord {
    Unbounded,
}

impl Window {
    pub fn days(self) -> Option<u32> {
        match self {
            Window::Days(d) => Some(d),
            Window::Unbounded(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// File or folder, relative to the data dir (or absolute, or a URL).
    pub path: String,
    #[serde(default = "default_format")]
    pub format: String,
    /// The entity key column (for event sources).
    pub key: Option<String>,
    /// The event time column (for event sources).
    pub timestamp: Option<String>,
}

fn default_format() -> String {
    "parquet".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    pub source: String,
    pub key: String,
    /// A DATE/TIMESTAMP column: the entity has rows for feature dates on or
    /// after it (e.g. `signup_date`). Without it, every entity on every date.
    pub active_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    pub source: String,
    pub function: Function,
    /// A column or SQL expression over the source's columns; optional for
    /// `count` (counts rows).
    pub column: Option<String>,
    /// A SQL predicate over the source's columns.
    pub filter: Option<String>,
    /// `window: 30` (days ending on the feature date) or `window: unbounded`.
    pub window: Window,
    /// A timestamp column: a row counts for date D only once it is known by
    /// the end of D (e.g. `resolved_ts` for a resolution time).
    pub available_at: Option<String>,
    /// Value when the window holds no rows (default NULL; count is 0).
    pub default: Option<serde_yaml::Value>,
    /// `false` keeps the feature for derived features only.
    #[serde(default = "yes")]
    pub output: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Derived {
    pub name: String,
    /// SQL over features, dimension columns and `feature_date`.
    pub expr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dimension {
    pub source: String,
    /// Join key in the dimension source (default: the entity key).
    pub key: Option<String>,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Output folder, relative to the spec's folder unless absolute.
    pub path: String,
    #[serde(default = "default_compression")]
    pub compression: String,
    #[serde(default = "default_partition")]
    pub partition_by: String,
}

fn default_compression() -> String {
    "zstd(1)".to_string()
}

fn default_partition() -> String {
    "feature_date".to_string()
}

/// A quality expectation, evaluated on every chunk before it is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Expectation {
    NotNull {
        column: String,
    },
    Between {
        column: String,
        min: Option<f64>,
        max: Option<f64>,
    },
    InSet {
        column: String,
        values: Vec<String>,
    },
    UniqueKey {
        columns: Vec<String>,
    },
    /// Rows per feature date.
    RowCountBetween {
        min: Option<u64>,
        max: Option<u64>,
    },
}

impl Expectation {
    pub fn kind(&self) -> &'static str {
        match self {
            Expectation::NotNull { .. } => "not_null",
            Expectation::Between { .. } => "between",
            Expectation::InSet { .. } => "in_set",
            Expectation::UniqueKey { .. } => "unique_key",
            Expectation::RowCountBetween { .. } => "row_count_between",
        }
    }

    pub fn column_label(&self) -> String {
        match self {
            Expectation::NotNull { column }
            | Expectation::Between { column, .. }
            | Expectation::InSet { column, .. } => column.clone(),
            Expectation::UniqueKey { columns } => columns.join(", "),
            Expectation::RowCountBetween { .. } => "(rows per date)".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Sources by name (the name is the SQL table name).
    pub sources: BTreeMap<String, Source>,
    pub entity: Entity,
    pub features: Vec<Feature>,
    #[serde(default)]
    pub derived: Vec<Derived>,
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
    pub output: Output,
    #[serde(default)]
    pub expectations: Vec<Expectation>,
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl JobSpec {
    /// Reads and validates a spec file.
    ///
    /// # Errors
    /// [`SpecError`] naming the file and the field or line.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates spec text; `path` names it in errors.
    ///
    /// # Errors
    /// [`SpecError`] naming `path` and the field or line.
    pub fn parse(text: &str, path: &str) -> Result<Self, SpecError> {
        let spec: JobSpec = serde_yaml::from_str(text).map_err(|e| SpecError::Yaml {
            path: path.to_string(),
            reason: match e.location() {
                Some(loc) => format!(
                    "line {} column {}: {}",
                    loc.line(),
                    loc.column(),
                    strip_location(&e.to_string())
                ),
                None => e.to_string(),
            },
        })?;
        spec.validate(path)?;
        Ok(spec)
    }

    fn validate(&self, path: &str) -> Result<(), SpecError> {
        let invalid = |field: String, reason: String| SpecError::Invalid {
            path: path.to_string(),
            field,
            reason,
        };
        if !is_identifier(&self.name) {
            return Err(invalid("name".into(), "expected letters, digits and '_'".into()));
        }
        for name in self.sources.keys() {
            if !is_identifier(name) {
                return Err(invalid(
                    format!("sources.{name}"),
                    "a source name must be letters, digits and '_' (it is the SQL table name)"
                        .into(),
                ));
            }
        }
        let source = |field: String, name: &str| -> Result<&Source, SpecError> {
            self.sources.get(name).ok_or_else(|| {
                invalid(
                    field,
                    format!(
                        "unknown source '{name}'; the spec defines: {}",
                        self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })
        };
        source("entity.source".into(), &self.entity.source)?;
        let mut names: HashSet<&str> = HashSet::new();
        names.insert(&self.entity.key);
        names.insert("feature_date");
        if self.features.is_empty() {
            return Err(invalid("features".into(), "at least one feature is needed".into()));
        }
        for (i, f) in self.features.iter().enumerate() {
            let field = |rest: &str| format!("features[{i}] ({}).{rest}", f.name);
            if !is_identifier(&f.name) {
                return Err(invalid(field("name"), "expected letters, digits and '_'".into()));
            }
            if !names.insert(&f.name) {
                return Err(invalid(field("name"), "duplicate column name".into()));
            }
            let src = source(field("source"), &f.source)?;
            if src.key.is_none() || src.timestamp.is_none() {
                return Err(invalid(
                    field("source"),
                    format!("source '{}' needs `key` and `timestamp` to feed features", f.source),
                ));
            }
            if f.column.is_none() && f.function != Function::Count {
                return Err(invalid(field("column"), format!("{} needs a column", f.function)));
            }
            if let Window::Days(0) = f.window {
                return Err(invalid(field("window"), "a window has at least 1 day".into()));
            }
            if f.available_at.is_some() && !f.function.is_additive() {
                return Err(invalid(
                    field("available_at"),
                    "available_at is supported for sum, count and avg".into(),
                ));
            }
        }
        for (i, d) in self.dimensions.iter().enumerate() {
            source(format!("dimensions[{i}].source"), &d.source)?;
            for c in &d.columns {
                if !names.insert(c) {
                    return Err(invalid(
                        format!("dimensions[{i}].columns"),
                        format!("duplicate column name '{c}'"),
                    ));
                }
            }
        }
        for (i, d) in self.derived.iter().enumerate() {
            if !is_identifier(&d.name) || !names.insert(&d.name) {
                return Err(invalid(
                    format!("derived[{i}] ({}).name", d.name),
                    "expected a new column name of letters, digits and '_'".into(),
                ));
            }
        }
        if self.output.partition_by != "feature_date" {
            return Err(invalid(
                "output.partition_by".into(),
                "only feature_date partitioning is supported".into(),
            ));
        }
        Ok(())
    }

    /// Sources that features read from, in a stable order.
    pub fn event_sources(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.features {
            if !out.contains(&f.source.as_str()) {
                out.push(&f.source);
            }
        }
        out
    }

    /// Output columns after `feature_date` is moved into the partition path:
    /// key, output features, derived, dimensions.
    pub fn output_columns(&self) -> Vec<String> {
        let mut cols = vec![self.entity.key.clone()];
        cols.extend(self.features.iter().filter(|f| f.output).map(|f| f.name.clone()));
        cols.extend(self.derived.iter().map(|d| d.name.clone()));
        cols.extend(self.dimensions.iter().flat_map(|d| d.columns.clone()));
        cols
    }

    /// Resolves a source path against `data_dir`.
    pub fn source_path(&self, source: &Source, data_dir: &str) -> String {
        crate::storage::resolve(data_dir, &source.path)
    }
}

fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(pos) => msg[..pos].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests;
