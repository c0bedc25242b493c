//! `sluice_salt(buckets, v1, v2, ...)`: a deterministic salt bucket of a row.
//!
//! The hash of the values (DataFusion's `create_hashes` with a fixed seed)
//! modulo `buckets`, as BIGINT in `0..buckets`. It is a function of the row
//! only — never random — so a map task recomputed after an executor loss
//! puts every row in the same bucket again, and every process (client,
//! scheduler, executors of one build) computes the same value.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// The function's name in SQL.
pub const NAME: &str = "sluice_salt";

/// Seed of the salt hash (any fixed value; differs from the shuffle's).
const SEED: u64 = 0x5a17_5a17;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Salt {
    signature: Signature,
}

impl Default for Salt {
    fn default() -> Self {
        Self { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Salt {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types.len() < 2 {
            return plan_err!("{NAME} takes (buckets, value, ...)");
        }
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let buckets = match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(b))) if *b > 0 => *b as u64,
            other => {
                return exec_err!(
                    "{NAME}: buckets must be a positive BIGINT literal, not {other:?}"
                );
            }
        };
        let arrays: Vec<ArrayRef> =
            args.args[1..].iter().map(|a| a.to_array(args.number_rows)).collect::<Result<_>>()?;
        let mut hashes = vec![0u64; args.number_rows];
        create_hashes(&arrays, &RandomState::with_seed(SEED), &mut hashes)?;
        let out: Int64Array = hashes.into_iter().map(|h| Some((h % buckets) as i64)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
