//! Sluice's SQL functions, registered in every process of a cluster (client,
//! scheduler, executors) and in the local reference engine.

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

pub mod hot_salt;
pub mod ignore_nulls;
pub mod merge_salted;
pub mod tiles;

/// Sluice's scalar functions.
pub fn scalar_functions() -> Vec<Arc<ScalarUDF>> {
    vec![
        Arc::new(ScalarUDF::from(hot_salt::HotSalt::default())),
        Arc::new(ScalarUDF::from(hot_salt::HotSalts::default())),
        Arc::new(ScalarUDF::from(merge_salted::MergeSalted::default())),
    ]
}

/// Sluice's aggregate functions.
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![Arc::new(AggregateUDF::from(tiles::FeatureTiles::default()))]
}
