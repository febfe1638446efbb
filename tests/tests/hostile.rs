//! Malformed or hostile traffic never panics the proxy: it gets the right
//! HTTP/gRPC status, the connection is handled cleanly, and the same listener
//! serves a normal request on a new connection afterwards.
//!
//! Requests a client library would refuse to send are written as raw bytes:
//! HTTP/1 by hand, HTTP/2 as hand-made frames with a literal-only HPACK
//! encoder (enough to send uppercase names and forbidden headers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use integration_tests::body::empty;
use integration_tests::client::{ClientProtocol, read_head, read_to_close};
use integration_tests::{Backend, Client, Listening, Proxy, TcpServer, guard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The proxy under test and its always-healthy backend: listener `main`
/// (protocol `listener`, `header_timeout: 200ms`), `GET /alive` to cluster
/// `good`, `/hold` held by a 60s fault delay (streams that stay open without
/// touching an upstream), `/abort...` aborted by a fault (503, every
/// time), everything else to cluster `app` at `app`.
async fn start(listener: &str, app: SocketAddr, app_extra: &str) -> (Proxy, Listening) {
    let good = Backend::auto().spawn().await;
    let config = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, protocol: {listener}, header_timeout: 200ms, routes: main }}
routes:
  main:
    - name: alive
      match: {{ path: {{ exact: /alive }} }}
      cluster: good
    - name: hold
      match: {{ path: {{ exact: /hold }} }}
      cluster: good
      fault: {{ delay: {{ duration: 60s, percent: 100 }} }}
    - name: abort
      match: {{ path: {{ prefix: /abort }} }}
      cluster: good
      fault: {{ abort: {{ status: 503, percent: 100 }} }}
    - cluster: app
clusters:
  good: {{ endpoints: [{good}] }}
  app: {{ endpoints: [{app}] {app_extra} }}
"#,
        good = good.addr()
    );
    (Proxy::start(&config).await, good)
}

/// The listener still answers a plain request on a new connection.
async fn assert_serves(proxy: &Proxy, protocol: ClientProtocol, case: &str) {
    let mut client = Client::connect(proxy.main(), protocol).await;
    let rsp = client.get("/alive").await;
    assert_eq!(
        rsp.status,
        StatusCode::OK,
        "{case}: proxy stopped serving: {rsp:?}"
    );
}

/// Sends `request` on a new connection, reads until the proxy closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A proxy that answers early and closes may make the write fail; what
    // matters is what it answered.
    let _ = stream.write_all(request).await;
    String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned()
}

