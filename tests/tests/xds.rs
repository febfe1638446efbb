//! The control feed end to end: `skiff control` serving a directory, Skiff
//! proxies taking their listeners, routes and clusters from it over xDS v3
//! ADS, and a proxy fed by a control plane that is not Skiff's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use integration_tests::traffic::Steady;
use integration_tests::{Backend, Client, Control, Greeter, Proxy, guard};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

use integration_tests::control::ALL_TYPES as ALL;

/// Listener `main` → table `main` → cluster `web` at `endpoint`.
fn web(endpoint: SocketAddr) -> String {
    format!(
        "listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
    - cluster: web
clusters:
  web:
    endpoints: [{endpoint}]
"
    )
}

async fn backend_of(proxy: &Proxy) -> String {
    let rsp = Client::http1(proxy.main()).await.get("/").await;
    assert_eq!(rsp.status, 200, "{:?}", rsp.header("skiff-error"));
    rsp.header("x-backend").unwrap_or_default().to_owned()
}

/// A change in the directory reaches both proxies, and both ACK it: the
/// control plane's `/status` shows each node's types ACKed at the new
/// version, and each proxy's `/config` shows the versions it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_both_proxies_and_both_ack_it() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let control = Control::start(&[("mesh.yaml", &web(a.addr()))]).await;
    let p1 = Proxy::fed(&control.url(), "p1").await;
    let p2 = Proxy::fed(&control.url(), "p2").await;
    p1.wait_applied(1).await;
    p2.wait_applied(1).await;
    assert_eq!(backend_of(&p1).await, "a");
    assert_eq!(backend_of(&p2).await, "a");
    let ready = Client::http1(p1.admin()).await.get("/ready").await;
    assert_eq!(ready.status, 200);

    control.write("mesh.yaml", &web(b.addr()));
    control.wait_version(2).await;
    for node in ["p1", "p2"] {
        control.wait_acked(node, 2, &ALL).await;
    }
    p1.wait_applied(2).await;
    p2.wait_applied(2).await;
    assert_eq!(backend_of(&p1).await, "b");
    assert_eq!(backend_of(&p2).await, "b");

    // The control plane's admin port says the same, over HTTP.
    let status = Client::http1(control.admin)
        .await
        .get("/status")
        .await
        .json();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{status:#}");
    // And the proxy's /config shows the versions it ACKed: those sent.
    let p1_status = nodes.iter().find(|n| n["node"] == "p1").unwrap().clone();
    let feed = p1.feed();
    guard(
        "the proxy's record of what it ACKed",
        feed.wait_for(|s| {
            ALL.iter().all(|t| {
                s.versions.get(*t).map(String::as_str) == p1_status["types"][*t]["acked"].as_str()
            })
        }),
    )
    .await;
    let config = Client::http1(p1.admin()).await.get("/config").await.json();
    let feed = &config["control"];
    assert_eq!(feed["connected"], true, "{feed:#}");
    for t in ALL {
        assert_eq!(
            feed["versions"][t], p1_status["types"][t]["acked"],
            "{t}: {feed:#} vs {p1_status:#}"
        );
    }
    let metrics = Client::http1(control.admin)
        .await
        .get("/metrics")
        .await
        .text();
    assert!(
        metrics.contains("skiff_control_clients_connected 2"),
        "{metrics}"
    );
    assert!(metrics.contains("skiff_control_nacks_total 0"), "{metrics}");
}

