//! Delta Lake tables: how Sluice commits feature dates and reads tables.
//!
//! A backfill's output is a Delta table partitioned by `feature_date`, on
//! local disk or object storage. Executors write a chunk's Parquet files
//! straight under the table's folder (`_sluice/<attempt>/feature_date=D/`);
//! nothing there is part of the table until one commit to `_delta_log/`
//! names them ([`commit_dates`]):
//!
//! ```text
//!  executors ─ COPY ─► TABLE/_sluice/<chunk>.<backfill>.<attempt>/feature_date=D/*.parquet   (invisible)
//!  leader   ─ quality gate ─► commit N+1.json: remove every file of the chunk's dates
//!                                            + add the attempt's files
//!                                            + txn(app "sluice:<backfill>:<chunk>")
//!           ─ put If-None-Match: * ─ lost the race ─► reload version N+1, recompute, retry
//! ```
//!
//! * A rerun or a resumed chunk replaces its dates (remove + add in one
//!   commit), never appends a second copy.
//! * The `txn` action makes a commit idempotent: a commit whose reply was lost
//!   (or whose leader died before recording it) is found in the log and not
//!   applied twice.
//! * Concurrent writers rely only on the store's conditional put (object_store
//!   `PutMode::Create`, `If-None-Match: *` on S3); there is no external lock.
//!   Each retry recomputes the removals against the version that won, so two
//!   backfills of one date leave exactly one copy.
//! * Committed files are never deleted (earlier versions stay readable: time
//!   travel); files of failed attempts are (the runner deletes the attempt's
//!   folder).
//!
//! Reading ([`DeltaTableProvider`]): the snapshot is resolved when the query
//! is planned (latest, a version, or a timestamp) into the exact list of
//! Parquet files with their partition values; the physical plan is an
//! ordinary Parquet `DataSourceExec`, so executors need no Delta code and
//! read exactly the files of that version.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::datatypes::{FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow as _, TryIntoKernel as _};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::storage;

/// Which version of a table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Latest,
    Version(i64),
    Timestamp(DateTime<Utc>),
}

impl fmt::Display for AsOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest version"),
            Self::Version(v) => write!(f, "version {v}"),
            Self::Timestamp(t) => write!(f, "timestamp {}", t.to_rfc3339()),
        }
    }
}

impl AsOf {
    /// Parses the suffix of `name@v3` or `name@2026-12-03T10:00:00Z`
    /// (also `name@2026-12-03`, midnight UTC).
    ///
    /// # Errors
    /// A message saying what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(v) = text.strip_prefix('v').or_else(|| text.strip_prefix('V'))
            && let Ok(n) = v.parse::<i64>()
            && n >= 0
        {
            return Ok(Self::Version(n));
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Ok(Self::Timestamp(t.with_timezone(&Utc)));
        }
        if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
            && let Some(t) = d.and_hms_opt(0, 0, 0)
        {
            return Ok(Self::Timestamp(t.and_utc()));
        }
        Err(format!(
            "'@{text}': expected @vN (a version) or @YYYY-MM-DDTHH:MM:SSZ (a timestamp, RFC 3339)"
        ))
    }
}

/// A Delta error with the table's URL and what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("{url} is not a Delta table (no _delta_log/ there); {hint}")]
    NotATable { url: String, hint: &'static str },
    #[error("{url}: {as_of} does not exist: {reason}")]
    NoSuchVersion { url: String, as_of: AsOf, reason: String },
    #[error(
        "{url}: the table has columns [{table}] but the backfill writes [{written}]; \
         write to a new table (--output) or rerun with the table's columns"
    )]
    SchemaMismatch { url: String, table: String, written: String },
    #[error("{url}: the table needs Delta reader features Sluice does not read: {features}")]
    Unsupported { url: String, features: String },
    #[error("{url}: {source}")]
    Storage {
        url: String,
        /// A retry may help (the store was unreachable, a commit race lost
        /// too often).
        retryable: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DeltaError {
    /// Whether retrying the same operation can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Storage { retryable: true, .. })
    }

    fn of(url: &Url, e: DeltaTableError) -> Self {
        let shown = shown_url(url);
        match e {
            DeltaTableError::NotATable(_) | DeltaTableError::InvalidTableLocation(_) => {
                Self::NotATable {
                    url: shown,
                    hint: "register it with its file format (parquet, csv, json), or let a \
                           backfill create it",
                }
            }
            DeltaTableError::ObjectStore { source } => Self::of_store(url, source),
            other => Self::Storage {
                url: shown,
                retryable: is_transient(&other),
                source: Box::new(other),
            },
        }
    }

    fn of_store(url: &Url, e: datafusion::object_store::Error) -> Self {
        use datafusion::object_store::Error as E;
        let retryable = !matches!(
            e,
            E::NotFound { .. } | E::PermissionDenied { .. } | E::Unauthenticated { .. }
        );
        Self::Storage { url: shown_url(url), retryable, source: Box::new(e) }
    }
}

