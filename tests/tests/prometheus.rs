//! `/metrics` as Prometheus's own tools read it: `promtool check metrics`
//! (Debian's `prometheus` package, installed by `.ci/run`) accepts a scrape
//! taken after mixed traffic, with no warning, and the format follows the
//! scraper's `Accept`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Request;
use integration_tests::body::empty;
use integration_tests::client::say_hello;
use integration_tests::config::grpc_and_web;
use integration_tests::{Backend, Client, Greeter, Proxy, guard};

/// A proxy with an HTTP route, a gRPC route, and a route to nothing.
async fn with_traffic() -> (Proxy, impl Drop, impl Send) {
    let web = Backend::named("web").spawn().await;
    let greeter = Greeter::spawn("g").await;
    let proxy = Proxy::start(&grpc_and_web(web.addr(), greeter.addr(), "")).await;
    let main = proxy.main();
    Client::http1(main).await.get("/web/a").await;
    Client::h2c(main).await.get("/web/b").await;
    Client::http1(main).await.get("/nowhere").await;
    say_hello(main, "m").await.unwrap();
    say_hello(main, "status:5").await.unwrap_err();
    (proxy, greeter, web)
}

async fn scrape(proxy: &Proxy, accept: Option<&str>) -> (String, String) {
    let mut req = Request::get("/metrics");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let rsp = Client::http1(proxy.admin())
        .await
        .request(req.body(empty()).unwrap())
        .await;
    let ct = rsp.header("content-type").unwrap().to_owned();
    (ct, rsp.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_scrape() {
    let (proxy, _g, _w) = with_traffic().await;
    let (content_type, text) = scrape(&proxy, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(text.contains("skiff_requests_total{"), "{text}");
    assert!(!text.contains("# EOF"), "Prometheus text has no EOF marker");

    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (.ci/run installs Debian's prometheus)");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = promtool.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
    }
    let out = guard("promtool", promtool.wait_with_output())
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool refused the scrape: {said}\n{text}"
    );
    assert_eq!(said, "", "promtool warned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_when_the_scraper_asks() {
    let (proxy, _g, _w) = with_traffic().await;
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (content_type, text) = scrape(&proxy, Some(accept)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE skiff_requests counter"), "{text}");
}

/// A real Prometheus (Debian's, run as a plain process on loopback with
/// its own config and the recording rules in `deploy/grafana/`) scrapes a
/// Skiff that has seen every kind of event the dashboard shows. Every
/// expression of the dashboard and every recording rule returns data
/// through Prometheus's HTTP API, and the request counter equals the
/// requests sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_query() {
    use integration_tests::handlers::{Gate, text};
    let pki = tempfile::tempdir().unwrap();
    let identity = {
        use skiff::certs::{Ca, Validity, write_workload};
        let day = Validity::from_now(std::time::Duration::from_secs(24 * 3600));
        let ca = Ca::generate(day).unwrap();
        let pair = ca
            .issue("spiffe://test.local/ns/default/sa/p", day)
            .unwrap();
        write_workload(pki.path(), &pair, &ca).unwrap();
        let p = |f: &str| pki.path().join(f).display().to_string();
        format!(
            "identity: {{ cert: \"{}\", key: \"{}\", trust_bundle: \"{}\" }}",
            p("cert.pem"),
            p("key.pem"),
            p("ca.pem")
        )
    };
    let web = Backend::named("web").spawn().await;
    let bad = Backend::auto()
        .fallback(|_req| async { text(503, "down") })
        .spawn()
        .await;
    let gate = Gate::new();
    let held = Backend::auto().fallback(gate.handler()).spawn().await;
    let config = format!(
        "admin: {{ address: 127.0.0.1:0 }}
{identity}
listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
  - {{ name: secure, address: 127.0.0.1:0, routes: main, tls: {{ mode: strict }} }}
routes:
  main:
    - name: flaky
      match: {{ path: {{ prefix: /flaky }} }}
      cluster: flaky
      retry: {{ attempts: 1, on: [5xx] }}
    - name: held
      match: {{ path: {{ prefix: /held }} }}
      cluster: held
    - name: web
      cluster: web
clusters:
  web:
    endpoints: [{web}]
  flaky:
    lb: round_robin
    endpoints: [{bad}, {web}]
    outlier_detection: {{ consecutive_failures: 1 }}
  held:
    endpoints: [{held}]
    circuit_breaker: {{ max_requests: 1 }}
",
        web = web.addr(),
        bad = bad.addr(),
        held = held.addr()
    );
    let proxy = Proxy::start(&config).await;
    let main = proxy.main();
    let mut sent = 0;
    for path in ["/a", "/flaky/1", "/flaky/2"] {
        Client::http1(main).await.get(path).await;
        sent += 1;
    }
    Client::h2c(main).await.get("/b").await;
    sent += 1;
    let first = tokio::spawn(async move { Client::http1(main).await.get("/held").await });
    gate.arrived().await;
    let refused = Client::http1(main).await.get("/held").await;
    assert_eq!(refused.header("skiff-error"), Some("circuit-open"));
    gate.open();
    first.await.unwrap();
    sent += 2;
    // Plaintext on the mTLS-only listener: a TLS-handshake outcome.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(proxy.addr("secure"))
            .await
            .unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        // Closed (or reset) without an answer.
        let _ = guard("the refusal", plain.read_to_end(&mut answer)).await;
        assert!(answer.is_empty(), "{answer:?}");
    }
    // Garbage: a refusal before routing.
    integration_tests::client::raw_exchange(main, b"GARBAGE\r\n\r\n").await;
    // A live change: a config update.
    proxy
        .apply(&config.replace("name: web\n", "name: web\n      timeout: 30s\n"))
        .unwrap();

    let prometheus = Prometheus::start(proxy.admin()).await;
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/skiff-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
        })
        .collect();
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/recording-rules.yml"
    ))
    .unwrap();
    queries.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record: "))
            .map(str::to_owned),
    );
    assert!(queries.len() >= 17, "{queries:?}");
    for q in &queries {
        prometheus.until_data(q).await;
    }
    let total = prometheus.until_data("sum(skiff_requests_total)").await;
    assert_eq!(total, sent.to_string(), "requests counted");
}

