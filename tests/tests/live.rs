//! Live reconfiguration: what a config swap keeps, and that traffic never
//! notices. Every change goes through `Bound::apply`, as the file source
//! and the control feed do; the file source itself is tested in
//! `reload.rs` and in `skiff-control`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use integration_tests::client::{greeter_client, hello};
use integration_tests::handlers::Gate;
use integration_tests::traffic::Steady;
use integration_tests::{Backend, Client, Greeter, Proxy, guard};
use skiff_examples::pb::HelloRequest;
use tokio::sync::mpsc;

/// One listener `main` → table `main` → cluster `web`, with `extra` YAML
/// appended to the cluster and `more` appended to the whole config.
fn web(endpoints: &[SocketAddr], cluster: &str, more: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
    - cluster: web
clusters:
  web:
    endpoints: [{}]
{cluster}
{more}",
        list.join(", ")
    )
}

/// An endpoint that stays across a swap keeps its pooled connection: the
/// backend sees one connection for requests before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_stays_keeps_its_connection() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let proxy = Proxy::start(&web(&[a.addr()], "    lb: round_robin", "")).await;
    let mut client = Client::http1(proxy.main()).await;
    assert_eq!(client.get("/").await.header("x-backend"), Some("a"));
    assert_eq!(a.connections(), 1);

    // Another endpoint joins, the route gains a header: a new snapshot.
    let swapped = web(&[a.addr(), b.addr()], "    lb: round_robin", "").replace(
        "    - cluster: web",
        "    - cluster: web\n      headers: { request: { set: { x-v: \"2\" } } }",
    );
    proxy.apply(&swapped).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(
            client
                .get("/")
                .await
                .header("x-backend")
                .unwrap()
                .to_owned(),
        );
    }
    assert!(
        seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()),
        "{seen:?}"
    );
    assert_eq!(a.connections(), 1, "a's pooled connection was kept");
    assert_eq!(b.connections(), 1);
}

/// An ejection survives an unrelated swap: the ejected endpoint gets no
/// traffic after it, and `/clusters` still shows it ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_survives_a_swap() {
    let good = Backend::named("good").spawn().await;
    let bad = Backend::auto()
        .fallback(|_req| async { integration_tests::handlers::text(503, "down") })
        .spawn()
        .await;
    let cluster = "    lb: round_robin\n    outlier_detection: { consecutive_failures: 1, base_ejection_time: 1h }";
    let proxy = Proxy::start(&web(&[good.addr(), bad.addr()], cluster, "")).await;
    let mut client = Client::http1(proxy.main()).await;
    // Round robin reaches `bad` within two requests; one failure ejects it.
    for _ in 0..2 {
        client.get("/").await;
    }
    assert_eq!(bad.requests(), 1);

    proxy
        .apply(&web(
            &[good.addr(), bad.addr()],
            cluster,
            "  other:\n    endpoints: [127.0.0.1:9]",
        ))
        .unwrap();
    for _ in 0..6 {
        assert_eq!(client.get("/").await.header("x-backend"), Some("good"));
    }
    assert_eq!(bad.requests(), 1, "the ejected endpoint stayed out");
    let clusters = Client::http1(proxy.admin())
        .await
        .get("/clusters")
        .await
        .json();
    let endpoints = &clusters["clusters"][1]["endpoints"];
    let bad_row = endpoints
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == bad.addr().to_string())
        .unwrap();
    assert_eq!(bad_row["ejected"], true, "{clusters}");
}

/// A circuit breaker's count survives a change to something else: with
/// `max_requests: 1` and one request held at the backend, a request after
/// an unrelated route change is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_count_survives_an_unrelated_change() {
    let gate = Gate::new();
    let held = Backend::auto().fallback(gate.handler()).spawn().await;
    let cluster = "    circuit_breaker: { max_requests: 1 }";
    let proxy = Proxy::start(&web(&[held.addr()], cluster, "")).await;
    let main = proxy.main();
    let first = tokio::spawn(async move { Client::http1(main).await.get("/").await });
    gate.arrived().await;

    let changed = web(&[held.addr()], cluster, "").replace(
        "    - cluster: web",
        "    - cluster: web\n      timeout: 30s",
    );
    proxy.apply(&changed).unwrap();
    let second = Client::http1(main).await.get("/").await;
    assert_eq!(second.status.as_u16(), 503, "{second:?}");
    assert_eq!(second.header("skiff-error"), Some("circuit-open"));

    // A changed breaker starts fresh: the held request no longer counts.
    proxy
        .apply(&web(
            &[held.addr()],
            "    circuit_breaker: { max_requests: 2 }",
            "",
        ))
        .unwrap();
    gate.open();
    assert_eq!(first.await.unwrap().status.as_u16(), 200);
    assert_eq!(
        Client::http1(main).await.get("/").await.status.as_u16(),
        200
    );
}

