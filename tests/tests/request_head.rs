//! What Skiff checks in a request head before routing it: one authority for
//! routing and forwarding, transfer codings it can frame, and the listener's
//! head limits (`max_request_headers_kb`, `max_request_headers_count`).
//! Every refusal is Skiff's own answer (`skiff-error`), counted, and never
//! reaches an upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Request, StatusCode};
use integration_tests::body::empty;
use integration_tests::client::{ClientProtocol, raw_exchange};
use integration_tests::{Backend, Client, Config, Listening, Proxy, TcpServer, guard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that hands each request head it receives, byte for byte, to
/// the test, then answers 200 and closes.
async fn recording_backend() -> (Listening, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = TcpServer::spawn(move |mut stream| {
        let tx = tx.clone();
        async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    })
    .await;
    (backend, rx)
}

/// The `Host` lines of a raw HTTP/1 head, lowercased names.
fn hosts(head: &str) -> Vec<String> {
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim().to_owned())
        .collect()
}

/// `GET http://a.example/x` with `Host: b.example`: RFC 9112 §3.2.2 says the
/// target's authority wins. Skiff routes on `a.example` (to backend `a`;
/// `b.example` would go to `b`) and forwards `Host: a.example`, once, so
/// the backend cannot be told another host than the one Skiff routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_is_routed_and_forwarded_on_one_authority() {
    let (a, mut seen_by_a) = recording_backend().await;
    let (b, mut seen_by_b) = recording_backend().await;
    let config = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
    - {{ match: {{ host: a.example }}, cluster: a }}
    - {{ match: {{ host: b.example }}, cluster: b }}
clusters:
  a: {{ endpoints: [{a}], protocol: http1 }}
  b: {{ endpoints: [{b}], protocol: http1 }}
"#,
        a = a.addr(),
        b = b.addr()
    );
    let proxy = Proxy::start(&config).await;
    let rsp = raw_exchange(
        proxy.main(),
        b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rsp = String::from_utf8_lossy(&rsp);
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    let head = guard("the head at backend a", seen_by_a.recv())
        .await
        .unwrap();
    assert_eq!(hosts(&head), ["a.example"], "{head}");
    assert!(seen_by_b.try_recv().is_err(), "b got a request");
    assert_eq!(b.requests(), 0);
}

/// `Transfer-Encoding: x, chunked`: a coding Skiff does not know framed a
/// body it would otherwise forward as if `x` were not there. RFC 9112 §6.1:
/// 501, and nothing reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_transfer_coding_gets_501() {
    let app = Backend::http1().spawn().await;
    let proxy = Config::to(app.addr()).start().await;
    let rsp = raw_exchange(
        proxy.main(),
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: x, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let rsp = String::from_utf8_lossy(&rsp);
    assert!(rsp.starts_with("HTTP/1.1 501"), "{rsp}");
    assert!(rsp.contains("skiff-error: bad-request"), "{rsp}");
    assert_eq!(app.requests(), 0);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            r#"skiff_downstream_refusals_total{listener="main",reason="unknown-coding"} 1"#
        ),
        "{metrics}"
    );
}

/// Each line: the head's extra fields, over which client protocol. A head
/// over 60 KiB (the default `max_request_headers_kb`), one of 256 KiB (the
/// size found forwarded from outside), and one with 101 fields (over the
/// default count of 100) all get Skiff's own 431 with `skiff-error:
/// bad-request`, over HTTP/1.1 and HTTP/2 alike; none reaches the backend,
/// each is counted, and the proxy serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431_and_never_reach_the_backend() {
    let big = |kib: usize| vec![("x-big".to_owned(), "b".repeat(kib * 1024))];
    let many = (0..101)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect::<Vec<_>>();
    let cases = [
        ("61 KiB", big(61)),
        ("256 KiB", big(256)),
        ("101 fields", many),
    ];
    let app = Backend::auto().spawn().await;
    let proxy = Config::to(app.addr()).start().await;
    let mut refused = 0;
    for (case, fields) in &cases {
        for protocol in [ClientProtocol::Http1, ClientProtocol::H2c] {
            let mut client = Client::connect(proxy.main(), protocol).await;
            let mut req = Request::get("/big");
            for (name, value) in fields {
                req = req.header(name, value);
            }
            let rsp = client.request(req.body(empty()).unwrap()).await;
            assert_eq!(
                rsp.status,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "{case} over {protocol:?}: {rsp:?}"
            );
            assert_eq!(rsp.header("skiff-error"), Some("bad-request"), "{case}");
            refused += 1;
            let mut fresh = Client::connect(proxy.main(), protocol).await;
            assert_eq!(fresh.get("/small").await.status, StatusCode::OK, "{case}");
        }
    }
    assert_eq!(app.requests(), cases.len() * 2, "only the small requests");
    let metrics = proxy.metrics().await;
    let counted = format!(
        r#"skiff_downstream_refusals_total{{listener="main",reason="head-too-large"}} {refused}"#
    );
    assert!(metrics.contains(&counted), "{counted} in {metrics}");
}

/// The limits are the listener's: `max_request_headers_kb: 1` refuses a
/// 2 KiB head that the default lets through, and `max_request_headers_count:
/// 5` a head with 6 fields. Just under each limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_limits_are_set_per_listener() {
    let app = Backend::auto().spawn().await;
    let proxy = Config::to(app.addr())
        .listener("max_request_headers_kb: 1, max_request_headers_count: 5")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    type Case = (&'static str, Vec<(String, String)>, u16);
    let cases: Vec<Case> = vec![
        ("2 KiB", vec![("x-a".into(), "a".repeat(2048))], 431),
        ("900 bytes", vec![("x-a".into(), "a".repeat(900))], 200),
        (
            "6 fields",
            (0..5).map(|i| (format!("x-{i}"), "v".into())).collect(),
            431,
        ),
        (
            "5 fields",
            (0..4).map(|i| (format!("x-{i}"), "v".into())).collect(),
            200,
        ),
    ];
    for (case, fields, status) in cases {
        // The client adds `host` itself: one field more than listed.
        let mut req = Request::get("/limits");
        for (name, value) in &fields {
            req = req.header(name, value);
        }
        let rsp = client.request(req.body(empty()).unwrap()).await;
        assert_eq!(rsp.status.as_u16(), status, "{case}: {rsp:?}");
        if status != 200 {
            client = Client::http1(proxy.main()).await;
        }
    }
}
