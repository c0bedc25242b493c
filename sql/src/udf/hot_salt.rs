//! The salts of the join salting rewrite (`crate::skew`), one pass per batch:
//!
//! - `sluice_hot_salt(keys, salts, key, v1, v2, ...)` (left side, BIGINT):
//!   for a row whose `key` equals `keys[i]`, `salts[i*S + h % S]` where
//!   `h` is the hash of `v1, v2, ...` (DataFusion's `create_hashes` with a
//!   fixed seed) and `S = len(salts) / len(keys)`; 0 for every other row.
//! - `sluice_hot_salts(keys, salts, key)` (right side, `LIST<BIGINT>`): the
//!   `S` salts of the row's key when it is hot, `[0]` otherwise; unnested
//!   into one row per salt.
//!
//! `keys` is a list literal of the hot key values, `salts` a flat list
//! literal of BIGINT. The salt is a function of the row only, never random,
//! so a map task recomputed after an executor loss puts every row in the
//! same bucket again, and every process computes the same value. Only the
//! hot rows are hashed: the keys are matched with one vectorized comparison
//! per hot key (a `CASE` with a branch per key copied the batch per branch).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, Int64Builder, ListArray, ListBuilder, Scalar,
    UInt32Array,
};
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::compute::{cast, prep_null_mask_filter, take};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// The left side's function.
pub const HOT_SALT: &str = "sluice_hot_salt";
/// The right side's function.
pub const HOT_SALTS: &str = "sluice_hot_salts";

/// Seed of the salt hash (any fixed value; differs from the shuffle's).
const SEED: u64 = 0x5a17_5a17;

/// The literal arguments: the hot keys and their salts.
struct Table {
    keys: ArrayRef,
    salts: Vec<i64>,
    per_key: usize,
}

pub(crate) fn list_literal(name: &str, what: &str, arg: &ColumnarValue) -> Result<ArrayRef> {
    match arg {
        ColumnarValue::Scalar(ScalarValue::List(list)) if list.len() == 1 && !list.is_null(0) => {
            Ok(list.value(0))
        }
        other => exec_err!("{name}: {what} must be a list literal, not {other:?}"),
    }
}

impl Table {
    fn of(name: &str, args: &[ColumnarValue]) -> Result<Self> {
        let keys = list_literal(name, "the hot keys", &args[0])?;
        let salts = list_literal(name, "the salts", &args[1])?;
        let Some(salts) =
            salts.as_any().downcast_ref::<Int64Array>().filter(|s| s.null_count() == 0)
        else {
            return exec_err!("{name}: the salts must be BIGINT without NULLs");
        };
        if keys.is_empty() || salts.is_empty() || salts.len() % keys.len() != 0 {
            return exec_err!(
                "{name}: {} salts do not divide among {} hot keys",
                salts.len(),
                keys.len()
            );
        }
        Ok(Table { per_key: salts.len() / keys.len(), salts: salts.values().to_vec(), keys })
    }

    /// For each row of `key`, the index of its hot key.
    fn matches(&self, key: &ArrayRef) -> Result<Vec<Option<u32>>> {
        hot_key_of(&self.keys, key)
    }
}

/// For each row of `key`, the index in `keys` of its value, if there: one
/// vectorized comparison per key.
pub(crate) fn hot_key_of(keys: &ArrayRef, key: &ArrayRef) -> Result<Vec<Option<u32>>> {
    let key = if key.data_type() == keys.data_type() {
        key.clone()
    } else {
        cast(key, keys.data_type())?
    };
    let mut which = vec![None; key.len()];
    for i in 0..keys.len() {
        if keys.is_null(i) {
            continue;
        }
        let hit: BooleanArray = eq(&key, &Scalar::new(keys.slice(i, 1)))?;
        // NULL (a NULL key) counts as no match.
        let hit = if hit.null_count() > 0 { prep_null_mask_filter(&hit) } else { hit };
        for row in hit.values().set_indices() {
            which[row].get_or_insert(i as u32);
        }
    }
    Ok(which)
}

fn check_arity(name: &str, arg_types: &[DataType], min: usize) -> Result<()> {
    if arg_types.len() < min {
        return plan_err!(
            "{name} takes (keys, salts, key{})",
            if min > 3 { ", value, ..." } else { "" }
        );
    }
    Ok(())
}

/// `sluice_hot_salt`: the left side's salt of each row.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HotSalt {
    signature: Signature,
}

