//! The client endpoint: Arrow Flight SQL on its own port
//! (`--flight-sql-bind`), in front of Ballista's Flight SQL frontend.
//!
//! ```text
//!   ADBC / JDBC / sluice ──TLS──► SluiceFlightSql ──► BallistaFlightSqlService ──► SchedulerServer
//!                                  │ bearer token on every call (roles read, admin)
//!                                  │ tickets: only Flight SQL ones, naming a registered executor
//!                                  │ statements: read-only unless admin
//!                                  └ sluice.table.* actions: the persistent catalog
//! ```
//!
//! The scheduler port itself checks the same tokens on the calls clients
//! make there (see `gate`); executors' calls on it stay cluster-internal.
//!
//! Ballista's frontend keeps its own session tokens, minted by a handshake.
//! Sluice's tokens are static (a file, one per line), so this layer checks
//! them and then forwards the call without credentials: every client shares
//! the frontend's one session, whose default schema is the persistent
//! catalog. Session state a client could change for others (`SET`, DDL) is
//! admin-only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::{Any, Command};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, SchemaResult, Ticket,
};
use ballista_core::error::Result as BallistaResult;
use ballista_core::flight_proxy_service::BallistaFlightProxyService;
use ballista_core::serde::protobuf;
use ballista_flight_sql::{
    AnonymousAuthenticator, BallistaFlightSqlService, QueryBackend, QueryResult,
};
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures::Stream;
use prost::Message;
use sluice_proto::HostPort;
use sluice_proto::pb::CatalogAction;
use sluice_sql::catalog::{CatalogEntry, FileCatalog};
use sluice_sql::roots::DataRoots;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// The session [`SluiceFlightSql`] plans its checks in.
const PROBE_SESSION: &str = "sluice-flight-sql-checks";
/// At most this many rows, computed within [`SCHEDULER_TIME`], for a read
/// token's query that runs on the scheduler itself (`information_schema`).
const SCHEDULER_ROWS: usize = 100_000;
const SCHEDULER_TIME: std::time::Duration = std::time::Duration::from_secs(10);
type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Queries, catalog listing.
    Read,
    /// Also DDL, `SET`, and registering or dropping catalog tables.
    Admin,
}

/// The tokens of a token file: `TOKEN [read|admin]` per line, `#` comments.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, Role>,
}

/// Shortest token accepted: guessing one must be hopeless.
const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Reads a token file.
    ///
    /// # Errors
    /// [`Error::ConfigFile`] naming the file and line of a malformed entry.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |line: usize, reason: String| Error::ConfigFile {
            path: path.display().to_string(),
            reason: format!("line {line}: {reason}"),
        };
        // Anyone who can read the file holds every token in it.
        sluice_proto::tls::check_private_file("--auth-token-file", path).map_err(|e| {
            Error::ConfigFile { path: path.display().to_string(), reason: e.to_string() }
        })?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let token = parts.next().unwrap_or_default();
            let role = match parts.next() {
                None | Some("read") => Role::Read,
                Some("admin") => Role::Admin,
                Some(other) => {
                    return Err(bad(i + 1, format!("role {other:?}: expected read or admin")));
                }
            };
            if parts.next().is_some() {
                return Err(bad(i + 1, "expected `TOKEN [read|admin]`".to_string()));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(
                    i + 1,
                    format!("token is {} characters; use at least {MIN_TOKEN_LEN}", token.len()),
                ));
            }
            by_token.insert(token.to_string(), role);
        }
        if by_token.is_empty() {
            return Err(bad(0, "no token; expected `TOKEN [read|admin]` lines".to_string()));
        }
        Ok(Self { by_token })
    }
}

impl Tokens {
    /// The role of an `authorization` header's token (`Bearer TOKEN`, or
    /// `Basic` credentials whose password is the token); the reason it is
    /// refused otherwise.
    pub fn role_of(&self, header: Option<&str>) -> std::result::Result<Role, &'static str> {
        let Some(value) = header else {
            return Err("missing token: send `authorization: Bearer TOKEN` (ADBC: \
                        adbc.flight.sql.authorization_header; sluice: --token-file or SLUICE_TOKEN)");
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::to_string)
            .or_else(|| basic_password(value))
            .ok_or("expected a Bearer token")?;
        self.by_token.get(&token).copied().ok_or("unknown token")
    }
}

