//! The persistent table catalog: names bound to data paths, shared by every
//! session of a scheduler (Flight SQL, `sluice sql`) and surviving restarts.
//!
//! Stored as one JSON file (`{"tables": [...]}`) written atomically (temp
//! file + rename), so a crash never leaves a half-written catalog. The etcd
//! store (cluster mode with a standby scheduler) plugs in behind the same
//! [`CatalogEntry`] list.
//!
//! [`CatalogSchema`] exposes it to DataFusion as the default schema: a query
//! naming a catalog table gets a `ListingTable` over the table's path, built
//! when the query is planned, so a table registered by another process is
//! visible to the next query without a restart. Tables created in a session
//! (`CREATE EXTERNAL TABLE`) stay in that session and shadow catalog names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session};
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::roots::DataRoots;

/// One registered table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub name: String,
    /// A directory or file path (absolute, or a URL such as `s3://…`).
    pub path: String,
    /// `parquet`, `csv` or `json`.
    pub format: String,
    /// Hive partition columns (`feature_date=2024-01-01/` folders), as text.
    #[serde(default)]
    pub partitioned_by: Vec<String>,
}

impl From<CatalogEntry> for sluice_proto::pb::TableEntry {
    fn from(e: CatalogEntry) -> Self {
        Self { name: e.name, path: e.path, format: e.format, partitioned_by: e.partitioned_by }
    }
}

impl From<sluice_proto::pb::TableEntry> for CatalogEntry {
    fn from(e: sluice_proto::pb::TableEntry) -> Self {
        Self { name: e.name, path: e.path, format: e.format, partitioned_by: e.partitioned_by }
    }
}

impl CatalogEntry {
    /// Checks the name and format a user typed.
    ///
    /// # Errors
    /// [`Error::Catalog`] naming the field and what was expected.
    pub fn validate(&self) -> Result<()> {
        let valid_name = !self.name.is_empty()
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !self.name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(Error::Catalog(format!(
                "table name {:?}: expected letters, digits and '_', not starting with a digit",
                self.name
            )));
        }
        if !matches!(self.format.as_str(), "parquet" | "csv" | "json" | "delta") {
            return Err(Error::Catalog(format!(
                "table {}: format {:?}: expected parquet, csv, json or delta",
                self.name, self.format
            )));
        }
        if self.path.is_empty() {
            return Err(Error::Catalog(format!("table {}: empty path", self.name)));
        }
        Ok(())
    }

    fn file_format(&self) -> Arc<dyn FileFormat> {
        match self.format.as_str() {
            "csv" => Arc::new(CsvFormat::default().with_has_header(true)),
            "json" => Arc::new(JsonFormat::default()),
            _ => Arc::new(ParquetFormat::default()),
        }
    }

    fn extension(&self) -> &'static str {
        match self.format.as_str() {
            "csv" => ".csv",
            "json" => ".json",
            _ => ".parquet",
        }
    }

    /// The table's URL: an absolute directory path gets a trailing `/` so it
    /// lists as a folder.
    pub fn url(&self) -> DfResult<ListingTableUrl> {
        let path = Path::new(&self.path);
        let text = if path.is_absolute() && path.is_dir() && !self.path.ends_with('/') {
            format!("{}/", self.path)
        } else {
            self.path.clone()
        };
        ListingTableUrl::parse(text)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    tables: Vec<CatalogEntry>,
}

/// A catalog stored in a JSON file.
#[derive(Debug, Clone)]
pub struct FileCatalog {
    path: PathBuf,
}

