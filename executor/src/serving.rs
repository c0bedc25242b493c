//! Ballista's Flight service with its reads counted, so that a drained
//! executor stays up while readers that were handed its address before the
//! scheduler pointed them at a peer are still fetching.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use ballista_executor::flight_service::BallistaFlightService;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Reads in flight and when the last one started (ms since the epoch).
#[derive(Debug, Default)]
pub struct Activity {
    active: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    /// The process-wide activity of this executor's Flight port.
    pub fn global() -> Arc<Activity> {
        static GLOBAL: std::sync::OnceLock<Arc<Activity>> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(Arc::default).clone()
    }

    fn start(self: &Arc<Self>) -> Guard {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.last_ms.store(sluice_proto::etcd::now_ms(), Ordering::SeqCst);
        Guard(Arc::clone(self))
    }

    /// No read in flight and none started for `quiet`.
    pub fn idle_for(&self, quiet: Duration) -> bool {
        let since =
            sluice_proto::etcd::now_ms().saturating_sub(self.last_ms.load(Ordering::SeqCst));
        self.active.load(Ordering::SeqCst) == 0 && since >= quiet.as_millis() as u64
    }
}

/// Ends a read when dropped (with its response stream).
struct Guard(Arc<Activity>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn tracked<T: Send + 'static>(stream: Boxed<T>, guard: Guard) -> Boxed<T> {
    Box::pin(stream.map(move |item| {
        let _reading = &guard;
        item
    }))
}

pub struct TrackedFlight {
    inner: BallistaFlightService,
    activity: Arc<Activity>,
}

impl TrackedFlight {
    pub fn new(inner: BallistaFlightService) -> Self {
        Self { inner, activity: Activity::global() }
    }
}

#[tonic::async_trait]
impl FlightService for TrackedFlight {
    type DoActionStream = Boxed<arrow_flight::Result>;
    type DoExchangeStream = Boxed<FlightData>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListActionsStream = Boxed<ActionType>;
    type ListFlightsStream = Boxed<FlightInfo>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let guard = self.activity.start();
        let stream = self.inner.do_get(request).await?.into_inner();
        Ok(Response::new(tracked(stream, guard)))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let guard = self.activity.start();
        let stream = self.inner.do_action(request).await?.into_inner();
        Ok(Response::new(tracked(stream, guard)))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        self.inner.get_schema(request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.inner.get_flight_info(request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        self.inner.poll_flight_info(request).await
    }

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.inner.handshake(request).await
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.inner.list_flights(request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.inner.do_put(request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.inner.list_actions(request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.inner.do_exchange(request).await
    }
}