/// The status code of a raw HTTP/1.x response.
fn status_of(response: &str) -> Option<u16> {
    response.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// How many response heads (`HTTP/1.x NNN ...` lines) a raw exchange carried.
fn responses_in(response: &str) -> usize {
    response
        .split("\r\n")
        .filter(|line| {
            line.starts_with("HTTP/1.")
                && line
                    .get(9..12)
                    .is_some_and(|code| code.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

// === HTTP/1 ===

/// Each line: what is wrong, the bytes, the status. 400/414/431 come from
/// hyper's parser (the request never reaches Skiff's handler); the Host
/// cases are Skiff's own `bad-request`. None reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_requests_are_refused_and_never_forwarded() {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..101)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "garbage",
            b"\x00\x01\x02 not http at all\r\n\r\n".to_vec(),
            400,
        ),
        (
            "method token",
            b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "version 1.2",
            b"GET / HTTP/1.2\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "version 2.0 in HTTP/1",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        ("no version", b"GET /\r\nHost: x\r\n\r\n".to_vec(), 400),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bare CR in value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bare LF in value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n".to_vec(),
            400,
        ),
        (
            "NUL in value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "content-length not a number",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            "content-length negative",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two content-lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
                .to_vec(),
            400,
        ),
        (
            "content-length list",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "transfer-encoding not chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            "transfer-encoding on HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("URI over 64 KiB", long_uri.into_bytes(), 414),
        ("101 header lines", many_headers.into_bytes(), 431),
        (
            "HTTP/1.1 without Host",
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
    ];
    let app = Backend::http1().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    for (case, bytes, status) in cases {
        let response = exchange(proxy.main(), &bytes).await;
        assert_eq!(status_of(&response), Some(status), "{case}: {response:?}");
        assert_eq!(responses_in(&response), 1, "{case}: {response:?}");
        if case.contains("Host") {
            assert!(
                response.contains("skiff-error: bad-request"),
                "{case}: {response:?}"
            );
        }
        assert_serves(&proxy, ClientProtocol::Http1, case).await;
    }
    assert_eq!(
        app.requests(),
        0,
        "a malformed request reached the upstream"
    );

    // Where HTTP allows it, a missing Host is fine: HTTP/1.0, and an
    // absolute-form target that names its authority.
    for (case, bytes) in [
        ("HTTP/1.0 without Host", &b"GET /ok HTTP/1.0\r\n\r\n"[..]),
        (
            "absolute-form without Host",
            b"GET http://svc.local/ok HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let response = exchange(proxy.main(), bytes).await;
        assert_eq!(status_of(&response), Some(200), "{case}: {response:?}");
    }
    assert_eq!(app.requests(), 2);
    app.join().await;
}

/// A request head past hyper's buffer (~400 KiB) gets 431, like a head with
/// over 100 header lines: the limit is on the header block, not the URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_block_gets_431() {
    let app = Backend::http1().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(512 * 1024)
    );
    let mut stream = TcpStream::connect(proxy.main()).await.unwrap();
    let (mut read, mut write) = stream.split();
    // The proxy stops reading at its limit: write and read at once.
    let (_, response) = tokio::join!(async { write.write_all(head.as_bytes()).await }, async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = guard("reading the 431", read.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    assert_eq!(status_of(&response), Some(431), "{response:?}");
    assert_serves(&proxy, ClientProtocol::Http1, "after 431").await;
    assert_eq!(app.requests(), 0);
    app.join().await;
}

/// Content-Length with Transfer-Encoding (in either order, or a zero
/// length): the classic smuggling vector (CL.TE and TE.CL), refused with
/// 400 as Envoy does, and the connection closed, so the bytes after the
/// chunked body are never read as a second request. The upstream gets
/// nothing: neither the request nor what was smuggled behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_smuggles_nothing() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        (
            "CL then TE",
            "Content-Length: 44\r\nTransfer-Encoding: chunked",
        ),
        (
            "TE then CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 44",
        ),
        (
            "CL 0 then TE",
            "Content-Length: 0\r\nTransfer-Encoding: chunked",
        ),
    ];
    let (app, seen) = recorder().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    for (case, framing) in cases {
        let request = format!(
            "POST /smuggle HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n3\r\nabc\r\n0\r\n\r\n{smuggled}"
        );
        let response = exchange(proxy.main(), request.as_bytes()).await;
        assert_eq!(status_of(&response), Some(400), "{case}: {response:?}");
        assert_eq!(responses_in(&response), 1, "{case}: {response:?}");
        assert!(
            response.contains("skiff-error: bad-request"),
            "{case}: {response:?}"
        );
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{case}: the connection must not be reused: {response:?}"
        );
    }
    assert_serves(&proxy, ClientProtocol::Http1, "after smuggling attempts").await;
    let got = seen.lock().unwrap().clone();
    assert!(
        got.is_empty(),
        "the upstream got: {:?}",
        String::from_utf8_lossy(&got)
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics
            .contains(r#"skiff_downstream_refusals_total{listener="main",reason="malformed"} 3"#),
        "{metrics}"
    );
    app.join().await;
}

/// Each line: a request whose body breaks off, and whether the client then
/// half-closes. The client is to blame: `400 bad-request` (when an answer
/// can still be written), and the upstream endpoint is not: with
/// `consecutive_failures: 1` one failure blamed on it would eject it, and the
/// next request would get 503 `no-healthy-endpoints`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_breaks_off_is_the_clients_fault() {
    let head = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases = [
        (
            "invalid chunk size",
            format!("{head}zz\r\nhello\r\n0\r\n\r\n"),
            false,
        ),
        (
            "chunk size overflow",
            format!("{head}ffffffffffffffffff\r\nhello\r\n"),
            false,
        ),
        ("stops mid-chunk", format!("{head}10\r\nhello"), true),
        (
            "content-length cut short",
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello".to_owned(),
            true,
        ),
    ];
    let app = Backend::http1().spawn().await;
    let (proxy, _good) = start(
        "auto",
        app.addr(),
        ", outlier_detection: { consecutive_failures: 1 }",
    )
    .await;
    for (case, request, half_close) in cases {
        let mut stream = TcpStream::connect(proxy.main()).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        if half_close {
            stream.shutdown().await.unwrap();
        }
        let response = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
        if !response.is_empty() {
            assert_eq!(status_of(&response), Some(400), "{case}: {response:?}");
            assert!(
                response.contains("skiff-error: bad-request"),
                "{case}: {response:?}"
            );
        }
        let mut client = Client::http1(proxy.main()).await;
        let rsp = client.get("/after").await;
        assert_eq!(
            rsp.status,
            StatusCode::OK,
            "{case}: the endpoint was blamed: {rsp:?}"
        );
    }
    app.join().await;
}

/// A client that goes away mid-request costs nothing but its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_mid_request() {
    let cases: [(&str, &[u8]); 3] = [
        ("mid request line", b"GET /some/pa"),
        ("mid head", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: "),
        ("mid preface", b"PRI * HTTP/2.0\r\n\r\nSM"),
    ];
    let app = Backend::http1().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    for (case, bytes) in cases {
        let mut stream = TcpStream::connect(proxy.main()).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        drop(stream);
        assert_serves(&proxy, ClientProtocol::Http1, case).await;
        assert_serves(&proxy, ClientProtocol::H2c, case).await;
    }
    assert_eq!(app.requests(), 0);
    app.join().await;
}

/// Each line: listener protocol, what the client sends before going quiet.
/// `header_timeout: 200ms` ends each connection, whether hyper-util is still
/// sniffing for the h2 preface or hyper is reading an HTTP/1 head; the guard
/// only turns a hang into a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_by_the_header_timeout() {
    let cases: [(&str, &[u8]); 8] = [
        ("auto", b""),
        ("auto", b"P"),
        ("auto", b"PRI * HTTP/2.0\r\n"),
        ("auto", b"GET / HTTP/1.1\r\nHost: x\r\n"),
        ("http1", b""),
        ("http1", b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "),
        ("http2", b""),
        ("http2", b"PRI * HTTP/2.0\r\n"),
    ];
    let app = Backend::auto().spawn().await;
    for (listener, bytes) in cases {
        let case = format!(
            "{listener} listener, sent {:?}",
            String::from_utf8_lossy(bytes)
        );
        let (proxy, _good) = start(listener, app.addr(), "").await;
        let mut stream = TcpStream::connect(proxy.main()).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let started = Instant::now();
        let response = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(5),
            "{case}: closed only after {waited:?}"
        );
        assert!(
            response.is_empty() || status_of(&response) == Some(408),
            "{case}: {response:?}"
        );
        let protocol = if listener == "http2" {
            ClientProtocol::H2c
        } else {
            ClientProtocol::Http1
        };
        assert_serves(&proxy, protocol, &case).await;
    }
    assert_eq!(app.requests(), 0);
    app.join().await;
}

