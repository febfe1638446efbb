//! Connections that stop being HTTP: `Upgrade` (WebSocket-style) over
//! HTTP/1.1, and `tcp` listeners that relay bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use integration_tests::body::{BoxBody, empty, pattern};
use integration_tests::client::read_head;
use integration_tests::{Backend, Proxy, TcpServer, guard, handlers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers an upgrade request with 101 and then echoes raw bytes.
async fn upgrade_echo(mut req: Request<Incoming>) -> Response<BoxBody> {
    let wants = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(protocol) = wants else {
        return handlers::text(400, "no upgrade header reached the backend");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = upgrade.await.expect("the connection upgrades");
        let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut read, &mut write).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", protocol)
        .body(empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_switches_to_raw_bytes_both_ways() {
    for cluster in ["auto", "http1"] {
        let backend = Backend::http1().route("/ws", upgrade_echo).spawn().await;
        let proxy = Proxy::simple("auto", cluster, backend.addr()).await;

        let mut stream = TcpStream::connect(proxy.main()).await.unwrap();
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await
            .unwrap();
        let (head, early) = read_head(&mut stream).await;
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "cluster {cluster}: {head}"
        );
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("upgrade: websocket"), "{head}");
        assert!(
            early.is_empty(),
            "no bytes before the client spoke: {early:?}"
        );

        // Small messages, interactively, then a large one.
        for msg in [&b"ping"[..], b"second message", &pattern(256 * 1024)] {
            stream.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            guard("the echo", stream.read_exact(&mut back))
                .await
                .unwrap();
            assert_eq!(back, msg, "cluster {cluster}");
        }
        // Half-closing ends the tunnel: the backend's copy ends and closes.
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        guard("tunnel close", stream.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(rest.is_empty());
        backend.join().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_relays_bytes_to_its_cluster() {
    let upstream = TcpServer::echo().await;
    let config = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: raw
    address: 127.0.0.1:0
    protocol: tcp
    cluster: echo
clusters:
  echo: {{ endpoints: [{}] }}
"#,
        upstream.addr()
    );
    let proxy = Proxy::start(&config).await;

    // Two clients at once, each its own upstream connection.
    let mut a = TcpStream::connect(proxy.addr("raw")).await.unwrap();
    let mut b = TcpStream::connect(proxy.addr("raw")).await.unwrap();
    // Not HTTP at all: a tcp listener must not sniff or parse.
    for (stream, msg) in [
        (&mut a, &b"\x00\x01binary\xff"[..]),
        (&mut b, b"PRI * HTTP/2.0\r\n"),
    ] {
        stream.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        guard("relayed echo", stream.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(back, msg);
    }
    let big = pattern(1024 * 1024);
    let (mut read, mut write) = a.split();
    let send = async {
        write.write_all(&big).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let receive = read.read_to_end(&mut back);
    let ((), received) = guard("a 1 MiB relay", async { tokio::join!(send, receive) }).await;
    received.unwrap();
    assert_eq!(back, big, "the half-close travels and ends the echo");
    assert_eq!(upstream.connections(), 2);
    drop(b);
    upstream.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_backend_refuses_stays_http() {
    // The backend answers an upgrade request with a plain 200: the
    // connection stays HTTP and carries a second request.
    let backend = Backend::http1().spawn().await;
    let proxy = Proxy::simple("auto", "http1", backend.addr()).await;
    let mut client = integration_tests::Client::http1(proxy.main()).await;
    let rsp = client
        .get_with(
            "/no-ws",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        )
        .await;
    assert_eq!(rsp.status, StatusCode::OK, "{rsp:?}");
    let again = client.get("/after").await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    backend.join().await;
}

/// An upgrade request with a body (allowed for `h2c`, say) cannot switch on
/// Skiff's HTTP/1 server, which lends the connection to the body: its
/// `Upgrade` is a hop-by-hop header like any other and does not reach the
/// backend, so no 101 can come back on a connection that stays HTTP. The
/// answer is the backend's ordinary one (here its 400), and the connection
/// goes on serving HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_with_a_body_is_not_switched() {
    let backend = Backend::http1().route("/ws", upgrade_echo).spawn().await;
    let proxy = Proxy::simple("auto", "http1", backend.addr()).await;
    let mut stream = TcpStream::connect(proxy.main()).await.unwrap();
    stream
        .write_all(
            b"POST /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Content-Length: 5\r\n\r\nhello",
        )
        .await
        .unwrap();
    let (head, _) = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("upgrade"), "{head}");
    backend.join().await;
}
