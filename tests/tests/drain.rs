//! Graceful drain (what SIGTERM does): stop taking connections, report not
//! ready, let requests in flight finish, then terminate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use integration_tests::{Backend, Client, Config, Gate, guard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A new connection to `addr` is refused, or closed without an answer.
async fn assert_not_served(addr: SocketAddr) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return; // refused
    };
    // Accepted by the kernel: the proxy must close it, not serve it.
    let _ = stream
        .write_all(b"GET /late HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) => assert!(
            buf.is_empty(),
            "a connection made after drain() was served: {:?}",
            String::from_utf8_lossy(&buf)
        ),
        Err(_) => panic!("a connection made after drain() was neither refused nor closed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    let gate = Gate::new();
    let backend = Backend::auto().route("/slow", gate.handler()).spawn().await;
    let proxy = Config::to(backend.addr()).drain_timeout("5s").start().await;
    let admin = proxy.admin();
    assert_eq!(
        Client::http1(admin).await.get("/ready").await.status,
        StatusCode::OK
    );

    // One request in flight over HTTP/1.1, one over h2c, both held at the backend.
    let mut h1 = Client::http1(proxy.main()).await;
    let mut h2 = Client::h2c(proxy.main()).await;
    let in_flight_h1 = tokio::spawn(async move { h1.get("/slow").await });
    gate.arrived().await;
    let in_flight_h2 = tokio::spawn(async move { h2.get("/slow").await });
    gate.arrived().await;

    let started = Instant::now();
    proxy.drain();

    let ready = Client::http1(admin).await.get("/ready").await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/ready while draining: {ready:?}"
    );
    let live = Client::http1(admin).await.get("/live").await;
    assert_eq!(
        live.status,
        StatusCode::OK,
        "/live while draining: {live:?}"
    );
    assert_not_served(proxy.main()).await;

    gate.open();
    for (name, task) in [("HTTP/1.1", in_flight_h1), ("h2c", in_flight_h2)] {
        let rsp = guard("the in-flight request", task).await.unwrap();
        assert_eq!(rsp.status, StatusCode::OK, "{name}: {rsp:?}");
        assert_eq!(rsp.text(), "released", "{name}");
    }
    proxy.wait_termination().await;
    // Finished because the work did, not because drain_timeout (5s) ran out.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(4500), "drain took {took:?}");
    backend.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_ends_a_request_that_never_finishes() {
    let gate = Gate::new();
    let backend = Backend::http1()
        .route("/stuck", gate.handler())
        .spawn()
        .await;
    let proxy = Config::to(backend.addr())
        .drain_timeout("300ms")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    let stuck = tokio::spawn(async move {
        let req = http::Request::get("/stuck")
            .body(integration_tests::body::empty())
            .unwrap();
        client.send(req).await.map(|r| r.status())
    });
    gate.arrived().await;
    proxy.drain();
    // The gate never opens: termination comes from drain_timeout alone.
    proxy.wait_termination().await;
    let outcome = guard("the stuck request's end", stuck).await.unwrap();
    assert!(
        outcome.as_ref().map_or(true, |s| !s.is_success()),
        "a request cut off by the drain timeout cannot have succeeded: {outcome:?}"
    );
    drop(backend);
}

/// A sidecar's shutdown (SIGTERM in a pod, `POST /shutdown`): `/ready`
/// turns 503 and the inbound listener stops taking connections at once,
/// while the outbound one goes on serving the app's calls, new connections
/// included; only once the app has closed its outbound connections does
/// the shutdown move on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_drains_while_outbound_serves_the_app() {
    let backend = Backend::auto().spawn().await;
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}
runtime: {{ drain_timeout: 60s }}
listeners:
  - {{ name: in, address: 127.0.0.1:0, direction: inbound, routes: all }}
  - {{ name: out, address: 127.0.0.1:0, direction: outbound, routes: all }}
routes:
  all:
    - cluster: app
clusters:
  app:
    endpoints: [{}]
",
        backend.addr()
    );
    let proxy = std::sync::Arc::new(integration_tests::Proxy::start(&yaml).await);
    let (inbound, outbound, admin) = (proxy.addr("in"), proxy.addr("out"), proxy.admin());
    // The app holds a keep-alive connection out.
    let mut app = Client::http1(outbound).await;
    assert_eq!(app.get("/").await.status, StatusCode::OK);

    let stopping = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.drain_inbound_first().await }
    });
    guard("/ready to say 503", async {
        while Client::http1(admin).await.get("/ready").await.status
            != StatusCode::SERVICE_UNAVAILABLE
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    guard("inbound to stop taking connections", async {
        while TcpStream::connect(inbound).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Outbound serves on: the open connection, and a new one.
    assert_eq!(app.get("/").await.status, StatusCode::OK);
    let mut late = Client::http1(outbound).await;
    assert_eq!(late.get("/").await.status, StatusCode::OK);
    assert!(
        !stopping.is_finished(),
        "the shutdown went on while the app had connections out"
    );
    // The app stops calling out: the shutdown moves on.
    drop(app);
    drop(late);
    guard("the shutdown to move on once outbound is quiet", stopping)
        .await
        .unwrap();
}
