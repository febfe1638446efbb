//! Requests without a body go upstream over Skiff's inline HTTP/1 client
//! (proxy/src/upstream/inline_h1.rs). These upstreams are raw TCP servers
//! that answer with exact bytes: every framing a server may use reaches the
//! client intact, connections are reused only when the exchange allows it,
//! and a malformed answer is the upstream's failure (502 `upstream-reset`),
//! never the proxy's undoing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use http::{Request, StatusCode};
use integration_tests::body::empty;
use integration_tests::{Client, Config, Listening, TcpServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one request head; `false` when the peer closed first.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            return true;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A keep-alive server that answers every request with `answer`, and closes
/// after it when `close_after` says so.
async fn answering(answer: impl Into<Vec<u8>>, close_after: bool) -> Listening {
    let answer: Arc<[u8]> = answer.into().into();
    TcpServer::spawn(move |mut stream| {
        let answer = answer.clone();
        async move {
            let mut buf = Vec::new();
            while read_request(&mut stream, &mut buf).await {
                if stream.write_all(&answer).await.is_err() || close_after {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_reaches_the_client_intact() {
    // What the upstream sends, the body the client must read, and the
    // trailers' grpc-status if any.
    let cases: [(&'static [u8], &str, Option<&str>); 6] = [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n", "hello\n", None),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n3;x=y\r\nlo\n\r\n0\r\ngrpc-status: 0\r\n\r\n",
            "hello\n",
            Some("0"),
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "ok",
            None,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "", None),
        // Neither length nor chunked: the body runs until the server closes.
        (b"HTTP/1.0 200 OK\r\n\r\nuntil close", "until close", None),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye", "bye", None),
    ];
    for (answer, body, grpc_status) in cases {
        let case = String::from_utf8_lossy(answer).into_owned();
        let close = body == "until close";
        let upstream = answering(answer, close).await;
        // An h2c client, so trailers have a way back (an HTTP/1.1 client
        // gets them only if it asked with `TE: trailers`).
        let proxy = Config::to(upstream.addr())
            .cluster_protocol("http1")
            .start()
            .await;
        let mut client = Client::h2c(proxy.main()).await;
        for _ in 0..3 {
            let rsp = client.get("/framed").await;
            assert_eq!(rsp.text(), body, "{case}");
            let trailer = rsp
                .trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap());
            assert_eq!(trailer, grpc_status, "{case}");
        }
    }
}

/// An HTTP/1.0 upstream's answer reaches an HTTP/1.1 client as Skiff's
/// own HTTP/1.1 (RFC 9110 §6.2): the client's keep-alive connection stays
/// open for the next request, though the upstream closes each of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upstream_answer_goes_out_as_http11_and_keeps_the_client_connection() {
    let old = answering(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    let proxy = Config::to(old.addr())
        .cluster_protocol("http1")
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.main()).await.unwrap();
    for i in 0..3 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, mut rest) = integration_tests::client::read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        while rest.len() < 2 {
            let mut chunk = [0u8; 64];
            let n = integration_tests::guard("the body", stream.read(&mut chunk))
                .await
                .unwrap();
            assert!(n > 0, "request {i}: the client's connection closed");
            rest.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(&rest[..2], b"ok", "request {i}");
    }
    assert_eq!(old.connections(), 3, "the upstream closed each of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_only_when_the_exchange_allows() {
    // A sized answer keeps the connection: three requests, one connection.
    let kept = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let proxy = Config::to(kept.addr()).start().await;
    let mut client = Client::http1(proxy.main()).await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.text(), "ok");
    }
    assert_eq!(kept.connections(), 1);

    // `Connection: close` from the server: a new connection each time, and
    // no request fails for it.
    let closing = answering(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        true,
    )
    .await;
    let proxy = Config::to(closing.addr()).start().await;
    let mut client = Client::http1(proxy.main()).await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.text(), "ok");
    }
    assert_eq!(closing.connections(), 3);

    // A server that closes its keep-alive connections after one answer
    // without saying so. Whether the proxy notices the close before it
    // reuses the connection (checkout) or after (a silent failure, and the
    // GET goes again on a fresh one), no request fails.
    let quiet = TcpServer::spawn(|mut stream| async move {
        let mut buf = Vec::new();
        if read_request(&mut stream, &mut buf).await {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let proxy = Config::to(quiet.addr()).start().await;
    let mut client = Client::http1(proxy.main()).await;
    for _ in 0..5 {
        assert_eq!(client.get("/").await.text(), "ok");
    }
    assert_eq!(quiet.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_upstream_resets() {
    let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x-h: v\r\n".repeat(101));
    let cases: [&[u8]; 8] = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 2000 Huge\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
        // Closed before the head ended.
        b"HTTP/1.1 200 OK\r\ncontent-le",
        many.as_bytes(),
    ];
    for answer in cases {
        let case = String::from_utf8_lossy(&answer[..answer.len().min(60)]).into_owned();
        let upstream = answering(answer.to_vec(), true).await;
        let proxy = Config::to(upstream.addr()).start().await;
        let mut client = Client::http1(proxy.main()).await;
        let rsp = client
            .request(Request::get("/bad").body(empty()).unwrap())
            .await;
        assert_eq!(rsp.status, StatusCode::BAD_GATEWAY, "{case}: {rsp:?}");
        assert_eq!(rsp.header("skiff-error"), Some("upstream-reset"), "{case}");
        // Nothing of the upstream's address reaches the caller.
        assert!(!rsp.text().contains("127.0.0.1"), "{case}: {}", rsp.text());
    }

    // A body that breaks off mid-way (bad chunk, short of its length): the
    // client never sees a complete response (the head may or may not have
    // left before the break); the proxy keeps serving.
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
    ] {
        let upstream = answering(answer.to_vec(), true).await;
        let proxy = Config::to(upstream.addr()).start().await;
        let mut client = Client::http1(proxy.main()).await;
        if let Ok(rsp) = client
            .send(Request::get("/cut").body(empty()).unwrap())
            .await
        {
            use http_body_util::BodyExt;
            assert!(rsp.into_body().collect().await.is_err());
        }
        // The proxy lives on and counts the request.
        let metrics = proxy.metrics().await;
        assert!(metrics.contains("skiff_requests_total{"), "{metrics}");
    }
}

/// A cluster's `idle_timeout` closes the pooled connections nothing used
/// for that long: both HTTP/1 pools (the inline client's, for a GET; hyper's,
/// for a POST with a body) and the shared HTTP/2 connection. The upstreams
/// say when the proxy closed each connection; a request after that opens a
/// new one and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_idle_past_the_clusters_idle_timeout_are_closed() {
    use integration_tests::body::full;
    use tokio::sync::mpsc;

    // HTTP/1: a keep-alive server that reports each connection's end.
    let (closed_tx, mut closed) = mpsc::unbounded_channel::<()>();
    let h1 = TcpServer::spawn(move |mut stream| {
        let closed = closed_tx.clone();
        async move {
            let mut buf = Vec::new();
            while read_request(&mut stream, &mut buf).await {
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(answer).await.is_err() {
                    break;
                }
            }
            let _ = closed.send(());
        }
    })
    .await;
    let proxy = Config::to(h1.addr())
        .cluster("idle_timeout: 100ms")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    assert_eq!(client.get("/").await.text(), "ok");
    let post = Request::post("/").body(full("hi")).unwrap();
    assert_eq!(client.request(post).await.text(), "ok");
    assert_eq!(h1.connections(), 2, "one per HTTP/1 pool");
    for pool in ["inline", "hyper"] {
        integration_tests::guard(&format!("the idle {pool} connection closed"), closed.recv())
            .await
            .expect("the server reports");
    }
    assert_eq!(client.get("/").await.text(), "ok", "served after");
    assert_eq!(h1.connections(), 3);

    // HTTP/2: the one shared connection goes too, once no stream started.
    let (closed_tx, mut closed) = mpsc::unbounded_channel::<()>();
    let h2 = TcpServer::spawn(move |stream| {
        let closed = closed_tx.clone();
        async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            let _ = closed.send(());
        }
    })
    .await;
    let proxy = Config::to(h2.addr())
        .cluster_protocol("http2")
        .cluster("idle_timeout: 100ms")
        .start()
        .await;
    let mut client = Client::h2c(proxy.main()).await;
    assert_eq!(client.get("/").await.text(), "ok");
    integration_tests::guard("the idle HTTP/2 connection closed", closed.recv())
        .await
        .expect("the server reports");
    assert_eq!(client.get("/").await.text(), "ok", "served after");
    assert_eq!(h2.connections(), 2);
}
