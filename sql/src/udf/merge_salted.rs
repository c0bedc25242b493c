//! `sluice_merge_salted(ops, keys, rows)`: the merge of a salted backfill's
//! windows (`crate::job::plan`), one list of rows per feature date.
//!
//! ```sql
//! sluice_merge_salted('sum,sum,max', make_array(1, 2),
//!                     array_agg(named_struct('__k', __k, '__d', __d, 'c0', c0, ...)))
//!   -- GROUP BY date  →  the same rows, each hot entity's rows of one day merged into one
//! ```
//!
//! `rows` is a list of structs with the entity key `__k`, the day `__d`,
//! the window values `c0, c1, …` and any other fields. A hot entity (its key
//! in `keys`) has one row per salt and day: its rows of one day become one,
//! `c<j>` combined by the `j`-th operation of `ops` (`sum`, `min`, `max`,
//! NULLs ignored as in SQL), other fields taken from its first row (they are
//! the entity's, equal in every salt). Rows of other entities pass through
//! unchanged: the function touches only the hot rows, so the merge costs the
//! salted backfill no shuffle and no hash aggregation of its own (it rides on
//! the grouping by date that the partitioned write needs anyway).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray, StructArray, UInt32Array};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::hot_salt::{hot_key_of, list_literal};

/// The function's name in SQL.
pub const NAME: &str = "sluice_merge_salted";

/// How a window column of a hot entity's salts is combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    Sum,
    Min,
    Max,
}

fn parse_ops(s: &str) -> Result<Vec<Merge>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p {
            "sum" => Ok(Merge::Sum),
            "min" => Ok(Merge::Min),
            "max" => Ok(Merge::Max),
            other => {
                exec_err!("{NAME}: unknown operation '{other}' in '{s}'; expected sum, min or max")
            }
        })
        .collect()
}

/// Combines the non-NULL values of `rows` of `column`.
fn combine(column: &ArrayRef, rows: &[u32], op: Merge) -> Result<ScalarValue> {
    let mut acc: Option<ScalarValue> = None;
    for &r in rows {
        let v = ScalarValue::try_from_array(column, r as usize)?;
        if v.is_null() {
            continue;
        }
        acc = Some(match (acc, op) {
            (None, _) => v,
            (Some(a), Merge::Sum) => a.add(&v)?,
            (Some(a), Merge::Min) => {
                if v.partial_cmp(&a) == Some(std::cmp::Ordering::Less) {
                    v
                } else {
                    a
                }
            }
            (Some(a), Merge::Max) => {
                if v.partial_cmp(&a) == Some(std::cmp::Ordering::Greater) {
                    v
                } else {
                    a
                }
            }
        });
    }
    match acc {
        Some(v) => Ok(v),
        None => ScalarValue::try_from(column.data_type()),
    }
}

/// One date's rows with each hot entity's rows of a day merged.
fn merge_rows(rows: &StructArray, ops: &[Merge], keys: &ArrayRef) -> Result<ArrayRef> {
    let (Some(key), Some(day)) = (rows.column_by_name("__k"), rows.column_by_name("__d")) else {
        return exec_err!("{NAME}: the rows need fields __k and __d");
    };
    let which = hot_key_of(keys, key)?;
    if which.iter().all(Option::is_none) {
        return Ok(Arc::new(rows.clone()));
    }
    let day = cast(day, &DataType::Int64)?;
    let day = day.as_primitive::<Int64Type>();
    // Cold rows as they are, then one row per (hot key, day), in key order.
    let mut cold = Vec::new();
    let mut hot: BTreeMap<(u32, i64), Vec<u32>> = BTreeMap::new();
    for (r, w) in which.iter().enumerate() {
        match w {
            Some(k) if day.is_valid(r) => hot.entry((*k, day.value(r))).or_default().push(r as u32),
            _ => cold.push(r as u32),
        }
    }
    let cold = UInt32Array::from(cold);
    let firsts = UInt32Array::from(hot.values().map(|g| g[0]).collect::<Vec<_>>());
    let mut columns = Vec::with_capacity(rows.num_columns());
    for (field, column) in rows.fields().iter().zip(rows.columns()) {
        let merged: ArrayRef =
            match field.name().strip_prefix('c').and_then(|j| j.parse::<usize>().ok()) {
                Some(j) => {
                    let Some(op) = ops.get(j) else {
                        return exec_err!(
                            "{NAME}: no operation for field {} ({} given)",
                            field.name(),
                            ops.len()
                        );
                    };
                    let values: Vec<ScalarValue> =
                        hot.values().map(|g| combine(column, g, *op)).collect::<Result<_>>()?;
                    let merged = ScalarValue::iter_to_array(values)?;
                    cast(&merged, field.data_type())?
                }
                None => take(column, &firsts, None)?,
            };
        columns.push(concat(&[&take(column, &cold, None)?, &merged])?);
    }
    Ok(Arc::new(StructArray::try_new(rows.fields().clone(), columns, None)?))
}