/// An added listener serves at once; a removed one stops accepting while
/// the request it has in flight completes; the others never stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_come_and_go_while_others_serve() {
    let gate = Gate::new();
    let app = Backend::named("app")
        .route("/held", gate.handler())
        .spawn()
        .await;
    let one = web(&[app.addr()], "", "");
    let two = one.replace(
        "  - { name: main, address: 127.0.0.1:0, routes: main }",
        "  - { name: main, address: 127.0.0.1:0, routes: main }\n  - { name: side, address: 127.0.0.1:0, routes: main }",
    );
    let proxy = Proxy::start(&one).await;
    let main = proxy.main();
    assert!(proxy.try_addr("side").is_none());

    proxy.apply(&two).unwrap();
    let side = proxy.try_addr("side").expect("the added listener is bound");
    assert_eq!(proxy.main(), main, "main kept its socket");
    assert_eq!(
        Client::http1(side).await.get("/").await.status.as_u16(),
        200
    );

    // A request in flight on `side`, then `side` goes.
    let held = tokio::spawn(async move { Client::http1(side).await.get("/held").await });
    gate.arrived().await;
    proxy.apply(&one).unwrap();
    assert!(proxy.try_addr("side").is_none());
    // It no longer accepts (the socket closes as its accept loop ends)...
    guard("side to stop accepting", async {
        while tokio::net::TcpStream::connect(side).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // ...main serves throughout, and the held request completes.
    assert_eq!(
        Client::http1(main).await.get("/").await.status.as_u16(),
        200
    );
    gate.open();
    let rsp = held.await.unwrap();
    assert_eq!(
        (rsp.status.as_u16(), rsp.text()),
        (200, "released".to_owned())
    );
}

/// A listener that cannot bind rejects the whole config, with the reason,
/// and the running config keeps serving, cluster and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_rejects_the_whole_config() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let proxy = Proxy::start(&web(&[a.addr()], "", "")).await;

    let bad = web(&[b.addr()], "", "").replace(
        "  - { name: main, address: 127.0.0.1:0, routes: main }",
        &format!("  - {{ name: main, address: 127.0.0.1:0, routes: main }}\n  - {{ name: taken, address: \"{port}\", routes: main }}"),
    );
    let why = proxy.apply(&bad).unwrap_err();
    assert_eq!(
        why,
        format!("listener taken: cannot bind {port}: Address already in use (os error 98)")
    );
    let rsp = Client::http1(proxy.main()).await.get("/").await;
    assert_eq!(
        rsp.header("x-backend"),
        Some("a"),
        "the running config stays whole"
    );
    assert!(proxy.try_addr("taken").is_none());
}

/// Zero loss under change: HTTP/1.1, h2c and gRPC unary requests flow, and
/// one gRPC bidirectional stream stays open, while the config changes 20
/// times (routes added and removed, splits reweighted, endpoints added and
/// removed, a listener added and removed, a cluster's policy changed). Not
/// one request fails and the stream is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_under_twenty_changes() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let g = Greeter::spawn("g").await;
    let config = |i: usize| integration_tests::config::change(i, a.addr(), b.addr(), g.addr());
    let proxy = Proxy::start(&config(0)).await;
    let main = proxy.main();

    let steady = Steady::start(main).await;

    // The long stream: one Chat message and its reply per change.
    let mut chat_client = greeter_client(main).await;
    let (chat_tx, chat_rx) = mpsc::channel::<HelloRequest>(1);
    let mut replies = chat_client
        .chat(tokio_stream::wrappers::ReceiverStream::new(chat_rx))
        .await
        .unwrap()
        .into_inner();

    for i in 1..=20 {
        proxy
            .apply(&config(i))
            .unwrap_or_else(|e| panic!("change {i}: {e}"));
        if i % 5 == 3 {
            let side = proxy.try_addr("side").expect("change adds listener side");
            assert_eq!(
                Client::http1(side).await.get("/").await.status.as_u16(),
                200
            );
        }
        chat_tx
            .send(hello(&format!("change {i}"), 0))
            .await
            .unwrap();
        let reply = guard("a Chat reply", replies.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.message, format!("Hello, change {i}!"));
        // Every client completes requests under this config before the next.
        steady.progress().await;
    }
    let (total, all) = steady.stop().await;
    drop(chat_tx);
    assert!(
        guard("the Chat stream to end", replies.message())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        all.is_empty(),
        "{} of {total} requests failed: {all:?}",
        all.len()
    );
    assert!(total >= 180, "{total} requests");
}

/// A listener renamed in place keeps its socket, and a connection opened
/// under the old name follows the table the new name serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_listener_keeps_its_connections_routed() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let one = web(&[a.addr()], "", "");
    let proxy = Proxy::start(&one).await;
    let main = proxy.main();
    let mut client = Client::http1(main).await;
    assert_eq!(client.get("/").await.header("x-backend"), Some("a"));

    let renamed = web(&[b.addr()], "", "").replace(
        "{ name: main, address: 127.0.0.1:0, routes: main }",
        "{ name: front, address: 127.0.0.1:0, routes: main }",
    );
    // Port 0 never matches another listener's address: rename a bound port.
    let renamed = renamed.replace("127.0.0.1:0, routes", &format!("\"{main}\", routes"));
    let one_fixed = one.replace("127.0.0.1:0, routes", &format!("\"{main}\", routes"));
    // First make the running listener's address explicit (same socket).
    proxy.apply(&one_fixed).unwrap();
    proxy.apply(&renamed).unwrap();
    assert_eq!(proxy.try_addr("front"), Some(main), "the socket was kept");
    assert!(proxy.try_addr("main").is_none());
    // The same connection, opened before the rename.
    assert_eq!(client.get("/").await.header("x-backend"), Some("b"));
}
