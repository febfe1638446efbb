//! Route matching (first match wins), weighted splits, header rewriting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Request, StatusCode};
use integration_tests::body::empty;
use integration_tests::client::ClientProtocol;
use integration_tests::{Backend, Client, Config, Proxy, handlers};

/// Every route tags its responses with `x-route: NAME`, so the test sees
/// which one matched; nothing matching means the proxy's own 404.
const MATCHING_ROUTES: &str = r#"
    - name: dup-first
      match: { path: { prefix: /dup } }
    - name: dup-second
      match: { path: { exact: /dup } }
    - name: exact
      match: { path: { exact: /exact } }
    - name: prefix
      match: { path: { prefix: /api } }
    - name: regex
      match: { path: { regex: "/items/[0-9]+" } }
    - name: host-exact
      match: { host: exact.example.com }
    - name: host-wild
      match: { host: "*.wild.example.com" }
    - name: method
      match: { method: DELETE }
    - name: header-value
      match: { headers: { x-canary: "1" } }
    - name: header-regex
      match: { headers: { x-user: { regex: "admin-[a-z]+" } } }
    - name: header-present
      match: { headers: { x-debug: { present: true } } }
    - name: combo
      match: { path: { prefix: /combo }, method: POST, headers: { x-a: b } }
"#;