/// A URL as shown in messages: never with credentials.
fn shown_url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

fn is_transient(e: &DeltaTableError) -> bool {
    let text = e.to_string();
    // Delta's errors wrap object-store errors in several variants; the
    // generic ones are all I/O.
    matches!(e, DeltaTableError::Io { .. } | DeltaTableError::Transaction { .. })
        || text.contains("error sending request")
}

impl From<DeltaError> for DataFusionError {
    fn from(e: DeltaError) -> Self {
        match e {
            DeltaError::Storage { .. } => DataFusionError::External(Box::new(e)),
            other => DataFusionError::Plan(other.to_string()),
        }
    }
}

/// The table at `url`, its object store taken from `runtime` (the session's
/// registry: `s3.*` settings or `AWS_*` variables), at `as_of`.
///
/// # Errors
/// [`DeltaError::NotATable`] when there is no Delta log; the store's error.
pub async fn open(runtime: &RuntimeEnv, url: &Url, as_of: AsOf) -> Result<DeltaTable, DeltaError> {
    // Told apart by listing, not by the kernel's error text (which differs
    // between stores).
    if !is_delta_table(runtime, url).await? {
        return Err(DeltaError::NotATable {
            url: shown_url(url),
            hint: "register it with its file format (parquet, csv, json), or let a backfill \
                   create it",
        });
    }
    let mut builder = builder(runtime, url)?;
    builder = match as_of {
        AsOf::Latest => builder,
        AsOf::Version(v) => builder.with_version(v.max(0) as u64),
        AsOf::Timestamp(t) => builder.with_timestamp(t),
    };
    builder.load().await.map_err(|e| match e {
        DeltaTableError::InvalidVersion(_) if as_of != AsOf::Latest => {
            DeltaError::NoSuchVersion { url: shown_url(url), as_of, reason: e.to_string() }
        }
        e if as_of != AsOf::Latest && e.to_string().to_lowercase().contains("version") => {
            DeltaError::NoSuchVersion { url: shown_url(url), as_of, reason: e.to_string() }
        }
        e => DeltaError::of(url, e),
    })
}

/// Delta's log store for object-store schemes Sluice serves: the default one,
/// which commits with `PutMode::Create` (`If-None-Match: *` on S3). delta-rs
/// registers it only for `file://` and `memory://`; its `s3` feature would
/// add the AWS SDK (and a DynamoDB lock client) that Sluice does not use.
#[derive(Debug, Default)]
struct ConditionalPutLogStore;

impl deltalake::logstore::LogStoreFactory for ConditionalPutLogStore {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(prefixed_store, root_store, location, options))
    }
}

fn register_log_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let registry = deltalake::logstore::logstore_factories();
        for scheme in ["s3://", "s3a://"] {
            if let Ok(u) = Url::parse(scheme) {
                registry.insert(u, Arc::new(ConditionalPutLogStore));
            }
        }
    });
}

fn builder(runtime: &RuntimeEnv, url: &Url) -> Result<DeltaTableBuilder, DeltaError> {
    register_log_stores();
    let store = runtime
        .object_store(ObjectStoreUrl::parse(storage::store_root(url)).map_err(|e| {
            DeltaError::Storage { url: shown_url(url), retryable: false, source: Box::new(e) }
        })?)
        .map_err(|e| DeltaError::Storage {
            url: shown_url(url),
            retryable: false,
            source: Box::new(e),
        })?;
    Ok(DeltaTableBuilder::from_url(url.clone())
        .map_err(|e| DeltaError::of(url, e))?
        .with_storage_backend(store, url.clone()))
}