impl Default for HotSalt {
    fn default() -> Self {
        Self { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for HotSalt {
    fn name(&self) -> &str {
        HOT_SALT
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_arity(HOT_SALT, arg_types, 4)?;
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() < 4 {
            return exec_err!("{HOT_SALT} takes (keys, salts, key, value, ...)");
        }
        let table = Table::of(HOT_SALT, &args.args)?;
        let rows = args.number_rows;
        let key = args.args[2].to_array(rows)?;
        let which = table.matches(&key)?;
        let hot: Vec<u32> =
            which.iter().enumerate().filter(|(_, w)| w.is_some()).map(|(r, _)| r as u32).collect();
        let mut out = vec![0i64; rows];
        if !hot.is_empty() {
            let indices = UInt32Array::from(hot.clone());
            let values: Vec<ArrayRef> = args.args[3..]
                .iter()
                .map(|a| a.to_array(rows).and_then(|a| Ok(take(&a, &indices, None)?)))
                .collect::<Result<_>>()?;
            let mut hashes = vec![0u64; hot.len()];
            create_hashes(&values, &RandomState::with_seed(SEED), &mut hashes)?;
            for (row, h) in hot.iter().zip(hashes) {
                if let Some(i) = which[*row as usize] {
                    let bucket = (h % table.per_key as u64) as usize;
                    out[*row as usize] = table.salts[i as usize * table.per_key + bucket];
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(Int64Array::from(out))))
    }
}

/// `sluice_hot_salts`: the right side's salts of each row.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HotSalts {
    signature: Signature,
}

impl Default for HotSalts {
    fn default() -> Self {
        Self { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for HotSalts {
    fn name(&self) -> &str {
        HOT_SALTS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_arity(HOT_SALTS, arg_types, 3)?;
        Ok(DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() != 3 {
            return exec_err!("{HOT_SALTS} takes (keys, salts, key)");
        }
        let table = Table::of(HOT_SALTS, &args.args)?;
        let key = args.args[2].to_array(args.number_rows)?;
        let which = table.matches(&key)?;
        let mut out = ListBuilder::with_capacity(Int64Builder::new(), which.len());
        for w in which {
            match w {
                Some(i) => {
                    let start = i as usize * table.per_key;
                    out.values().append_slice(&table.salts[start..start + table.per_key]);
                }
                None => out.values().append_value(0),
            }
            out.append(true);
        }
        let out: ListArray = out.finish();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::logical_expr::ScalarUDF;
    use datafusion::prelude::SessionContext;

    use super::*;

    fn ctx() -> SessionContext {
        let ctx = SessionContext::new();
        ctx.register_udf(ScalarUDF::from(HotSalt::default()));
        ctx.register_udf(ScalarUDF::from(HotSalts::default()));
        ctx
    }

    const ROWS: &str =
        "FROM (SELECT CAST(value % 10 AS BIGINT) AS k, value AS v FROM generate_series(1, 3000))";

    async fn left(sql: &str) -> Result<Vec<(i64, i64)>> {
        let batches = ctx().sql(sql).await?.collect().await?;
        Ok(batches
            .iter()
            .flat_map(|b| {
                let k = b.column(0).as_primitive::<Int64Type>();
                let s = b.column(1).as_primitive::<Int64Type>();
                (0..b.num_rows()).map(|i| (k.value(i), s.value(i))).collect::<Vec<_>>()
            })
            .collect())
    }

    #[tokio::test]
    async fn hot_rows_pick_their_keys_salts_and_cold_rows_get_zero() {
        // Keys 3 and 7 are hot with salts [11, 12, 13] and [21, 22, 23].
        let sql = format!(
            "SELECT k, {HOT_SALT}(make_array(CAST(3 AS BIGINT), 7), make_array(CAST(11 AS BIGINT), 12, 13, 21, 22, 23), k, k, v) {ROWS}"
        );
        let rows = left(&sql).await.expect("salts");
        assert_eq!(rows.len(), 3000);
        for (k, s) in &rows {
            match k {
                3 => assert!((11..=13).contains(s), "{k} {s}"),
                7 => assert!((21..=23).contains(s), "{k} {s}"),
                _ => assert_eq!(*s, 0, "cold key {k}"),
            }
        }
        for s in [11, 12, 13, 21, 22, 23] {
            assert!(rows.iter().filter(|(_, x)| *x == s).count() > 50, "salt {s} rarely picked");
        }
        assert_eq!(rows, left(&sql).await.expect("again"), "not deterministic");
    }

    #[tokio::test]
    async fn right_rows_carry_their_keys_salts() {
        let sql = format!(
            "SELECT k, {HOT_SALTS}(make_array(CAST(3 AS BIGINT)), make_array(CAST(11 AS BIGINT), 12), k) FROM (VALUES (CAST(3 AS BIGINT)), (4), (NULL)) AS t(k)"
        );
        let batches = ctx().sql(&sql).await.expect("plan").collect().await.expect("run");
        let lists = batches[0].column(1).as_list::<i32>();
        let row = |i: usize| lists.value(i).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(row(0), vec![11, 12]);
        assert_eq!(row(1), vec![0]);
        assert_eq!(row(2), vec![0], "a NULL key is cold");
    }

    #[tokio::test]
    async fn salts_that_do_not_divide_among_the_keys_are_an_error() {
        let sql = format!(
            "SELECT {HOT_SALT}(make_array(CAST(3 AS BIGINT), 7), make_array(CAST(11 AS BIGINT), 12, 13), k, v) {ROWS}"
        );
        let err = left(&sql).await.expect_err("3 salts over 2 keys");
        assert!(err.to_string().contains("do not divide"), "{err}");
    }
}
