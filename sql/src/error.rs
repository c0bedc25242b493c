//! Errors of the SQL layer.

use sluice_proto::ErrorClass;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid table '{input}': {reason}; expected NAME=PATH or NAME=PATH:FORMAT, e.g. lineitem=data/lineitem.parquet"
    )]
    InvalidTableSpec { input: String, reason: String },

    #[error(
        "table '{name}': path '{path}' does not exist; check the path, or generate data first (e.g. `sluice gen tpch --scale-factor 0.1 --out data`)"
    )]
    TablePathNotFound { name: String, path: String },

    #[error(
        "table '{name}': unknown format '{format}' for '{path}'; expected one of parquet, csv, json"
    )]
    UnknownFormat { name: String, path: String, format: String },

    #[error(
        "table '{name}': cannot tell the format of '{path}' from its name; append :parquet, :csv or :json (e.g. {name}={path}:parquet)"
    )]
    CannotDetectFormat { name: String, path: String },

    #[error("setting '{key}': {reason}")]
    InvalidSetting { key: String, reason: String },

    #[error(
        "table '{name}' at '{path}': {source}; check the bucket name and the credentials \
         (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, or --set s3.*)"
    )]
    Storage {
        name: String,
        path: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },

    #[error("table '{name}' at '{path}': {source}")]
    Register {
        name: String,
        path: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },

    #[error("catalog: {0}")]
    Catalog(String),

    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidTableSpec { .. }
            | Error::TablePathNotFound { .. }
            | Error::UnknownFormat { .. }
            | Error::CannotDetectFormat { .. }
            | Error::InvalidSetting { .. }
            | Error::Register { .. }
            | Error::Storage { .. }
            | Error::Catalog(_) => ErrorClass::User,
            Error::DataFusion(_) => ErrorClass::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
