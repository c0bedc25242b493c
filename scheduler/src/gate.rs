//! The scheduler port: Ballista's scheduler gRPC service, its REST API and
//! the health probes, served with Sluice's tokens checked on the calls a
//! client makes.
//!
//! ```text
//!   /ballista.protobuf.SchedulerGrpc/ExecuteQuery, GetJobStatus, CancelJob…  admin token
//!   /ballista.protobuf.SchedulerGrpc/RegisterExecutor, PollWork, HeartBeat…  executor certificate (cluster TLS)
//!   /api/job/{id}/config (a job's settings, secrets included)               admin
//!   /api/…                                                                   GET: any token; else admin
//!   /healthz, /readyz                                                        open (probes)
//!   /metrics (Prometheus text), /externalscaler.ExternalScaler/… (KEDA)     open (load figures only)
//! ```
//!
//! Submitting a plan over Ballista's gRPC can write (`COPY`, `INSERT`), so
//! it takes the admin role; read-only clients use the Flight SQL endpoint.
//! Executors cannot send a token on Ballista's client: with cluster TLS
//! (`--cluster-ca/--cluster-cert/--cluster-key`) their calls need an
//! executor certificate, and a client certificate of the cluster stands for
//! the admin role; without it executors' calls are left to the network (bind
//! the scheduler port to the cluster network). Executor messages are
//! checked by `guard` before Ballista sees them.
//!
//! Sluice serves the port itself (instead of Ballista's
//! `start_grpc_service_with_listener`) to put the check in front of every
//! route; the embedded Flight proxy it could mount is off in Sluice (tickets
//! go through the Flight SQL endpoint's allow-list instead).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_scheduler::api::get_routes;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tonic::service::RoutesBuilder;

use axum::extract::ConnectInfo;
use sluice_proto::tls::{ClusterTls, Role as CertRole};

use crate::flight_sql::{Role, Tokens};
use crate::guard::GuardedScheduler;
use crate::listener::{ClusterListener, Peer};

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

const GRPC_PREFIX: &str = "/ballista.protobuf.SchedulerGrpc/";

/// Scheduler gRPC methods that executors call; every other method is a
/// client's.
const EXECUTOR_METHODS: &[&str] = &[
    "RegisterExecutor",
    "PollWork",
    "HeartBeatFromExecutor",
    "UpdateTaskStatus",
    "ExecutorStopped",
];

/// What a request needs.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    Nothing,
    /// An executor's call: with cluster TLS, an executor certificate.
    Executor,
    AnyToken,
    Admin,
}

/// Drain calls executors make (`Drain`, asking one to drain, is an admin's).
const DRAIN_PREFIX: &str = "/sluice.v1.DrainService/";
const DRAIN_EXECUTOR_METHODS: &[&str] = &["Begin", "Plan", "Finish", "Check"];

fn need(method: &Method, path: &str) -> Need {
    if let Some(rpc) = path.strip_prefix(GRPC_PREFIX) {
        if EXECUTOR_METHODS.contains(&rpc) { Need::Executor } else { Need::Admin }
    } else if let Some(rpc) = path.strip_prefix(DRAIN_PREFIX) {
        if DRAIN_EXECUTOR_METHODS.contains(&rpc) { Need::Executor } else { Need::Admin }
    } else if path == "/healthz"
        || path == "/readyz"
        || path == "/metrics"
        || path.starts_with("/externalscaler.ExternalScaler/")
    {
        Need::Nothing
    } else if path.starts_with("/api/job/") && path.ends_with("/config") {
        // A job's settings: S3 secret keys among them.
        Need::Admin
    } else if method == Method::GET || method == Method::HEAD {
        Need::AnyToken
    } else {
        Need::Admin
    }
}

/// What the gate checks against.
struct Policy {
    tokens: Option<Tokens>,
    /// The port speaks cluster TLS: executors' calls need an executor
    /// certificate, and client calls a token or a client certificate.
    cluster_tls: bool,
}

