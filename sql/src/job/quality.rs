//! Quality expectations, compiled to SQL over a chunk's staged output.
//!
//! Row-level checks (not_null, between, in_set) share one aggregate query;
//! unique keys and per-date row counts get one query each. Samples of
//! failing rows are fetched only for failed expectations.

use crate::job::spec::{Expectation, JobSpec};

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The predicate matching rows that violate a row-level expectation.
pub fn violation(e: &Expectation) -> Option<String> {
    match e {
        Expectation::NotNull { column } => Some(format!("{} IS NULL", quote(column))),
        Expectation::Between { column, min, max } => {
            let c = quote(column);
            let mut parts = Vec::new();
            if let Some(min) = min {
                parts.push(format!("{c} < {min}"));
            }
            if let Some(max) = max {
                parts.push(format!("{c} > {max}"));
            }
            (!parts.is_empty()).then(|| format!("({})", parts.join(" OR ")))
        }
        Expectation::InSet { column, values } => {
            let list: Vec<String> = values.iter().map(|v| lit(v)).collect();
            Some(format!(
                "({c} IS NOT NULL AND CAST({c} AS VARCHAR) NOT IN ({}))",
                list.join(", "),
                c = quote(column)
            ))
        }
        Expectation::UniqueKey { .. } | Expectation::RowCountBetween { .. } => None,
    }
}

/// One query counting the violations of every row-level expectation, with
/// one column `e<i>` per expectation index (absent for the others).
pub fn row_checks_sql(spec: &JobSpec, table: &str) -> Option<String> {
    let cols: Vec<String> = spec
        .expectations
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            violation(e).map(|v| format!("count(CASE WHEN {v} THEN 1 END) AS e{i}"))
        })
        .collect();
    (!cols.is_empty()).then(|| format!("SELECT {} FROM {}", cols.join(", "), quote(table)))
}

/// Rows with the same key more than once: `(key columns..., n)`.
pub fn duplicate_keys_sql(columns: &[String], table: &str, limit: usize) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    format!(
        "SELECT {cols}, count(*) AS n FROM {t} GROUP BY {cols} HAVING count(*) > 1 ORDER BY n DESC LIMIT {limit}",
        cols = cols.join(", "),
        t = quote(table)
    )
}

/// Number of distinct keys that occur more than once.
pub fn duplicate_count_sql(columns: &[String], table: &str) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    format!(
        "SELECT count(*) AS n FROM (SELECT {cols} FROM {t} GROUP BY {cols} HAVING count(*) > 1)",
        cols = cols.join(", "),
        t = quote(table)
    )
}

/// Rows per feature date: `(feature_date VARCHAR, n)`.
pub fn rows_per_date_sql(table: &str) -> String {
    format!(
        "SELECT CAST(feature_date AS VARCHAR) AS d, count(*) AS n FROM {} GROUP BY 1",
        quote(table)
    )
}

/// A few failing rows of a row-level expectation.
pub fn samples_sql(spec: &JobSpec, e: &Expectation, table: &str, limit: usize) -> Option<String> {
    let v = violation(e)?;
    let column = match e {
        Expectation::NotNull { column }
        | Expectation::Between { column, .. }
        | Expectation::InSet { column, .. } => column,
        _ => return None,
    };
    Some(format!(
        "SELECT {k}, CAST(feature_date AS VARCHAR) AS feature_date, {c} FROM {t} WHERE {v} ORDER BY 2, 1 LIMIT {limit}",
        k = quote(&spec.entity.key),
        c = quote(column),
        t = quote(table)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_level_expectations_share_one_query() {
        let spec =
            JobSpec::parse(include_str!("../../jobs/churn.yaml"), "churn.yaml").expect("valid");
        let sql = row_checks_sql(&spec, "stg").expect("has row checks");
        assert_eq!(sql.matches("count(CASE WHEN").count(), 6, "{sql}");
        assert!(sql.contains("\"total_spend_30d\" < 0"), "{sql}");
        assert!(sql.contains("NOT IN ('consumer', 'smb', 'enterprise')"), "{sql}");
    }
}
