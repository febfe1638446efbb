//! The admin page (`GET /`) in a real browser: headless Chromium (Debian's,
//! installed by `.ci/run`) renders the proxy's clusters, endpoints and
//! route statistics, logs no console error, and refreshes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::client::say_hello;
use integration_tests::config::grpc_and_web;
use integration_tests::{Backend, Client, Greeter, Proxy, guard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_renders_and_refreshes_in_chromium() {
    let web = Backend::named("web").spawn().await;
    let greeter = Greeter::spawn("g").await;
    let proxy = Proxy::start(&grpc_and_web(web.addr(), greeter.addr(), "")).await;
    for _ in 0..5 {
        Client::http1(proxy.main()).await.get("/web/x").await;
    }
    say_hello(proxy.main(), "page").await.unwrap();

    let page = Client::http1(proxy.admin()).await.get("/").await;
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        !page.text().contains("http"),
        "no external resource in the page"
    );

    let profile = tempfile::tempdir().unwrap();
    let out = guard(
        "chromium",
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-logging=stderr",
                "--v=0",
                // Runs the page's timers for 3.5 s of virtual time: at
                // least three refreshes, without waiting that long.
                "--virtual-time-budget=3500",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://{}/", proxy.admin()))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium is installed (.ci/run installs Debian's chromium)");
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    for shown in [
        web.addr().to_string(),
        greeter.addr().to_string(),
        "main/web".to_owned(),
        "main/grpc".to_owned(),
        "healthy".to_owned(),
    ] {
        assert!(dom.contains(&shown), "{shown} not on the page:\n{dom}");
    }
    let refreshed: u32 = dom
        .split("data-refreshed=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        refreshed >= 2,
        "the page refreshed {refreshed} times:\n{dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_give_exact_percentiles_per_route() {
    let web = Backend::named("web").spawn().await;
    let greeter = Greeter::spawn("g").await;
    let proxy = Proxy::start(&grpc_and_web(web.addr(), greeter.addr(), "")).await;
    for _ in 0..20 {
        Client::http1(proxy.main()).await.get("/web/x").await;
    }
    // A request no route takes is not a route's.
    Client::http1(proxy.main()).await.get("/nowhere").await;
    let stats = Client::http1(proxy.admin())
        .await
        .get("/stats")
        .await
        .json();
    assert_eq!(stats["window_seconds"], 60);
    let rows = stats["routes"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{stats}");
    let row = &rows[0];
    assert_eq!(
        (row["route"].as_str(), row["cluster"].as_str()),
        (Some("main/web"), Some("web"))
    );
    assert_eq!(row["requests"], 20);
    assert_eq!(row["success"], 1.0);
    let (p50, p99, p999) = (
        row["p50_ms"].as_f64().unwrap(),
        row["p99_ms"].as_f64().unwrap(),
        row["p999_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{row}");
}
