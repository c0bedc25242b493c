//! Data roots: the folders a served query may read.
//!
//! A scheduler started with `--data-root DIR` (repeatable) plans no scan of
//! a path outside them: catalog tables are checked when a query names them,
//! and `CREATE EXTERNAL TABLE` through guarded table factories. Paths are
//! compared after resolving `..` and symbolic links, so `ROOT/../etc` and a
//! link out of a root are both outside. With no root configured nothing is
//! restricted (the embedded default).
//!
//! Every plan the scheduler runs is checked too, however it arrived (Flight
//! SQL, a plan submitted on the scheduler port, a backfill's jobs):
//! [`RootsRule`] (an analyzer rule) refuses scans of listing and Delta tables
//! and `COPY`/`INSERT` targets outside the roots, and [`RootsFilesRule`] (a
//! physical optimizer rule) resolves every file a scan will read, links
//! included, when the scan is planned: a link inside a table folder to a
//! file outside is refused.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProviderFactory};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::CreateExternalTable;

use crate::error::{Error, Result};

/// The folders queries may read; empty means unrestricted.
#[derive(Debug, Clone, Default)]
pub struct DataRoots {
    roots: Vec<PathBuf>,
}

impl DataRoots {
    /// Resolves each root; every one must be an existing directory.
    ///
    /// # Errors
    /// [`Error::Catalog`] naming the root that does not exist.
    pub fn new(roots: &[PathBuf]) -> Result<Self> {
        let roots = roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r).map_err(|e| {
                    Error::Catalog(format!(
                        "--data-root {}: {e}; expected an existing directory",
                        r.display()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { roots })
    }

    pub fn is_restricted(&self) -> bool {
        !self.roots.is_empty()
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Refuses `location` (a path or `file://` URL) outside every root.
    ///
    /// # Errors
    /// A plan error naming `what`, the location and the roots.
    pub fn check(&self, what: &str, location: &str) -> DfResult<()> {
        if self.roots.is_empty() {
            return Ok(());
        }
        let inside = local_path(location)
            .and_then(|p| resolve(&p))
            .is_some_and(|p| self.roots.iter().any(|r| p.starts_with(r)));
        if inside {
            return Ok(());
        }
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        Err(DataFusionError::Plan(format!(
            "{what}: path {location} is outside the data roots ({}); ask an operator to add \
             a --data-root or move the data",
            roots.join(", ")
        )))
    }
}

/// The local path a location names, or `None` for a remote URL. Parsed
/// as DataFusion parses table locations (`ListingTableUrl`), so the check
/// sees what its local object store reads: `file:/etc/passwd` and
/// `file://host/etc/passwd` are `/etc/passwd` (a string test took them for
/// relative paths), `..` segments are resolved, and a glob's fixed prefix
/// is what is checked.
fn local_path(location: &str) -> Option<PathBuf> {
    let url = datafusion::datasource::listing::ListingTableUrl::parse(location).ok()?;
    if url.scheme() != "file" {
        return None;
    }
    Some(Path::new("/").join(url.prefix().as_ref()))
}

/// Resolves symbolic links in the longest existing prefix of `path` and
/// refuses `..` after it (it could not be resolved against the disk).
fn resolve(path: &Path) -> Option<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        rest.push(existing.file_name()?.to_os_string());
        existing = existing.parent()?.to_path_buf();
    }
    let mut resolved = std::fs::canonicalize(&existing).ok()?;
    for part in rest.into_iter().rev() {
        if Path::new(&part).components().any(|c| !matches!(c, Component::Normal(_))) {
            return None;
        }
        resolved.push(part);
    }
    // Glob characters stay in the last component; `ListingTableUrl` expands
    // them under the resolved prefix only.
    Some(resolved)
}

/// Refuses, in any logical plan, a scan of a listing or Delta table, and a
/// `COPY`/`INSERT` target, outside the roots.
#[derive(Debug)]
pub struct RootsRule {
    roots: DataRoots,
}

impl RootsRule {
    fn check_source(
        &self,
        name: &str,
        source: &Arc<dyn datafusion::logical_expr::TableSource>,
    ) -> DfResult<()> {
        let Ok(provider) = datafusion::datasource::default_table_source::source_as_provider(source)
        else {
            return Ok(());
        };
        if let Some(listing) =
            provider.downcast_ref::<datafusion::datasource::listing::ListingTable>()
        {
            for url in listing.table_paths() {
                self.roots.check(&format!("table {name}"), url.as_str())?;
            }
        } else if let Some(delta) = provider.downcast_ref::<crate::delta::DeltaTableProvider>() {
            self.roots.check(&format!("table {name}"), delta.url().as_str())?;
        }
        Ok(())
    }
}

impl datafusion::optimizer::AnalyzerRule for RootsRule {
    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &datafusion::config::ConfigOptions,
    ) -> DfResult<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::TreeNodeRecursion;
        use datafusion::logical_expr::LogicalPlan;
        let mut refused = None;
        plan.apply_with_subqueries(|node| {
            let checked = match node {
                LogicalPlan::TableScan(scan) => {
                    self.check_source(&scan.table_name.to_string(), &scan.source)
                }
                LogicalPlan::Dml(dml) => {
                    self.check_source(&dml.table_name.to_string(), &dml.target)
                }
                LogicalPlan::Copy(copy) => self.roots.check("COPY TO", &copy.output_url),
                _ => Ok(()),
            };
            Ok(match checked {
                Ok(()) => TreeNodeRecursion::Continue,
                Err(e) => {
                    refused = Some(e);
                    TreeNodeRecursion::Stop
                }
            })
        })?;
        match refused {
            Some(e) => Err(e),
            None => Ok(plan),
        }
    }

    fn name(&self) -> &str {
        "sluice_data_roots"
    }
}

