//! The admin server: readiness, liveness, metrics, config and clusters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use integration_tests::client::{ClientProtocol, say_hello};
use integration_tests::{Backend, Client, Listening, Proxy};

/// A proxy with a named route to an HTTP backend, a second route to a
/// greeter, and a route with no match for anything but `/nothing-here`.
async fn setup() -> (Proxy, Listening, integration_tests::Greeter) {
    let backend = Backend::auto().spawn().await;
    let greeter = integration_tests::Greeter::spawn("g").await;
    let config = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
runtime: {{ drain_timeout: 5s }}
listeners:
  - name: edge
    address: 127.0.0.1:0
    direction: inbound
    routes: table
routes:
  table:
    - name: grpc
      match: {{ path: {{ prefix: /skiff.demo.v1.Greeter/ }} }}
      cluster: greeter
    - name: web
      match: {{ path: {{ prefix: /web }} }}
      cluster: web
clusters:
  web:
    lb: round_robin
    endpoints: [{}]
  greeter:
    endpoints: [{}]
"#,
        backend.addr(),
        greeter.addr()
    );
    (Proxy::start(&config).await, backend, greeter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_live_once_built() {
    let (proxy, backend, _greeter) = setup().await;
    let mut admin = Client::http1(proxy.admin()).await;
    // (path, status): no waiting, build() returns only once everything is bound.
    for (path, status) in [("/ready", 200), ("/live", 200)] {
        let rsp = admin.get(path).await;
        assert_eq!(rsp.status.as_u16(), status, "{path}: {rsp:?}");
    }
    let rsp = admin.get("/no-such-admin-page").await;
    assert_eq!(rsp.status, StatusCode::NOT_FOUND, "{rsp:?}");
    // The 404 lists every endpoint, and each one listed (the list the
    // reference is generated from) answers.
    assert_eq!(
        rsp.text(),
        "not found: try / /stats /ready /live /metrics /config /logging /shutdown /clusters\n"
    );
    for (path, _) in skiff::admin::ENDPOINTS {
        let rsp = admin.get(path).await;
        // `/logging` and `/shutdown` change things: POST only.
        let want = match path {
            "/logging" | "/shutdown" => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::OK,
        };
        assert_eq!(rsp.status, want, "{path}: {rsp:?}");
    }
    backend.join().await;
}

/// The labels of the first sample line of `name` whose labels contain every one of `with`.
fn sample<'a>(metrics: &'a str, name: &str, with: &[&str]) -> Option<&'a str> {
    metrics.lines().find(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') && with.iter().all(|w| rest.contains(w)))
    })
}