fn matching_config(backend: std::net::SocketAddr) -> String {
    // Give every route the same cluster and an `x-route` response header.
    let mut routes = String::new();
    for line in MATCHING_ROUTES.lines() {
        routes.push_str(line);
        routes.push('\n');
        if let Some(name) = line.trim().strip_prefix("- name: ") {
            routes.push_str(&format!(
                "      cluster: app\n      headers: {{ response: {{ set: {{ x-route: {name} }} }} }}\n"
            ));
        }
    }
    format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
{routes}
clusters:
  app:
    endpoints: [{backend}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_matching_route_wins() {
    // method, host, path, headers -> route name, or None for no route
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
    );
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("GET",     "svc",                      "/dup",           &[],                        Some("dup-first")),
        ("GET",     "svc",                      "/exact",         &[],                        Some("exact")),
        ("GET",     "svc",                      "/exact/more",    &[],                        None),
        ("GET",     "svc",                      "/api",           &[],                        Some("prefix")),
        ("GET",     "svc",                      "/api/v1/users",  &[],                        Some("prefix")),
        ("GET",     "svc",                      "/items/42",      &[],                        Some("regex")),
        ("GET",     "svc",                      "/items/42/x",    &[],                        None),
        ("GET",     "svc",                      "/x/items/42",    &[],                        None),
        ("GET",     "svc",                      "/items/abc",     &[],                        None),
        ("GET",     "exact.example.com",        "/zzz",           &[],                        Some("host-exact")),
        ("GET",     "exact.example.com:8080",   "/zzz",           &[],                        Some("host-exact")),
        ("GET",     "other.example.com",        "/zzz",           &[],                        None),
        ("GET",     "a.wild.example.com",       "/zzz",           &[],                        Some("host-wild")),
        ("GET",     "a.wild.example.com:9999",  "/zzz",           &[],                        Some("host-wild")),
        ("GET",     "wild.example.com",         "/zzz",           &[],                        None),
        ("DELETE",  "svc",                      "/zzz",           &[],                        Some("method")),
        ("PUT",     "svc",                      "/zzz",           &[],                        None),
        ("GET",     "svc",                      "/zzz",           &[("x-canary", "1")],       Some("header-value")),
        ("GET",     "svc",                      "/zzz",           &[("x-canary", "2")],       None),
        ("GET",     "svc",                      "/zzz",           &[("x-user", "admin-bob")], Some("header-regex")),
        ("GET",     "svc",                      "/zzz",           &[("x-user", "bob")],       None),
        ("GET",     "svc",                      "/zzz",           &[("x-debug", "anything")], Some("header-present")),
        ("POST",    "svc",                      "/combo",         &[("x-a", "b")],            Some("combo")),
        ("GET",     "svc",                      "/combo",         &[("x-a", "b")],            None),
        ("POST",    "svc",                      "/combo",         &[],                        None),
        ("POST",    "svc",                      "/combo",         &[("x-a", "c")],            None),
    ];
    let backend = Backend::auto().spawn().await;
    let proxy = Proxy::start(&matching_config(backend.addr())).await;
    for protocol in [ClientProtocol::Http1, ClientProtocol::H2c] {
        let mut client = Client::connect(proxy.main(), protocol).await;
        for (method, host, path, headers, want) in cases {
            let case = format!("{protocol:?} {method} {host}{path} {headers:?}");
            let mut req = Request::builder()
                .method(*method)
                .uri(*path)
                .header("host", *host);
            for (k, v) in *headers {
                req = req.header(*k, *v);
            }
            let rsp = client.request(req.body(empty()).unwrap()).await;
            match want {
                Some(route) => {
                    assert_eq!(rsp.status, StatusCode::OK, "{case}: {rsp:?}");
                    assert_eq!(rsp.header("x-route"), Some(*route), "{case}");
                }
                None => {
                    assert_eq!(rsp.status, StatusCode::NOT_FOUND, "{case}: {rsp:?}");
                    assert_eq!(rsp.header("skiff-error"), Some("no-route"), "{case}");
                }
            }
        }
    }
    backend.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_sends_traffic_to_both_clusters_by_weight() {
    let v1 = Backend::http1().spawn().await;
    let v2 = Backend::http1().spawn().await;
    let config = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
    - split:
        - {{ cluster: v1, weight: 75 }}
        - {{ cluster: v2, weight: 25 }}
clusters:
  v1: {{ endpoints: [{}] }}
  v2: {{ endpoints: [{}] }}
"#,
        v1.addr(),
        v2.addr()
    );
    let proxy = Proxy::start(&config).await;
    let mut client = Client::http1(proxy.main()).await;
    for _ in 0..400 {
        assert_eq!(client.get("/split").await.status, StatusCode::OK);
    }
    let (a, b) = (v1.requests(), v2.requests());
    assert_eq!(a + b, 400);
    // Expected 300/100; the bounds are ~7 standard deviations wide.
    assert!((240..=360).contains(&a), "v1 got {a}, v2 got {b}");
    assert!(b >= 40, "v1 got {a}, v2 got {b}");
    v1.join().await;
    v2.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_headers_are_set_and_removed() {
    // The backend describes the request and adds two response headers,
    // one of which the route removes.
    let backend = Backend::http1()
        .fallback(|req| async move {
            let mut rsp = handlers::inspect(req).await;
            rsp.headers_mut()
                .insert("x-internal", "secret".parse().unwrap());
            rsp.headers_mut().insert("x-public", "ok".parse().unwrap());
            rsp
        })
        .spawn()
        .await;
    let proxy = Config::to(backend.addr())
        .route(
            "
            headers:
              request: { set: { x-env: prod, x-added: yes-please }, remove: [x-debug] }
              response: { set: { x-served-by: skiff }, remove: [x-internal] }",
        )
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    let rsp = client
        .get_with(
            "/h",
            &[("x-env", "dev"), ("x-debug", "1"), ("x-other", "o")],
        )
        .await;
    assert_eq!(rsp.header("x-served-by"), Some("skiff"), "{rsp:?}");
    assert_eq!(rsp.header("x-internal"), None, "{rsp:?}");
    assert_eq!(rsp.header("x-public"), Some("ok"), "{rsp:?}");
    let seen = rsp.seen();
    let env: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "x-env")
        .flat_map(|(_, v)| v.clone())
        .collect();
    assert_eq!(env, ["prod"], "set replaces the client's value: {seen:?}");
    assert_eq!(seen.header("x-added"), Some("yes-please"));
    assert!(!seen.has("x-debug"), "{seen:?}");
    assert_eq!(seen.header("x-other"), Some("o"));
    backend.join().await;
}