/// Configuration of the Flight SQL endpoint.
#[derive(Debug, Clone)]
pub struct FlightSqlConfig {
    pub bind: HostPort,
    /// The scheduler's cluster credentials, for fetching results from executors.
    pub cluster_tls: Option<sluice_proto::tls::ClusterTls>,
    /// `None`: anonymous (loopback only unless `allow_anonymous`).
    pub tokens: Option<Tokens>,
    pub allow_anonymous: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Clients must present a certificate signed by this CA (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    pub data_roots: DataRoots,
    pub catalog: Option<FileCatalog>,
}

/// Runs queries for the frontend; a query whose client goes away is
/// cancelled on the cluster.
pub struct Backend {
    scheduler: Arc<Scheduler>,
}

#[async_trait::async_trait]
impl QueryBackend for Backend {
    async fn session(&self, session_id: &str) -> BallistaResult<Arc<SessionContext>> {
        let ctx = self.scheduler.session(session_id).await?;
        // Flight SQL queries are planned here, with no client to evaluate
        // uncorrelated scalar subqueries first (as `sluice sql` does): they
        // become joins, as Ballista plans them.
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .optimizer
            .enable_physical_uncorrelated_scalar_subquery = false;
        Ok(ctx)
    }

    async fn close_session(&self, session_id: &str) -> BallistaResult<()> {
        self.scheduler.close_session(session_id).await
    }

    async fn execute(
        &self,
        job_name: &str,
        ctx: Arc<SessionContext>,
        plan: LogicalPlan,
    ) -> BallistaResult<QueryResult> {
        // A unique name finds the job again if the client cancels (the
        // frontend's future is dropped with the call).
        let name = format!("{job_name}-{}", uuid::Uuid::new_v4());
        let guard = CancelOnDrop {
            scheduler: Arc::clone(&self.scheduler),
            name: name.clone(),
            armed: true,
        };
        // Shapes Ballista's adaptive planner gets wrong run on its static one.
        let hazard = if sluice_sql::options::of_session(&ctx).static_for_adaptive_hazards {
            sluice_sql::cluster_plan::adaptive_hazard(&ctx.state().optimize(&plan)?)?
        } else {
            None
        };
        let job_ctx = match hazard {
            Some(reason) => {
                tracing::debug!(%reason, "the job runs on Ballista's static planner");
                let mut state = ctx.state();
                state
                    .config_mut()
                    .options_mut()
                    .set(ballista_core::config::BALLISTA_ADAPTIVE_PLANNER_ENABLED, "false")?;
                Arc::new(SessionContext::new_with_state(state))
            }
            None => Arc::clone(&ctx),
        };
        let result = self.scheduler.execute(&name, job_ctx, plan.clone()).await;
        guard.disarm();
        // An error raised on an executor, as DataFusion raised it (Ballista
        // hands on its debug text, wrapped twice).
        let mut result = result.map_err(|e| {
            let text = e.to_string();
            match sluice_proto::remote_error::find_in(&text) {
                Some(remote) => ballista_core::error::BallistaError::DataFusionError(Box::new(
                    sluice_sql::remote_error::decode(&remote),
                )),
                None => e,
            }
        })?;
        // Ballista reads the schema from "the" stage with no output links;
        // under its adaptive planner that can be an inner stage (its partial
        // aggregate state), and ADBC then rejects the data. The physical
        // plan's schema is the one the final stage writes.
        result.schema = ctx.state().create_physical_plan(&plan).await?.schema();
        Ok(result)
    }
}

struct CancelOnDrop {
    scheduler: Arc<Scheduler>,
    name: String,
    armed: bool,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let scheduler = Arc::clone(&self.scheduler);
        let name = std::mem::take(&mut self.name);
        tracing::info!(job_name = %name, "Flight SQL client went away before its query finished");
        tokio::spawn(async move {
            use ballista_core::serde::protobuf::job_status::Status as S;
            let jobs = match scheduler.state.task_manager.get_all_jobs().await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(job_name = %name, error = %e, "cannot list jobs to cancel");
                    return;
                }
            };
            let unfinished = |j: &ballista_scheduler::state::task_manager::JobOverview| {
                matches!(j.status.status, Some(S::Queued(_)) | Some(S::Running(_)) | None)
            };
            for job in jobs.into_iter().filter(|j| j.job_name == name && unfinished(j)) {
                tracing::info!(job = %job.job_id, "client cancelled its Flight SQL query; cancelling the job");
                if let Err(e) = scheduler.cancel_job(job.job_id.clone()).await {
                    tracing::warn!(job = %job.job_id, error = %e, "cancelling the job failed");
                }
            }
        });
    }
}

