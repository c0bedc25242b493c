//! Compiles a [`JobSpec`] into one SQL query per chunk of feature dates.
//!
//! The query reads every event source **once** per chunk and does work
//! proportional to rows + entity-days, independent of window lengths:
//!
//! ```text
//! p_<src>   per (entity, event day[, available day]) partial aggregates     one scan per source
//!   │ × (group, sign)    additive features (sum/count/avg): +v on the first day a row counts,
//!   │                    −v on the day after its window ends (clamped to the chunk)
//!   │                    min/max/latest: the partial itself, on its event day
//! rows      ∪ the entity grid (entity × feature date, from `active_from` on)
//! daily     GROUP BY (entity, day)
//! win       running SUM over days (ROWS UNBOUNDED PRECEDING) for additive features;
//!           MIN/MAX over RANGE BETWEEN W-1 PRECEDING AND CURRENT ROW for the others
//! base      grid rows only, feature values, dimension columns
//! select    key, feature_date, features, derived expressions, dimensions
//! ```
//!
//! A row with event day `e` and availability day `a` (default `e`) counts
//! for feature dates `D ∈ [max(e, a), e + W − 1]`; unbounded windows have no
//! end. Days are integers (days since 1970-01-01).

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::NaiveDate;

use crate::job::spec::{Feature, Function, JobSpec, Window};

/// Days since 1970-01-01.
pub fn day_number(date: NaiveDate) -> i64 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days()
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Days since 1970-01-01 of a DATE/TIMESTAMP expression, as BIGINT (the
/// Date32 value itself; date subtraction yields durations in some paths).
fn day_of(expr: &str) -> String {
    format!("CAST(CAST(CAST({expr} AS DATE) AS INT) AS BIGINT)")
}

fn ts_literal(day: i64) -> String {
    let date =
        NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default() + chrono::Duration::days(day);
    format!("TIMESTAMP '{} 00:00:00'", date.format("%Y-%m-%d"))
}

/// The SQL literal for a feature's `default`.
fn default_literal(f: &Feature) -> Option<String> {
    f.default.as_ref().map(|v| match v {
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        _ => "NULL".to_string(),
    })
}

/// Features of one source that share a window and availability column.
struct Group {
    window: Option<u32>,
    available: Option<usize>,
}

/// The per-feature filter predicate (with the availability column required).
fn predicate(f: &Feature) -> String {
    let mut parts = Vec::new();
    if let Some(filter) = &f.filter {
        parts.push(format!("({filter})"));
    }
    if let Some(a) = &f.available_at {
        parts.push(format!("({a}) IS NOT NULL"));
    }
    if parts.is_empty() { "TRUE".to_string() } else { parts.join(" AND ") }
}

/// Arrow types of the partial-aggregate columns (`s<i>`, `c<i>`, `m<i>`),
/// as accepted by `arrow_cast`. Union branches need typed NULLs: an untyped
/// NULL column stays of type Null and cannot be summed.
pub type ColumnTypes = BTreeMap<String, String>;

/// Distinct `available_at` expressions of a source's features.
fn availability_columns<'a>(spec: &'a JobSpec, src_name: &str) -> Vec<&'a str> {
    let mut avail: Vec<&str> = Vec::new();
    for x in spec.features.iter().filter(|x| x.source == src_name) {
        if let Some(a) = &x.available_at {
            if !avail.contains(&a.as_str()) {
                avail.push(a);
            }
        }
    }
    avail
}

/// Per (entity, event day[, available days]) partial aggregates of one
/// source's features, for feature days `f..=t`: `__k, __e, __a<j>..., s<i>,
/// c<i>, m<i>`.
pub fn partial_query(spec: &JobSpec, src_name: &str, f: i64, t: i64) -> String {
    let src = &spec.sources[src_name];
    let src_key = src.key.clone().unwrap_or_default();
    let ts = src.timestamp.clone().unwrap_or_default();
    let feats: Vec<(usize, &Feature)> =
        spec.features.iter().enumerate().filter(|(_, x)| x.source == src_name).collect();
    let avail = availability_columns(spec, src_name);
    let mut select =
        vec![format!("{} AS __k", quote(&src_key)), format!("{} AS __e", day_of(&quote(&ts)))];
    for (j, a) in avail.iter().enumerate() {
        select.push(format!("{} AS __a{j}", day_of(a)));
    }
    for (i, x) in &feats {
        let pred = predicate(x);
        let col = x.column.clone().unwrap_or_else(|| "1".to_string());
        match x.function {
            Function::Count => {
                select.push(format!("count(CASE WHEN {pred} THEN {col} END) AS s{i}"))
            }
            Function::Sum | Function::Avg => {
                select.push(format!("sum(CASE WHEN {pred} THEN {col} END) AS s{i}"));
                select.push(format!("count(CASE WHEN {pred} THEN {col} END) AS c{i}"));
            }
            Function::Min => select.push(format!("min(CASE WHEN {pred} THEN {col} END) AS m{i}")),
            Function::Max | Function::Latest => {
                select.push(format!("max(CASE WHEN {pred} THEN {col} END) AS m{i}"))
            }
        }
    }
    // Scan bounds: the oldest event day any feature of this source can use.
    let lookback =
        feats.iter().map(|(_, x)| x.window.days()).try_fold(0u32, |acc, w| w.map(|w| acc.max(w)));
    let mut filter = format!("{} < {}", quote(&ts), ts_literal(t + 1));
    if let Some(w) = lookback {
        let _ = write!(filter, " AND {} >= {}", quote(&ts), ts_literal(f - i64::from(w) + 1));
    }
    let group_by: Vec<String> = (1..=2 + avail.len()).map(|n| n.to_string()).collect();
    format!(
        "SELECT {} FROM {} WHERE {filter} GROUP BY {}",
        select.join(", "),
        quote(src_name),
        group_by.join(", ")
    )
}

