//! What a backfill knows before it writes anything: its sources as tables,
//! the spec checked against the data (columns exist, types fit their
//! functions, the compiled query plans), the partial aggregates' types, and
//! the range's hot entities when skew handling is on. Used by the runner on
//! the leader scheduler and by `sluice backfill --explain`.

use chrono::NaiveDate;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::hotkeys::Detection;
use crate::job::plan::{self, ColumnTypes, PlanOptions};
use crate::job::spec::{Function, JobSpec};
use crate::options::SluiceOptions;
use crate::tables::{TableFormat, TableSource};

/// Why a backfill cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The spec or the data disagree: `FILE: FIELD: reason`.
    #[error("{0}")]
    Invalid(String),
    /// Planning or sampling failed.
    #[error(transparent)]
    Engine(#[from] DataFusionError),
}

impl PrepareError {
    pub fn class(&self) -> sluice_proto::ErrorClass {
        match self {
            PrepareError::Invalid(_) => sluice_proto::ErrorClass::User,
            PrepareError::Engine(e) => crate::remote_error::classify(e).0,
        }
    }
}

type Result<T, E = PrepareError> = std::result::Result<T, E>;

/// The hot entities of a backfill's range: keys with their share of the
/// rows the sources feed the tiles aggregation, and how that was measured.
#[derive(Debug, Clone)]
pub struct HotEntities {
    pub keys: Vec<(ScalarValue, f64)>,
    pub how: Detection,
    /// The shuffle partitions the salts were chosen for.
    pub partitions: usize,
}

/// A spec ready to be compiled into chunk jobs.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub types: ColumnTypes,
    pub plan_opts: PlanOptions,
    pub skew: SluiceOptions,
    /// `None`: skew handling off.
    pub hot: Option<HotEntities>,
}

/// The spec's sources as tables, paths relative to `data_dir`.
///
/// # Errors
/// [`PrepareError::Invalid`] naming the source and field.
pub fn source_tables(spec: &JobSpec, spec_label: &str, data_dir: &str) -> Result<Vec<TableSource>> {
    let mut tables = Vec::new();
    for (name, src) in &spec.sources {
        let path = spec.source_path(src, data_dir);
        let format = match src.format.as_str() {
            "parquet" => TableFormat::Parquet,
            "csv" => TableFormat::Csv,
            "json" => TableFormat::Json,
            "delta" => TableFormat::Delta,
            other => {
                return Err(PrepareError::Invalid(format!(
                    "{spec_label}: sources.{name}.format: unknown format '{other}'; expected parquet, csv, json or delta"
                )));
            }
        };
        let source = TableSource::new(name, &path, Some(format)).map_err(|e| match e {
            crate::Error::TablePathNotFound { path, .. } => PrepareError::Invalid(format!(
                "{spec_label}: sources.{name}.path: '{path}' does not exist (paths are relative to --data-dir, here {data_dir}); generate data with `sluice gen churn --out DIR` and pass --data-dir DIR"
            )),
            other => PrepareError::Invalid(format!("{spec_label}: sources.{name}: {other}")),
        })?;
        tables.push(source);
    }
    Ok(tables)
}