/// An idle HTTP/1 keep-alive connection is held for `header_timeout` (200ms
/// here) after its last answer, then closed without an answer, uncounted (a
/// quiet keep-alive connection is no refusal); one that is busy is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = Backend::http1().spawn().await;
    let (proxy, _good) = start("http1", app.addr(), "").await;
    let mut stream = TcpStream::connect(proxy.main()).await.unwrap();
    // HEAD: an answer that ends with its head.
    let request = b"HEAD /alive HTTP/1.1\r\nHost: x\r\n\r\n";
    // Three requests, each well inside the timeout: the connection serves.
    for _ in 0..3 {
        stream.write_all(request).await.unwrap();
        let (head, rest) = read_head(&mut stream).await;
        assert_eq!(status_of(&head), Some(200), "{head:?}");
        assert!(rest.is_empty(), "a HEAD answer has no body: {rest:?}");
    }
    // Closed (the guard in `read_to_close` turns a connection held
    // forever into a failure), and nothing more was said.
    let rest = read_to_close(&mut stream).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let metrics = proxy.metrics().await;
    assert!(
        !metrics.contains(r#"reason="header-timeout""#),
        "a quiet keep-alive connection was counted: {metrics}"
    );
    app.join().await;
}

/// `Expect: 100-continue`: the client is told to send its body only when
/// the body is read. A request answered before that (here a fault's 503)
/// never gets the 100, so the client need not upload; one that goes
/// upstream gets it, then its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_is_sent_only_when_the_body_is_wanted() {
    let app = Backend::http1().spawn().await;
    let (proxy, _good) = start("http1", app.addr(), "").await;
    for (path, continued, status) in [("/abort", false, 503), ("/upload", true, 200)] {
        let mut stream = TcpStream::connect(proxy.main()).await.unwrap();
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
                     Expect: 100-continue\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let (head, _) = read_head(&mut stream).await;
        if continued {
            assert!(head.starts_with("HTTP/1.1 100"), "{path}: {head}");
            stream.write_all(b"hello").await.unwrap();
            let (head, _) = read_head(&mut stream).await;
            assert_eq!(status_of(&head), Some(status), "{path}: {head}");
        } else {
            assert_eq!(status_of(&head), Some(status), "{path}: {head}");
        }
    }
    app.join().await;
}

/// `stream_idle_timeout` (200ms here): an upload that stalls mid-body fails
/// with 400 `bad-request`, and a download whose upstream stalls mid-body is
/// cut (the HTTP/1 connection closes before the body's end). Without it both
/// would hold their connections for as long as the peer liked: neither
/// route has a `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_stall_are_cut_by_the_stream_idle_timeout() {
    let app = Backend::http1().spawn().await;
    // An upstream that sends a head and 5 of 100 bytes, then nothing.
    let stalling = TcpServer::spawn(|mut stream: TcpStream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
            .await;
        // Hold the connection open until the proxy closes it.
        let _ = stream.read(&mut buf).await;
    })
    .await;
    let config = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, stream_idle_timeout: 200ms, routes: main }}
routes:
  main:
    - match: {{ path: {{ prefix: /download }} }}
      cluster: stalling
    - cluster: app
clusters:
  app: {{ endpoints: [{app}] }}
  stalling: {{ endpoints: [{stalling}] }}
"#,
        app = app.addr(),
        stalling = stalling.addr()
    );
    let proxy = Proxy::start(&config).await;

    let mut upload = TcpStream::connect(proxy.main()).await.unwrap();
    upload
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
        .await
        .unwrap();
    let (head, _) = read_head(&mut upload).await;
    assert_eq!(status_of(&head), Some(400), "{head}");
    assert!(head.contains("skiff-error: bad-request"), "{head}");

    let mut download = TcpStream::connect(proxy.main()).await.unwrap();
    download
        .write_all(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&read_to_close(&mut download).await).into_owned();
    assert_eq!(status_of(&got), Some(200), "{got:?}");
    assert!(
        got.ends_with("\r\n\r\nhello"),
        "cut after what came: {got:?}"
    );
    app.join().await;
}

/// Skiff's HTTP/1 server lends its head timer to the wait for each answer:
/// an answer that takes longer than `header_timeout` (a 400 ms fault delay
/// against 100 ms) must still be served, and the connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_header_timeout_is_served() {
    let app = Backend::http1().spawn().await;
    let config = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, header_timeout: 100ms, routes: main }}
routes:
  main:
    - cluster: app
      fault: {{ delay: {{ duration: 400ms, percent: 100 }} }}
clusters:
  app: {{ endpoints: [{app}] }}
"#,
        app = app.addr()
    );
    let proxy = Proxy::start(&config).await;
    let mut client = Client::http1(proxy.main()).await;
    for _ in 0..2 {
        let rsp = client.get("/slow").await;
        assert_eq!(rsp.status, StatusCode::OK, "{rsp:?}");
    }
    assert_eq!(app.connections(), 1);
    app.join().await;
}