impl FileCatalog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every table, by name. A missing file is an empty catalog.
    ///
    /// # Errors
    /// [`Error::Catalog`] when the file cannot be read or is not a catalog.
    pub fn list(&self) -> Result<Vec<CatalogEntry>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Catalog(format!("reading {}: {e}", self.path.display())));
            }
        };
        let file: CatalogFile = serde_json::from_str(&text).map_err(|e| {
            Error::Catalog(format!(
                "{} line {} column {}: {e}; expected {{\"tables\": [{{\"name\", \"path\", \"format\"}}]}}",
                self.path.display(),
                e.line(),
                e.column()
            ))
        })?;
        let mut by_name: BTreeMap<String, CatalogEntry> = BTreeMap::new();
        for t in file.tables {
            by_name.insert(t.name.clone(), t);
        }
        Ok(by_name.into_values().collect())
    }

    /// Looks a table up by name.
    pub fn get(&self, name: &str) -> Result<Option<CatalogEntry>> {
        Ok(self.list()?.into_iter().find(|t| t.name == name))
    }

    /// Adds or replaces a table; returns the entry it replaced.
    pub fn register(&self, entry: CatalogEntry) -> Result<Option<CatalogEntry>> {
        entry.validate()?;
        let mut tables = self.list()?;
        let old = tables.iter().position(|t| t.name == entry.name).map(|i| tables.remove(i));
        tables.push(entry);
        self.write(tables)?;
        Ok(old)
    }

    /// Removes a table; returns it, or `None` if there was none.
    pub fn drop_table(&self, name: &str) -> Result<Option<CatalogEntry>> {
        let mut tables = self.list()?;
        let Some(i) = tables.iter().position(|t| t.name == name) else { return Ok(None) };
        let old = tables.remove(i);
        self.write(tables)?;
        Ok(Some(old))
    }

    fn write(&self, mut tables: Vec<CatalogEntry>) -> Result<()> {
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        let dir =
            self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Catalog(format!("creating {}: {e}", dir.display())))?;
        let text = serde_json::to_string_pretty(&CatalogFile { tables })
            .map_err(|e| Error::Catalog(e.to_string()))?;
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| Error::Catalog(format!("writing in {}: {e}", dir.display())))?;
        std::fs::write(tmp.path(), text)
            .map_err(|e| Error::Catalog(format!("writing {}: {e}", tmp.path().display())))?;
        tmp.persist(&self.path)
            .map_err(|e| Error::Catalog(format!("replacing {}: {e}", self.path.display())))?;
        Ok(())
    }
}

/// The default schema of a session: session tables first, then the catalog.
#[derive(Debug)]
pub struct CatalogSchema {
    catalog: FileCatalog,
    runtime: Arc<RuntimeEnv>,
    roots: DataRoots,
    local: MemorySchemaProvider,
}

impl CatalogSchema {
    pub fn new(catalog: FileCatalog, runtime: Arc<RuntimeEnv>) -> Self {
        Self { catalog, runtime, roots: DataRoots::default(), local: MemorySchemaProvider::new() }
    }

    /// Refuses catalog tables outside `roots` when a query names them.
    pub fn with_roots(mut self, roots: DataRoots) -> Self {
        self.roots = roots;
        self
    }

    async fn open(
        &self,
        entry: &CatalogEntry,
        as_of: Option<crate::delta::AsOf>,
    ) -> DfResult<Arc<dyn TableProvider>> {
        self.roots.check(&format!("table {}", entry.name), &entry.path)?;
        if entry.format == "delta" {
            let url = crate::storage::folder_url(&entry.path)?;
            let as_of = as_of.unwrap_or(crate::delta::AsOf::Latest);
            let provider = crate::delta::DeltaTableProvider::load(&self.runtime, &url, as_of)
                .await
                .map_err(|e| match e {
                    crate::delta::DeltaError::Storage { .. } => DataFusionError::External(
                        format!("catalog table {}: {e}", entry.name).into(),
                    ),
                    e => DataFusionError::Plan(format!("catalog table {}: {e}", entry.name)),
                })?;
            return Ok(Arc::new(provider));
        }
        if let Some(as_of) = as_of {
            return Err(DataFusionError::Plan(format!(
                "table {}@…: {as_of} asked for, but only Delta tables have versions ({} is {})",
                entry.name, entry.path, entry.format
            )));
        }
        let url = entry.url()?;
        let options = ListingOptions::new(entry.file_format())
            .with_file_extension(entry.extension())
            .with_table_partition_cols(
                entry.partitioned_by.iter().map(|c| (c.clone(), DataType::Utf8)).collect(),
            );
        let state = SessionStateBuilder::new().with_runtime_env(Arc::clone(&self.runtime)).build();
        let schema = options.infer_schema(&state as &dyn Session, &url).await.map_err(|e| {
            DataFusionError::Plan(format!("catalog table {} at {}: {e}", entry.name, entry.path))
        })?;
        let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(schema);
        Ok(Arc::new(ListingTable::try_new(config)?))
    }
}

