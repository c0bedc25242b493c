//! Quality expectations, compiled to SQL over a chunk's staged output.
//!
//! One query per chunk ([`chunk_checks_sql`]) counts rows per feature date
//! and, per date, the violations of every row-level check (not_null,
//! between, in_set) and of a unique key made of `feature_date` and one more
//! column (the repeated rows). Any other unique key gets its own query.
//! Samples of failing rows are fetched only for failed expectations.

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

/// For a unique key of `feature_date` plus one column, that column: then
/// [`chunk_checks_sql`] counts its repeated rows per date.
pub fn unique_key_per_date(columns: &[String]) -> Option<&str> {
    match columns {
        [a, b] if a == "feature_date" && b != "feature_date" => Some(b),
        [a, b] if b == "feature_date" && a != "feature_date" => Some(a),
        _ => None,
    }
}

/// The chunk's checks in one query, per feature date: `__d` (the date as
/// VARCHAR), `__n` (rows), and `e<i>` for each expectation `i` checked here
/// (row-level checks: violating rows; unique keys per
/// [`unique_key_per_date`]: rows repeating a key).
pub fn chunk_checks_sql(spec: &JobSpec, table: &str) -> String {
    let mut cols =
        vec!["CAST(feature_date AS VARCHAR) AS __d".to_string(), "count(*) AS __n".to_string()];
    for (i, e) in spec.expectations.iter().enumerate() {
        if let Some(v) = violation(e) {
            cols.push(format!("count(CASE WHEN {v} THEN 1 END) AS e{i}"));
        } else if let Expectation::UniqueKey { columns } = e {
            if let Some(c) = unique_key_per_date(columns) {
                cols.push(format!("count({c}) - count(DISTINCT {c}) AS e{i}", c = quote(c)));
            }
        }
    }
    format!("SELECT {} FROM {} GROUP BY 1", cols.join(", "), quote(table))
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
    fn every_churn_expectation_is_checked_in_one_query() {
        let spec =
            JobSpec::parse(include_str!("../../jobs/churn.yaml"), "churn.yaml").expect("valid");
        let sql = chunk_checks_sql(&spec, "stg");
        assert_eq!(sql.matches(" FROM ").count(), 1, "{sql}");
        assert!(sql.contains("count(\"user_id\") - count(DISTINCT \"user_id\") AS e0"), "{sql}");
        assert_eq!(sql.matches("count(CASE WHEN").count(), 6, "{sql}");
        assert_eq!(unique_key_per_date(&["a".into(), "b".into()]), None);
    }

    #[test]
    fn row_level_expectations_share_one_query() {
        let spec =
            JobSpec::parse(include_str!("../../jobs/churn.yaml"), "churn.yaml").expect("valid");
        let sql = chunk_checks_sql(&spec, "stg");
        assert!(sql.contains("\"total_spend_30d\" < 0"), "{sql}");
        assert!(sql.contains("NOT IN ('consumer', 'smb', 'enterprise')"), "{sql}");
    }
}