/// An upstream that takes a request and never answers is bounded by the
/// listener's `stream_idle_timeout` too, as Envoy's stream idle timer bounds
/// it: 504 `timeout`, counted, and the upstream connection let go. The wait
/// counts from the request body's end, so an upload that keeps sending for
/// longer than the timeout (2.5 of them here, a chunk every quarter) is
/// answered normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_that_never_comes_is_cut_by_the_stream_idle_timeout() {
    // Reads the request, answers nothing, and reports when the proxy lets
    // go of the connection (HTTP/1, so that cancelling the request closes
    // it; an HTTP/2 upstream would get RST_STREAM and keep its connection).
    let (gone_tx, mut gone) = tokio::sync::mpsc::unbounded_channel::<()>();
    let silent = TcpServer::spawn(move |mut stream: TcpStream| {
        let gone = gone_tx.clone();
        async move {
            let mut buf = [0u8; 4096];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = gone.send(());
        }
    })
    .await;
    let good = Backend::http1().spawn().await;
    // Answers once the whole chunked body has come.
    let patient = TcpServer::spawn(|mut stream: TcpStream| async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.ends_with(b"0\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let config = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, stream_idle_timeout: 300ms, routes: main }}
routes:
  main:
    - match: {{ path: {{ prefix: /silent }} }}
      cluster: silent
    - match: {{ path: {{ exact: /alive }} }}
      cluster: good
    - cluster: patient
clusters:
  silent: {{ endpoints: [{silent}], protocol: http1 }}
  good: {{ endpoints: [{good}] }}
  patient: {{ endpoints: [{patient}] }}
"#,
        silent = silent.addr(),
        good = good.addr(),
        patient = patient.addr()
    );
    let proxy = Proxy::start(&config).await;

    let mut last = None;
    for protocol in [ClientProtocol::H2c, ClientProtocol::Http1] {
        let mut client = Client::connect(proxy.main(), protocol).await;
        let rsp = client.get("/silent").await;
        assert_eq!(rsp.status, StatusCode::GATEWAY_TIMEOUT, "{protocol:?}");
        assert_eq!(rsp.header("skiff-error"), Some("timeout"), "{protocol:?}");
        guard("the upstream request cancelled", gone.recv())
            .await
            .expect("the silent upstream reports");
        last = Some(client);
    }
    // The HTTP/1 connection serves on; its next answer also says the
    // exchange before it ended, so its 504 is counted by now (the h2c one
    // may still be on its way: an HTTP/2 stream is counted as it closes).
    let mut http1 = last.expect("an HTTP/1 client");
    assert_eq!(http1.get("/alive").await.status, StatusCode::OK);
    let metrics = proxy.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("skiff_requests_total{")
                && l.contains(r#"code="504""#)
                && (l.ends_with(" 1") || l.ends_with(" 2"))),
        "{metrics}"
    );

    let mut upload = TcpStream::connect(proxy.main()).await.unwrap();
    upload
        .write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(75)).await;
        upload.write_all(b"1\r\nx\r\n").await.unwrap();
    }
    upload.write_all(b"0\r\n\r\n").await.unwrap();
    let (head, _) = read_head(&mut upload).await;
    assert_eq!(status_of(&head), Some(200), "{head}");
}

// === HTTP/2 ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const PROTOCOL_ERROR: u32 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

