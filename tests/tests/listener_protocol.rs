//! `protocol: http1` and `protocol: http2` are kept on plaintext listeners,
//! checked with the real `curl` and with raw bytes: an HTTP/2 preface on an
//! `http1` listener gets 505 (`skiff-error: bad-request`) and a close, an
//! HTTP/1 request on an `http2` listener gets GOAWAY `PROTOCOL_ERROR`; each
//! refusal is counted and nothing reaches the backend. `auto` serves both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::client::raw_exchange;
use integration_tests::{Backend, Config, guard};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs curl with `flag` against `url`: its exit code and what it printed.
async fn curl(flag: &str, url: &str) -> (i32, String) {
    let out = guard(
        "curl",
        tokio::process::Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10", flag, url])
            .output(),
    )
    .await
    .expect("curl is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Each line: the listener's protocol, the curl flag, whether it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_serves_only_its_protocol() {
    let cases = [
        ("http1", "--http1.1", true),
        ("http1", "--http2-prior-knowledge", false),
        ("http2", "--http2-prior-knowledge", true),
        ("http2", "--http1.1", false),
        ("auto", "--http1.1", true),
        ("auto", "--http2-prior-knowledge", true),
    ];
    let app = Backend::auto().spawn().await;
    for (protocol, flag, served) in cases {
        let case = format!("{protocol} listener, curl {flag}");
        let proxy = Config::to(app.addr())
            .listener_protocol(protocol)
            .start()
            .await;
        let before = app.requests();
        let (code, out) = curl(flag, &format!("http://{}/p", proxy.main())).await;
        if served {
            assert_eq!(code, 0, "{case}: {out}");
            assert!(out.contains(" 200"), "{case}: {out}");
            assert_eq!(app.requests(), before + 1, "{case}");
        } else {
            assert_ne!(code, 0, "{case}: served anyway: {out}");
            assert_eq!(app.requests(), before, "{case}: reached the backend");
            let metrics = proxy.metrics().await;
            let counted =
                r#"skiff_downstream_refusals_total{listener="main",reason="wrong-protocol"} 1"#;
            assert!(metrics.contains(counted), "{case}: {metrics}");
        }
    }
}

/// The exact answers, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusals_are_a_505_and_a_goaway() {
    let app = Backend::auto().spawn().await;

    let http1 = Config::to(app.addr())
        .listener_protocol("http1")
        .start()
        .await;
    let mut h2 = PREFACE.to_vec();
    h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    let answer = String::from_utf8_lossy(&raw_exchange(http1.main(), &h2).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 505 "), "{answer:?}");
    assert!(answer.contains("skiff-error: bad-request"), "{answer:?}");
    assert!(answer.contains("connection: close"), "{answer:?}");

    let http2 = Config::to(app.addr())
        .listener_protocol("http2")
        .start()
        .await;
    let answer = raw_exchange(
        http2.main(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    // GOAWAY: length 8, type 7, stream 0, last stream 0, PROTOCOL_ERROR.
    assert_eq!(
        answer,
        [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(app.requests(), 0);
}

/// Bytes that cannot start any HTTP request get Skiff's own 400, which says
/// why (`skiff-error`), is counted as `malformed`, and never reaches the
/// backend; on every kind of listener, whatever the garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_a_400_that_says_why() {
    const ANSWER: &str = "HTTP/1.1 400 Bad Request\r\n\
skiff-error: bad-request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 45\r\n\
connection: close\r\n\
\r\n\
bad-request: this is not an HTTP/1.1 request\n";
    let app = Backend::auto().spawn().await;
    let garbage: [&[u8]; 3] = [
        b"GARBAGE\r\n\r\n",
        // A TLS ClientHello's first bytes, on a plaintext port.
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
        b"{\"json\": \"instead of HTTP\"}\n",
    ];
    for protocol in ["auto", "http1", "http2"] {
        let proxy = Config::to(app.addr())
            .listener_protocol(protocol)
            .start()
            .await;
        for bytes in garbage {
            let answer = raw_exchange(proxy.main(), bytes).await;
            assert_eq!(
                String::from_utf8_lossy(&answer),
                ANSWER,
                "{protocol}: {bytes:?}"
            );
        }
        let counted = format!(
            r#"skiff_downstream_refusals_total{{listener="main",reason="malformed"}} {}"#,
            garbage.len()
        );
        let metrics = proxy.metrics().await;
        assert!(metrics.contains(&counted), "{protocol}: {metrics}");
    }
    assert_eq!(app.requests(), 0);
}

/// A connection made straight to a transparent listener (not redirected)
/// has no original destination: a passthrough route answers 503 with a
/// reason, instead of sending the request back to the listener itself, in
/// a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transparent_listener_never_sends_a_direct_connection_to_itself() {
    let proxy = integration_tests::Proxy::start(
        "admin: { address: 127.0.0.1:0 }
listeners:
  - { name: capture, address: 127.0.0.1:0, transparent: true, routes: out }
routes:
  out:
    - cluster: passthrough
clusters:
  passthrough:
    discovery: original_destination
    original_destination: { host: 127.0.0.1 }
",
    )
    .await;
    let rsp = integration_tests::Client::http1(proxy.addr("capture"))
        .await
        .get("/")
        .await;
    assert_eq!(rsp.status, 503, "{rsp:?}");
    assert_eq!(rsp.header("skiff-error"), Some("no-healthy-endpoints"));
    let active = proxy.metrics().await;
    let line = active
        .lines()
        .find(|l| l.starts_with("skiff_connections_total{listener=\"capture\"}"))
        .unwrap_or_default()
        .to_owned();
    assert!(line.ends_with(" 1"), "one connection, no loop: {line}");
}

/// An inbound listener removes an `x-forwarded-client-cert` a client sent:
/// a plaintext caller cannot claim an identity to the app behind it.
/// (With mTLS it names the caller's verified identity: proxy/tests/netns.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_client_cert_header_never_reaches_the_app() {
    let backend = integration_tests::Backend::auto().spawn().await;
    let proxy = integration_tests::Proxy::start(&format!(
        "admin: {{ address: 127.0.0.1:0 }}
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
    ))
    .await;
    let forged = [(
        "x-forwarded-client-cert",
        "URI=spiffe://cluster.local/ns/x/sa/admin",
    )];
    let mut inbound = integration_tests::Client::http1(proxy.addr("in")).await;
    let seen = inbound.get_with("/", &forged).await.seen();
    assert_eq!(seen.header("x-forwarded-client-cert"), None, "{seen:?}");
    // Outbound is the app's own traffic: passed on as the app sent it.
    let mut outbound = integration_tests::Client::http1(proxy.addr("out")).await;
    let seen = outbound.get_with("/", &forged).await.seen();
    assert_eq!(
        seen.header("x-forwarded-client-cert"),
        Some("URI=spiffe://cluster.local/ns/x/sa/admin")
    );
}