/// The Flight service clients talk to.
pub struct SluiceFlightSql {
    inner: BallistaFlightSqlService<Backend>,
    scheduler: Arc<Scheduler>,
    tokens: Option<Tokens>,
    roots: DataRoots,
    catalog: Option<FileCatalog>,
    signer: TicketSigner,
}

/// Ballista's action tag for a partition handle (`ticket.rs`).
const PARTITION_HANDLE: u8 = 0;

/// The first byte of a statement handle this endpoint signed.
const SIGNED_HANDLE: u8 = 0xA5;

/// Signs the statement handles of the tickets this endpoint issues (HMAC-
/// SHA256 with a key drawn when the process starts), so that `DoGet`
/// redeems only tickets it issued: a handle names the job, stage,
/// partition and executor of a result, and job ids are easy to learn
/// (they are time-ordered and listed by `/api/jobs`). Tickets of a previous
/// leader are refused after a failover, like its results.
struct TicketSigner {
    key: ring::hmac::Key,
}

impl TicketSigner {
    fn new() -> Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).map_err(|_| {
            Error::ConfigFile {
                path: "--flight-sql-bind".into(),
                reason: "no randomness for the ticket key".into(),
            }
        })?;
        Ok(Self { key })
    }

    fn sign(&self, handle: &[u8]) -> Vec<u8> {
        let tag = ring::hmac::sign(&self.key, handle);
        let mut signed = Vec::with_capacity(1 + tag.as_ref().len() + handle.len());
        signed.push(SIGNED_HANDLE);
        signed.extend_from_slice(tag.as_ref());
        signed.extend_from_slice(handle);
        signed
    }

    /// The handle `signed` carries, if this signer signed it.
    fn open<'a>(&self, signed: &'a [u8]) -> Option<&'a [u8]> {
        let (&first, rest) = signed.split_first()?;
        let len = ring::hmac::HMAC_SHA256.digest_algorithm().output_len();
        if first != SIGNED_HANDLE || rest.len() < len {
            return None;
        }
        let (tag, handle) = rest.split_at(len);
        ring::hmac::verify(&self.key, handle, tag).ok()?;
        Some(handle)
    }

    /// Signs `ticket` in place when it is a statement ticket.
    fn sign_ticket(&self, ticket: &mut Ticket) {
        let Ok(any) = Any::decode(ticket.ticket.clone()) else { return };
        let Ok(Command::TicketStatementQuery(mut statement)) = Command::try_from(any) else {
            return;
        };
        statement.statement_handle = self.sign(&statement.statement_handle).into();
        if let Ok(any) = Any::pack(&statement) {
            ticket.ticket = any.encode_to_vec().into();
        }
    }
}