/// A listener the proxy cannot bind (its port is taken) is refused whole:
/// the NACK carries the proxy's reason to the control plane, and the old
/// config keeps serving. Meanwhile an endpoint change elsewhere still
/// applies (one bad resource does not hold back other types). Fixing only
/// the listener in the directory (its new route table and cluster came
/// with the refused push, and are not sent again) applies all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_proxy_refuses_is_nacked_and_the_old_one_serves() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let control = Control::start(&[("mesh.yaml", &web(a.addr()))]).await;
    let proxy = Proxy::fed(&control.url(), "p1").await;
    proxy.wait_applied(1).await;

    let extra = |port: u16| {
        format!(
            "listeners:\n  - {{ name: extra, address: 127.0.0.1:{port}, routes: side }}\nroutes:\n  side:\n    - cluster: side\nclusters:\n  side:\n    endpoints: [{}]\n",
            b.addr()
        )
    };
    control.write("extra.yaml", &extra(port));
    control.wait_version(2).await;
    let registry = control.registry();
    guard(
        "the NACK to reach the control plane",
        registry.wait_for(|s| {
            s["nodes"][0]["last_nack"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot bind"))
        }),
    )
    .await;
    let status = control.status();
    let nack = &status["nodes"][0]["last_nack"]["message"];
    assert!(nack.as_str().unwrap().contains("extra"), "{nack}");
    // The proxy says so too, and still serves the old config.
    let feed = proxy.feed().get();
    assert!(feed.last_nack.unwrap().message.contains("cannot bind"));
    assert_eq!(backend_of(&proxy).await, "a");
    assert!(proxy.try_addr("extra").is_none());
    let nacks = || {
        registry
            .metrics
            .nacks
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(nacks() > 0);

    // Another type still moves: web's endpoints, alone.
    control.write("mesh.yaml", &web(b.addr()));
    control.wait_version(3).await;
    control
        .wait_acked("p1", 3, &["ClusterLoadAssignment"])
        .await;
    assert_eq!(backend_of(&proxy).await, "b");
    assert!(proxy.try_addr("extra").is_none());

    // Only the listener fixed: everything it needs is applied with it.
    control.write("extra.yaml", &extra(0));
    control.wait_version(4).await;
    control.wait_acked("p1", 4, &ALL).await;
    let extra = proxy.try_addr("extra").expect("the fixed listener runs");
    assert_eq!(
        Client::http1(extra)
            .await
            .get("/")
            .await
            .header("x-backend"),
        Some("b")
    );
    drop(taken);
}

/// A subdirectory named after a node serves that node alone, over the
/// shared files: p2 gets its own listener and its own endpoints for `web`;
/// p1 sees neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_directory_reaches_only_its_node() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let own = format!(
        "listeners:\n  - {{ name: own, address: 127.0.0.1:0, routes: main }}\nclusters:\n  web:\n    endpoints: [{}]\n",
        b.addr()
    );
    let control = Control::start(&[("mesh.yaml", &web(a.addr())), ("p2/own.yaml", &own)]).await;
    let p1 = Proxy::fed(&control.url(), "p1").await;
    let p2 = Proxy::fed(&control.url(), "p2").await;
    p1.wait_applied(1).await;
    p2.wait_applied(1).await;
    assert_eq!(backend_of(&p1).await, "a");
    assert_eq!(backend_of(&p2).await, "b");
    assert!(p1.try_addr("own").is_none());
    let own = p2.try_addr("own").expect("p2 has its own listener");
    assert_eq!(
        Client::http1(own).await.get("/").await.header("x-backend"),
        Some("b")
    );
}

/// The control plane goes away: the proxies keep serving their last good
/// config (and stay ready). It comes back (a restart, or another replica
/// behind the same address) with a change made meanwhile: both resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_and_resync_when_the_control_plane_restarts() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let mut control = Control::start(&[("mesh.yaml", &web(a.addr()))]).await;
    let p1 = Proxy::fed(&control.url(), "p1").await;
    let p2 = Proxy::fed(&control.url(), "p2").await;
    p1.wait_applied(1).await;
    p2.wait_applied(1).await;

    control.stop().await;
    for p in [&p1, &p2] {
        let feed = p.feed();
        guard(
            "the proxy to see the stream gone",
            feed.wait_for(|s| !s.connected),
        )
        .await;
        assert_eq!(backend_of(p).await, "a");
        let ready = Client::http1(p.admin()).await.get("/ready").await;
        assert_eq!(ready.status, 200, "ready while the control plane is away");
    }
    control.write("mesh.yaml", &web(b.addr()));
    control.resume().await;
    p1.wait_applied(2).await;
    p2.wait_applied(2).await;
    assert_eq!(backend_of(&p1).await, "b");
    assert_eq!(backend_of(&p2).await, "b");
    assert!(p1.feed().get().connected);
}

/// A directory change that does not validate is refused with FILE:LINE:COL
/// and never pushed: the proxies keep the last good version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_directory_is_never_pushed() {
    let a = Backend::named("a").spawn().await;
    let control = Control::start(&[("mesh.yaml", &web(a.addr()))]).await;
    let proxy = Proxy::fed(&control.url(), "p1").await;
    proxy.wait_applied(1).await;
    control.write("bad.yaml", "routes:\n  other:\n    - cluster: nowhere\n");
    let registry = control.registry();
    guard(
        "the refusal",
        registry.wait_for(|s| {
            s["catalog"]["errors"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        }),
    )
    .await;
    let status = control.status();
    let error = status["catalog"]["errors"][0].as_str().unwrap();
    assert!(error.contains("bad.yaml:3:"), "{error}");
    assert!(error.contains("nowhere"), "{error}");
    assert_eq!(status["catalog"]["version"], 1);
    assert_eq!(proxy.feed().get().applied, 1);
    assert_eq!(backend_of(&proxy).await, "a");
}

