//! Argument groups shared by several commands.

use std::path::PathBuf;

use sluice_client::Error;
use sluice_proto::HostPort;

/// A high-availability cluster: its leader is looked up in etcd (and again
/// after a failover) instead of a fixed --scheduler.
#[derive(Debug, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints of a cluster started with `--state etcd`, e.g. http://127.0.0.1:2379.
    #[arg(long, env = "SLUICE_ETCD_ENDPOINTS", value_name = "URL[,URL]", conflicts_with_all = ["scheduler", "standalone"])]
    pub etcd_endpoints: Option<String>,
    /// The cluster's name in etcd.
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "NAME", default_value = "default")]
    pub cluster: String,
}

impl EtcdArgs {
    pub fn target(&self) -> Result<Option<sluice_proto::etcd::EtcdTarget>, Error> {
        match &self.etcd_endpoints {
            None => Ok(None),
            Some(e) => Ok(Some(sluice_client::connect::etcd_target(e, &self.cluster)?)),
        }
    }
}

/// Like [`EtcdArgs`], with the endpoints required.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// etcd endpoints of the cluster, e.g. http://127.0.0.1:2379.
    #[arg(long, env = "SLUICE_ETCD_ENDPOINTS", value_name = "URL[,URL]")]
    pub etcd_endpoints: String,
    /// The cluster's name in etcd.
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "NAME", default_value = "default")]
    pub cluster: String,
}

/// Where `sluice table` and backfill registration find the catalog.
#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    /// The catalog file (embedded mode). Default: SLUICE_CATALOG, else ~/.sluice/catalog.json.
    #[arg(long, value_name = "FILE", conflicts_with = "flight_sql")]
    pub catalog: Option<PathBuf>,
    /// A scheduler's Flight SQL endpoint: use its catalog.
    #[arg(long, env = "SLUICE_FLIGHT_SQL", value_name = "HOST:PORT")]
    pub flight_sql: Option<HostPort>,
    /// File holding the token (else SLUICE_TOKEN): for --flight-sql, and for a --scheduler
    /// that checks tokens.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) of a TLS endpoint.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl CatalogArgs {
    pub fn target(&self) -> Result<sluice_client::catalog::CatalogTarget, Error> {
        use sluice_client::catalog::{CatalogTarget, FlightSqlEndpoint};
        Ok(match &self.flight_sql {
            Some(addr) => CatalogTarget::FlightSql(FlightSqlEndpoint {
                addr: addr.clone(),
                token: sluice_client::catalog::read_token(self.token_file.as_deref())?,
                tls_ca: self.tls_ca.clone(),
            }),
            None => CatalogTarget::File(
                self.catalog.clone().unwrap_or_else(sluice_client::catalog::default_catalog_file),
            ),
        })
    }
}