impl SluiceFlightSql {
    /// Checks the call's credentials; returns the caller's role.
    fn authorize(&self, metadata: &MetadataMap) -> std::result::Result<Role, Status> {
        let Some(tokens) = &self.tokens else { return Ok(Role::Admin) };
        let value = match metadata.get("authorization") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| Status::unauthenticated("malformed authorization header"))?,
            ),
        };
        tokens.role_of(value).map_err(Status::unauthenticated)
    }

    /// Authorizes a request and strips its credentials before it reaches
    /// Ballista's frontend (which would take them for a session token).
    fn admit<T>(&self, mut request: Request<T>) -> std::result::Result<(Role, Request<T>), Status> {
        let role = self.authorize(request.metadata())?;
        request.metadata_mut().remove("authorization");
        Ok((role, request))
    }

    /// Refuses statements a role may not run. The SQL is parsed with the
    /// session's dialect, as the planner will parse it.
    async fn check_sql(&self, role: Role, sql: &str) -> std::result::Result<(), Status> {
        let ctx = self.probe_session().await?;
        let statements = {
            let options = ctx.state().config().options().sql_parser.clone();
            let dialect = datafusion::sql::sqlparser::dialect::dialect_from_str(&options.dialect)
                .ok_or_else(|| {
                Status::internal(format!("unknown SQL dialect {}", options.dialect))
            })?;
            datafusion::sql::parser::DFParserBuilder::new(sql)
                .with_dialect(dialect.as_ref())
                .with_recursion_limit(options.recursion_limit.get())
                .build()
                .and_then(|mut parser| parser.parse_statements())
                .map_err(|e| Status::invalid_argument(format!("failed to parse query: {e}")))?
        };
        for statement in &statements {
            let read_only = match statement {
                DfStatement::Statement(s) => matches!(
                    s.as_ref(),
                    SqlStatement::Query(_)
                        | SqlStatement::Explain { .. }
                        | SqlStatement::ExplainTable { .. }
                        | SqlStatement::ShowTables { .. }
                        | SqlStatement::ShowColumns { .. }
                ),
                DfStatement::Explain(e) => matches!(
                    e.statement.as_ref(),
                    DfStatement::Statement(s) if matches!(s.as_ref(), SqlStatement::Query(_))
                ),
                DfStatement::CreateExternalTable(_)
                | DfStatement::CopyTo(_)
                | DfStatement::Reset(_) => false,
            };
            if !read_only && role != Role::Admin {
                return Err(Status::permission_denied(
                    "only queries are allowed with a read token; CREATE EXTERNAL TABLE, COPY, \
                     SET and other statements need a token with the admin role",
                ));
            }
            if role != Role::Admin && reads_settings(statement) {
                return Err(Status::permission_denied(
                    "information_schema.df_settings holds the session's settings, secrets \
                     included (s3.secret_access_key); it needs a token with the admin role",
                ));
            }
        }
        if role != Role::Admin && statements.len() == 1 {
            self.check_scheduler_bound(&ctx, sql).await?;
        }
        Ok(())
    }

    /// A Flight SQL session of this scheduler for checks (planning and the
    /// bounded run of [`SluiceFlightSql::check_scheduler_bound`]); sessions
    /// are built alike, with the catalog's tables.
    async fn probe_session(&self) -> std::result::Result<Arc<SessionContext>, Status> {
        self.scheduler
            .session(PROBE_SESSION)
            .await
            .map_err(|e| Status::internal(format!("session: {e}")))
    }

    /// Ballista runs a query that reads only `information_schema` on the
    /// scheduler itself and keeps all its rows in memory: for a read token,
    /// such a query first runs here with a row limit and a time limit, and
    /// is refused when it exceeds either.
    async fn check_scheduler_bound(
        &self,
        ctx: &SessionContext,
        sql: &str,
    ) -> std::result::Result<(), Status> {
        let Ok(plan) = ctx.state().create_logical_plan(sql).await else {
            // The frontend reports the planning error.
            return Ok(());
        };
        if !matches!(ballista_core::planner::scans_only_information_schema(&plan), Ok(true)) {
            return Ok(());
        }
        let too_big = || {
            Status::resource_exhausted(format!(
                "queries on information_schema run on the scheduler and may return at most \
                 {SCHEDULER_ROWS} rows within {} s; this one does not (an admin token lifts \
                 the bound)",
                SCHEDULER_TIME.as_secs()
            ))
        };
        let probe = async {
            use futures::TryStreamExt;
            let mut stream = ctx.execute_logical_plan(plan).await?.execute_stream().await?;
            let mut rows = 0usize;
            while let Some(batch) = stream.try_next().await? {
                rows += batch.num_rows();
                if rows > SCHEDULER_ROWS {
                    return Ok(false);
                }
            }
            Ok::<_, datafusion::error::DataFusionError>(true)
        };
        match tokio::time::timeout(SCHEDULER_TIME, probe).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) | Err(_) => Err(too_big()),
            // The frontend reports the error as it runs the query.
            Ok(Err(_)) => Ok(()),
        }
    }

    /// Checks the SQL a Flight SQL command carries, if any.
    async fn check_command(&self, role: Role, cmd: &[u8]) -> std::result::Result<(), Status> {
        let Ok(any) = Any::decode(cmd) else { return Ok(()) };
        let Ok(command) = Command::try_from(any) else { return Ok(()) };
        match command {
            Command::CommandStatementQuery(q) => self.check_sql(role, &q.query).await,
            Command::CommandStatementUpdate(u) => self.check_sql(role, &u.query).await,
            Command::ActionCreatePreparedStatementRequest(r) => {
                self.check_sql(role, &r.query).await
            }
            Command::CommandStatementSubstraitPlan(_)
            | Command::CommandStatementIngest(_)
            | Command::CommandPreparedStatementUpdate(_) => Err(Status::unimplemented(
                "Substrait plans, ingest and prepared updates are not supported",
            )),
            _ => Ok(()),
        }
    }

    /// Admits only Flight SQL tickets, and partition tickets only when they
    /// name a registered executor (a forged ticket could otherwise make the
    /// scheduler connect anywhere).
    async fn check_ticket(&self, ticket: Ticket) -> std::result::Result<Ticket, Status> {
        let forged = |why: &str| Status::permission_denied(format!("ticket refused: {why}"));
        let any =
            Any::decode(ticket.ticket.clone()).map_err(|_| forged("not a Flight SQL ticket"))?;
        let command = Command::try_from(any).map_err(|_| forged("not a Flight SQL ticket"))?;
        let mut statement = match command {
            Command::TicketStatementQuery(statement) => statement,
            // Metadata tickets carry their command and run on the scheduler.
            Command::CommandGetCatalogs(_)
            | Command::CommandGetDbSchemas(_)
            | Command::CommandGetTables(_)
            | Command::CommandGetTableTypes(_)
            | Command::CommandGetSqlInfo(_)
            | Command::CommandGetXdbcTypeInfo(_) => return Ok(ticket),
            // Anything else would reach Ballista's fallback, which proxies a
            // raw partition fetch to whatever host it names.
            _ => return Err(forged("not a Flight SQL ticket")),
        };
        let handle = self
            .signer
            .open(&statement.statement_handle)
            .ok_or_else(|| forged("not issued by this scheduler (or altered)"))?
            .to_vec();
        statement.statement_handle = handle.clone().into();
        let any = Any::pack(&statement).map_err(|e| Status::internal(e.to_string()))?;
        let ticket = Ticket { ticket: any.encode_to_vec().into() };
        let Some((&tag, payload)) = handle.split_first() else {
            return Err(forged("empty handle"));
        };
        if tag != PARTITION_HANDLE {
            return Ok(ticket); // a server-side result, looked up by handle
        }
        let action =
            protobuf::Action::decode(payload).map_err(|_| forged("malformed partition handle"))?;
        let Some(protobuf::action::ActionType::FetchPartition(fetch)) = action.action_type else {
            return Err(forged("not a partition fetch"));
        };
        let executors = self
            .scheduler
            .state
            .executor_manager
            .get_executors_state()
            .await
            .map_err(|e| Status::internal(format!("listing executors: {e}")))?;
        let known = executors
            .iter()
            .any(|(meta, _, _)| meta.host == fetch.host && u32::from(meta.port) == fetch.port);
        if !known {
            return Err(forged(&format!(
                "{}:{} is not a registered executor",
                fetch.host, fetch.port
            )));
        }
        Ok(ticket)
    }

    fn catalog(&self) -> std::result::Result<&FileCatalog, Status> {
        self.catalog.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this scheduler has no catalog; start it with --catalog FILE",
            )
        })
    }

    /// Runs a catalog action (`proto/sluice/v1/catalog.proto`).
    fn catalog_action(
        &self,
        role: Role,
        kind: CatalogAction,
        action: &Action,
    ) -> std::result::Result<Vec<u8>, Status> {
        use sluice_proto::pb;
        let user = |e: sluice_sql::Error| Status::invalid_argument(e.to_string());
        let name = sluice_proto::catalog::action_type(kind);
        if kind != CatalogAction::List && role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "{name} needs a token with the admin role"
            )));
        }
        let bad_body = |what: &str, e: prost::DecodeError| {
            Status::invalid_argument(format!("{name}: the body is not a sluice.v1.{what}: {e}"))
        };
        let catalog = self.catalog()?;
        match kind {
            CatalogAction::Register => {
                let request = pb::RegisterTable::decode(action.body.as_ref())
                    .map_err(|e| bad_body("RegisterTable", e))?;
                let entry: CatalogEntry = request
                    .table
                    .ok_or_else(|| {
                        Status::invalid_argument(format!("{name}: RegisterTable.table is missing"))
                    })?
                    .into();
                entry.validate().map_err(user)?;
                self.roots
                    .check(&format!("table {}", entry.name), &entry.path)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let replaced = catalog.register(entry).map_err(user)?;
                Ok(pb::RegisterTableResult { replaced: replaced.map(Into::into) }.encode_to_vec())
            }
            CatalogAction::Drop => {
                let request = pb::DropTable::decode(action.body.as_ref())
                    .map_err(|e| bad_body("DropTable", e))?;
                match catalog.drop_table(&request.name).map_err(user)? {
                    Some(old) => {
                        Ok(pb::DropTableResult { dropped: Some(old.into()) }.encode_to_vec())
                    }
                    None => {
                        Err(Status::not_found(format!("no table {} in the catalog", request.name)))
                    }
                }
            }
            CatalogAction::List | CatalogAction::Unspecified => {
                let tables = catalog.list().map_err(user)?.into_iter().map(Into::into).collect();
                Ok(pb::ListTablesResult { tables }.encode_to_vec())
            }
        }
    }
}

