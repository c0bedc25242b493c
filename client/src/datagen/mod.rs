//! Data generators (`sluice gen ...`). Output is written to a hidden staging
//! folder and moved into place table by table, so an interrupted run never
//! leaves a half-written table behind.

pub mod churn;
pub mod tpch;
