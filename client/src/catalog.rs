//! `sluice table …` and backfill registration: the persistent catalog,
//! either a local file (embedded mode) or the scheduler's, reached over its
//! Flight SQL endpoint with a token (catalog actions, `proto/sluice/v1/catalog.proto`).

use std::path::{Path, PathBuf};

use arrow_flight::Action;
use arrow_flight::flight_service_client::FlightServiceClient;
use sluice_proto::HostPort;
use sluice_sql::catalog::{CatalogEntry, CatalogSchema, FileCatalog};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};

/// Where the catalog lives.
#[derive(Debug, Clone)]
pub enum CatalogTarget {
    File(PathBuf),
    FlightSql(FlightSqlEndpoint),
}

/// A scheduler's Flight SQL endpoint and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct FlightSqlEndpoint {
    pub addr: HostPort,
    pub token: Option<String>,
    /// CA certificate (PEM) to trust: connects with TLS when set.
    pub tls_ca: Option<PathBuf>,
}

/// The embedded default: `SLUICE_CATALOG`, else `~/.sluice/catalog.json`.
pub fn default_catalog_file() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_CATALOG") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".sluice").join("catalog.json")
}

/// Makes the tables of the catalog file at `path` the session's default
/// schema, as the scheduler does for Flight SQL sessions: `sluice sql` on
/// an embedded cluster or a `--scheduler` sees what `sluice table register`
/// and `sluice backfill` registered locally. Tables registered afterwards
/// (`--table`) shadow catalog tables of the same name.
///
/// # Errors
/// [`Error::Table`]-class errors naming the catalog file when it cannot be read.
pub fn use_catalog_file(ctx: &datafusion::prelude::SessionContext, path: &Path) -> Result<()> {
    let catalog = FileCatalog::new(path);
    // Fail now, naming the file, rather than on the first table lookup.
    catalog.list()?;
    let state = ctx.state();
    let names = &state.config().options().catalog;
    let default = ctx.catalog(&names.default_catalog).ok_or_else(|| {
        Error::Usage(format!("the session has no catalog {}", names.default_catalog))
    })?;
    default
        .register_schema(
            &names.default_schema,
            std::sync::Arc::new(CatalogSchema::new(catalog, ctx.runtime_env())),
        )
        .map_err(Error::from_datafusion)?;
    Ok(())
}

/// Reads a token: `--token-file`, else `SLUICE_TOKEN`.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read or is empty.
pub fn read_token(token_file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io { path: path.display().to_string(), reason: e.to_string() })?;
        let token = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
        // A server token file line may carry a role after the token.
        let token = token.and_then(|l| l.split_whitespace().next()).ok_or_else(|| Error::Io {
            path: path.display().to_string(),
            reason: "no token in the file".into(),
        })?;
        return Ok(Some(token.to_string()));
    }
    Ok(std::env::var("SLUICE_TOKEN").ok().filter(|t| !t.is_empty()))
}

impl FlightSqlEndpoint {
    /// Opens a channel (TLS when a CA is given).
    pub async fn channel(&self) -> Result<Channel> {
        let scheme = if self.tls_ca.is_some() { "https" } else { "http" };
        let unreachable =
            |reason: String| Error::SchedulerUnreachable { addr: self.addr.clone(), reason };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.addr))
            .map_err(|e| unreachable(e.to_string()))?;
        if let Some(ca) = &self.tls_ca {
            sluice_proto::install_crypto();
            let pem = std::fs::read(ca)
                .map_err(|e| Error::Io { path: ca.display().to_string(), reason: e.to_string() })?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
        }
        endpoint.connect().await.map_err(|e| unreachable(e.to_string()))
    }

    /// Runs one action and returns its first result body.
    /// Runs catalog action `kind` with `request`; decodes its reply.
    async fn action<Req: prost::Message, Reply: prost::Message + Default>(
        &self,
        kind: sluice_proto::pb::CatalogAction,
        request: &Req,
    ) -> Result<std::result::Result<Reply, tonic::Status>> {
        let mut client = FlightServiceClient::new(self.channel().await?);
        let mut call = tonic::Request::new(Action {
            r#type: sluice_proto::catalog::action_type(kind).to_string(),
            body: request.encode_to_vec().into(),
        });
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                Error::Usage("the token contains characters not allowed in a header".into())
            })?;
            call.metadata_mut().insert("authorization", value);
        }
        let reply = async {
            let mut stream = client.do_action(call).await?.into_inner();
            Ok::<_, tonic::Status>(stream.message().await?.map(|r| r.body).unwrap_or_default())
        }
        .await;
        Ok(match reply {
            Ok(body) => Reply::decode(body.as_ref())
                .map_err(|e| tonic::Status::internal(format!("bad reply from the scheduler: {e}"))),
            Err(s) => Err(s),
        })
    }
}