/// The value of a sample line [`sample`] found.
fn value(line: Option<&str>) -> f64 {
    line.and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic() {
    let (proxy, backend, _greeter) = setup().await;
    // Traffic: HTTP/1.1 and h2c to the web route, a no-route, a gRPC call.
    for protocol in [ClientProtocol::Http1, ClientProtocol::H2c] {
        let mut client = Client::connect(proxy.addr("edge"), protocol).await;
        assert_eq!(client.get("/web/a").await.status, StatusCode::OK);
        assert_eq!(
            client.get("/nothing-here").await.status,
            StatusCode::NOT_FOUND
        );
    }
    say_hello(proxy.addr("edge"), "m").await.unwrap();

    let mut admin = Client::http1(proxy.admin()).await;
    let rsp = admin.get("/metrics").await;
    assert_eq!(rsp.status, StatusCode::OK);
    assert!(
        rsp.header("content-type").is_some_and(
            |v| v.starts_with("text/plain") || v.starts_with("application/openmetrics-text")
        ),
        "{rsp:?}"
    );
    let metrics = rsp.text();
    for name in [
        "skiff_requests_total",
        "skiff_request_duration_seconds",
        "skiff_connections_active",
        "skiff_connections_total",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }

    // (metric, labels that one sample must carry together)
    let expected: &[(&str, &[&str])] = &[
        (
            "skiff_requests_total",
            &[
                r#"direction="inbound""#,
                r#"listener="edge""#,
                r#"route="table/web""#,
                r#"cluster="web""#,
                r#"code="200""#,
                "grpc_status=",
            ],
        ),
        (
            "skiff_requests_total",
            &[
                r#"listener="edge""#,
                r#"route="table/grpc""#,
                r#"cluster="greeter""#,
                r#"grpc_status="0""#,
            ],
        ),
        (
            "skiff_requests_total",
            &[r#"listener="edge""#, r#"code="404""#],
        ),
        (
            "skiff_request_duration_seconds_bucket",
            &[r#"route="table/web""#, r#"cluster="web""#, "le="],
        ),
        (
            "skiff_request_duration_seconds_count",
            &[r#"route="table/web""#],
        ),
        ("skiff_connections_total", &[r#"listener="edge""#]),
        ("skiff_connections_active", &[r#"listener="edge""#]),
    ];
    for (name, labels) in expected {
        assert!(
            sample(&metrics, name, labels).is_some(),
            "no {name} sample with {labels:?} in:\n{metrics}"
        );
    }
    // Two HTTP clients and tonic opened at least three connections.
    let total = value(sample(
        &metrics,
        "skiff_connections_total",
        &[r#"listener="edge""#],
    ));
    assert!(total >= 3.0, "connections_total {total}");
    // Two successful web requests, one per protocol.
    let web = value(sample(
        &metrics,
        "skiff_requests_total",
        &[r#"route="table/web""#, r#"code="200""#],
    ));
    assert_eq!(web, 2.0, "\n{metrics}");
    backend.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_the_effective_config() {
    let (proxy, backend, _greeter) = setup().await;
    let mut admin = Client::http1(proxy.admin()).await;
    let rsp = admin.get("/config").await;
    assert_eq!(rsp.status, StatusCode::OK, "{rsp:?}");
    assert!(
        rsp.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{rsp:?}"
    );
    let json = rsp.json();
    assert!(
        json["version"].is_u64() || json["version"].is_string(),
        "{json}"
    );
    assert!(json["source"].is_string(), "{json}");
    let config = &json["config"];
    assert_eq!(config["listeners"][0]["name"], "edge", "{json}");
    assert_eq!(config["routes"]["table"][1]["name"], "web", "{json}");
    assert_eq!(
        config["clusters"]["web"]["endpoints"][0]["address"],
        backend.addr().to_string(),
        "{json}"
    );
    backend.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_lists_endpoints_with_their_state() {
    let (proxy, backend, greeter) = setup().await;
    let mut client = Client::http1(proxy.addr("edge")).await;
    assert_eq!(client.get("/web/x").await.status, StatusCode::OK);

    let mut admin = Client::http1(proxy.admin()).await;
    let rsp = admin.get("/clusters").await;
    assert_eq!(rsp.status, StatusCode::OK, "{rsp:?}");
    let json = rsp.json();
    let clusters = json["clusters"]
        .as_array()
        .unwrap_or_else(|| panic!("{json}"));
    let mut names: Vec<&str> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["greeter", "web"], "{json}");
    for (cluster, addr) in [("web", backend.addr()), ("greeter", greeter.addr())] {
        let entry = clusters.iter().find(|c| c["name"] == cluster).unwrap();
        let endpoints = entry["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("{json}"));
        assert_eq!(endpoints.len(), 1, "{json}");
        let e = &endpoints[0];
        assert_eq!(e["address"], addr.to_string(), "{json}");
        assert_eq!(e["healthy"], true, "{json}");
        assert_eq!(e["ejected"], false, "{json}");
        assert!(e["in_flight"].is_u64(), "{json}");
        assert!(e["ewma_ms"].is_number(), "{json}");
    }
    backend.join().await;
}