/// Prometheus, scraping one target every 100 ms, evaluating
/// `deploy/grafana/recording-rules.yml` as often; killed when dropped.
struct Prometheus {
    addr: std::net::SocketAddr,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rules = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/recording-rules.yml"
        );
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 100ms, scrape_timeout: 100ms, evaluation_interval: 100ms }}
rule_files: [\"{rules}\"]
scrape_configs:
  - job_name: skiff
    static_configs: [{{ targets: [\"{target}\"] }}]
"
            ),
        )
        .unwrap();
        // A free port for its web server: bound, read, released.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus is installed (.ci/run installs Debian's prometheus)");
        let me = Self {
            addr,
            _child: child,
            _dir: dir,
        };
        guard("prometheus to be ready", async {
            loop {
                if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                    drop(s);
                    if Client::http1(addr)
                        .await
                        .get("/-/ready")
                        .await
                        .status
                        .as_u16()
                        == 200
                    {
                        return;
                    }
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        me
    }

    /// Waits until `query` returns at least one series, and returns the
    /// first one's value. Prometheus scrapes on its own clock, so this
    /// asks again until the data is there (bounded by `guard`).
    async fn until_data(&self, query: &str) -> String {
        let path = format!("/api/v1/query?query={}", encode(query));
        guard(&format!("data for {query}"), async {
            loop {
                let body = Client::http1(self.addr).await.get(&path).await.json();
                assert_eq!(body["status"], "success", "{query}: {body}");
                if let Some(first) = body["data"]["result"].as_array().and_then(|r| r.first()) {
                    return first["value"][1].as_str().unwrap_or_default().to_owned();
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