/// Refuses a request: a gRPC status for gRPC paths, HTTP 401/403 otherwise.
fn refuse(grpc: bool, status: tonic::Status) -> Response {
    if grpc {
        return status.into_http::<axum::body::Body>();
    }
    let code = match status.code() {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    (code, format!("{}\n", status.message())).into_response()
}

async fn check(State(policy): State<Arc<Policy>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let grpc = path.starts_with(GRPC_PREFIX);
    let need = need(request.method(), path);
    let peer = request.extensions().get::<ConnectInfo<Peer>>().map(|info| info.0.clone());
    if let Some(peer) = &peer {
        // Ballista's handlers read the caller's address from here.
        request.extensions_mut().insert(ConnectInfo(peer.addr));
    }
    let identity = peer.and_then(|p| p.identity);
    match need {
        Need::Nothing => return next.run(request).await,
        Need::Executor if !policy.cluster_tls => return next.run(request).await,
        Need::Executor => {
            return match identity {
                Some(id) if id.role == CertRole::Executor => next.run(request).await,
                Some(id) => refuse(
                    grpc,
                    tonic::Status::permission_denied(format!(
                        "executor calls need an executor certificate; this is {id}"
                    )),
                ),
                None => refuse(
                    grpc,
                    tonic::Status::unauthenticated(
                        "executor calls need a cluster certificate (--cluster-cert)",
                    ),
                ),
            };
        }
        Need::AnyToken | Need::Admin => {}
    }
    // An operator's client certificate (or the scheduler's own) stands for
    // the admin role.
    if identity.is_some_and(|id| matches!(id.role, CertRole::Client | CertRole::Scheduler)) {
        return next.run(request).await;
    }
    let Some(tokens) = &policy.tokens else {
        if policy.cluster_tls {
            return refuse(
                grpc,
                tonic::Status::unauthenticated(
                    "this cluster needs a client certificate (--cluster-cert) or a token",
                ),
            );
        }
        return next.run(request).await;
    };
    let header = match request.headers().get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return refuse(grpc, tonic::Status::unauthenticated("malformed authorization header"));
        }
    };
    match tokens.role_of(header) {
        Err(reason) => refuse(grpc, tonic::Status::unauthenticated(reason)),
        Ok(Role::Read) if need == Need::Admin => refuse(
            grpc,
            tonic::Status::permission_denied(
                "this call needs an admin token; read tokens query through the Flight SQL endpoint",
            ),
        ),
        Ok(_) => next.run(request).await,
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(scheduler): State<Arc<Scheduler>>) -> Response {
    let alive = scheduler.state.executor_manager.get_executors_state().await.map_or(0, |e| e.len());
    let required = scheduler.state.config.min_ready_executors;
    if scheduler.is_ready() {
        (StatusCode::OK, format!("ready: {alive} executors registered\n")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {alive}/{required} executors registered\n"),
        )
            .into_response()
    }
}