/// Zero loss across twenty pushes: HTTP/1.1, h2c and gRPC clients loop
/// through a proxy fed by `skiff control` while the directory changes 20
/// times (the changes of the live-reconfiguration test: routes, splits,
/// endpoints, a listener, cluster policies). Not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_across_twenty_pushes() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let g = Greeter::spawn("g").await;
    let config = |i: usize| {
        integration_tests::config::change(i, a.addr(), b.addr(), g.addr()).replacen(
            "admin: { address: 127.0.0.1:0 }\n",
            "",
            1,
        )
    };
    let control = Control::start(&[("mesh.yaml", &config(0))]).await;
    let proxy = Proxy::fed(&control.url(), "p1").await;
    proxy.wait_applied(1).await;
    let main = proxy.main();

    let steady = Steady::start(main).await;
    for i in 1..=20u64 {
        control.write("mesh.yaml", &config(i as usize));
        control.wait_version(i + 1).await;
        control.wait_acked("p1", i + 1, &ALL).await;
        steady.progress().await;
    }
    let (total, all) = steady.stop().await;
    assert!(
        all.is_empty(),
        "{} of {total} requests failed: {all:?}",
        all.len()
    );
    assert!(proxy.feed().get().applied >= 21);
    assert_eq!(
        control.status()["nodes"][0]["last_nack"],
        serde_json::Value::Null
    );
}

/// Clients that misbehave get an error where the protocol has one and
/// disturb nobody else: one asks for a type Skiff does not serve (not
/// answered; its other types are), then for 20,000 names (INVALID_ARGUMENT),
/// one sends bytes that are not a discovery request (INTERNAL, and the
/// server carries on), one subscribes to clusters and never reads or ACKs. Through all of it, a
/// proxy gets every change and ACKs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_disturb_nobody_else() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let control = Control::start(&[("mesh.yaml", &web(a.addr()))]).await;
    let proxy = Proxy::fed(&control.url(), "p1").await;
    proxy.wait_applied(1).await;

    // 1. An unknown type URL: not answered, and the stream goes on (Envoy
    //    may ask for secrets on the same stream); too many names: refused.
    let mut raw = AggregatedDiscoveryServiceClient::connect(control.url())
        .await
        .unwrap();
    let node = Some(Node {
        id: "odd".to_owned(),
        ..Default::default()
    });
    let asks = vec![
        DiscoveryRequest {
            node,
            type_url: "type.googleapis.com/envoy.config.bogus.v3.Thing".to_owned(),
            ..Default::default()
        },
        DiscoveryRequest {
            type_url: CDS.to_owned(),
            ..Default::default()
        },
    ];
    let mut stream = raw
        .stream_aggregated_resources(tokio_stream::iter(asks))
        .await
        .unwrap()
        .into_inner();
    let answer = guard("the cluster response", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.type_url, CDS, "only the type it serves is answered");
    let many = DiscoveryRequest {
        type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".to_owned(),
        resource_names: (0..20_000).map(|i| format!("c{i}")).collect(),
        ..Default::default()
    };
    let mut stream = raw
        .stream_aggregated_resources(tokio_stream::iter(vec![many]))
        .await
        .unwrap()
        .into_inner();
    let end = guard("the refusal", stream.message()).await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::InvalidArgument);
    assert!(end.message().contains("20000 resource names"), "{end}");

    // 2. Not a discovery request at all: a gRPC frame of garbage.
    let mut h2 = Client::h2c(control.xds).await;
    let mut frame = vec![0u8, 0, 0, 0, 6];
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let rsp = h2
        .request(
            http::Request::post(format!(
                "http://{}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                control.xds
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(integration_tests::body::full(frame))
            .unwrap(),
        )
        .await;
    assert_eq!(rsp.status, 200);
    let code = rsp.header("grpc-status").map(str::to_owned).or_else(|| {
        let t = rsp.trailers.as_ref()?.get("grpc-status")?;
        Some(t.to_str().ok()?.to_owned())
    });
    assert_eq!(code.as_deref(), Some("13"), "{rsp:?}");

    // 3. A client that subscribes to everything and never reads again.
    let (silent_tx, silent_rx) = tokio::sync::mpsc::channel(4);
    silent_tx
        .send(DiscoveryRequest {
            node: Some(Node {
                id: "silent".to_owned(),
                ..Default::default()
            }),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut silent = AggregatedDiscoveryServiceClient::connect(control.url())
        .await
        .unwrap();
    let _unread = silent
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(silent_rx))
        .await
        .unwrap();

    // Through it all, every change reaches the proxy: more changes than
    // the silent client's queue holds, each changing clusters (which it
    // subscribed to) and endpoints.
    for i in 0..20u64 {
        let version = i + 2;
        let at = if i % 2 == 0 { b.addr() } else { a.addr() };
        let timeout = format!("    connect_timeout: {}ms\n", 100 + i);
        control.write("mesh.yaml", &(web(at) + &timeout));
        control.wait_version(version).await;
        control.wait_acked("p1", version, &ALL).await;
    }
    assert_eq!(backend_of(&proxy).await, "a");
    drop(silent_tx);
}
