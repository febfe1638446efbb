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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_bounds_time_to_response_headers_only() {
    // Headers come at once, the body trickles for longer than the timeout:
    // the timeout bounds the wait for headers, not the whole body.
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(4);
    let rx = std::sync::Mutex::new(Some(rx));
    let backend = Backend::http1()
        .route("/slow-body", move |_req| {
            let rx = rx.lock().unwrap().take().expect("one request");
            async move {
                let body = http_body_util::StreamBody::new(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                );
                http::Response::new(body)
            }
        })
        .spawn()
        .await;
    let proxy = Config::to(backend.addr())
        .route("timeout: 200ms")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    let rsp = guard(
        "response headers",
        client.send(Request::get("/slow-body").body(empty()).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    tx.send(Ok(http_body::Frame::data("first ".into())))
        .await
        .unwrap();
    // Wait well past the route timeout before finishing the body. This
    // sleep is the thing under test (elapsed time), not synchronisation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.send(Ok(http_body::Frame::data("last".into())))
        .await
        .unwrap();
    drop(tx);
    let collected = integration_tests::Collected::read(rsp).await;
    assert_eq!(collected.text(), "first last");
    backend.join().await;
}
