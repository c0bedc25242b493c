//! Feature jobs: a YAML spec describing windowed features over event
//! sources ([`spec`]), compiled into one tiled SQL query per chunk of
//! feature dates ([`plan`]), with quality expectations evaluated before a
//! chunk is committed ([`quality`]).
//!
//! ```text
//! spec ──validate──► JobSpec ──plan::chunk_sql(F..T)──► SQL (runs on the cluster)
//!                                                        │ COPY … PARTITIONED BY (feature_date)
//!                                staging/feature_date=D ◄┘
//!          quality::check_sql ──► pass ──► rename into OUT/feature_date=D (commit)
//! ```

pub mod backfill;
pub mod plan;
pub mod prepare;
pub mod quality;
pub mod spec;

pub use spec::{JobSpec, SpecError};

/// The naive per-date reference for `sql/jobs/churn.yaml`: the features of
/// one feature date straight from the raw tables (tests and the churn
/// benchmark's baseline loop).
pub fn churn_reference_sql(date: chrono::NaiveDate) -> String {
    include_str!("../../jobs/churn_reference.sql")
        .replace("${D}", &date.format("%Y-%m-%d").to_string())
}
