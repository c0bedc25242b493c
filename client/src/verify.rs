//! Comparing a cluster's answer with single-node DataFusion's.
//!
//! Values are rendered as text; floating-point values are rounded to 9
//! significant digits (distributed partial aggregates sum in a different
//! order), and rows are sorted unless the query defines an order.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// A result rendered as one string per row.
pub fn normalize(batches: &[RecordBatch]) -> anyhow::Result<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let mut columns: Vec<Box<dyn Fn(usize) -> String + '_>> = Vec::new();
        for col in batch.columns() {
            let col: &dyn Array = col.as_ref();
            match col.data_type() {
                DataType::Float64 => {
                    let a = col.as_primitive::<Float64Type>();
                    columns.push(Box::new(move |i| {
                        if a.is_null(i) { "NULL".into() } else { float(a.value(i)) }
                    }));
                }
                DataType::Float32 => {
                    let a = col.as_primitive::<Float32Type>();
                    columns.push(Box::new(move |i| {
                        if a.is_null(i) { "NULL".into() } else { float(a.value(i) as f64) }
                    }));
                }
                _ => {
                    let f = ArrayFormatter::try_new(col, &options)?;
                    columns.push(Box::new(move |i| f.value(i).to_string()));
                }
            }
        }
        for i in 0..batch.num_rows() {
            let row: Vec<String> = columns.iter().map(|c| c(i)).collect();
            rows.push(row.join("|"));
        }
    }
    Ok(rows)
}

fn float(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return v.to_string();
    }
    format!("{v:.15e}")
}

/// Whether two rendered cells are equal: the same text, or two numbers
/// within a relative 1e-9 (float sums in a different order).
fn cells_equal(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => {
            let scale = x.abs().max(y.abs()).max(1e-300);
            (x - y).abs() / scale < 1e-9
        }
        _ => false,
    }
}

fn rows_equal(a: &str, b: &str) -> bool {
    let (ca, cb): (Vec<&str>, Vec<&str>) = (a.split('|').collect(), b.split('|').collect());
    ca.len() == cb.len() && ca.iter().zip(&cb).all(|(x, y)| cells_equal(x, y))
}

/// Compares two results; `ordered` keeps row order significant.
///
/// # Errors
/// A description of the first difference.
pub fn compare(
    expected: &[RecordBatch],
    actual: &[RecordBatch],
    ordered: bool,
) -> anyhow::Result<()> {
    let mut e = normalize(expected)?;
    let mut a = normalize(actual)?;
    if !ordered {
        e.sort();
        a.sort();
    }
    if e.len() != a.len() {
        anyhow::bail!("row counts differ: expected {}, got {}", e.len(), a.len());
    }
    if let Some((i, (x, y))) = e.iter().zip(&a).enumerate().find(|(_, (x, y))| !rows_equal(x, y)) {
        anyhow::bail!("row {i} differs:\n  expected: {x}\n  actual:   {y}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(ints: Vec<i64>, floats: Vec<f64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, false),
            Field::new("f", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(ints)), Arc::new(Float64Array::from(floats))],
        )
        .expect("batch")
    }

    #[test]
    fn tolerates_float_noise_and_unordered_rows() {
        let a = batch(vec![1, 2], vec![0.1 + 0.2, 5.0]);
        let b = batch(vec![2, 1], vec![5.0, 0.3]);
        compare(&[a.clone()], &[b.clone()], false).expect("equal as sets");
        assert!(compare(&[a], &[b], true).is_err());
    }

    #[test]
    fn reports_real_differences() {
        let a = batch(vec![1, 2], vec![1.0, 2.0]);
        let b = batch(vec![1, 2], vec![1.0, 2.001]);
        let err = compare(&[a], &[b], false).expect_err("differs");
        assert!(err.to_string().contains("row 1 differs"), "{err}");
    }
}