/// The query computing the spec's features for feature dates `first..=last`.
pub fn chunk_query(
    spec: &JobSpec,
    first: NaiveDate,
    last: NaiveDate,
    types: &ColumnTypes,
) -> String {
    let f = day_number(first);
    let t = day_number(last);
    let key = &spec.entity.key;
    let mut ctes: Vec<String> = Vec::new();

    // Column layout shared by every branch of `rows`.
    let mut columns: Vec<String> = Vec::new();
    for (i, feat) in spec.features.iter().enumerate() {
        if feat.function.is_additive() {
            columns.push(format!("d{i}_s"));
            if feat.function != Function::Count {
                columns.push(format!("d{i}_c"));
            }
        } else {
            columns.push(format!("m{i}"));
        }
    }
    // Typed NULLs for the columns a union branch does not fill: d<i>_s has
    // s<i>'s type, d<i>_c is a count, m<i> has m<i>'s type.
    let typed_null = |c: &str| -> String {
        if c.ends_with("_c") {
            return "CAST(NULL AS BIGINT)".to_string();
        }
        let key = match c.strip_prefix('d').and_then(|r| r.strip_suffix("_s")) {
            Some(i) => format!("s{i}"),
            None => c.to_string(),
        };
        match types.get(&key) {
            Some(t) => format!("arrow_cast(NULL, '{t}')"),
            None => "NULL".to_string(),
        }
    };
    let nulls_except = |own: &BTreeMap<String, String>| -> String {
        columns
            .iter()
            .map(|c| format!("{} AS {c}", own.get(c).cloned().unwrap_or_else(|| typed_null(c))))
            .collect::<Vec<_>>()
            .join(", ")
    };

    // The entity grid: one row per entity and feature date.
    let dates: Vec<String> = (f..=t).map(|d| format!("({d})")).collect();
    let active = match &spec.entity.active_from {
        Some(col) => format!("WHERE {} <= d.__day", day_of(&format!("e.{}", quote(col)))),
        None => String::new(),
    };
    let mut branches = vec![format!(
        "SELECT e.{k} AS __k, CAST(d.__day AS BIGINT) AS __day, 1 AS __g, {nulls} \
         FROM {src} AS e CROSS JOIN (VALUES {dates}) AS d(__day) {active}",
        k = quote(key),
        nulls = nulls_except(&BTreeMap::new()),
        src = quote(&spec.entity.source),
        dates = dates.join(", "),
    )];

    for src_name in spec.event_sources() {
        let avail = availability_columns(spec, src_name);
        ctes.push(format!("p_{src_name} AS ({})", partial_query(spec, src_name, f, t)));
        let feats: Vec<(usize, &Feature)> =
            spec.features.iter().enumerate().filter(|(_, x)| x.source == src_name).collect();

        // Expansion into delta and frame rows.
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: BTreeMap<usize, usize> = BTreeMap::new();
        let mut has_frame = false;
        for (i, x) in &feats {
            if !x.function.is_additive() {
                has_frame = true;
                continue;
            }
            let available = x.available_at.as_ref().and_then(|a| avail.iter().position(|v| v == a));
            let window = x.window.days();
            let g = match groups.iter().position(|g| g.window == window && g.available == available)
            {
                Some(g) => g,
                None => {
                    groups.push(Group { window, available });
                    groups.len() - 1
                }
            };
            group_of.insert(*i, g);
        }
        let frame_group = groups.len();
        let mut pairs: Vec<String> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        let mut day_cases: Vec<String> = Vec::new();
        for (g, grp) in groups.iter().enumerate() {
            let start = match grp.available {
                Some(j) => format!("greatest(__e, __a{j})"),
                None => "__e".to_string(),
            };
            pairs.push(format!("({g}, 1)"));
            match grp.window {
                Some(w) => {
                    let end = format!("(__e + {})", i64::from(w) - 1);
                    let exists = format!("{start} <= {t} AND {end} >= {f} AND {start} <= {end}");
                    conds.push(format!("(__grp = {g} AND __sign = 1 AND {exists})"));
                    conds.push(format!(
                        "(__grp = {g} AND __sign = -1 AND {exists} AND {end} + 1 <= {t})"
                    ));
                    pairs.push(format!("({g}, -1)"));
                    day_cases.push(format!(
                        "WHEN __grp = {g} AND __sign = 1 THEN greatest({start}, {f})"
                    ));
                    day_cases.push(format!("WHEN __grp = {g} AND __sign = -1 THEN {end} + 1"));
                }
                None => {
                    conds.push(format!("(__grp = {g} AND __sign = 1 AND {start} <= {t})"));
                    day_cases.push(format!("WHEN __grp = {g} THEN greatest({start}, {f})"));
                }
            }
        }
        if has_frame {
            pairs.push(format!("({frame_group}, 0)"));
            conds.push(format!("(__grp = {frame_group} AND __e <= {t})"));
            day_cases.push(format!("WHEN __grp = {frame_group} THEN __e"));
        }
        let mut own: BTreeMap<String, String> = BTreeMap::new();
        for (i, x) in &feats {
            if x.function.is_additive() {
                let g = group_of[i];
                own.insert(
                    format!("d{i}_s"),
                    format!("CASE WHEN __grp = {g} THEN __sign * s{i} END"),
                );
                if x.function != Function::Count {
                    own.insert(
                        format!("d{i}_c"),
                        format!("CASE WHEN __grp = {g} THEN __sign * c{i} END"),
                    );
                }
            } else {
                own.insert(
                    format!("m{i}"),
                    format!("CASE WHEN __grp = {frame_group} THEN m{i} END"),
                );
            }
        }
        branches.push(format!(
            "SELECT __k, CAST(CASE {} END AS BIGINT) AS __day, 0 AS __g, {} \
             FROM p_{src_name} CROSS JOIN (VALUES {}) AS x(__grp, __sign) WHERE {}",
            day_cases.join(" "),
            nulls_except(&own),
            pairs.join(", "),
            conds.join(" OR ")
        ));
    }
    ctes.push(format!("rows AS ({})", branches.join(" UNION ALL ")));

    // Daily totals.
    let mut daily = vec!["__k".to_string(), "__day".to_string(), "max(__g) AS __g".to_string()];
    for (i, x) in spec.features.iter().enumerate() {
        match x.function {
            Function::Count => daily.push(format!("sum(d{i}_s) AS d{i}_s")),
            Function::Sum | Function::Avg => {
                daily.push(format!("sum(d{i}_s) AS d{i}_s"));
                daily.push(format!("sum(d{i}_c) AS d{i}_c"));
            }
            Function::Min => daily.push(format!("min(m{i}) AS m{i}")),
            Function::Max | Function::Latest => daily.push(format!("max(m{i}) AS m{i}")),
        }
    }
    ctes.push(format!("daily AS (SELECT {} FROM rows GROUP BY 1, 2)", daily.join(", ")));

    // Windows.
    let running =
        "PARTITION BY __k ORDER BY __day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW";
    let mut win = vec!["__k".to_string(), "__day".to_string(), "__g".to_string()];
    for (i, x) in spec.features.iter().enumerate() {
        match x.function {
            Function::Count => win.push(format!("sum(d{i}_s) OVER ({running}) AS r{i}_s")),
            Function::Sum | Function::Avg => {
                win.push(format!("sum(d{i}_s) OVER ({running}) AS r{i}_s"));
                win.push(format!("sum(d{i}_c) OVER ({running}) AS r{i}_c"));
            }
            Function::Min | Function::Max | Function::Latest => {
                let agg = if x.function == Function::Min { "min" } else { "max" };
                let frame = match x.window {
                    Window::Days(w) => format!(
                        "PARTITION BY __k ORDER BY __day RANGE BETWEEN {} PRECEDING AND CURRENT ROW",
                        w - 1
                    ),
                    Window::Unbounded(_) => running.to_string(),
                };
                win.push(format!("{agg}(m{i}) OVER ({frame}) AS r{i}"));
            }
        }
    }
    ctes.push(format!("win AS (SELECT {} FROM daily)", win.join(", ")));

    // Base rows: the grid, with feature values and dimension columns.
    let mut base = vec![
        format!("w.__k AS {}", quote(key)),
        "arrow_cast(CAST(w.__day AS INT), 'Date32') AS feature_date".to_string(),
    ];
    for (i, x) in spec.features.iter().enumerate() {
        let value = match x.function {
            Function::Count => format!("coalesce(r{i}_s, 0)"),
            Function::Sum => match default_literal(x) {
                Some(d) => format!("CASE WHEN coalesce(r{i}_c, 0) > 0 THEN r{i}_s ELSE {d} END"),
                None => format!("CASE WHEN coalesce(r{i}_c, 0) > 0 THEN r{i}_s END"),
            },
            Function::Avg => {
                let avg = format!("CAST(r{i}_s AS DOUBLE) / r{i}_c");
                match default_literal(x) {
                    Some(d) => format!("CASE WHEN coalesce(r{i}_c, 0) > 0 THEN {avg} ELSE {d} END"),
                    None => format!("CASE WHEN coalesce(r{i}_c, 0) > 0 THEN {avg} END"),
                }
            }
            Function::Min | Function::Max | Function::Latest => match default_literal(x) {
                Some(d) => format!("coalesce(r{i}, {d})"),
                None => format!("r{i}"),
            },
        };
        base.push(format!("{value} AS {}", quote(&x.name)));
    }
    let mut joins = String::new();
    for (j, d) in spec.dimensions.iter().enumerate() {
        let dkey = d.key.clone().unwrap_or_else(|| key.clone());
        let _ = write!(
            joins,
            " LEFT JOIN {} AS dim{j} ON dim{j}.{} = w.__k",
            quote(&d.source),
            quote(&dkey)
        );
        for c in &d.columns {
            base.push(format!("dim{j}.{} AS {}", quote(c), quote(c)));
        }
    }
    ctes.push(format!("base AS (SELECT {} FROM win AS w{joins} WHERE w.__g = 1)", base.join(", ")));

    let mut out = vec![quote(key), "feature_date".to_string()];
    out.extend(spec.features.iter().filter(|x| x.output).map(|x| quote(&x.name)));
    out.extend(spec.derived.iter().map(|d| format!("{} AS {}", d.expr, quote(&d.name))));
    out.extend(spec.dimensions.iter().flat_map(|d| d.columns.iter().map(|c| quote(c))));
    format!("WITH {} SELECT {} FROM base", ctes.join(",\n"), out.join(", "))
}

