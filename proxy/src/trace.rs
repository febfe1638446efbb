//! Distributed tracing (`telemetry.tracing`): a server span per request, a
//! client span per upstream attempt (a retry is a sibling of the attempt it
//! follows), exported over OTLP/gRPC.
//!
//! W3C Trace Context on the wire: the caller's `traceparent` (and
//! `tracestate`) is continued, and each attempt's `traceparent` names its
//! client span. Without `telemetry.tracing` Skiff makes no span and passes
//! `traceparent` on untouched. Sampling is the caller's decision when it
//! sent one, else `sample_ratio` of new traces. An unsampled request costs
//! no span object at all: its `traceparent` goes on as it came (or, when it
//! had none, a fresh one with flags 00), so the trace still propagates.
//!
//! Spans go to a bounded batch queue (2,048 spans, sent every second) on a
//! thread of the SDK's own: an unreachable collector costs queue space and
//! dropped spans, never a request's time.
//!
//! The OpenTelemetry SDK is used directly rather than through
//! `tracing-opentelemetry`: Skiff's spans are per request, configured per
//! snapshot (and changed by a live reload), while a `tracing` layer would be
//! global to the process and fixed when logging starts.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use skiff_control::model;
use skiff_filters::telemetry::{AttemptSpan, AttemptTracer};

/// A running exporter and the tracer that feeds it.
pub struct Tracing {
    pub config: model::Tracing,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("config", &self.config)
            .finish()
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.tracing: cannot set up the OTLP exporter to {endpoint}")]
pub struct TraceError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

impl Tracing {
    /// Starts exporting to `config.otlp_endpoint`. Needs a tokio runtime.
    pub fn start(config: &model::Tracing) -> Result<Arc<Self>, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| TraceError {
                endpoint: config.otlp_endpoint.clone(),
                source,
            })?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(2048)
            .with_scheduled_delay(Duration::from_secs(1))
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        // Roots are sampled by `Tracing::begin` before any span exists (so
        // a dropped request costs no span at all); a parent's decision is
        // the SDK's to honour.
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name("skiff")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("skiff");
        Ok(Arc::new(Self {
            config: config.clone(),
            provider,
            tracer,
        }))
    }

    /// Decides whether `req` is traced, and starts its server span when it
    /// is (a child of the caller's span when it sent `traceparent`). A
    /// request that is not traced costs no span: the caller's
    /// `traceparent` goes on as it came, and a request without one gets a
    /// fresh, unsampled one, so the upstream's own spans join one trace.
    pub fn begin<B>(self: &Arc<Self>, req: &mut Request<B>, route: &str) -> Option<ServerSpan> {
        let parent = remote_parent(req.headers());
        let sampled = match &parent {
            Some(p) => p.is_sampled(),
            None => fastrand::f64() < self.config.sample_ratio.unwrap_or(1.0),
        };
        if !sampled {
            if parent.is_none() {
                req.headers_mut().insert("traceparent", fresh_unsampled());
            }
            return None;
        }
        let parent = match parent {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let mut span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        if span.is_recording() {
            span.update_name(format!("{} {route}", req.method()));
            span.set_attributes([
                KeyValue::new("http.request.method", req.method().as_str().to_owned()),
                KeyValue::new("url.path", req.uri().path().to_owned()),
                KeyValue::new("http.route", route.to_owned()),
                KeyValue::new("network.protocol.version", protocol(req.version())),
            ]);
        }
        let cx = parent.with_span(span);
        Some(ServerSpan {
            tracing: self.clone(),
            cx,
        })
    }
}

impl Tracing {
    /// Exports what is queued now (blocking: call off the runtime).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // Flushes what is queued: off the runtime, since it blocks.
        let provider = self.provider.clone();
        std::thread::spawn(move || {
            let _ = provider.shutdown();
        });
    }
}

/// A request's server span. It travels down the stack inside the request's
/// `RequestContext` (as its `AttemptTracer`), for the attempts' client spans
/// to hang from.
#[derive(Clone)]
pub struct ServerSpan {
    tracing: Arc<Tracing>,
    cx: Context,
}

