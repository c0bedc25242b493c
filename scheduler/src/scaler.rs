//! KEDA's external scaler (`externalscaler.ExternalScaler`, in
//! `proto/proto/externalscaler/`), served by the leader on its port.
//!
//! One metric, `sluice-executors`: the executors the running and pending
//! tasks want ([`crate::load::desired_executors`]) with target size 1, so
//! KEDA's replica count (metric / target, rounded up) is that number. The
//! ScaledObject's metadata may set `slotsPerExecutor` (default: the live
//! executors' average); active while any task or backfill exists, so
//! executors scale to zero when the cluster is idle.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use sluice_proto::externalscaler::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use sluice_proto::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use tonic::{Request, Response, Status};

use crate::load::{self, LoadSource};

/// The metric's name.
pub const METRIC: &str = "sluice-executors";

/// How often `StreamIsActive` looks at the load.
const STREAM_INTERVAL: Duration = Duration::from_secs(1);

pub struct Scaler(pub LoadSource);

/// `slotsPerExecutor` from the ScaledObject's metadata.
fn slots_per_executor(
    object: &ScaledObjectRef,
    load: &load::Load,
) -> std::result::Result<u64, Status> {
    match object.scaler_metadata.get("slotsPerExecutor") {
        None => Ok(load::slots_per_executor(load)),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Status::invalid_argument(format!(
                "scaler metadata slotsPerExecutor: '{v}' is not a positive integer"
            ))),
        },
    }
}

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> std::result::Result<Response<IsActiveResponse>, Status> {
        let _ = request;
        Ok(Response::new(IsActiveResponse { result: load::active(&self.0.read().await) }))
    }

    type StreamIsActiveStream =
        Pin<Box<dyn Stream<Item = std::result::Result<IsActiveResponse, Status>> + Send>>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> std::result::Result<Response<Self::StreamIsActiveStream>, Status> {
        let _ = request;
        let source = self.0.clone();
        // The first answer at once, then one at every change.
        let stream = futures::stream::unfold(None, move |last: Option<bool>| {
            let source = source.clone();
            async move {
                loop {
                    let now = load::active(&source.read().await);
                    if last != Some(now) {
                        return Some((Ok(IsActiveResponse { result: now }), Some(now)));
                    }
                    tokio::time::sleep(STREAM_INTERVAL).await;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> std::result::Result<Response<GetMetricSpecResponse>, Status> {
        let _ = request;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: METRIC.into(),
                target_size: 1,
                target_size_float: 1.0,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> std::result::Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let load = self.0.read().await;
        let object = request.scaled_object_ref.unwrap_or_default();
        let desired = load::desired_executors(&load, slots_per_executor(&object, &load)?);
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: METRIC.into(),
                metric_value: i64::try_from(desired).unwrap_or(i64::MAX),
                metric_value_float: desired as f64,
            }],
        }))
    }
}

/// The service for the scheduler port's router.
pub fn service(source: LoadSource) -> ExternalScalerServer<Scaler> {
    ExternalScalerServer::new(Scaler(source))
}
