//! Logging and tracing set-up: an env filter (`RUST_LOG`, default `info`), text or JSON lines,
//! and OpenTelemetry traces over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, with the
//! W3C trace-context propagator so one trace spans gRPC calls and AMQP messages.
//!
//! Spans always get OpenTelemetry trace and span ids, exported or not: trace context then
//! travels from the CLI through the coordinator to the workers in every deployment, and JSON log
//! lines of all processes can be joined by `trace_id`. Which spans are traced follows
//! `TUTTI_TRACE_FILTER` (default `info`), separately from `RUST_LOG`, so quiet logs do not cut
//! a trace.

mod json_log;

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Flushes pending spans when dropped (keep it alive for the life of `main`).
#[must_use = "dropping the guard shuts tracing export down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls only return a guard),
/// which in-process test farms rely on. `service` names the process in traces.
pub fn init(format: LogFormat, service: &str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer()
            .fmt_fields(fmt::format::JsonFields::new())
            .event_format(json_log::JsonLines)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let trace_filter =
        || EnvFilter::try_from_env("TUTTI_TRACE_FILTER").unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = tracer_provider(service);
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("tutti"));
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter()))
        .with(otel.with_filter(trace_filter()))
        .try_init();
    TelemetryGuard {
        provider: Some(provider),
    }
}

/// A provider that gives every span its ids, exporting them over OTLP only when configured.
fn tracer_provider(service: &str) -> SdkTracerProvider {
    // `OTEL_SERVICE_NAME` (e.g. one per worker pool) wins over the process kind.
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") else {
        return builder.build();
    };
    use opentelemetry_otlp::WithExportConfig;
    match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
    {
        Ok(exporter) => builder.with_batch_exporter(exporter).build(),
        Err(e) => {
            eprintln!("warning: OTLP exporter for {endpoint} not started: {e}");
            builder.build()
        }
    }
}

/// The trace id of the current span (32 hex digits), if it has one.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct MapReader<'a>(&'a HashMap<String, String>);

impl Extractor for MapReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The current span's trace context as W3C headers (`traceparent`, `tracestate`); empty outside
/// any span.
pub fn current_context_headers() -> HashMap<String, String> {
    let mut map = HashMap::new();
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MapCarrier(&mut map))
    });
    map
}

/// Makes `span` a child of the trace context carried in `headers` (W3C `traceparent`); returns
/// false, leaving the span alone, when they carry none.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HashMap<String, String>) -> bool {
    if !headers.contains_key("traceparent") {
        return false;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MapReader(headers)));
    span.set_parent(cx).is_ok()
}

/// Trace headers as an AMQP header table.
pub fn amqp_headers(headers: &HashMap<String, String>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in headers {
        t.insert(
            ShortString::from(k.clone()),
            AMQPValue::LongString(LongString::from(v.clone())),
        );
    }
    t
}

/// String headers of an AMQP message (others are ignored).
pub fn headers_from_amqp(table: Option<&FieldTable>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if let Some(t) = table {
        for (k, v) in t.inner() {
            if let AMQPValue::LongString(s) = v {
                map.insert(k.to_string(), s.to_string());
            }
        }
    }
    map
}