/// One HTTP/2 frame as it goes on the wire.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block of literal fields without indexing (RFC 7541 §6.2.2), no
/// Huffman: whatever names and values a test wants, uppercase included.
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    fn int(out: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        int(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        int(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A GET's HEADERS frame for `path` with `extra` fields after the pseudo-headers.
fn get(stream: u32, path: &str, extra: &[(&str, &str)], flags: u8) -> Vec<u8> {
    let mut fields = vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "skiff.test"),
    ];
    fields.extend_from_slice(extra);
    frame(HEADERS, flags, stream, &hpack(&fields))
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    fn code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A raw h2c connection: frames in, frames out, no rules enforced.
struct RawH2 {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects and completes the SETTINGS exchange.
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut conn = Self {
            stream,
            buf: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        conn.send(&hello).await;
        conn.until(|f| f.kind == SETTINGS && f.flags & ACK == 0)
            .await
            .expect("the server's SETTINGS");
        conn.send(&frame(SETTINGS, ACK, 0, &[])).await;
        conn
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match guard("the next HTTP/2 frame", self.stream.read(&mut chunk)).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The frames that come before the ACK of a PING the test sent: once it
    /// is back, the server has dealt with everything sent before the PING.
    async fn until_ping_ack(&mut self) -> Vec<Frame> {
        let mut before = Vec::new();
        loop {
            let f = self.next().await.expect("closed before the PING ACK");
            if f.kind == PING && f.flags & ACK == ACK {
                return before;
            }
            before.push(f);
        }
    }

    /// Reads up to the first frame `wanted` accepts; `None` at the end.
    async fn until(&mut self, mut wanted: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        while let Some(f) = self.next().await {
            if wanted(&f) {
                return Some(f);
            }
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_preface_followed_by_garbage_gets_goaway() {
    let app = Backend::auto().spawn().await;
    for listener in ["auto", "http2"] {
        let (proxy, _good) = start(listener, app.addr(), "").await;
        let mut conn = RawH2 {
            stream: TcpStream::connect(proxy.main()).await.unwrap(),
            buf: Vec::new(),
        };
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(b"this is not a frame, only bytes pretending to be one");
        conn.send(&bytes).await;
        let goaway = conn.until(|f| f.kind == GOAWAY).await;
        assert!(goaway.is_some(), "{listener}: closed without GOAWAY");
        assert!(
            conn.until(|_| false).await.is_none(),
            "{listener}: then closed"
        );
        assert_serves(&proxy, ClientProtocol::H2c, listener).await;
    }
    assert_eq!(app.requests(), 0);
    app.join().await;
}

/// Each line: the extra header fields of a request HTTP/2 forbids, and the
/// error: a malformed request resets its stream (RFC 9113 §8.1.1), a header
/// block HPACK cannot even decode into names (uppercase) ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_malformed_requests_are_reset_not_forwarded() {
    type Case = (&'static str, &'static [(&'static str, &'static str)], u8);
    let cases: [Case; 6] = [
        ("uppercase name", &[("X-Upper", "1")], GOAWAY),
        (
            "connection: keep-alive",
            &[("connection", "keep-alive")],
            RST_STREAM,
        ),
        ("keep-alive", &[("keep-alive", "timeout=5")], RST_STREAM),
        (
            "transfer-encoding",
            &[("transfer-encoding", "chunked")],
            RST_STREAM,
        ),
        ("te: gzip", &[("te", "gzip")], RST_STREAM),
        (
            "pseudo-header after a field",
            &[("x-a", "1"), (":path", "/b")],
            RST_STREAM,
        ),
    ];
    let app = Backend::auto().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    for (case, extra, expected) in cases {
        let mut conn = RawH2::open(proxy.main()).await;
        conn.send(&get(1, "/bad", extra, END_STREAM | END_HEADERS))
            .await;
        let answer = conn
            .until(|f| f.kind == GOAWAY || f.kind == RST_STREAM || f.kind == HEADERS)
            .await
            .unwrap_or_else(|| panic!("{case}: closed without a word"));
        assert_eq!(answer.kind, expected, "{case}: {answer:?}");
        assert_eq!(answer.code(), PROTOCOL_ERROR, "{case}: {answer:?}");
        if expected == RST_STREAM {
            assert_eq!(answer.stream, 1, "{case}");
            // The connection itself lives on: a valid request on stream 3.
            conn.send(&get(3, "/alive", &[], END_STREAM | END_HEADERS))
                .await;
            let rsp = conn.until(|f| f.stream == 3).await.unwrap();
            assert_eq!(rsp.kind, HEADERS, "{case}: {rsp:?}");
        }
        assert_serves(&proxy, ClientProtocol::H2c, case).await;
    }
    assert_eq!(
        app.requests(),
        0,
        "a malformed request reached the upstream"
    );
    // Each refused by h2, and counted by Skiff as the refusal went out.
    assert_refused(&proxy, "malformed", cases.len() as u32).await;
    app.join().await;
}

/// 1100 streams at once, each held open by the `/hold` route: past
/// `max_concurrent_streams` (1024) each new stream is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_over_the_limit_are_refused() {
    const STREAMS: u32 = 1100;
    let app = Backend::auto().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    let mut conn = RawH2::open(proxy.main()).await;
    let mut burst = Vec::new();
    for i in 0..STREAMS {
        burst.extend(get(2 * i + 1, "/hold", &[], END_STREAM | END_HEADERS));
    }
    conn.send(&burst).await;
    let mut refused = 0;
    while refused < STREAMS - 1024 {
        let f = conn
            .until(|f| f.kind == RST_STREAM || f.kind == GOAWAY)
            .await
            .unwrap_or_else(|| panic!("closed after {refused} refusals"));
        assert_eq!(f.kind, RST_STREAM, "{f:?}");
        assert_eq!(f.code(), REFUSED_STREAM, "{f:?}");
        assert!(
            f.stream > 2 * 1024,
            "stream {} is within the limit",
            f.stream
        );
        refused += 1;
    }
    assert_serves(&proxy, ClientProtocol::H2c, "after the stream burst").await;
    drop(conn);
    assert_eq!(app.requests(), 0);
    // h2 refused them; Skiff counted each as it went out.
    assert_refused(&proxy, "max-concurrent-streams", STREAMS - 1024).await;
    app.join().await;
}

/// "Rapid reset" (CVE-2023-44487): streams opened and reset at once, by the
/// thousand. hyper's limit on streams reset before they were accepted ends
/// the connection with GOAWAY ENHANCE_YOUR_CALM; the upstream sees at most
/// the few streams accepted before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_is_cut_off() {
    const STREAMS: u32 = 5000;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let app = Backend::auto().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    let mut conn = RawH2::open(proxy.main()).await;
    let mut flood = Vec::new();
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        flood.extend(get(id, "/flood", &[], END_HEADERS));
        flood.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The proxy may hang up mid-flood; that is the point.
    let _ = conn.stream.write_all(&flood).await;
    let goaway = conn.until(|f| f.kind == GOAWAY).await;
    let goaway = goaway.expect("the flood must end in GOAWAY");
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_refused(&proxy, "h2-flood", 1).await;
    assert_serves(&proxy, ClientProtocol::H2c, "after the flood").await;
    assert_serves(&proxy, ClientProtocol::Http1, "after the flood").await;
    let seen = app.requests();
    assert!(
        seen < 100,
        "the upstream saw {seen} of {STREAMS} reset streams"
    );
    app.join().await;
}

/// PING and SETTINGS floods: h2 holds at most one pending PING ACK and one
/// pending SETTINGS, and reads the next frame only once the ACK is written,
/// so a flood is paced by the client's own reading and queues nothing in
/// the proxy; the connection goes on serving. (Memory is not measured here:
/// the bound is h2's, by construction.) Sent in chunks, each ended by a
/// marked PING whose ACK says the chunk was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_ping_and_settings_floods_cost_no_memory_and_the_connection_serves() {
    const CHUNKS: u64 = 20;
    const PER_CHUNK: u64 = 1000;
    let app = Backend::auto().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    let mut conn = RawH2::open(proxy.main()).await;
    for chunk in 0..CHUNKS {
        let mut flood = Vec::new();
        for i in 0..PER_CHUNK {
            flood.extend(frame(PING, 0, 0, &(chunk * PER_CHUNK + i).to_be_bytes()));
            if i % 4 == 0 {
                flood.extend(frame(SETTINGS, 0, 0, &[]));
            }
        }
        let marker = u64::MAX - chunk;
        flood.extend(frame(PING, 0, 0, &marker.to_be_bytes()));
        conn.send(&flood).await;
        conn.until(|f| f.kind == PING && f.flags & ACK == ACK && f.payload == marker.to_be_bytes())
            .await
            .unwrap_or_else(|| panic!("closed in chunk {chunk}"));
    }
    conn.send(&get(1, "/alive", &[], END_STREAM | END_HEADERS))
        .await;
    let rsp = conn
        .until(|f| f.stream == 1 && f.kind == HEADERS)
        .await
        .expect("the request after the flood is answered");
    assert_eq!(rsp.kind, HEADERS);
    assert_serves(&proxy, ClientProtocol::H2c, "after the floods").await;
    app.join().await;
}

/// A header block that never ends: HEADERS without END_HEADERS, then
/// CONTINUATION frames by the thousand (CVE-2024-27316's class). h2 counts
/// them against the largest header list it accepts and ends the connection
/// with GOAWAY ENHANCE_YOUR_CALM; nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_is_cut_off() {
    const CONTINUATION: u8 = 0x9;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let app = Backend::auto().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    let mut conn = RawH2::open(proxy.main()).await;
    let mut flood = get(1, "/flood", &[], 0);
    let field = hpack(&[("x-a", "b")]);
    for _ in 0..100_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &field));
    }
    // The proxy hangs up mid-flood; that is the point.
    let _ = conn.stream.write_all(&flood).await;
    let goaway = conn
        .until(|f| f.kind == GOAWAY)
        .await
        .expect("the flood must end in GOAWAY");
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_refused(&proxy, "h2-flood", 1).await;
    assert_serves(&proxy, ClientProtocol::H2c, "after the flood").await;
    assert_eq!(app.requests(), 0);
    app.join().await;
}