async fn metrics(State(load): State<crate::load::LoadSource>) -> Response {
    let text = load.metrics.render(&load.read().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Serves the scheduler port until it fails; with `tokens`, client calls
/// must carry one; with `tls`, the port speaks cluster TLS.
///
/// # Errors
/// The I/O error that stopped the server.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    scheduler: Scheduler,
    tokens: Option<Tokens>,
    tls: Option<ClusterTls>,
    backfills: sluice_proto::pb::backfill_service_server::BackfillServiceServer<
        crate::backfill::BackfillGrpc,
    >,
    load: crate::load::LoadSource,
    drains: crate::drain::Drains,
) -> std::io::Result<()> {
    let listener = ClusterListener::new(listener, tls.as_ref())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let config = scheduler.state.config.clone();
    let guarded = GuardedScheduler::new(scheduler.clone(), tls.is_some(), drains.clone());
    let drain =
        sluice_proto::pb::drain_service_server::DrainServiceServer::new(crate::drain::DrainGrpc {
            guard: guarded.clone(),
            drains,
        });
    let grpc = SchedulerGrpcServer::new(guarded)
        .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
        .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
    let mut routes = RoutesBuilder::default();
    routes.add_service(grpc);
    routes.add_service(drain);
    routes.add_service(backfills);
    routes.add_service(crate::scaler::service(load.clone()));
    let scheduler = Arc::new(scheduler);
    let policy = Arc::new(Policy { tokens, cluster_tls: tls.is_some() });
    let app = get_routes(Arc::clone(&scheduler))
        .merge(routes.routes().into_axum_router())
        .layer(axum::middleware::from_fn_with_state(policy, check));
    let health = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(scheduler);
    let metrics = axum::Router::new().route("/metrics", get(metrics)).with_state(load);
    let app = app.merge(health).merge(metrics).fallback(|| async { StatusCode::NOT_FOUND });
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
}

/// What a standby says about the leader.
pub(crate) type LeaderView = Arc<std::sync::RwLock<sluice_proto::etcd::LeaderRecord>>;

fn standby_message(leader: &LeaderView) -> String {
    let leader = leader.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    if leader.endpoint.is_empty() {
        "this scheduler is a standby and no leader is elected yet; retry shortly".to_string()
    } else {
        format!(
            "this scheduler is a standby; the leader is {} at {} (connect there, or pass \
             --etcd-endpoints and --cluster to follow the leader)",
            leader.id, leader.endpoint
        )
    }
}

async fn standby_refusal(State(leader): State<LeaderView>, request: Request) -> Response {
    let message = standby_message(&leader);
    let path = request.uri().path();
    if path == "/healthz" {
        return (StatusCode::OK, "ok (standby)\n").into_response();
    }
    if request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.to_str().is_ok_and(|v| v.starts_with("application/grpc")))
    {
        let mut status = tonic::Status::unavailable(message);
        if let Ok(value) =
            leader.read().unwrap_or_else(std::sync::PoisonError::into_inner).endpoint.parse()
        {
            status.metadata_mut().insert("x-sluice-leader", value);
        }
        return status.into_http::<axum::body::Body>();
    }
    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {message}\n")).into_response()
}

/// Serves a standby's scheduler port: `/healthz` is ok, `/readyz` and every
/// other call are refused naming the leader.
///
/// # Errors
/// The I/O error that stopped the server.
pub(crate) async fn serve_standby(
    listener: tokio::net::TcpListener,
    leader: LeaderView,
    tls: Option<ClusterTls>,
) -> std::io::Result<()> {
    let listener = ClusterListener::new(listener, tls.as_ref())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let app = axum::Router::new().fallback(standby_refusal).with_state(leader);
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executors_calls_and_probes_are_open_client_calls_are_not() {
        assert_eq!(
            need(&Method::POST, "/ballista.protobuf.SchedulerGrpc/PollWork"),
            Need::Executor
        );
        assert_eq!(need(&Method::GET, "/readyz"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/metrics"), Need::Nothing);
        assert_eq!(need(&Method::POST, "/externalscaler.ExternalScaler/GetMetrics"), Need::Nothing);
        assert_eq!(
            need(&Method::POST, "/ballista.protobuf.SchedulerGrpc/ExecuteQuery"),
            Need::Admin
        );
        assert_eq!(
            need(&Method::POST, "/ballista.protobuf.SchedulerGrpc/GetJobStatus"),
            Need::Admin
        );
        assert_eq!(need(&Method::GET, "/api/jobs"), Need::AnyToken);
        assert_eq!(need(&Method::GET, "/api/job/abc/config"), Need::Admin);
        assert_eq!(need(&Method::PATCH, "/api/job/abc"), Need::Admin);
        // A method Ballista adds later is a client's until listed.
        assert_eq!(need(&Method::POST, "/ballista.protobuf.SchedulerGrpc/NewThing"), Need::Admin);
    }
}
