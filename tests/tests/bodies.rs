//! Request and response bodies: fixed length, chunked, and 8 MiB streamed
//! through every protocol pairing, checked by sha256 at the far end and back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Request, StatusCode};
use integration_tests::backend::Protocol;
use integration_tests::body::{chunked, full, pattern, sha256_hex, streamed};
use integration_tests::client::{ClientProtocol, greeter_client, raw_exchange};
use integration_tests::handlers::Received;
use integration_tests::{Backend, Client, Echo, Greeter, Proxy, guard};
use skiff_examples::pb::HelloRequest;

const EIGHT_MIB: usize = 8 * 1024 * 1024;

/// An echo backend of `protocol` on `/echo` behind a proxy whose cluster
/// speaks `cluster`.
async fn echo_behind_proxy(
    protocol: Protocol,
    cluster: &str,
) -> (Echo, integration_tests::Listening, Proxy) {
    let echo = Echo::new();
    let backend = Backend::new(protocol)
        .route("/echo", echo.handler())
        .spawn()
        .await;
    let proxy = Proxy::simple("auto", cluster, backend.addr()).await;
    (echo, backend, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_streams_through_every_protocol_pair() {
    use ClientProtocol::{H2c, Http1};
    // client protocol, cluster protocol, backend protocol, version the backend sees
    let cases = [
        (Http1, "http1", Protocol::Http1, "HTTP/1.1"),
        (H2c, "http2", Protocol::Http2, "HTTP/2.0"),
        (Http1, "http2", Protocol::Http2, "HTTP/2.0"),
        (H2c, "http1", Protocol::Http1, "HTTP/1.1"),
    ];
    let data = pattern(EIGHT_MIB);
    let want = Received {
        len: EIGHT_MIB as u64,
        sha256: sha256_hex(&data),
    };
    for (client_protocol, cluster, backend_protocol, version) in cases {
        let case = format!("{client_protocol:?} -> {cluster}");
        let (echo, backend, proxy) = echo_behind_proxy(backend_protocol, cluster).await;
        let mut client = Client::connect(proxy.main(), client_protocol).await;
        let rsp = client
            .request(
                Request::post("/echo")
                    .body(streamed(data.clone(), 64 * 1024))
                    .unwrap(),
            )
            .await;
        assert_eq!(rsp.status, StatusCode::OK, "{case}");
        assert_eq!(rsp.header("x-echo-version"), Some(version), "{case}");
        assert_eq!(
            echo.received(),
            std::slice::from_ref(&want),
            "{case}: at the far end"
        );
        assert_eq!(rsp.body.len(), EIGHT_MIB, "{case}: back");
        assert_eq!(sha256_hex(&rsp.body), want.sha256, "{case}: back");
        backend.join().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_length_bodies_keep_their_length() {
    for (client_protocol, cluster) in [
        (ClientProtocol::Http1, "http1"),
        (ClientProtocol::H2c, "http2"),
        (ClientProtocol::Http1, "http2"),
        (ClientProtocol::H2c, "http1"),
    ] {
        let backend = Backend::auto().spawn().await;
        let proxy = Proxy::simple("auto", cluster, backend.addr()).await;
        let mut client = Client::connect(proxy.main(), client_protocol).await;
        let rsp = client
            .request(Request::put("/fixed").body(full("0123456789")).unwrap())
            .await;
        let seen = rsp.seen();
        assert_eq!(seen.body, "0123456789", "{client_protocol:?} -> {cluster}");
        if cluster == "http1" {
            assert_eq!(seen.header("content-length"), Some("10"), "{seen:?}");
            assert!(!seen.has("transfer-encoding"), "{seen:?}");
        }
        backend.join().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_both_ways_over_http1() {
    let (echo, backend, proxy) = echo_behind_proxy(Protocol::Http1, "http1").await;
    // Raw bytes, so the framing on the wire is what we say it is.
    let raw = raw_exchange(
        proxy.main(),
        b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked")),
        "a streamed response of unknown length goes out chunked: {head}"
    );
    assert_eq!(dechunk(body), "hello world", "{text}");
    assert_eq!(echo.received()[0].len, 11);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-echo-transfer-encoding: chunked"),
        "{head}"
    );

    // And through hyper: a chunked request (unknown length) of many pieces.
    let mut client = Client::http1(proxy.main()).await;
    let pieces: Vec<String> = (0..50).map(|i| format!("piece-{i};")).collect();
    let whole: String = pieces.concat();
    let rsp = client
        .request(Request::post("/echo").body(chunked(pieces)).unwrap())
        .await;
    assert_eq!(rsp.text(), whole);
    assert_eq!(rsp.header("transfer-encoding"), Some("chunked"), "{rsp:?}");
    backend.join().await;
}

/// Decodes an HTTP/1.1 chunked body (no extensions, no trailers).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_eight_mib_in_chunks() {
    const CHUNK: usize = 64 * 1024;
    // Names must be text: map the pattern onto letters.
    let letters: Vec<u8> = pattern(EIGHT_MIB).iter().map(|b| b'a' + b % 26).collect();
    let names: Vec<String> = letters
        .chunks(CHUNK)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let sent = sha256_hex(&letters);

    let greeter = Greeter::spawn("big").await;
    let proxy = Proxy::simple("auto", "auto", greeter.addr()).await;
    let mut client = greeter_client(proxy.main()).await;
    let requests = tokio_stream::iter(
        names
            .into_iter()
            .map(|name| HelloRequest { name, count: 0 }),
    );
    let mut replies = guard("Chat", client.chat(requests))
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::with_capacity(EIGHT_MIB);
    while let Some(reply) = guard("a chat reply", replies.message()).await.unwrap() {
        let name = reply
            .message
            .strip_prefix("Hello, ")
            .and_then(|m| m.strip_suffix('!'))
            .expect("a greeting");
        assert_eq!(name.len(), CHUNK);
        back.extend_from_slice(name.as_bytes());
    }
    assert_eq!(back.len(), EIGHT_MIB);
    assert_eq!(
        sha256_hex(&back),
        sent,
        "every chunk reached the server and came back in order"
    );
}