/// An HPACK "bomb": one 4,000-byte field put in the dynamic table, then
/// referenced again and again at one byte each, so a small header block
/// decodes to a large head. Decoded past Skiff's own limit (60 KiB) but
/// within h2's parser headroom, Skiff answers 431 and counts it; decoded
/// past the headroom (1 MiB), h2 refuses the stream itself. Either way the
/// upstream sees nothing and the connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_hpack_bombs_are_refused() {
    let app = Backend::auto().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    let bomb = |stream: u32, references: usize| {
        let mut block = hpack(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/bomb"),
            (":authority", "skiff.test"),
        ]);
        // Literal with incremental indexing, new name (RFC 7541 §6.2.1):
        // the field becomes dynamic table entry 62.
        let value = "a".repeat(4000);
        block.extend([0x40, 6]);
        block.extend_from_slice(b"x-bomb");
        // The length 4,000 as a 7-bit prefix integer: 127 + 33 + 30 × 128.
        block.extend([0x7f, 0x80 | 33, 30]);
        block.extend_from_slice(value.as_bytes());
        // Indexed field 62, once more per byte.
        block.extend(std::iter::repeat_n(0x80 | 62, references));
        frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
    };

    // 50 references: about 200 KB decoded, over Skiff's 60 KiB.
    let mut conn = RawH2::open(proxy.main()).await;
    conn.send(&bomb(1, 50)).await;
    let rsp = conn
        .until(|f| f.stream == 1)
        .await
        .expect("answered on its stream");
    // An answer (h2 Huffman-codes its `431`), which Skiff made and counted.
    assert_eq!(rsp.kind, HEADERS, "{rsp:?}");
    assert_refused(&proxy, "head-too-large", 1).await;

    // 300 references: about 1.2 MB decoded, past h2's own parser limit. h2
    // answers its own bare 431 and ends the stream (the answer is the
    // `:status` field the first answer put in the table), which Skiff never
    // sees, so the count stays at 1 (docs/hardening.md).
    conn.send(&bomb(3, 300)).await;
    let refused = conn
        .until(|f| f.stream == 3 || f.kind == GOAWAY)
        .await
        .expect("refused on its stream or the connection");
    assert_eq!(refused.kind, HEADERS, "{refused:?}");
    assert_eq!(refused.flags, END_STREAM | END_HEADERS, "{refused:?}");
    assert_serves(&proxy, ClientProtocol::H2c, "after the bombs").await;
    assert_refused(&proxy, "head-too-large", 1).await;
    assert_eq!(app.requests(), 0, "a bomb reached the upstream");
    app.join().await;
}

/// Empty DATA frames without END_STREAM cost h2 no memory, but each costs
/// a frame's work (CVE-2019-9518). As in Envoy, one in a row is allowed (a
/// client may flush an empty frame); the second ends the connection with
/// GOAWAY ENHANCE_YOUR_CALM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_empty_data_frames_in_a_row_are_cut_off() {
    const DATA: u8 = 0x0;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let app = Backend::auto().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;

    // One empty frame, then the body's end: an ordinary request.
    let mut conn = RawH2::open(proxy.main()).await;
    let mut bytes = get(1, "/alive", &[], END_HEADERS);
    bytes.extend(frame(DATA, 0, 1, &[]));
    bytes.extend(frame(DATA, END_STREAM, 1, b"x"));
    conn.send(&bytes).await;
    let rsp = conn.until(|f| f.stream == 1).await.expect("answered");
    assert_eq!(rsp.kind, HEADERS, "{rsp:?}");

    // Two in a row.
    let mut flood = get(3, "/alive", &[], END_HEADERS);
    flood.extend(frame(DATA, 0, 3, &[]));
    flood.extend(frame(DATA, 0, 3, &[]));
    conn.send(&flood).await;
    let goaway = conn
        .until(|f| f.kind == GOAWAY)
        .await
        .expect("the flood must end in GOAWAY");
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM, "{goaway:?}");
    // The last stream h2 saw: 1, or 3 if its HEADERS came in a read of its
    // own (the read that brings the flood is dropped whole).
    let last = u32::from_be_bytes(goaway.payload[..4].try_into().unwrap());
    assert!(last == 1 || last == 3, "last stream {last}");
    assert!(conn.until(|_| false).await.is_none(), "then closed");
    assert_refused(&proxy, "h2-flood", 1).await;
    assert_serves(&proxy, ClientProtocol::H2c, "after the flood").await;
    app.join().await;
}

/// `skiff_downstream_refusals_total{listener="main",reason}` is `n`.
async fn assert_refused(proxy: &Proxy, reason: &str, n: u32) {
    let metrics = proxy.metrics().await;
    let line =
        format!(r#"skiff_downstream_refusals_total{{listener="main",reason="{reason}"}} {n}"#);
    assert!(
        metrics.lines().any(|l| l == line),
        "wanted {line}: {metrics}"
    );
}

// === Smuggling, checked at the upstream's bytes ===

/// What a raw upstream received: every byte, as read.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// A raw upstream that records every byte it receives, answers a small 200
/// (and closes) once something arrives, and reads on until the proxy closes:
/// the test then reads exactly what the proxy sent upstream.
async fn recorder() -> (Listening, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let upstream = TcpServer::spawn(move |mut stream: TcpStream| {
        let record = record.clone();
        async move {
            let mut buf = [0u8; 16 * 1024];
            let mut answered = false;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                record.lock().unwrap().extend_from_slice(&buf[..n]);
                if !answered {
                    answered = true;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                }
            }
        }
    })
    .await;
    (upstream, seen)
}

