//! `lag`, `lead`, `first_value`, `last_value` and `nth_value` with
//! `IGNORE NULLS`, as functions of their own so the option reaches
//! executors.
//!
//! DataFusion keeps `IGNORE NULLS` of a window function (as opposed to a
//! window aggregate) on the physical expression, and its protobuf encoding
//! drops it ("WindowUDFExpr doesn't have ignore_nulls", datafusion-proto
//! `physical_plan/to_proto.rs`): executors computed `lag(a) IGNORE NULLS`
//! as `lag(a)`. The scheduler's planner (`crate::cluster_plan`) replaces such
//! a call by the function `<name>__ignore_nulls`, which evaluates the inner
//! function with nulls ignored whatever the expression says; the output
//! column keeps its name. Executors find it by name in their registry.
//!
//! The same encoding drops a window function's `is_reversed` flag, which
//! DataFusion's sort optimizer sets when it reuses a sort in the opposite
//! direction (`lag(a) OVER (ORDER BY id)` next to `… OVER (ORDER BY id
//! DESC)` is computed on the descending rows as a reversed `lag`):
//! executors then computed `lag` on the reversed rows, a `lead`. So every
//! call of these functions is planned through a wrapper, `<name>__forward`
//! when it respects nulls, and the wrappers refuse to be reversed: the
//! optimizer sorts their input the way the query asks instead.

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::error::Result;
use datafusion::logical_expr::function::{
    ExpressionArgs, PartitionEvaluatorArgs, WindowUDFFieldArgs,
};
use datafusion::logical_expr::{
    PartitionEvaluator, ReversedUDWF, Signature, WindowUDF, WindowUDFImpl,
};
use datafusion::physical_expr::PhysicalExpr;

/// The suffix of the wrapped functions' names, with `IGNORE NULLS`.
pub const SUFFIX: &str = "__ignore_nulls";

/// The suffix of the wrapped functions' names, respecting nulls.
pub const FORWARD_SUFFIX: &str = "__forward";

/// The window functions whose `IGNORE NULLS` is wrapped.
pub const WRAPPED: [&str; 5] = ["lag", "lead", "first_value", "last_value", "nth_value"];

/// A window function evaluated in the query's order, with `IGNORE NULLS`
/// or without (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct IgnoreNulls {
    inner: Arc<WindowUDF>,
    name: String,
    ignore_nulls: bool,
}

impl IgnoreNulls {
    /// `inner` with `IGNORE NULLS`.
    pub fn new(inner: Arc<WindowUDF>) -> Self {
        let name = format!("{}{SUFFIX}", inner.name());
        Self { inner, name, ignore_nulls: true }
    }

    /// `inner` respecting nulls, never reversed.
    pub fn forward(inner: Arc<WindowUDF>) -> Self {
        let name = format!("{}{FORWARD_SUFFIX}", inner.name());
        Self { inner, name, ignore_nulls: false }
    }
}

impl WindowUDFImpl for IgnoreNulls {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn expressions(&self, expr_args: ExpressionArgs) -> Vec<Arc<dyn PhysicalExpr>> {
        self.inner.expressions(expr_args)
    }

    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        self.inner.partition_evaluator_factory(PartitionEvaluatorArgs::new(
            args.input_exprs(),
            args.input_fields(),
            args.is_reversed(),
            self.ignore_nulls || args.ignore_nulls(),
        ))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        self.inner.field(field_args)
    }

    fn sort_options(&self) -> Option<SortOptions> {
        self.inner.sort_options()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn reverse_expr(&self) -> ReversedUDWF {
        // A reversal would not reach executors (see the module docs).
        ReversedUDWF::NotSupported
    }
}

/// The wrapped functions of `functions` (by their wrapped names).
pub fn wrappers(functions: &[Arc<WindowUDF>]) -> Vec<Arc<WindowUDF>> {
    functions
        .iter()
        .filter(|f| WRAPPED.contains(&f.name()))
        .flat_map(|f| {
            [
                Arc::new(WindowUDF::new_from_impl(IgnoreNulls::new(Arc::clone(f)))),
                Arc::new(WindowUDF::new_from_impl(IgnoreNulls::forward(Arc::clone(f)))),
            ]
        })
        .collect()
}