/// A refused catalog action as a client error; the status code decides
/// its class.
fn action_error(s: tonic::Status) -> Error {
    Error::Query {
        message: format!("{} ({:?})", s.message(), s.code()),
        class: match s.code() {
            tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition => sluice_proto::ErrorClass::User,
            tonic::Code::Internal => sluice_proto::ErrorClass::Internal,
            _ => sluice_proto::ErrorClass::External,
        },
    }
}

/// Runs a query through the Flight SQL endpoint (the path ADBC and JDBC
/// clients take) and collects its result.
///
/// # Errors
/// [`Error::Query`] with the server's message (and its gRPC code).
pub async fn run_sql_flight(
    endpoint: &FlightSqlEndpoint,
    sql: &str,
) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>> {
    use futures::TryStreamExt;
    let mut client =
        arrow_flight::sql::client::FlightSqlServiceClient::new(endpoint.channel().await?);
    if let Some(token) = &endpoint.token {
        client.set_token(token.clone());
    }
    let failed = |e: arrow_flight::error::FlightError| Error::Query {
        message: e.to_string(),
        class: sluice_proto::ErrorClass::User,
    };
    let info = client.execute(sql.to_string(), None).await.map_err(failed)?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or_else(|| Error::Query {
            message: "the server sent an endpoint without a ticket".into(),
            class: sluice_proto::ErrorClass::Internal,
        })?;
        let stream = client.do_get(ticket).await.map_err(failed)?;
        batches.extend(stream.try_collect::<Vec<_>>().await.map_err(failed)?);
    }
    Ok(batches)
}

/// Registers (or replaces) a table; returns the entry it replaced.
pub async fn register(target: &CatalogTarget, entry: CatalogEntry) -> Result<Option<CatalogEntry>> {
    use sluice_proto::pb;
    entry.validate()?;
    match target {
        CatalogTarget::File(path) => Ok(FileCatalog::new(path).register(entry)?),
        CatalogTarget::FlightSql(endpoint) => {
            let request = pb::RegisterTable { table: Some(entry.into()) };
            let reply: pb::RegisterTableResult = endpoint
                .action(pb::CatalogAction::Register, &request)
                .await?
                .map_err(action_error)?;
            Ok(reply.replaced.map(Into::into))
        }
    }
}

/// Every table.
pub async fn list(target: &CatalogTarget) -> Result<Vec<CatalogEntry>> {
    use sluice_proto::pb;
    match target {
        CatalogTarget::File(path) => Ok(FileCatalog::new(path).list()?),
        CatalogTarget::FlightSql(endpoint) => {
            let reply: pb::ListTablesResult = endpoint
                .action(pb::CatalogAction::List, &pb::ListTables {})
                .await?
                .map_err(action_error)?;
            Ok(reply.tables.into_iter().map(Into::into).collect())
        }
    }
}

/// Drops a table.
///
/// # Errors
/// [`Error::Usage`] when there is no such table.
pub async fn drop_table(target: &CatalogTarget, name: &str) -> Result<CatalogEntry> {
    use sluice_proto::pb;
    let missing =
        || Error::Usage(format!("no table {name} in the catalog; see `sluice table list`"));
    match target {
        CatalogTarget::File(path) => FileCatalog::new(path).drop_table(name)?.ok_or_else(missing),
        CatalogTarget::FlightSql(endpoint) => {
            let request = pb::DropTable { name: name.to_string() };
            match endpoint
                .action::<_, pb::DropTableResult>(pb::CatalogAction::Drop, &request)
                .await?
            {
                Ok(reply) => reply.dropped.map(Into::into).ok_or_else(missing),
                Err(s) if s.code() == tonic::Code::NotFound => Err(missing()),
                Err(s) => Err(action_error(s)),
            }
        }
    }
}

/// An absolute form of a local path (URLs are kept as given).
pub fn absolute(path: &str) -> String {
    if path.contains("://") || Path::new(path).is_absolute() {
        return path.to_string();
    }
    std::path::absolute(path).map(|p| p.display().to_string()).unwrap_or_else(|_| path.to_string())
}
