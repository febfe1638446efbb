//! `telemetry.tracing`: spans reach a real OTLP/gRPC receiver (a tonic
//! server on OpenTelemetry's own protobuf types, in this process). The
//! caller's trace is continued, each upstream attempt is a client span
//! under the server span (a retry a sibling), the upstream sees the
//! attempt's `traceparent`, and a trace the sampler drops exports nothing
//! and is still propagated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::Request;
use integration_tests::body::empty;
use integration_tests::handlers::{self, Seen};
use integration_tests::{Backend, Client, Proxy, guard};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Every span received, in arrival order.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn receiver() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = Receiver::default();
    let service = TraceServiceServer::new(rx.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, rx)
}

impl Receiver {
    /// The spans of `trace` once there are `n` of them.
    async fn trace(&self, trace: &str, n: usize) -> Vec<Span> {
        guard(&format!("{n} spans of trace {trace}"), async {
            loop {
                let spans: Vec<Span> = self
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| hex(&s.trace_id) == trace)
                    .cloned()
                    .collect();
                if spans.len() >= n {
                    return spans;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let v = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

fn config(collector: SocketAddr, ratio: &str, endpoints: &[SocketAddr]) -> String {
    let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
telemetry: {{ tracing: {{ otlp_endpoint: \"http://{collector}\"{ratio} }} }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
    - name: app
      cluster: app
      retry: {{ attempts: 1, on: [5xx] }}
clusters:
  app:
    lb: round_robin
    endpoints: [{}]
",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_span_and_one_client_span_per_attempt() {
    let (collector, spans) = receiver().await;
    let bad = Backend::auto()
        .fallback(|_req| async { handlers::text(503, "down") })
        .spawn()
        .await;
    let good = Backend::auto().spawn().await;
    let proxy = Proxy::start(&config(collector, "", &[bad.addr(), good.addr()])).await;
    let req = Request::get("/traced")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .body(empty())
        .unwrap();
    let rsp = Client::http1(proxy.main()).await.request(req).await;
    assert_eq!(
        rsp.status.as_u16(),
        200,
        "the retry reached the good endpoint"
    );

    let trace = spans.trace(TRACE, 3).await;
    let server: Vec<&Span> = trace
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    let clients: Vec<&Span> = trace
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!((server.len(), clients.len()), (1, 2), "{trace:?}");
    let server = server[0];
    assert_eq!(
        hex(&server.parent_span_id),
        PARENT,
        "the caller's trace continues"
    );
    assert_eq!(server.name, "GET main/app");
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(server, "url.path").as_deref(), Some("/traced"));
    assert_eq!(attr(server, "http.route").as_deref(), Some("main/app"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    for c in &clients {
        assert_eq!(
            c.parent_span_id, server.span_id,
            "attempts are siblings under the server span"
        );
    }
    let mut statuses: Vec<String> = clients
        .iter()
        .map(|c| attr(c, "http.response.status_code").unwrap())
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["200", "503"]);
    let ok = clients
        .iter()
        .find(|c| attr(c, "http.response.status_code").as_deref() == Some("200"))
        .unwrap();
    assert_eq!(
        attr(ok, "server.port"),
        Some(good.addr().port().to_string())
    );

    // The upstream saw the successful attempt's span as its parent.
    let seen = Seen::from_json(&rsp.body);
    assert_eq!(
        seen.header("traceparent"),
        Some(format!("00-{TRACE}-{}-01", hex(&ok.span_id)).as_str())
    );
    assert_eq!(seen.header("tracestate"), Some("congo=t61rcWkgMzE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_trace_exports_nothing_and_still_propagates() {
    let (collector, spans) = receiver().await;
    let app = Backend::auto().spawn().await;
    let proxy = Proxy::start(&config(collector, ", sample_ratio: 0", &[app.addr()])).await;
    // No traceparent: a new trace, which ratio 0 does not sample.
    let rsp = Client::http1(proxy.main()).await.get("/dropped").await;
    let seen = Seen::from_json(&rsp.body);
    let tp = seen
        .header("traceparent")
        .expect("a traceparent is still sent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[3]), (4, "00"), "not sampled: {tp}");
    let dropped = parts[1].to_owned();
    // A caller's unsampled trace goes on exactly as it came.
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let req = Request::get("/caller-dropped")
        .header("traceparent", &unsampled)
        .body(empty())
        .unwrap();
    let rsp = Client::http1(proxy.main()).await.request(req).await;
    assert_eq!(
        Seen::from_json(&rsp.body).header("traceparent"),
        Some(unsampled.as_str())
    );
    // A sampled caller is honoured whatever the ratio: its spans arrive,
    // and the dropped trace's, sent before them, never did.
    let req = Request::get("/marker")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(empty())
        .unwrap();
    Client::http1(proxy.main()).await.request(req).await;
    // Its two spans, and none from the unsampled request of the same trace.
    assert_eq!(spans.trace(TRACE, 2).await.len(), 2);
    let all = spans.0.lock().unwrap().clone();
    assert!(
        all.iter().all(|s| hex(&s.trace_id) != dropped),
        "the unsampled trace was exported"
    );
}