impl ServerSpan {
    /// Starts the client span of one upstream attempt to `endpoint`, and
    /// writes its `traceparent` (and the trace's `tracestate`) on `headers`.
    pub fn client_span(
        &self,
        method: &http::Method,
        version: http::Version,
        headers: &mut HeaderMap,
        endpoint: &str,
    ) -> ClientSpan {
        let t = &self.tracing.tracer;
        let mut span = t
            .span_builder("attempt")
            .with_kind(SpanKind::Client)
            .start_with_context(t, &self.cx);
        if span.is_recording() {
            span.update_name(method.as_str().to_owned());
            span.set_attribute(KeyValue::new(
                "http.request.method",
                method.as_str().to_owned(),
            ));
            span.set_attribute(KeyValue::new("network.protocol.version", protocol(version)));
            let (host, port) = endpoint.rsplit_once(':').unwrap_or((endpoint, ""));
            span.set_attribute(KeyValue::new("server.address", host.to_owned()));
            if let Ok(p) = port.parse::<i64>() {
                span.set_attribute(KeyValue::new("server.port", p));
            }
        }
        inject(span.span_context(), headers);
        ClientSpan(span)
    }

    /// The server span as a `traceparent` value (for the access log's trace id).
    pub fn traceparent(&self) -> Option<HeaderValue> {
        traceparent(self.cx.span().span_context())
    }

    /// Ends the server span with the response's status.
    pub fn end(self, status: u16, grpc_status: Option<u32>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(g) = grpc_status {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(g)));
        }
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

impl std::fmt::Debug for ServerSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSpan")
    }
}

impl AttemptTracer for ServerSpan {
    fn attempt(
        &self,
        method: &http::Method,
        version: http::Version,
        headers: &mut HeaderMap,
        endpoint: &str,
    ) -> Box<dyn AttemptSpan> {
        Box::new(self.client_span(method, version, headers, endpoint))
    }
}

/// One upstream attempt's span; ended by [`ClientSpan::end`].
pub struct ClientSpan(opentelemetry_sdk::trace::Span);

impl AttemptSpan for ClientSpan {
    fn end(self: Box<Self>, status: Option<u16>) {
        ClientSpan::end(*self, status);
    }
}

impl ClientSpan {
    /// Ends the span: with the response status, or as an error.
    pub fn end(mut self, status: Option<u16>) {
        match status {
            Some(s) => {
                self.0
                    .set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
                if s >= 500 {
                    self.0.set_status(Status::error(""));
                }
            }
            None => self.0.set_status(Status::error("no response")),
        }
        self.0.end();
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

/// The caller's span from `traceparent: 00-TRACE-SPAN-FLAGS` and
/// `tracestate`, if well formed (W3C Trace Context, version 00).
fn remote_parent(h: &HeaderMap) -> Option<SpanContext> {
    let tp = h.get("traceparent")?.to_str().ok()?;
    let mut parts = tp.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1);
    let state = h
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// `traceparent` for a trace Skiff starts and does not sample: random ids,
/// flags 00.
fn fresh_unsampled() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let (trace, span) = (fastrand::u128(1..), fastrand::u64(1..));
    for i in 0..32 {
        out[3 + i] = HEX[((trace >> (124 - 4 * i)) & 0xf) as usize];
    }
    for i in 0..16 {
        out[36 + i] = HEX[((span >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(
        "00-00000000000000000000000000000001-0000000000000001-00",
    ))
}

/// `sc` as a `traceparent` value, if it is a valid span context.
fn traceparent(sc: &SpanContext) -> Option<HeaderValue> {
    if !sc.is_valid() {
        return None;
    }
    let tp = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    HeaderValue::from_str(&tp).ok()
}

/// Writes `sc` as `traceparent` (and `tracestate`) on an outgoing request.
fn inject(sc: &SpanContext, h: &mut HeaderMap) {
    let Some(tp) = traceparent(sc) else {
        return;
    };
    h.insert("traceparent", tp);
    let state = sc.trace_state().header();
    if !state.is_empty()
        && let Ok(v) = HeaderValue::from_str(&state)
    {
        h.insert("tracestate", v);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let sc = remote_parent(&h).unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        let mut out = HeaderMap::new();
        inject(&sc, &mut out);
        assert_eq!(out["traceparent"], h["traceparent"]);
        assert_eq!(out["tracestate"], h["tracestate"]);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_static(bad));
            assert!(remote_parent(&h).is_none(), "{bad}");
        }
    }
}
