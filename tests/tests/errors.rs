//! The responses the proxy makes itself (`skiff-error`), for HTTP and gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use integration_tests::backend::{blackhole, closed_port};
use integration_tests::body::{empty, full};
use integration_tests::client::{ClientProtocol, say_hello};
use integration_tests::{Backend, Client, Config, Listening, Proxy, TcpServer, guard, handlers};
use tonic::Code;

/// A way for a request to fail at the proxy.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// No route matches the request.
    NoRoute,
    /// The only endpoint has nothing listening.
    ConnectFailed,
    /// The upstream accepts, reads the request, then closes.
    UpstreamClosed,
    /// The upstream accepts, reads the request, then resets (RST).
    UpstreamReset,
    /// The upstream never answers within the route's timeout.
    Timeout,
}

/// Starts the proxy (and the misbehaving upstream, if any) for `failure`.
async fn setup(failure: Failure) -> (Proxy, Option<Listening>) {
    let (endpoint, upstream, route) = match failure {
        Failure::NoRoute => {
            let backend = Backend::auto().spawn().await;
            (
                backend.addr(),
                Some(backend),
                "match: { path: { prefix: /elsewhere } }",
            )
        }
        Failure::ConnectFailed => (closed_port().await, None, ""),
        Failure::UpstreamClosed => {
            let upstream = TcpServer::close_after_read().await;
            (upstream.addr(), Some(upstream), "")
        }
        Failure::UpstreamReset => {
            let upstream = TcpServer::reset_after_read().await;
            (upstream.addr(), Some(upstream), "")
        }
        Failure::Timeout => {
            let backend = Backend::auto().fallback(handlers::never).spawn().await;
            (backend.addr(), Some(backend), "timeout: 300ms")
        }
    };
    (Config::to(endpoint).route(route).start().await, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_carry_status_and_reason() {
    use ClientProtocol::{H2c, Http1};
    // failure, client protocol -> HTTP status, skiff-error
    let cases = [
        (Failure::NoRoute, Http1, 404, "no-route"),
        (Failure::NoRoute, H2c, 404, "no-route"),
        (Failure::ConnectFailed, Http1, 503, "connect-failed"),
        (Failure::ConnectFailed, H2c, 503, "connect-failed"),
        (Failure::UpstreamClosed, Http1, 502, "upstream-reset"),
        (Failure::UpstreamClosed, H2c, 502, "upstream-reset"),
        (Failure::UpstreamReset, Http1, 502, "upstream-reset"),
        (Failure::UpstreamReset, H2c, 502, "upstream-reset"),
        (Failure::Timeout, Http1, 504, "timeout"),
        (Failure::Timeout, H2c, 504, "timeout"),
    ];
    for (failure, protocol, status, reason) in cases {
        let case = format!("{failure:?} over {protocol:?}");
        let (proxy, upstream) = setup(failure).await;
        let mut client = Client::connect(proxy.main(), protocol).await;
        let rsp = client
            .request(Request::post("/thing").body(full("body")).unwrap())
            .await;
        assert_eq!(rsp.status.as_u16(), status, "{case}: {rsp:?}");
        assert_eq!(rsp.header("skiff-error"), Some(reason), "{case}: {rsp:?}");
        // The connection stays usable after the proxy's own reply.
        let again = client.get("/again").await;
        assert_eq!(
            again.header("skiff-error"),
            Some(reason),
            "{case}, second request: {again:?}"
        );
        drop(upstream);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_are_trailers_only_with_the_mapped_status() {
    // failure -> gRPC code, skiff-error
    let cases = [
        (Failure::NoRoute, Code::Unimplemented, "no-route"),
        (Failure::ConnectFailed, Code::Unavailable, "connect-failed"),
        (Failure::UpstreamClosed, Code::Unavailable, "upstream-reset"),
        (Failure::UpstreamReset, Code::Unavailable, "upstream-reset"),
        (Failure::Timeout, Code::DeadlineExceeded, "timeout"),
    ];
    for (failure, code, reason) in cases {
        let (proxy, upstream) = setup(failure).await;

        // Through tonic: the status and the header, as metadata.
        let status = say_hello(proxy.main(), "x").await.unwrap_err();
        assert_eq!(status.code(), code, "{failure:?}: {status:?}");
        assert!(
            !status.message().is_empty(),
            "{failure:?}: grpc-message is set"
        );
        assert_eq!(
            status
                .metadata()
                .get("skiff-error")
                .and_then(|v| v.to_str().ok()),
            Some(reason),
            "{failure:?}: {status:?}"
        );

        // On the wire: HTTP 200, trailers-only (grpc-status in the headers,
        // no body).
        let mut client = Client::h2c(proxy.main()).await;
        let rsp = client
            .request(
                Request::post("/skiff.demo.v1.Greeter/SayHello")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(full(vec![0u8, 0, 0, 0, 0]))
                    .unwrap(),
            )
            .await;
        let case = format!("{failure:?} on the wire");
        assert_eq!(rsp.status, StatusCode::OK, "{case}: {rsp:?}");
        assert!(
            rsp.header("content-type")
                .is_some_and(|v| v.starts_with("application/grpc")),
            "{case}: {rsp:?}"
        );
        let want_code = (code as i32).to_string();
        assert_eq!(
            rsp.header("grpc-status"),
            Some(want_code.as_str()),
            "{case}: {rsp:?}"
        );
        assert!(rsp.header("grpc-message").is_some(), "{case}: {rsp:?}");
        assert_eq!(rsp.header("skiff-error"), Some(reason), "{case}: {rsp:?}");
        assert!(
            rsp.body.is_empty(),
            "{case}: trailers-only has no body: {rsp:?}"
        );
        drop(upstream);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_bounds_a_hanging_connect() {
    let (endpoint, _blackhole) = blackhole().await;
    let proxy = Config::to(endpoint)
        .cluster("connect_timeout: 150ms")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    let started = Instant::now();
    let rsp = client.get("/slow-connect").await;
    let elapsed = started.elapsed();
    assert_eq!(rsp.status, StatusCode::SERVICE_UNAVAILABLE, "{rsp:?}");
    assert_eq!(rsp.header("skiff-error"), Some("connect-failed"), "{rsp:?}");
    // The default connect timeout is 1s; 150ms must be what bounded it.
    assert!(elapsed < Duration::from_millis(900), "took {elapsed:?}");
}

/// A body that sends `first` (if any), then stays silent for good.
fn then_silence(first: Option<&'static str>) -> integration_tests::BoxBody {
    use futures_util::StreamExt;
    let frames = futures_util::stream::iter(first)
        .map(|b: &'static str| {
            Ok::<_, integration_tests::BoxError>(http_body::Frame::data(bytes::Bytes::from_static(
                b.as_bytes(),
            )))
        })
        .chain(futures_util::stream::pending());
    integration_tests::body::boxed(http_body_util::StreamBody::new(frames))
}

/// A backend whose `/slow-body` and gRPC `SayHello` send their response
/// head at once, then (plain HTTP) one chunk, then nothing, ever.
async fn head_then_silence() -> Listening {
    Backend::auto()
        .route("/slow-body", |_req| async {
            http::Response::new(then_silence(Some("first ")))
        })
        .route("/skiff.demo.v1.Greeter/SayHello", |_req| async {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(then_silence(None))
                .unwrap()
        })
        .spawn()
        .await
}

/// The route `timeout` bounds the whole exchange (the interface: "the whole
/// request"), not only the wait for the response head: a unary gRPC call
/// whose head comes at once and whose message never does ends at the
/// deadline with DEADLINE_EXCEEDED and `skiff-error: timeout` (in the
/// trailers: the head has gone out already). Through tonic, as a gRPC
/// application sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_ends_a_unary_grpc_call_whose_message_is_late() {
    let backend = head_then_silence().await;
    let proxy = Config::to(backend.addr())
        .route("timeout: 300ms")
        .start()
        .await;
    let started = Instant::now();
    let status = guard("the call", say_hello(proxy.main(), "late"))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("skiff-error")
            .and_then(|v| v.to_str().ok()),
        Some("timeout"),
        "{status:?}"
    );
    // Not before the deadline; the upper bound is the guard's.
    assert!(
        elapsed >= Duration::from_millis(300),
        "ended after {elapsed:?}"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"code="200",grpc_status="4""#),
        "the call is counted as DEADLINE_EXCEEDED: {metrics}"
    );
}

/// The same deadline over plain HTTP, where a body cannot carry a status
/// once its head has gone: the body is cut at the deadline and the client
/// sees an error, never a short body passed off as whole. For each client
/// protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_cuts_a_response_body_still_streaming_at_the_deadline() {
    use http_body_util::BodyExt;
    let backend = head_then_silence().await;
    let proxy = Config::to(backend.addr())
        .route("timeout: 300ms")
        .start()
        .await;
    for protocol in [ClientProtocol::Http1, ClientProtocol::H2c] {
        let mut client = Client::connect(proxy.main(), protocol).await;
        let started = Instant::now();
        let rsp = guard(
            "response head",
            client.send(Request::get("/slow-body").body(empty()).unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(rsp.status(), StatusCode::OK, "{protocol:?}");
        let mut body = rsp.into_body();
        let first = guard("first chunk", body.frame()).await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first ", "{protocol:?}");
        let end = guard("the cut", body.frame()).await;
        assert!(
            matches!(end, Some(Err(_))),
            "{protocol:?}: the body must end in an error, got {end:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{protocol:?}: cut after {:?}",
            started.elapsed()
        );
    }
}

/// Replies Skiff makes say why (`skiff-error`, a short text) and nothing
/// about the inside: no endpoint address, no cluster name, in the body or
/// in `grpc-message`. Each line: a failure whose cause names an address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_name_no_addresses_or_clusters() {
    for failure in [
        Failure::ConnectFailed,
        Failure::UpstreamClosed,
        Failure::UpstreamReset,
        Failure::Timeout,
        Failure::NoRoute,
    ] {
        let (proxy, upstream) = setup(failure).await;
        let endpoint = proxy_config_endpoint(&proxy).await;
        let port = endpoint.rsplit(':').next().unwrap().to_owned();
        let mut client = Client::http1(proxy.main()).await;
        let http = client
            .request(
                Request::get("/thing")
                    .header("x-request-id", "trace-me")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        // The caller can quote the id to whoever reads the logs.
        assert_eq!(http.header("x-request-id"), Some("trace-me"), "{failure:?}");
        assert!(
            http.text().ends_with(" (request id trace-me)\n"),
            "{failure:?}: {:?}",
            http.text()
        );
        let status = say_hello(proxy.main(), "x").await.unwrap_err();
        for (what, text) in [
            ("body", http.text()),
            ("grpc-message", status.message().to_owned()),
        ] {
            assert!(!text.trim().is_empty(), "{failure:?}: {what} says nothing");
            for secret in [endpoint.as_str(), port.as_str(), "127.0.0.1", "app"] {
                assert!(
                    !text.contains(secret),
                    "{failure:?}: {what} {text:?} gives away {secret:?}"
                );
            }
        }
        drop(upstream);
    }
}

/// The address of cluster `app`'s endpoint, from `/clusters` (where
/// addresses belong).
async fn proxy_config_endpoint(proxy: &Proxy) -> String {
    let mut admin = Client::http1(proxy.admin()).await;
    let clusters = admin.get("/clusters").await.json();
    clusters["clusters"][0]["endpoints"][0]["address"]
        .as_str()
        .unwrap()
        .to_owned()
}