#[async_trait]
impl SchemaProvider for CatalogSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.local.table_names();
        if let Ok(tables) = self.catalog.list() {
            names.extend(tables.into_iter().map(|t| t.name).filter(|n| !self.local.table_exist(n)));
        }
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.local.table(name).await? {
            return Ok(Some(t));
        }
        // `name@v3` / `name@2026-12-03T10:00:00Z`: a Delta table's earlier
        // version (time travel).
        let (base, as_of) = match name.split_once('@') {
            Some((base, suffix)) => (
                base,
                Some(
                    crate::delta::AsOf::parse(suffix)
                        .map_err(|m| DataFusionError::Plan(format!("table {name}: {m}")))?,
                ),
            ),
            None => (name, None),
        };
        let entry = self.catalog.get(base).map_err(|e| DataFusionError::External(Box::new(e)))?;
        match entry {
            Some(entry) => Ok(Some(self.open(&entry, as_of).await?)),
            None => Ok(None),
        }
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.local.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.local.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        let base = name.split_once('@').map_or(name, |(b, _)| b);
        self.local.table_exist(name) || matches!(self.catalog.get(base), Ok(Some(_)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    #[tokio::test]
    async fn registered_tables_survive_and_are_queryable() -> DfResult<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("t");
        std::fs::create_dir_all(data.join("d=2024-01-01"))?;
        std::fs::write(data.join("d=2024-01-01/a.csv"), "x,y\n1,a\n2,b\n")?;
        let catalog = FileCatalog::new(dir.path().join("catalog.json"));
        let entry = CatalogEntry {
            name: "t".into(),
            path: data.display().to_string(),
            format: "csv".into(),
            partitioned_by: vec!["d".into()],
        };
        catalog.register(entry.clone()).map_err(|e| DataFusionError::External(Box::new(e)))?;
        // A new handle on the same file sees it.
        let again = FileCatalog::new(dir.path().join("catalog.json"));
        assert_eq!(again.list().map_err(|e| DataFusionError::External(Box::new(e)))?, vec![entry]);

        let ctx = SessionContext::new();
        let schema = CatalogSchema::new(again.clone(), ctx.runtime_env());
        ctx.catalog("datafusion")
            .expect("default catalog")
            .register_schema("public", Arc::new(schema))?;
        let rows = ctx.sql("SELECT sum(x) AS s, min(d) AS d FROM t").await?.collect().await?;
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)?.to_string();
        assert!(text.contains("| 3 | 2024-01-01 |"), "{text}");

        assert!(
            again.drop_table("t").map_err(|e| DataFusionError::External(Box::new(e)))?.is_some()
        );
        assert!(ctx.sql("SELECT * FROM t").await.is_err());
        Ok(())
    }

    #[test]
    fn bad_entries_and_files_are_named() {
        let bad = CatalogEntry {
            name: "1x".into(),
            path: "/p".into(),
            format: "parquet".into(),
            partitioned_by: vec![],
        };
        assert!(bad.validate().unwrap_err().to_string().contains("\"1x\""));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.json");
        std::fs::write(&path, "{\"tables\": [ {\"name\": 1} ]}").expect("write");
        let err = FileCatalog::new(&path).list().unwrap_err().to_string();
        assert!(err.contains("c.json line 1"), "{err}");
    }
}