/// The function; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MergeSalted {
    signature: Signature,
}

impl Default for MergeSalted {
    fn default() -> Self {
        Self { signature: Signature::any(3, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for MergeSalted {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.get(2) {
            Some(t @ DataType::List(f)) if matches!(f.data_type(), DataType::Struct(_)) => {
                Ok(t.clone())
            }
            other => {
                plan_err!("{NAME}(ops, keys, rows): rows must be a list of structs, not {other:?}")
            }
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ops = match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => parse_ops(s)?,
            other => return exec_err!("{NAME}: ops must be a text literal, not {other:?}"),
        };
        let keys = list_literal(NAME, "the hot keys", &args.args[1])?;
        let lists = args.args[2].to_array(args.number_rows)?;
        let lists = lists.as_list::<i32>();
        let mut parts: Vec<ArrayRef> = Vec::with_capacity(lists.len());
        let mut lengths = Vec::with_capacity(lists.len());
        for i in 0..lists.len() {
            if lists.is_null(i) {
                lengths.push(0);
                continue;
            }
            let value = lists.value(i);
            let merged = merge_rows(value.as_struct(), &ops, &keys)?;
            lengths.push(merged.len());
            parts.push(merged);
        }
        let DataType::List(field) = lists.data_type() else {
            return exec_err!("{NAME}: rows must be a list");
        };
        let values = match parts.is_empty() {
            true => lists.values().slice(0, 0),
            false => concat(&parts.iter().map(|p| p.as_ref()).collect::<Vec<_>>())?,
        };
        let out = ListArray::try_new(
            Arc::clone(field),
            OffsetBuffer::from_lengths(lengths),
            values,
            lists.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Fields};

    use super::*;

    fn rows(k: Vec<i64>, d: Vec<i64>, c0: Vec<Option<i64>>, c1: Vec<Option<f64>>) -> StructArray {
        let n = k.len();
        let fields = Fields::from(vec![
            Field::new("__k", DataType::Int64, false),
            Field::new("__d", DataType::Int64, false),
            Field::new("c0", DataType::Int64, true),
            Field::new("c1", DataType::Float64, true),
            Field::new("seg", DataType::Utf8, true),
        ]);
        StructArray::try_new(
            fields,
            vec![
                Arc::new(Int64Array::from(k)),
                Arc::new(Int64Array::from(d)),
                Arc::new(Int64Array::from(c0)),
                Arc::new(Float64Array::from(c1)),
                Arc::new(StringArray::from(vec!["a"; n])),
            ],
            None,
        )
        .expect("struct")
    }

    #[test]
    fn hot_rows_of_a_day_merge_and_cold_rows_pass_through() -> Result<()> {
        // Key 7 is hot: three salts on day 1 (one NULL), one on day 2.
        // Key 3 is cold, with two rows on day 1 that must stay two.
        let input = rows(
            vec![3, 7, 7, 3, 7, 7],
            vec![1, 1, 1, 1, 1, 2],
            vec![Some(1), Some(10), None, Some(2), Some(5), Some(4)],
            vec![Some(0.5), Some(1.0), Some(3.0), None, Some(2.0), None],
        );
        let keys: ArrayRef = Arc::new(Int64Array::from(vec![7]));
        let out = merge_rows(&input, &[Merge::Sum, Merge::Max], &keys)?;
        let out = out.as_struct();
        assert_eq!(out.len(), 4);
        let k = out.column(0).as_primitive::<Int64Type>().values().to_vec();
        let d = out.column(1).as_primitive::<Int64Type>().values().to_vec();
        let c0: Vec<Option<i64>> = out.column(2).as_primitive::<Int64Type>().iter().collect();
        let c1: Vec<Option<f64>> = out
            .column(3)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
            .iter()
            .collect();
        assert_eq!(k, vec![3, 3, 7, 7]);
        assert_eq!(d, vec![1, 1, 1, 2]);
        assert_eq!(c0, vec![Some(1), Some(2), Some(15), Some(4)]);
        assert_eq!(c1, vec![Some(0.5), None, Some(3.0), None]);
        assert_eq!(out.column(4).as_string::<i32>().value(3), "a");
        Ok(())
    }

    #[test]
    fn without_hot_rows_the_rows_are_unchanged() -> Result<()> {
        let input = rows(vec![1, 2], vec![1, 1], vec![Some(1), None], vec![None, Some(1.0)]);
        let keys: ArrayRef = Arc::new(Int64Array::from(vec![9]));
        let out = merge_rows(&input, &[Merge::Min, Merge::Min], &keys)?;
        assert_eq!(out.as_struct(), &input);
        Ok(())
    }

    #[test]
    fn bad_operations_are_rejected() {
        let err = parse_ops("sum,avg").expect_err("avg");
        assert!(err.to_string().contains("unknown operation 'avg'"), "{err}");
    }
}