/// TE.TE: a `Transfer-Encoding` dressed so that one parser might take it
/// for chunked and another not (PortSwigger's list, the ones that still
/// parse as HTTP). Each is refused before routing (400 from the parser, 501
/// `bad-request` for a coding Skiff does not know) and the upstream gets
/// not one byte: neither the request nor what hides in its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obfuscated_transfer_encodings_are_refused_and_nothing_reaches_the_upstream() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: [(&str, &str); 8] = [
        ("xchunked", "Transfer-Encoding: xchunked"),
        (
            "chunked then x",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
        ),
        (
            "x then chunked, CL",
            "Content-Length: 4\r\nTransfer-Encoding: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        ),
        ("space before colon", "Transfer-Encoding : chunked"),
        ("chunked, identity", "Transfer-Encoding: chunked, identity"),
        ("folded", "Transfer-Encoding:\r\n chunked"),
        ("leading space line", "X: y\r\n Transfer-Encoding: chunked"),
        ("quoted", "Transfer-Encoding: \"chunked\""),
    ];
    let (upstream, seen) = recorder().await;
    let (proxy, _good) = start("auto", upstream.addr(), ", protocol: http1").await;
    for (case, framing) in cases {
        let request = format!(
            "POST /te HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n3\r\nabc\r\n0\r\n\r\n{smuggled}"
        );
        let response = exchange(proxy.main(), request.as_bytes()).await;
        let status = status_of(&response);
        assert!(matches!(status, Some(400 | 501)), "{case}: {response:?}");
        assert_eq!(responses_in(&response), 1, "{case}: {response:?}");
        assert_serves(&proxy, ClientProtocol::Http1, case).await;
    }
    let got = seen.lock().unwrap().clone();
    assert!(
        got.is_empty(),
        "the upstream got: {:?}",
        String::from_utf8_lossy(&got)
    );
    // The recorder does see what is forwarded: a plain chunked POST.
    let fine = "POST /fine HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let response = exchange(proxy.main(), fine.as_bytes()).await;
    assert_eq!(status_of(&response), Some(200), "{response:?}");
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(got.starts_with("POST /fine HTTP/1.1\r\n"), "{got:?}");
    upstream.join().await;
}

/// HTTP/2 to an HTTP/1 upstream, with a body longer than its
/// `content-length` and a request hidden in the excess: h2 refuses the
/// stream (RFC 9113 §8.1.1) and the upstream never sees a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_to_h1_with_a_content_length_mismatch_smuggles_nothing() {
    let (upstream, seen) = recorder().await;
    let (proxy, _good) = start("auto", upstream.addr(), ", protocol: http1").await;
    let mut conn = RawH2::open(proxy.main()).await;
    let mut head = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/downgrade"),
        (":authority", "skiff.test"),
        ("content-length", "3"),
    ];
    let mut bytes = frame(HEADERS, END_HEADERS, 1, &hpack(&head));
    bytes.extend(frame(
        DATA,
        END_STREAM,
        1,
        b"abcGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ));
    conn.send(&bytes).await;
    let answer = conn
        .until(|f| f.stream == 1 && (f.kind == RST_STREAM || f.kind == HEADERS) || f.kind == GOAWAY)
        .await
        .expect("an answer to the stream");
    assert_ne!(
        answer.kind, HEADERS,
        "the stream must not be answered: {answer:?}"
    );
    assert_eq!(answer.code(), PROTOCOL_ERROR, "{answer:?}");
    // A body shorter than its content-length is refused the same way.
    head[4] = ("content-length", "30");
    let mut short = frame(HEADERS, END_HEADERS, 3, &hpack(&head));
    short.extend(frame(DATA, END_STREAM, 3, b"abc"));
    conn.send(&short).await;
    let answer = conn
        .until(|f| f.stream == 3 && (f.kind == RST_STREAM || f.kind == HEADERS) || f.kind == GOAWAY)
        .await
        .expect("an answer to the stream");
    assert_ne!(
        answer.kind, HEADERS,
        "the stream must not be answered: {answer:?}"
    );
    assert_serves(&proxy, ClientProtocol::H2c, "after the mismatches").await;
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(!got.contains("smuggled"), "the upstream got: {got:?}");
    assert!(got.matches(" HTTP/1.1\r\n").count() <= 2, "{got:?}");
    upstream.join().await;
}

/// CR or LF in an HTTP/2 header value would split it into two HTTP/1
/// header lines (or a second request) on the way upstream: h2 refuses the
/// field (RFC 9113 §8.2.1) and the upstream gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_header_values_with_cr_or_lf_never_reach_an_http1_upstream() {
    let (upstream, seen) = recorder().await;
    let (proxy, _good) = start("auto", upstream.addr(), ", protocol: http1").await;
    for (stream, value) in [
        (1, "a\r\nx-injected: 1"),
        (3, "a\nx-injected: 1"),
        (5, "a\rx-injected: 1"),
        (7, "a\r\n\r\nGET /smuggled HTTP/1.1"),
    ] {
        let mut conn = RawH2::open(proxy.main()).await;
        conn.send(&get(
            stream,
            "/crlf",
            &[("x-a", value)],
            END_STREAM | END_HEADERS,
        ))
        .await;
        let answer = conn
            .until(|f| f.kind == GOAWAY || f.kind == RST_STREAM || f.kind == HEADERS)
            .await
            .unwrap_or_else(|| panic!("{value:?}: closed without a word"));
        assert_ne!(answer.kind, HEADERS, "{value:?}: answered: {answer:?}");
        assert_eq!(answer.code(), PROTOCOL_ERROR, "{value:?}: {answer:?}");
    }
    assert_serves(&proxy, ClientProtocol::H2c, "after the CR/LF values").await;
    let got = seen.lock().unwrap().clone();
    assert!(
        got.is_empty(),
        "the upstream got: {:?}",
        String::from_utf8_lossy(&got)
    );
    // The same request with a clean value does reach the recorder.
    let mut conn = RawH2::open(proxy.main()).await;
    conn.send(&get(1, "/crlf", &[("x-a", "a")], END_STREAM | END_HEADERS))
        .await;
    let answer = conn.until(|f| f.stream == 1).await.unwrap();
    assert_eq!(answer.kind, HEADERS, "{answer:?}");
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(got.starts_with("GET /crlf HTTP/1.1\r\n"), "{got:?}");
    assert!(got.contains("x-a: a\r\n"), "{got:?}");
    upstream.join().await;
}