/// Checks the spec against the data in `ctx` (its sources registered),
/// computes the partial aggregates' types and, with skew handling on, the
/// hot entities of `from..=to`.
///
/// # Errors
/// [`PrepareError::Invalid`] naming the spec's field; engine errors.
pub async fn prepare(
    ctx: &SessionContext,
    spec: &JobSpec,
    spec_label: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Prepared> {
    validate_against_data(ctx, spec, spec_label).await?;
    let types = partial_types(ctx, spec).await?;
    let skew = crate::options::of_session(ctx);
    let mut plan_opts = PlanOptions { combine_per_day: skew.skew_enabled, salted: None };
    let hot = match skew.skew_enabled {
        true => Some(hot_entities(ctx, spec, from, to, &skew).await?),
        false => None,
    };
    if let Some(h) = hot.as_ref().filter(|h| !h.keys.is_empty()) {
        let salts = crate::skew::salt_values(&h.keys, skew.skew_buckets, h.partitions)?;
        plan_opts.salted =
            Some(plan::SaltedKeys { keys: h.keys.iter().map(|(k, _)| k.clone()).collect(), salts });
    }
    Ok(Prepared { types, plan_opts, skew, hot })
}

/// Checks that features' columns exist and have types their functions accept.
async fn validate_against_data(
    ctx: &SessionContext,
    spec: &JobSpec,
    spec_label: &str,
) -> Result<()> {
    let invalid = |field: String, e: &DataFusionError| {
        PrepareError::Invalid(format!(
            "{spec_label}: {field}: {}",
            crate::session::clean_df_message(e)
        ))
    };
    for (name, src) in &spec.sources {
        let mut cols = Vec::new();
        if let Some(k) = &src.key {
            cols.push(format!("\"{k}\""));
        }
        if let Some(t) = &src.timestamp {
            cols.push(format!("\"{t}\""));
        }
        if !cols.is_empty() {
            if let Err(e) =
                ctx.sql(&format!("SELECT {} FROM \"{name}\" LIMIT 0", cols.join(", "))).await
            {
                return Err(invalid(format!("sources.{name}"), &e));
            }
        }
    }
    for (i, f) in spec.features.iter().enumerate() {
        let field = |rest: &str| format!("features[{i}] ({}).{rest}", f.name);
        for (what, expr) in [("filter", &f.filter), ("available_at", &f.available_at)] {
            if let Some(expr) = expr {
                if let Err(e) =
                    ctx.sql(&format!("SELECT {expr} FROM \"{}\" LIMIT 0", f.source)).await
                {
                    return Err(invalid(field(what), &e));
                }
            }
        }
        if let Some(col) = &f.column {
            match ctx.sql(&format!("SELECT {col} AS v FROM \"{}\" LIMIT 0", f.source)).await {
                Err(e) => return Err(invalid(field("column"), &e)),
                Ok(df) => {
                    let dt = df.schema().field(0).data_type().clone();
                    let ok = match f.function {
                        Function::Sum | Function::Avg => dt.is_numeric(),
                        Function::Latest => dt.is_temporal(),
                        Function::Count | Function::Min | Function::Max => true,
                    };
                    if !ok {
                        return Err(PrepareError::Invalid(format!(
                            "{spec_label}: {}: '{col}' has type {dt}; {} needs a {}",
                            field("column"),
                            f.function,
                            if f.function == Function::Latest {
                                "timestamp or date"
                            } else {
                                "number"
                            }
                        )));
                    }
                }
            }
        }
    }
    for (j, d) in spec.dimensions.iter().enumerate() {
        let cols: Vec<String> = d.columns.iter().map(|c| format!("\"{c}\"")).collect();
        if let Err(e) =
            ctx.sql(&format!("SELECT {} FROM \"{}\" LIMIT 0", cols.join(", "), d.source)).await
        {
            return Err(invalid(format!("dimensions[{j}]"), &e));
        }
    }
    // Derived expressions and the whole query: plan one day.
    let day = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default();
    let types = partial_types(ctx, spec).await?;
    if let Err(e) =
        ctx.sql(&plan::chunk_query(spec, day, day, &types, &PlanOptions::default())).await
    {
        let msg = crate::session::clean_df_message(&e);
        let culprit = spec.derived.iter().position(|d| {
            msg.contains(&d.name) || d.expr.split_whitespace().any(|w| msg.contains(w))
        });
        let field = match culprit {
            Some(k) => format!("derived[{k}] ({})", spec.derived[k].name),
            None => "the compiled feature query".to_string(),
        };
        return Err(PrepareError::Invalid(format!("{spec_label}: {field}: {msg}")));
    }
    Ok(())
}

/// The types of every source's partial aggregates, from planning them.
///
/// # Errors
/// A partial query that does not plan.
pub async fn partial_types(ctx: &SessionContext, spec: &JobSpec) -> Result<ColumnTypes> {
    let mut types = ColumnTypes::new();
    for src in spec.event_sources() {
        let columns = plan::partial_columns(spec, src);
        let df = ctx.sql(&plan::partial_query(spec, src, 0, 0)).await?;
        for field in df.schema().fields() {
            if columns.contains(field.name()) {
                types.insert(field.name().clone(), field.data_type().to_string());
            }
        }
    }
    Ok(types)
}

/// Samples the entity keys of every event source over `first..=last` (the
/// rows the tiles aggregation reads) and returns the hot ones: once per
/// backfill, not per chunk; a key hot in only some chunks costs those
/// chunks a little balance, never correctness.
///
/// # Errors
/// Planning the keys' query, or counting them.
pub async fn hot_entities(
    ctx: &SessionContext,
    spec: &JobSpec,
    first: NaiveDate,
    last: NaiveDate,
    skew: &SluiceOptions,
) -> Result<HotEntities> {
    let (f, t) = (plan::day_number(first), plan::day_number(last));
    let keys: Vec<String> = spec
        .event_sources()
        .into_iter()
        .map(|src| format!("SELECT __k FROM ({})", plan::partial_query(spec, src, f, t)))
        .collect();
    let partitions = ctx.state().config().target_partitions();
    if keys.is_empty() {
        return Ok(HotEntities { keys: vec![], how: Detection::Counted, partitions });
    }
    let df = ctx.sql(&keys.join(" UNION ALL ")).await?;
    // Optimized: types coerced and filters pushed into the scans.
    let keys_plan = ctx.state().optimize(df.logical_plan())?;
    let (keys, how) = crate::hotkeys::hot_keys(
        ctx,
        &keys_plan,
        &datafusion::prelude::col("__k"),
        skew.skew_hot_key_share,
    )
    .await?;
    Ok(HotEntities { keys, how, partitions })
}
