//! Plain HTTP proxying: listener and cluster protocols, request ids,
//! hop-by-hop headers, and how upstream connections are used.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use http::{Request, StatusCode, Version};
use integration_tests::backend::Protocol;
use integration_tests::body::{empty, full};
use integration_tests::client::ClientProtocol;
use integration_tests::{Backend, Client, Config, Proxy, guard, handlers};

/// Each line: listener protocol, client protocol, cluster protocol, backend
/// protocol, and the HTTP version the backend must see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_and_cluster_protocols() {
    use ClientProtocol::{H2c, Http1};
    let cases = [
        ("auto", Http1, "auto", Protocol::Auto, Version::HTTP_11),
        ("auto", H2c, "auto", Protocol::Auto, Version::HTTP_2),
        ("http1", Http1, "auto", Protocol::Auto, Version::HTTP_11),
        ("http2", H2c, "auto", Protocol::Auto, Version::HTTP_2),
        ("auto", Http1, "http2", Protocol::Http2, Version::HTTP_2),
        ("auto", H2c, "http1", Protocol::Http1, Version::HTTP_11),
        ("http1", Http1, "http1", Protocol::Http1, Version::HTTP_11),
        ("http2", H2c, "http2", Protocol::Http2, Version::HTTP_2),
    ];
    for (listener, client_protocol, cluster, backend_protocol, upstream_version) in cases {
        let case = format!("listener {listener}, client {client_protocol:?}, cluster {cluster}");
        let backend = Backend::new(backend_protocol).spawn().await;
        let proxy = Proxy::simple(listener, cluster, backend.addr()).await;
        let mut client = Client::connect(proxy.main(), client_protocol).await;

        let rsp = client
            .request(
                Request::post("/some/path?q=1")
                    .header("x-custom", "kept")
                    .body(full("payload"))
                    .unwrap(),
            )
            .await;
        assert_eq!(rsp.status, StatusCode::OK, "{case}: {rsp:?}");
        let expected_downstream = match client_protocol {
            Http1 => Version::HTTP_11,
            H2c => Version::HTTP_2,
        };
        assert_eq!(rsp.version, expected_downstream, "{case}");
        let seen = rsp.seen();
        assert_eq!(seen.version, format!("{upstream_version:?}"), "{case}");
        assert_eq!(seen.method, "POST", "{case}");
        assert_eq!(seen.path, "/some/path", "{case}");
        assert!(seen.uri.ends_with("/some/path?q=1"), "{case}: {}", seen.uri);
        assert_eq!(seen.header("x-custom"), Some("kept"), "{case}");
        assert_eq!(seen.body, "payload", "{case}");
        backend.join().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_is_added_when_absent_and_kept_when_present() {
    let backend = Backend::auto().spawn().await;
    let proxy = Proxy::simple("auto", "auto", backend.addr()).await;
    for protocol in [ClientProtocol::Http1, ClientProtocol::H2c] {
        let mut client = Client::connect(proxy.main(), protocol).await;

        let first = client.get("/").await.seen();
        let second = client.get("/").await.seen();
        let (a, b) = (first.header("x-request-id"), second.header("x-request-id"));
        assert!(a.is_some_and(|v| !v.is_empty()), "{protocol:?}: {first:?}");
        assert_ne!(a, b, "{protocol:?}: each request gets its own id");

        let kept = client
            .get_with("/", &[("x-request-id", "given-by-client-42")])
            .await
            .seen();
        assert_eq!(
            kept.headers
                .iter()
                .find(|(k, _)| k == "x-request-id")
                .map(|(_, v)| v.clone()),
            Some(vec!["given-by-client-42".to_owned()]),
            "{protocol:?}"
        );
    }
    backend.join().await;
}

/// Each line: extra request headers, the headers the upstream must not
/// see, and headers it must still see (with their value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 8] = [
        (&[("connection", "keep-alive")], &["connection"], &[]),
        (&[("keep-alive", "timeout=5")], &["keep-alive"], &[]),
        (
            &[("proxy-connection", "keep-alive")],
            &["proxy-connection"],
            &[],
        ),
        (&[("te", "gzip")], &["te"], &[]),
        (&[("te", "trailers")], &[], &[("te", "trailers")]),
        (&[("upgrade", "foo/1")], &["upgrade"], &[]),
        (
            &[
                ("connection", "x-hop-one, x-hop-two"),
                ("x-hop-one", "1"),
                ("x-hop-two", "2"),
                ("x-end-to-end", "3"),
            ],
            &["connection", "x-hop-one", "x-hop-two"],
            &[("x-end-to-end", "3")],
        ),
        (&[("x-plain", "v")], &[], &[("x-plain", "v")]),
    ];
    let backend = Backend::http1().spawn().await;
    let proxy = Proxy::simple("auto", "http1", backend.addr()).await;
    for (sent, absent, present) in cases {
        let mut client = Client::http1(proxy.main()).await;
        let mut req = Request::get("/hop");
        for (k, v) in sent {
            req = req.header(*k, *v);
        }
        let rsp = client.request(req.body(empty()).unwrap()).await;
        let seen = rsp.seen();
        for name in absent {
            assert!(
                !seen.has(name),
                "sent {sent:?}: upstream saw {name}: {seen:?}"
            );
        }
        for (name, value) in present {
            assert_eq!(seen.header(name), Some(*value), "sent {sent:?}: {seen:?}");
        }
    }

    // Transfer-Encoding is re-framed, not forwarded: the body arrives whole,
    // and if the upstream sees the header it is the proxy's own `chunked`.
    let mut client = Client::http1(proxy.main()).await;
    let rsp = client
        .request(
            Request::post("/te")
                .header("transfer-encoding", "chunked")
                .body(full("abcdef"))
                .unwrap(),
        )
        .await;
    let seen = rsp.seen();
    assert_eq!(seen.body, "abcdef");
    assert!(
        seen.header("transfer-encoding")
            .is_none_or(|v| v == "chunked"),
        "{seen:?}"
    );
    backend.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_http1_connections_are_kept_alive_and_reused() {
    let backend = Backend::http1().spawn().await;
    let proxy = Proxy::simple("auto", "http1", backend.addr()).await;
    for i in 0..20 {
        // A new downstream connection each time: the upstream pool is the
        // proxy's, not the downstream connection's.
        let mut client = Client::http1(proxy.main()).await;
        let rsp = client.get(&format!("/n/{i}")).await;
        assert_eq!(rsp.status, StatusCode::OK);
    }
    assert_eq!(backend.requests(), 20);
    assert_eq!(
        backend.connections(),
        1,
        "sequential requests share one upstream connection"
    );
    backend.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_http2_multiplexes_concurrent_requests() {
    const N: usize = 16;
    // Every handler waits until all N are in flight at once: only a
    // multiplexed (or N-connection) upstream gets past the barrier.
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let backend = Backend::http2()
        .route("/together", move |_req| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                handlers::text(200, "together")
            }
        })
        .spawn()
        .await;
    let proxy = Proxy::simple("auto", "http2", backend.addr()).await;

    // Warm up so the upstream connection exists before the burst.
    let mut warm = Client::http1(proxy.main()).await;
    assert_eq!(warm.get("/warm").await.status, StatusCode::OK);

    let mut tasks = Vec::new();
    for _ in 0..N {
        let addr = proxy.main();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::http1(addr).await;
            client.get("/together").await
        }));
    }
    for task in tasks {
        let rsp = guard("a multiplexed request", task).await.unwrap();
        assert_eq!(rsp.status, StatusCode::OK, "{rsp:?}");
        assert_eq!(rsp.text(), "together");
    }
    assert_eq!(
        backend.connections(),
        1,
        "one HTTP/2 connection carries every request"
    );
    backend.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_static_endpoints() {
    let backends = [
        Backend::http1().spawn().await,
        Backend::http1().spawn().await,
        Backend::http1().spawn().await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    let proxy = Config::over(&addrs)
        .cluster("lb: round_robin")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    for _ in 0..30 {
        assert_eq!(client.get("/rr").await.status, StatusCode::OK);
    }
    let counts: Vec<usize> = backends.iter().map(|b| b.requests()).collect();
    assert_eq!(counts, [10, 10, 10], "round robin spreads requests evenly");
    for backend in backends {
        backend.join().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_listener_sniffs_a_request_that_arrives_byte_by_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::auto().spawn().await;
    let proxy = Proxy::simple("auto", "auto", backend.addr()).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.main()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    // Fewer bytes than the HTTP/2 preface at first: the sniffer must wait
    // for more rather than guess.
    for byte in b"GET /dribble HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n" {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let mut out = Vec::new();
    guard("the response", stream.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"path\":\"/dribble\""), "{text}");
    backend.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_not_forwarded_downstream() {
    let backend = Backend::http1()
        .route("/resp-hop", |_req| async {
            http::Response::builder()
                .header("connection", "x-resp-hop")
                .header("x-resp-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("x-end-to-end", "kept")
                .body(full("ok"))
                .unwrap()
        })
        .spawn()
        .await;
    let proxy = Proxy::simple("auto", "http1", backend.addr()).await;
    for protocol in [ClientProtocol::Http1, ClientProtocol::H2c] {
        let mut client = Client::connect(proxy.main(), protocol).await;
        let rsp = client.get("/resp-hop").await;
        assert_eq!(rsp.status, StatusCode::OK, "{protocol:?}: {rsp:?}");
        assert_eq!(rsp.text(), "ok");
        assert_eq!(
            rsp.header("x-end-to-end"),
            Some("kept"),
            "{protocol:?}: {rsp:?}"
        );
        for name in ["x-resp-hop", "keep-alive"] {
            assert!(
                rsp.header(name).is_none(),
                "{protocol:?}: {name} reached the client: {rsp:?}"
            );
        }
        assert!(
            rsp.header("connection")
                .is_none_or(|v| !v.contains("x-resp-hop")),
            "{protocol:?}: {rsp:?}"
        );
    }
    backend.join().await;
}
