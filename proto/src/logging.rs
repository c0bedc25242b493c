//! Log output of every Sluice binary: `tracing` with text or JSON lines on
//! stderr, filtered by `RUST_LOG` (default: `info` for Sluice and Ballista,
//! `warn` for everything else).
//!
//! Ballista logs through the `log` crate; `tracing-subscriber` forwards those
//! records, so one filter and one format cover both.

use std::str::FromStr;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format '{other}'; expected text or json")),
        }
    }
}

/// The default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "warn,sluice=info,sluice_scheduler=info,sluice_executor=info,sluice_client=info,ballista=info,ballista_scheduler=info,ballista_executor=info,ballista_core=warn";

/// Installs the global subscriber. Safe to call twice (the second call is a
/// no-op), which embedded clusters rely on. Traces are exported when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set
/// ([`init_service`] names the process; this one is `sluice`).
pub fn init(format: LogFormat, default_filter: &str) {
    init_service(format, default_filter, "sluice");
}

/// As [`init`], naming the process `service` in its traces. Call it inside
/// a Tokio runtime (the OTLP exporter's gRPC client needs one).
pub fn init_service(format: LogFormat, default_filter: &str, service: &'static str) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let otel = traces::layer(service).map(|layer| {
        // Sluice's own spans (info and above), whatever the log filter says;
        // Ballista's and DataFusion's would start traces of their own.
        layer.with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && m.target().starts_with("sluice") && *m.level() <= tracing::Level::INFO
        }))
    });
    let _already_set = tracing_subscriber::registry().with(fmt).with(otel).try_init();
}

/// OpenTelemetry traces over OTLP/gRPC, off unless the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
/// is set. A backfill is one trace: the CLI's span travels to the scheduler
/// in the request (`BackfillRequest.traceparent`, W3C trace context), the
/// scheduler's job spans to the executors in the job's settings
/// (`sluice.trace.parent`).
pub mod traces {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime};

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// Whether traces are exported (an endpoint is set).
    pub fn configured() -> bool {
        ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .iter()
            .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
    }

    /// The tracing layer exporting to the configured endpoint, if any.
    pub(super) fn layer<S>(
        service: &'static str,
    ) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        if !configured() || PROVIDER.get().is_some() {
            return None;
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("warning: OpenTelemetry traces are off: {e}");
                return None;
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder().with_service_name(service).build(),
            )
            .build();
        let tracer = provider.tracer("sluice");
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    /// Sends what is buffered and stops exporting (before a short-lived
    /// process exits). Bounded by `timeout`.
    pub fn shutdown(timeout: Duration) {
        if let Some(provider) = PROVIDER.get() {
            let _ = provider.force_flush();
            let _ = provider.shutdown_with_timeout(timeout);
        }
    }

    /// The W3C `traceparent` of `span` (empty when traces are off).
    pub fn traceparent(span: &tracing::Span) -> String {
        if PROVIDER.get().is_none() {
            return String::new();
        }
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        carrier.remove("traceparent").unwrap_or_default()
    }

    fn context_of(traceparent: &str) -> Option<opentelemetry::Context> {
        if traceparent.is_empty() {
            return None;
        }
        let carrier: HashMap<String, String> =
            HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
        Some(TraceContextPropagator::new().extract(&carrier))
    }

    /// Makes `span` a child of the remote span `traceparent` (nothing when
    /// it is empty or traces are off).
    pub fn set_parent(span: &tracing::Span, traceparent: &str) {
        if PROVIDER.get().is_none() {
            return;
        }
        if let Some(cx) = context_of(traceparent) {
            let _ = span.set_parent(cx);
        }
    }

    /// Records a span that already happened (a stage, from its tasks'
    /// times) under the span `traceparent`.
    pub fn record_past_span(
        traceparent: &str,
        name: String,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<(&'static str, String)>,
    ) {
        let (Some(provider), Some(cx)) = (PROVIDER.get(), context_of(traceparent)) else {
            return;
        };
        let tracer = provider.tracer("sluice");
        let mut span = tracer
            .span_builder(name)
            .with_start_time(start)
            .with_attributes(
                attributes.into_iter().map(|(k, v)| opentelemetry::KeyValue::new(k, v)),
            )
            .start_with_context(&tracer, &cx);
        span.end_with_timestamp(end.max(start));
    }
}