/// `COPY` of a chunk into `staging` (a folder), partitioned by feature date.
pub fn copy_statement(
    spec: &JobSpec,
    first: NaiveDate,
    last: NaiveDate,
    types: &ColumnTypes,
    staging: &str,
) -> String {
    format!(
        "COPY ({}) TO '{}' STORED AS PARQUET PARTITIONED BY (feature_date) OPTIONS ('format.compression' '{}')",
        chunk_query(spec, first, last, types),
        staging.replace('\'', "''"),
        spec.output.compression.replace('\'', "''"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec::parse(include_str!("../../jobs/churn.yaml"), "churn.yaml").expect("valid")
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn each_source_is_scanned_once_with_the_right_bounds() {
        let sql = chunk_query(&spec(), date("2024-03-01"), date("2024-03-31"), &ColumnTypes::new());
        for src in ["transactions", "events", "tickets"] {
            assert_eq!(sql.matches(&format!("FROM \"{src}\"")).count(), 1, "{src}: {sql}");
        }
        // transactions: 30-day window → from 2024-02-01 (2024 is a leap year);
        // tickets: 90 days → 2023-12-03.
        assert!(sql.contains("\"ts\" >= TIMESTAMP '2024-02-01 00:00:00'"), "{sql}");
        assert!(sql.contains("\"created_ts\" >= TIMESTAMP '2023-12-03 00:00:00'"), "{sql}");
        // events has an unbounded feature: no lower bound.
        let events = sql.split("p_events AS").nth(1).expect("events cte");
        let events = events.split("GROUP BY").next().expect("where");
        assert!(!events.contains(">="), "{events}");
    }

    #[test]
    fn window_length_only_changes_constants() {
        let s = spec();
        let mut tripled = s.clone();
        for f in &mut tripled.features {
            if let Window::Days(w) = f.window {
                f.window = Window::Days(w * 3);
            }
        }
        let a = chunk_query(&s, date("2024-03-01"), date("2024-03-31"), &ColumnTypes::new());
        let b = chunk_query(&tripled, date("2024-03-01"), date("2024-03-31"), &ColumnTypes::new());
        let shape = |q: &str| q.chars().filter(|c| !c.is_ascii_digit()).collect::<String>();
        assert_eq!(shape(&a), shape(&b), "tripling windows must not change the plan's shape");
    }
}