/// The password of `Basic base64(user:password)` credentials: ADBC's
/// username/password options send the token as the password.
fn basic_password(value: &str) -> Option<String> {
    use base64::Engine;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, password)| password.to_string())
}

type Inner = BallistaFlightSqlService<Backend>;

#[tonic::async_trait]
impl FlightService for SluiceFlightSql {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = <Inner as FlightService>::ListFlightsStream;
    type DoGetStream = <Inner as FlightService>::DoGetStream;
    type DoPutStream = <Inner as FlightService>::DoPutStream;
    type DoExchangeStream = <Inner as FlightService>::DoExchangeStream;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    /// Answers with the caller's own token as the bearer token, so clients
    /// that handshake (username/password) then send it on every call.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        self.authorize(request.metadata())?;
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ").map(str::to_string).or_else(|| basic_password(v))
            })
            .unwrap_or_default();
        let reply =
            HandshakeResponse { protocol_version: 0, payload: token.clone().into_bytes().into() };
        let mut response: Response<Self::HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        if let Ok(value) = format!("Bearer {token}").parse() {
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        let (_, request) = self.admit(request)?;
        self.inner.list_flights(request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let (role, request) = self.admit(request)?;
        self.check_command(role, &request.get_ref().cmd).await?;
        let mut response = self.inner.get_flight_info(request).await?;
        for endpoint in &mut response.get_mut().endpoint {
            if let Some(ticket) = endpoint.ticket.as_mut() {
                self.signer.sign_ticket(ticket);
            }
        }
        Ok(response)
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        let (role, request) = self.admit(request)?;
        self.check_command(role, &request.get_ref().cmd).await?;
        self.inner.poll_flight_info(request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        let (role, request) = self.admit(request)?;
        self.check_command(role, &request.get_ref().cmd).await?;
        self.inner.get_schema(request).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let (_, mut request) = self.admit(request)?;
        let ticket = std::mem::take(request.get_mut());
        *request.get_mut() = self.check_ticket(ticket).await?;
        self.inner.do_get(request).await
    }

    /// Statement updates (DDL, `SET`) only: admin.
    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let (role, request) = self.admit(request)?;
        if role != Role::Admin {
            return Err(Status::permission_denied(
                "updates (DDL, SET) need a token with the admin role",
            ));
        }
        self.inner.do_put(request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        let (_, request) = self.admit(request)?;
        self.inner.do_exchange(request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        let (role, request) = self.admit(request)?;
        let action = request.get_ref();
        if let Some(kind) = sluice_proto::catalog::parse_action_type(&action.r#type) {
            let body = self.catalog_action(role, kind, action)?;
            let result = arrow_flight::Result { body: body.into() };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))));
        }
        self.check_command(role, &action.body).await?;
        let response = self.inner.do_action(request).await?;
        Ok(Response::new(Box::pin(response.into_inner())))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        let (_, request) = self.admit(request)?;
        let mut actions: Vec<std::result::Result<ActionType, Status>> =
            sluice_proto::catalog::ACTIONS
                .iter()
                .map(|(kind, description)| {
                    Ok(ActionType {
                        r#type: sluice_proto::catalog::action_type(*kind).into(),
                        description: (*description).into(),
                    })
                })
                .collect();
        let mut inner = self.inner.list_actions(request).await?.into_inner();
        while let Some(a) = futures::StreamExt::next(&mut inner).await {
            actions.push(a);
        }
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }
}