/// Whether `url` holds a Delta log (`_delta_log/`).
///
/// # Errors
/// The store's error (for example wrong credentials or a missing bucket).
pub async fn is_delta_table(runtime: &RuntimeEnv, url: &Url) -> Result<bool, DeltaError> {
    let store = runtime
        .object_store(ObjectStoreUrl::parse(storage::store_root(url)).map_err(|e| {
            DeltaError::Storage { url: shown_url(url), retryable: false, source: Box::new(e) }
        })?)
        .map_err(|e| DeltaError::Storage {
            url: shown_url(url),
            retryable: false,
            source: Box::new(e),
        })?;
    let log = storage::store_path(url).clone().join("_delta_log");
    let found = storage::list(store.as_ref(), &log).await.map_err(|e| DeltaError::Storage {
        url: shown_url(url),
        retryable: true,
        source: Box::new(e),
    })?;
    Ok(!found.is_empty())
}

/// The dates with at least one file in the table's latest version; empty
/// when there is no table yet.
///
/// # Errors
/// The store's error; [`DeltaError::NotATable`] is not one (an empty set).
pub async fn committed_dates(
    runtime: &RuntimeEnv,
    url: &Url,
    partition: &str,
) -> Result<BTreeSet<NaiveDate>, DeltaError> {
    let table = match open(runtime, url, AsOf::Latest).await {
        Ok(t) => t,
        Err(DeltaError::NotATable { .. }) => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    let snapshot = table.snapshot().map_err(|e| DeltaError::of(url, e))?;
    Ok(snapshot
        .log_data()
        .iter()
        .filter_map(|f| f.partition_values_map().get(partition).cloned().flatten())
        .filter_map(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
        .collect())
}

/// The data files (paths relative to the table) of the latest version;
/// empty when there is no table.
///
/// # Errors
/// The store's error.
pub async fn live_files(runtime: &RuntimeEnv, url: &Url) -> Result<BTreeSet<String>, DeltaError> {
    let table = match open(runtime, url, AsOf::Latest).await {
        Ok(t) => t,
        Err(DeltaError::NotATable { .. }) => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    let snapshot = table.snapshot().map_err(|e| DeltaError::of(url, e))?;
    Ok(snapshot.log_data().iter().map(|f| f.path().into_owned()).collect())
}

/// The folders directly under `under/` that hold files of any version of
/// the table (the latest one's files and those removed since: earlier
/// versions still read them). Empty when there is no table.
///
/// # Errors
/// The store's error.
pub async fn attempts_in_table(
    runtime: &RuntimeEnv,
    url: &Url,
    under: &str,
) -> Result<BTreeSet<String>, DeltaError> {
    let table = match open(runtime, url, AsOf::Latest).await {
        Ok(t) => t,
        Err(DeltaError::NotATable { .. }) => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    let snapshot = table.snapshot().map_err(|e| DeltaError::of(url, e))?;
    let prefix = format!("{under}/");
    let folder = |p: &str| -> Option<String> {
        p.strip_prefix(&prefix).and_then(|rest| rest.split('/').next()).map(str::to_string)
    };
    let mut out: BTreeSet<String> =
        snapshot.log_data().iter().filter_map(|f| folder(&f.path())).collect();
    let mut tombstones = snapshot.all_tombstones(table.log_store().as_ref());
    while let Some(t) = futures::StreamExt::next(&mut tombstones).await {
        let t = t.map_err(|e| DeltaError::of(url, e))?;
        if let Some(f) = folder(&t.path()) {
            out.insert(f);
        }
    }
    Ok(out)
}

/// One data file a chunk wrote: its path relative to the table's folder.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path: String,
    pub size: u64,
    pub date: NaiveDate,
}

/// What [`commit_dates`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// A new version of the table.
    Version { version: i64, removed: usize, added: usize },
    /// The log already holds this transaction (a retried commit whose reply
    /// was lost, or a chunk committed by a leader that died before saying so).
    Already,
}

/// How many times a commit is retried after losing a race or an I/O error.
const COMMIT_ATTEMPTS: u32 = 12;

/// Commits `files` as the content of `dates` of the table at `url` (created,
/// partitioned by `partition`, when missing): one new version that removes
/// every file of those dates and adds `files`, with the application
/// transaction `app_id` so the commit is applied at most once.
///
/// `schema` is what the backfill writes (partition column included).
///
/// # Errors
/// [`DeltaError::SchemaMismatch`] when the table's columns differ from
/// `schema`'s; storage errors (retryable ones after [`COMMIT_ATTEMPTS`]).
pub async fn commit_dates(
    runtime: &RuntimeEnv,
    url: &Url,
    schema: &Schema,
    partition: &str,
    dates: &[NaiveDate],
    files: &[NewFile],
    app_id: &str,
    app_metadata: HashMap<String, serde_json::Value>,
) -> Result<Committed, DeltaError> {
    let wanted: BTreeSet<String> = dates.iter().map(|d| d.to_string()).collect();
    let mut last_error: Option<DeltaError> = None;
    for attempt in 0..COMMIT_ATTEMPTS {
        if attempt > 0 {
            // Lost a race, or the store was unreachable: back off a little.
            let ms = 50u64 << attempt.min(6);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let table = match open(runtime, url, AsOf::Latest).await {
            Ok(t) => t,
            Err(DeltaError::NotATable { .. }) => {
                match create(runtime, url, schema, partition).await {
                    Ok(t) => t,
                    Err(e) if e.retryable() => {
                        last_error = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.retryable() => {
                last_error = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let snapshot = table.snapshot().map_err(|e| DeltaError::of(url, e))?;
        check_schema(url, snapshot, schema, partition)?;
        let log_store = table.log_store();
        match snapshot.transaction_version(log_store.as_ref(), app_id).await {
            Ok(Some(_)) => return Ok(Committed::Already),
            Ok(None) => {}
            Err(e) => {
                last_error = Some(DeltaError::of(url, e));
                continue;
            }
        }
        let now = Utc::now().timestamp_millis();
        let mut actions: Vec<Action> = Vec::new();
        let mut removed = 0;
        for f in snapshot.log_data().iter() {
            let in_dates = f
                .partition_values_map()
                .get(partition)
                .cloned()
                .flatten()
                .is_some_and(|d| wanted.contains(&d));
            if in_dates {
                let mut remove = f.remove_action(true);
                remove.deletion_timestamp = Some(now);
                actions.push(Action::Remove(remove));
                removed += 1;
            }
        }
        for f in files {
            actions.push(Action::Add(Add {
                path: f.path.clone(),
                partition_values: HashMap::from([(
                    partition.to_string(),
                    Some(f.date.to_string()),
                )]),
                size: f.size as i64,
                modification_time: now,
                data_change: true,
                ..Default::default()
            }));
        }
        let predicate = format!(
            "{partition} IN ({})",
            wanted.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ")
        );
        let commit = CommitBuilder::from(
            CommitProperties::default()
                .with_application_transaction(Transaction::new(app_id, 1))
                .with_metadata(app_metadata.clone()),
        )
        .with_actions(actions)
        // Conflicts are resolved here, against the version that won: the
        // removals must name that version's files.
        .with_max_retries(0)
        .build(
            Some(snapshot),
            log_store,
            DeltaOperation::Write {
                mode: SaveMode::Overwrite,
                partition_by: Some(vec![partition.to_string()]),
                predicate: Some(predicate),
            },
        )
        .await;
        match commit {
            Ok(done) => {
                return Ok(Committed::Version {
                    version: done.version() as i64,
                    removed,
                    added: files.len(),
                });
            }
            Err(DeltaTableError::VersionAlreadyExists(_))
            | Err(DeltaTableError::Transaction {
                source:
                    TransactionError::VersionAlreadyExists(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::CommitConflict(_),
            }) => {
                tracing::debug!(%url, attempt, "Delta commit lost a race; retrying on the new version");
                last_error = Some(DeltaError::Storage {
                    url: shown_url(url),
                    retryable: true,
                    source: "concurrent commits kept winning the race".into(),
                });
            }
            Err(e) => {
                let e = DeltaError::of(url, e);
                if !e.retryable() {
                    return Err(e);
                }
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or(DeltaError::Storage {
        url: shown_url(url),
        retryable: true,
        source: "commit not attempted".into(),
    }))
}

async fn create(
    runtime: &RuntimeEnv,
    url: &Url,
    schema: &Schema,
    partition: &str,
) -> Result<DeltaTable, DeltaError> {
    let kernel: StructType = schema.try_into_kernel().map_err(|e| DeltaError::Storage {
        url: shown_url(url),
        retryable: false,
        source: Box::new(e),
    })?;
    let table = builder(runtime, url)?.build().map_err(|e| DeltaError::of(url, e))?;
    let created = deltalake::operations::create::CreateBuilder::new()
        .with_log_store(table.log_store())
        .with_columns(kernel.fields().cloned())
        .with_partition_columns([partition.to_string()])
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(t) => Ok(t),
        // Another writer created it first: read theirs.
        Err(_) => open(runtime, url, AsOf::Latest).await,
    }
}

fn check_schema(
    url: &Url,
    snapshot: &deltalake::table::state::DeltaTableState,
    schema: &Schema,
    partition: &str,
) -> Result<(), DeltaError> {
    let table: BTreeSet<String> =
        snapshot.schema().fields().map(|f| f.name().to_string()).collect();
    let written: BTreeSet<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    if table == written && snapshot.metadata().partition_columns() == &vec![partition.to_string()] {
        return Ok(());
    }
    Err(DeltaError::SchemaMismatch {
        url: shown_url(url),
        table: table.into_iter().collect::<Vec<_>>().join(", "),
        written: written.into_iter().collect::<Vec<_>>().join(", "),
    })
}

/// A Delta table version as a DataFusion table: Parquet files with their
/// partition values, fixed when the query is planned.
#[derive(Debug, Clone)]
pub struct DeltaTableProvider {
    url: Url,
    version: i64,
    /// Data columns, then partition columns (DataFusion's order).
    schema: SchemaRef,
    partition_cols: Vec<FieldRef>,
    /// Resolved on the planning process; `None` after decoding from a plan
    /// (resolved again, at the same version, when scanned).
    files: Option<Arc<Vec<PartitionedFile>>>,
}

impl DeltaTableProvider {
    /// Loads `url` at `as_of`.
    ///
    /// # Errors
    /// As [`open`]; [`DeltaError::Unsupported`] for tables using deletion
    /// vectors or column mapping.
    pub async fn load(runtime: &RuntimeEnv, url: &Url, as_of: AsOf) -> Result<Self, DeltaError> {
        let table = open(runtime, url, as_of).await?;
        Self::from_table(url, &table)
    }

    fn from_table(url: &Url, table: &DeltaTable) -> Result<Self, DeltaError> {
        let snapshot = table.snapshot().map_err(|e| DeltaError::of(url, e))?;
        let protocol = snapshot.protocol();
        if let Some(features) = protocol.reader_features()
            && !features.is_empty()
        {
            let names: Vec<String> = features.iter().map(|f| format!("{f:?}")).collect();
            let supported = ["TimestampWithoutTimezone", "V2Checkpoint", "VacuumProtocolCheck"];
            if names.iter().any(|n| !supported.iter().any(|s| n.contains(s))) {
                return Err(DeltaError::Unsupported {
                    url: shown_url(url),
                    features: names.join(", "),
                });
            }
        }
        let arrow: Schema = snapshot.schema().as_ref().try_into_arrow().map_err(|e| {
            DeltaError::Storage { url: shown_url(url), retryable: false, source: Box::new(e) }
        })?;
        let partition_names: Vec<String> = snapshot.metadata().partition_columns().to_vec();
        let mut data: Vec<FieldRef> = Vec::new();
        let mut parts: Vec<FieldRef> = Vec::new();
        for name in &partition_names {
            if let Ok(f) = arrow.field_with_name(name) {
                parts.push(Arc::new(f.clone()));
            }
        }
        for f in arrow.fields() {
            if !partition_names.contains(f.name()) {
                data.push(Arc::clone(f));
            }
        }
        let all: Vec<FieldRef> = data.iter().chain(parts.iter()).cloned().collect();
        let mut files = Vec::new();
        for f in snapshot.log_data().iter() {
            let values = f.partition_values_map();
            let mut partition_values = Vec::with_capacity(parts.len());
            for p in &parts {
                let v = match values.get(p.name()).cloned().flatten() {
                    Some(text) => ScalarValue::try_from_string(text, p.data_type()),
                    None => ScalarValue::try_from(p.data_type()),
                }
                .map_err(|e| DeltaError::Storage {
                    url: shown_url(url),
                    retryable: false,
                    source: Box::new(e),
                })?;
                partition_values.push(v);
            }
            let location = storage::store_path(url).child_path(&f.object_store_path());
            files.push(
                PartitionedFile::new(location.to_string(), f.size().max(0) as u64)
                    .with_partition_values(partition_values),
            );
        }
        Ok(Self {
            url: url.clone(),
            version: snapshot.version() as i64,
            schema: Arc::new(Schema::new(all)),
            partition_cols: parts,
            files: Some(Arc::new(files)),
        })
    }

    /// A provider decoded from a plan: resolved again when scanned.
    pub fn pinned(url: Url, version: i64, schema: SchemaRef, partition_names: &[String]) -> Self {
        let partition_cols = schema
            .fields()
            .iter()
            .filter(|f| partition_names.contains(f.name()))
            .cloned()
            .collect();
        Self { url, version, schema, partition_cols, files: None }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    pub fn partition_names(&self) -> Vec<String> {
        self.partition_cols.iter().map(|f| f.name().clone()).collect()
    }

    async fn files(&self, runtime: &RuntimeEnv) -> DfResult<Arc<Vec<PartitionedFile>>> {
        if let Some(f) = &self.files {
            return Ok(Arc::clone(f));
        }
        let loaded = Self::load(runtime, &self.url, AsOf::Version(self.version)).await?;
        loaded.files.ok_or_else(|| DataFusionError::Internal("Delta files not loaded".into()))
    }
}

/// Trait-object helper.
trait ChildPath {
    fn child_path(&self, rel: &datafusion::object_store::path::Path) -> Self;
}

impl ChildPath for datafusion::object_store::path::Path {
    fn child_path(&self, rel: &datafusion::object_store::path::Path) -> Self {
        let mut out = self.clone();
        for part in rel.parts() {
            out = out.clone().join(part);
        }
        out
    }
}

#[async_trait]
impl TableProvider for DeltaTableProvider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self.files(state.runtime_env()).await?;
        let data_fields: Vec<FieldRef> = self
            .schema
            .fields()
            .iter()
            .filter(|f| !self.partition_cols.iter().any(|p| p.name() == f.name()))
            .cloned()
            .collect();
        let table_schema = TableSchema::builder(Arc::new(Schema::new(data_fields)))
            .with_table_partition_cols(self.partition_cols.clone())
            .build();
        let source = Arc::new(ParquetSource::new(table_schema));
        let n = state.config().target_partitions().max(1);
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n.min(files.len().max(1))];
        let group_count = groups.len();
        for (i, f) in files.iter().enumerate() {
            groups[i % group_count].push(f.clone());
        }
        let config = FileScanConfigBuilder::new(
            ObjectStoreUrl::parse(storage::store_root(&self.url))?,
            source,
        )
        .with_file_groups(groups.into_iter().map(FileGroup::from).collect())
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_of_parses_versions_and_timestamps() {
        assert_eq!(AsOf::parse("v3"), Ok(AsOf::Version(3)));
        assert!(matches!(AsOf::parse("2026-12-03T10:00:00Z"), Ok(AsOf::Timestamp(_))));
        assert!(matches!(AsOf::parse("2026-12-03"), Ok(AsOf::Timestamp(_))));
        let err = AsOf::parse("yesterday").expect_err("bad");
        assert!(err.contains("expected @vN"), "{err}");
        assert!(AsOf::parse("v-1").is_err());
    }
}
