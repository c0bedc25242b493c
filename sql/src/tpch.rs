//! The 22 TPC-H queries (validation parameters) and the table list, shared by
//! the differential tests, the benchmark runner and `sluice demo`.
//!
//! Q15's view is written as a CTE so every query is a single statement.

/// The eight TPC-H tables, in generation order.
pub const TABLES: [&str; 8] =
    ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"];

macro_rules! tpch_queries {
    ($($n:literal),*) => {
        /// `(query number, SQL)` for Q1..=Q22.
        pub const QUERIES: [(u32, &str); 22] = [
            $(($n, include_str!(concat!("../queries/tpch/q", $n, ".sql")))),*
        ];
    };
}

tpch_queries!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22);

/// The SQL of query `n` (1-based).
pub fn query(n: u32) -> Option<&'static str> {
    QUERIES.iter().find(|(q, _)| *q == n).map(|(_, sql)| *sql)
}

/// Whether the query's result order is defined (top-level ORDER BY).
pub fn is_ordered(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    // Top-level ORDER BY is the last one and is not followed by a ')'.
    match lower.rfind("order by") {
        Some(pos) => !lower[pos..].contains(')'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_22_queries_are_single_statements() {
        for (n, sql) in QUERIES {
            assert!(!sql.trim().is_empty(), "q{n} empty");
            assert!(!sql.trim().trim_end_matches(';').contains(';'), "q{n} has several statements");
        }
        assert!(is_ordered(query(1).expect("q1")));
    }
}