/// The Flight SQL endpoint serving in this process.
pub struct RunningFlightSql {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::ConfigFile {
        path: path.display().to_string(),
        reason: format!("{what}: {e}"),
    })
}

/// Whether `statement` reads `information_schema.df_settings`, by the
/// tables its plan would resolve (not by its text).
fn reads_settings(statement: &DfStatement) -> bool {
    match datafusion::sql::resolve::resolve_table_references(statement, true) {
        Ok((tables, _)) => tables.iter().any(|t| {
            t.table().eq_ignore_ascii_case("df_settings")
                && t.schema().is_some_and(|s| s.eq_ignore_ascii_case("information_schema"))
        }),
        // Unresolvable: let the planner report it, but not to a read token.
        Err(_) => true,
    }
}

/// Binds and serves the Flight SQL endpoint.
///
/// # Errors
/// [`Error::Bind`]; [`Error::ConfigFile`] for unreadable TLS files or an
/// anonymous endpoint on a non-loopback address without `allow_anonymous`.
pub async fn serve(
    config: &FlightSqlConfig,
    scheduler: Arc<Scheduler>,
) -> Result<RunningFlightSql> {
    let loopback = matches!(config.bind.host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]");
    if config.tokens.is_none() && !loopback && !config.allow_anonymous {
        return Err(Error::ConfigFile {
            path: "--flight-sql-bind".into(),
            reason: format!(
                "{} is not a loopback address and no --auth-token-file is set; add tokens, \
                 bind to 127.0.0.1, or pass --allow-anonymous",
                config.bind
            ),
        });
    }
    if config.tokens.is_some() && !loopback && config.tls_cert.is_none() {
        return Err(Error::ConfigFile {
            path: "--flight-sql-bind".into(),
            reason: format!(
                "{} is not a loopback address and --tls-cert is not set: tokens would cross the \
                 network in cleartext; add --tls-cert/--tls-key or bind to 127.0.0.1",
                config.bind
            ),
        });
    }
    let (listener, local_addr) = crate::bind(&config.bind).await?;
    // Result partitions are fetched from executors with the scheduler's
    // cluster certificate when the cluster speaks mutual TLS.
    let customize = config.cluster_tls.as_ref().map(|tls| {
        Arc::new(ballista_core::extension::BallistaConfigGrpcEndpoint::new(
            sluice_sql::session::endpoint_override(tls),
        ))
    });
    let proxy =
        BallistaFlightProxyService::new(256 * 1024 * 1024, 256 * 1024 * 1024, false, customize);
    let backend = Arc::new(Backend { scheduler: Arc::clone(&scheduler) });
    let inner = BallistaFlightSqlService::new(backend, proxy)
        .with_authenticator(Arc::new(AnonymousAuthenticator));
    let service = SluiceFlightSql {
        inner,
        scheduler,
        tokens: config.tokens.clone(),
        roots: config.data_roots.clone(),
        catalog: config.catalog.clone(),
        signer: TicketSigner::new()?,
    };
    let mut builder = Server::builder();
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            sluice_proto::install_crypto();
            let mut tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?));
            if let Some(ca) = &config.tls_client_ca {
                tls = tls.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
            }
            builder = builder.tls_config(tls).map_err(|e| Error::ConfigFile {
                path: cert.display().to_string(),
                reason: format!("TLS: {e}"),
            })?;
        }
        (None, None) => {}
        _ => {
            return Err(Error::ConfigFile {
                path: "--tls-cert/--tls-key".into(),
                reason: "give both --tls-cert and --tls-key".into(),
            });
        }
    }
    let server = FlightServiceServer::new(service)
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024);
    // `serve_with_incoming` ignores the builder's TCP_NODELAY: without it a
    // small reply waits ~40 ms for the client's delayed ACK.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| conn.and_then(|s| s.set_nodelay(true).map(|()| s)),
    );
    let task = tokio::spawn(builder.add_service(server).serve_with_incoming(incoming));
    Ok(RunningFlightSql { local_addr, task })
}