// === gRPC ===

const DATA: u8 = 0x0;
const NO_ERROR: u32 = 0x0;

/// A fault-aborted gRPC call is answered before its request body is read.
/// The answer must reach the client whole (trailers-only: one HEADERS frame
/// with END_STREAM) before anything else about the stream, and the only
/// reset that may follow is NO_ERROR (RFC 9113 §8.1): never a stream error
/// a client reports instead of the status. Deterministic: the raw client
/// sends the request body only after the response head has arrived (the
/// order that lost the race from outside), then proves with a PING that
/// the server has read it. Skiff reads the rest of the body instead of
/// resetting the stream under the client (`body::RequestBody`), so no
/// reset comes at all while the client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_aborted_grpc_call_is_answered_whole_before_any_reset() {
    let app = Backend::auto().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    for round in 0..20u32 {
        let mut conn = RawH2::open(proxy.main()).await;
        let head = hpack(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/abort/pkg.Svc/Unary"),
            (":authority", "skiff.test"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]);
        conn.send(&frame(HEADERS, END_HEADERS, 1, &head)).await;
        let first = conn
            .until(|f| f.stream == 1)
            .await
            .unwrap_or_else(|| panic!("round {round}: closed without an answer"));
        assert_eq!(first.kind, HEADERS, "round {round}: {first:?}");
        assert_eq!(
            first.flags & END_STREAM,
            END_STREAM,
            "round {round}: trailers-only, complete in one frame: {first:?}"
        );
        // The stream stays open for the client to finish its request: a
        // PING's ACK comes back with no reset before it.
        conn.send(&frame(PING, 0, 0, b"skiffp!?")).await;
        for f in conn.until_ping_ack().await {
            assert!(
                f.kind != RST_STREAM && f.kind != GOAWAY,
                "round {round}: the client was still sending: {f:?}"
            );
        }
        // Now the request body, then a PING: its ACK means the server has
        // read (and dealt with) the DATA frame before it.
        let mut late = frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        late.extend(frame(PING, 0, 0, b"skiffp!!"));
        conn.send(&late).await;
        for f in conn.until_ping_ack().await {
            match f.kind {
                RST_STREAM => assert_eq!(f.code(), NO_ERROR, "round {round}: {f:?}"),
                GOAWAY => panic!("round {round}: {f:?}"),
                _ => {}
            }
        }
    }
    assert_eq!(app.requests(), 0);
    app.join().await;
}

/// Each line: a `grpc-timeout` value the gRPC spec does not allow (or an
/// absurd one). A malformed value is ignored, as gRPC servers do, and a huge
/// one is as good as none: the backend answers every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_timeout_is_ignored() {
    let cases = [
        "bogus",
        "",
        "1",
        "S",
        "-1S",
        "1.5S",
        " 1S",
        "999999999S",
        "99999999H",
        "18446744073709551616n",
        "1x",
    ];
    let app = Backend::auto().spawn().await;
    let (proxy, _good) = start("auto", app.addr(), "").await;
    let mut client = Client::h2c(proxy.main()).await;
    for value in cases {
        let rsp = client
            .request(
                Request::post("/pkg.Svc/Method")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .header("grpc-timeout", value)
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(rsp.status, StatusCode::OK, "{value:?}: {rsp:?}");
        assert_eq!(rsp.header("skiff-error"), None, "{value:?}: {rsp:?}");
        assert!(rsp.text().contains("grpc-timeout"), "{value:?}: {rsp:?}");
    }
    assert_eq!(app.requests(), cases.len());
    app.join().await;
}

// === upstream ===

/// Each line: what a broken upstream answers (raw bytes). Every one is
/// `502 upstream-reset`, and the proxy serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_upstream_responses_are_502_upstream_reset() {
    let many_headers = format!(
        "HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n",
        (0..150)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let huge_header = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "b".repeat(512 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"garbage garbage\r\n\r\n".to_vec()),
        (
            "status not a number",
            b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        (
            "status out of range",
            b"HTTP/1.1 1000 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        (
            "unknown version",
            b"HTTP/3.0 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        (
            "header without colon",
            b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        (
            "two content-lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
        ),
        ("150 header lines", many_headers.into_bytes()),
        ("512 KiB header", huge_header.into_bytes()),
    ];
    for (case, answer) in cases {
        let upstream = TcpServer::spawn(move |mut stream: TcpStream| {
            let answer = answer.clone();
            async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(&answer).await;
                // Hold the connection until the proxy gives up on it.
                let _ = stream.read(&mut buf).await;
            }
        })
        .await;
        let (proxy, _good) = start("auto", upstream.addr(), ", protocol: http1").await;
        for protocol in [ClientProtocol::Http1, ClientProtocol::H2c] {
            let mut client = Client::connect(proxy.main(), protocol).await;
            let rsp = client.get("/broken").await;
            assert_eq!(
                rsp.status,
                StatusCode::BAD_GATEWAY,
                "{case}, {protocol:?}: {rsp:?}"
            );
            assert_eq!(
                rsp.header("skiff-error"),
                Some("upstream-reset"),
                "{case}: {rsp:?}"
            );
            assert_serves(&proxy, protocol, case).await;
        }
        drop(upstream);
    }
}
