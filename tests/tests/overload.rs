//! Limits on what a peer controls, and load shedding: a panic closes one
//! connection and nothing else; a listener at its `max_connections` closes
//! the next one as it is accepted; past the process's budgets (`overload:`)
//! requests get 503 `overloaded` (gRPC UNAVAILABLE), and are served again
//! once the budget is back. Every refusal is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Request, StatusCode};
use integration_tests::body::empty;
use integration_tests::client::read_to_close;
use integration_tests::{Backend, Client, Config, Proxy, guard};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Polls the proxy's metrics until `line` is among them: a closed
/// connection reaches the proxy on its own schedule.
async fn until_metric(proxy: &Proxy, line: &str) {
    guard(&format!("metric {line}"), async {
        while !proxy.metrics().await.lines().any(|l| l == line) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn metric_line(proxy: &Proxy, line: &str) -> bool {
    proxy.metrics().await.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_closes_its_connection_and_nothing_else() {
    let app = Backend::auto().spawn().await;
    let proxy = Config::to(app.addr()).start().await;
    // Open before the panics, used after them.
    let mut h1 = Client::http1(proxy.main()).await;
    assert_eq!(h1.get("/").await.status, StatusCode::OK);

    // HTTP/1: the handler runs in the connection's task, which is closed
    // without an answer.
    let mut raw = TcpStream::connect(proxy.main()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nskiff-test-panic: 1\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut raw).await;
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );

    // HTTP/2: each stream has its own task; only that stream is reset, and
    // the connection goes on.
    let mut h2 = Client::h2c(proxy.main()).await;
    let req = Request::get("/")
        .header("skiff-test-panic", "1")
        .body(empty())
        .unwrap();
    let err = guard("the panicking stream", h2.send(req)).await;
    assert!(err.is_err(), "a panicked stream has no answer: {err:?}");
    assert_eq!(
        h2.get("/").await.status,
        StatusCode::OK,
        "same h2 connection"
    );

    assert_eq!(
        h1.get("/").await.status,
        StatusCode::OK,
        "the other connection"
    );
    assert_eq!(
        Client::http1(proxy.main()).await.get("/").await.status,
        StatusCode::OK,
        "a new connection"
    );
    until_metric(&proxy, r#"skiff_panics_total{listener="main"} 2"#).await;
    assert_eq!(app.requests(), 4, "the panicking requests never left");
    app.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_at_max_connections_closes_the_next_until_one_closes() {
    let app = Backend::auto().spawn().await;
    let proxy = Config::to(app.addr())
        .listener("max_connections: 2")
        .start()
        .await;
    let mut a = Client::http1(proxy.main()).await;
    let mut b = Client::http1(proxy.main()).await;
    assert_eq!(a.get("/").await.status, StatusCode::OK);
    assert_eq!(b.get("/").await.status, StatusCode::OK);

    let mut third = TcpStream::connect(proxy.main()).await.unwrap();
    // Written before the close may land, or after it: either way nothing
    // comes back.
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(read_to_close(&mut third).await.is_empty());
    until_metric(
        &proxy,
        r#"skiff_downstream_refusals_total{listener="main",reason="max-connections"} 1"#,
    )
    .await;
    // The two held connections are untouched.
    assert_eq!(a.get("/").await.status, StatusCode::OK);

    drop(a);
    until_metric(&proxy, r#"skiff_connections_active{listener="main"} 1"#).await;
    assert_eq!(
        Client::http1(proxy.main()).await.get("/").await.status,
        StatusCode::OK,
        "one closed: the next is served"
    );
    assert_eq!(b.get("/").await.status, StatusCode::OK);
    app.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_budget_requests_get_503_overloaded() {
    let app = Backend::auto().spawn().await;
    let yaml = format!(
        "{}overload: {{ max_connections: 2 }}\n",
        Config::to(app.addr()).yaml()
    );
    let proxy = Proxy::start(&yaml).await;
    let mut a = Client::http1(proxy.main()).await;
    let mut b = Client::h2c(proxy.main()).await;
    assert_eq!(a.get("/").await.status, StatusCode::OK);
    assert_eq!(b.get("/").await.status, StatusCode::OK);

    // HTTP/1: the answer says why, and the connection closes after it.
    let mut raw = TcpStream::connect(proxy.main()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(read_to_close(&mut raw).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("skiff-error: overloaded"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");

    // gRPC over HTTP/2: UNAVAILABLE, trailers-only.
    let mut grpc = Client::h2c(proxy.main()).await;
    let rsp = grpc
        .get_with(
            "/demo.Greeter/SayHello",
            &[("content-type", "application/grpc")],
        )
        .await;
    assert_eq!(rsp.status, StatusCode::OK);
    assert_eq!(rsp.header("grpc-status"), Some("14"));
    assert_eq!(rsp.header("skiff-error"), Some("overloaded"));
    // The shed HTTP/2 connection is not dropped here: the proxy sent it
    // GOAWAY, and closes it itself once its streams are answered.
    until_metric(
        &proxy,
        r#"skiff_downstream_refusals_total{listener="main",reason="overloaded"} 2"#,
    )
    .await;

    // Load drops: one connection within the budget closes; the two past
    // it are already closed by the proxy (HTTP/1 after its answer, HTTP/2
    // after GOAWAY), though the gRPC client still holds its end.
    drop(a);
    until_metric(&proxy, r#"skiff_connections_active{listener="main"} 1"#).await;
    assert_eq!(
        Client::http1(proxy.main()).await.get("/").await.status,
        StatusCode::OK,
        "back within the budget: served"
    );
    assert_eq!(b.get("/").await.status, StatusCode::OK);
    assert_eq!(app.requests(), 4, "nothing shed reached the app");
    drop(grpc);
    app.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_budget_sheds_new_requests_and_serves_again_under_it() {
    let app = Backend::auto().spawn().await;
    let base = Config::to(app.addr()).yaml();
    // This process holds far more than 1 MiB: over budget from the start.
    let proxy = Proxy::start(&format!("{base}overload: {{ max_memory_mib: 1 }}\n")).await;
    let mut client = Client::http1(proxy.main()).await;
    let rsp = client.get("/").await;
    assert_eq!(rsp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.header("skiff-error"), Some("overloaded"));
    assert!(
        metric_line(
            &proxy,
            r#"skiff_downstream_refusals_total{listener="main",reason="overloaded"} 1"#
        )
        .await
    );

    // The budget raised live: the same connection is served again.
    proxy
        .apply(&format!("{base}overload: {{ max_memory_mib: 1000000 }}\n"))
        .unwrap();
    assert_eq!(client.get("/").await.status, StatusCode::OK);
    proxy
        .apply(&format!("{base}overload: {{ max_memory_mib: 1 }}\n"))
        .unwrap();
    assert_eq!(
        client.get("/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.requests(), 1);
    app.join().await;
}

/// An HTTP/2 connection that starts no request for `idle_timeout` is sent
/// GOAWAY and closed by the proxy, though the client keeps its end; a new
/// connection is served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_idle_timeout() {
    let app = Backend::auto().spawn().await;
    let proxy = Config::to(app.addr())
        .listener("idle_timeout: 100ms")
        .start()
        .await;
    let mut idle = Client::h2c(proxy.main()).await;
    assert_eq!(idle.get("/").await.status, StatusCode::OK);
    until_metric(&proxy, r#"skiff_connections_active{listener="main"} 0"#).await;
    assert_eq!(
        Client::h2c(proxy.main()).await.get("/").await.status,
        StatusCode::OK,
        "a new connection"
    );
    drop(idle);
    app.join().await;
}
