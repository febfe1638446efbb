//! `telemetry.access_log`: one JSON line per request with every field, for
//! HTTP/1.1, h2c, gRPC and an answer Skiff made; rotation by moving the
//! file away. (A stuck sink dropping lines instead of slowing requests is
//! tested in `skiff-filters`' `access_log` tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use http::Request;
use integration_tests::body::full;
use integration_tests::client::say_hello;
use integration_tests::config::grpc_and_web;
use integration_tests::{Backend, Client, Greeter, Proxy, guard};

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The file's lines once there are `n` (the writer is a thread of its own).
async fn lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    guard(&format!("{n} access log lines"), async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            // Whole lines only: a write may be read half done.
            let lines: Vec<_> = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_request_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let web = Backend::named("web").spawn().await;
    let greeter = Greeter::spawn("g").await;
    let telemetry = format!(
        "telemetry: {{ access_log: {{ path: \"{}\" }} }}",
        path.display()
    );
    let proxy = Proxy::start(&grpc_and_web(web.addr(), greeter.addr(), &telemetry)).await;
    let main = proxy.main();
    let post = Request::post("/web/up?secret=1")
        .header("x-request-id", "req-1")
        .header("traceparent", TRACE)
        .body(full("12345"))
        .unwrap();
    let rsp = Client::http1(main).await.request(post).await;
    assert_eq!(rsp.status.as_u16(), 200);
    Client::h2c(main).await.get("/web/h2").await;
    say_hello(main, "log").await.unwrap();
    let missing = Client::http1(main).await.get("/nowhere").await;
    assert_eq!(missing.status.as_u16(), 404);

    let lines = lines(&path, 4).await;
    let by_path = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no line for {p}: {lines:?}"))
    };
    let first = by_path("/web/up");
    for key in [
        "time",
        "direction",
        "listener",
        "route",
        "cluster",
        "upstream",
        "attempts",
        "method",
        "authority",
        "path",
        "protocol",
        "status",
        "grpc_status",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "request_id",
        "trace_id",
        "peer_identity",
        "skiff_error",
    ] {
        assert!(first.get(key).is_some(), "{key} missing: {first}");
    }
    assert_eq!(first["method"], "POST");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["route"], "main/web");
    assert_eq!(first["cluster"], "web");
    assert_eq!(first["upstream"], web.addr().to_string());
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], 5);
    assert!(first["bytes_out"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(first["authority"], main.to_string());
    assert_eq!(first["skiff_error"], serde_json::Value::Null);
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(
        !first.to_string().contains("secret"),
        "no query strings: {first}"
    );

    assert_eq!(by_path("/web/h2")["protocol"], "HTTP/2");
    let grpc = by_path("/skiff.demo.v1.Greeter/SayHello");
    assert_eq!(
        (grpc["grpc_status"].as_u64(), grpc["route"].as_str()),
        (Some(0), Some("main/grpc"))
    );
    let error = by_path("/nowhere");
    assert_eq!(error["status"], 404);
    assert_eq!(error["skiff_error"], "no-route");
    assert_eq!(error["attempts"], 0);
}

/// Moving the file away (a rotation) makes Skiff open the path again: the
/// next lines land in the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_log_file_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let web = Backend::named("web").spawn().await;
    let proxy = Proxy::start(&integration_tests::Config::to(web.addr()).yaml().replace(
        "listeners:",
        &format!(
            "telemetry: {{ access_log: {{ path: \"{}\" }} }}\nlisteners:",
            path.display()
        ),
    ))
    .await;
    let main = proxy.main();
    Client::http1(main).await.get("/before").await;
    lines(&path, 1).await;
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    // The writer notices within a second; requests meanwhile go to the
    // moved file, so keep sending until the new file has a line.
    guard("a line in the reopened file", async {
        while std::fs::read_to_string(&path)
            .unwrap_or_default()
            .is_empty()
        {
            Client::http1(main).await.get("/after").await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/before"), "{old}");
}

/// The access log follows live reloads: turned on, off and on again, it
/// logs exactly the requests made while it was on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_follows_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let web = Backend::named("web").spawn().await;
    let greeter = Greeter::spawn("g").await;
    let off = grpc_and_web(web.addr(), greeter.addr(), "");
    let telemetry = format!(
        "telemetry: {{ access_log: {{ path: \"{}\" }} }}",
        path.display()
    );
    let on = grpc_and_web(web.addr(), greeter.addr(), &telemetry);
    let proxy = Proxy::start(&off).await;
    let main = proxy.main();
    Client::http1(main).await.get("/web/before").await;
    proxy.apply(&on).unwrap();
    Client::http1(main).await.get("/web/first").await;
    proxy.apply(&off).unwrap();
    Client::http1(main).await.get("/web/while-off").await;
    proxy.apply(&on).unwrap();
    Client::http1(main).await.get("/web/second").await;
    // Two writers (one per time it was on) append to the file; which of
    // their lines lands first is theirs to decide.
    let mut logged: Vec<String> = lines(&path, 2)
        .await
        .iter()
        .map(|l| l["path"].as_str().unwrap().to_owned())
        .collect();
    logged.sort();
    assert_eq!(logged, ["/web/first", "/web/second"]);
}