/// Refuses a physical plan that would read a local file outside the roots,
/// each file's path resolved (links followed) when the scan is planned.
#[derive(Debug)]
pub struct RootsFilesRule {
    roots: DataRoots,
}

impl datafusion::physical_optimizer::PhysicalOptimizerRule for RootsFilesRule {
    fn optimize(
        &self,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        _config: &datafusion::config::ConfigOptions,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        use datafusion::datasource::physical_plan::FileScanConfig;
        use datafusion::datasource::source::DataSourceExec;
        plan.apply(|node| {
            let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
                return Ok(TreeNodeRecursion::Continue);
            };
            let Some(scan) = exec.data_source().downcast_ref::<FileScanConfig>() else {
                return Ok(TreeNodeRecursion::Continue);
            };
            if !scan.object_store_url.as_str().starts_with("file://") {
                return Ok(TreeNodeRecursion::Continue);
            }
            for group in &scan.file_groups {
                for file in group.iter() {
                    let path = format!("/{}", file.object_meta.location);
                    self.roots.check("scan", &path)?;
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(plan)
    }

    fn name(&self) -> &str {
        "sluice_data_roots_files"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Adds [`RootsRule`] and [`RootsFilesRule`] to `state` when `roots`
/// restricts anything.
pub fn guard_plans(state: &mut datafusion::execution::SessionState, roots: &DataRoots) {
    if !roots.is_restricted() {
        return;
    }
    state.add_analyzer_rule(Arc::new(RootsRule { roots: roots.clone() }));
    let mut rules = state.physical_optimizers().to_vec();
    rules.push(Arc::new(RootsFilesRule { roots: roots.clone() }));
    *state = datafusion::execution::SessionStateBuilder::new_from_existing(state.clone())
        .with_physical_optimizer_rules(rules)
        .build();
}

/// A table factory that checks `CREATE EXTERNAL TABLE … LOCATION` first.
#[derive(Debug)]
pub struct GuardedTableFactory {
    inner: Arc<dyn TableProviderFactory>,
    roots: DataRoots,
}

#[async_trait]
impl TableProviderFactory for GuardedTableFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> DfResult<Arc<dyn TableProvider>> {
        for location in &cmd.locations {
            self.roots.check(&format!("CREATE EXTERNAL TABLE {}", cmd.name), location)?;
        }
        self.inner.create(state, cmd).await
    }
}

/// Wraps every factory so it checks `roots`.
pub fn guard_factories(
    factories: &mut HashMap<String, Arc<dyn TableProviderFactory>>,
    roots: &DataRoots,
) {
    for factory in factories.values_mut() {
        *factory =
            Arc::new(GuardedTableFactory { inner: Arc::clone(factory), roots: roots.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_roots_are_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Catalog(e.to_string()))?;
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("t")).map_err(|e| Error::Catalog(e.to_string()))?;
        let roots = DataRoots::new(std::slice::from_ref(&root))?;
        let ok = root.join("t").display().to_string();
        assert!(roots.check("q", &ok).is_ok());
        assert!(roots.check("q", &format!("file://{ok}/x.parquet")).is_ok());
        assert!(roots.check("q", &format!("file:{ok}/x.parquet")).is_ok());
        assert!(roots.check("q", &format!("{}/new/*.parquet", root.display())).is_ok());
        for bad in [
            dir.path().display().to_string(),
            format!("{}/../etc", root.display()),
            format!("{}/t/../../x", root.display()),
            "/etc/passwd".to_string(),
            "s3://bucket/t".to_string(),
            // DataFusion reads /etc/passwd for each of these.
            "file:/etc/passwd".to_string(),
            "file://host/etc/passwd".to_string(),
            format!("file://host{}/../../etc/passwd", root.display()),
        ] {
            let err = roots.check("q", &bad).expect_err(&bad).to_string();
            assert!(err.contains("outside the data roots"), "{bad}: {err}");
        }
        // A link out of the root is outside.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", root.join("link"))
                .map_err(|e| Error::Catalog(e.to_string()))?;
            assert!(roots.check("q", &format!("{}/link/passwd", root.display())).is_err());
        }
        assert!(DataRoots::new(&[dir.path().join("missing")]).is_err());
        Ok(())
    }
}
