//! The real `curl` through the proxy: what users try first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::{Backend, Config, guard};

/// A parsed `curl -sS -i` output: the status line's version and code, the
/// headers (lowercase names) and the body.
#[derive(Debug)]
struct CurlOutput {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl CurlOutput {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs `curl -sS -i ARGS URL` and parses what it printed.
async fn curl(args: &[&str], url: &str) -> CurlOutput {
    let output = guard(
        "curl",
        tokio::process::Command::new("curl")
            .args(["-sS", "-i", "--max-time", "15"])
            .args(args)
            .arg(url)
            .output(),
    )
    .await
    .expect("curl is installed");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {args:?} {url} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (head, body) = stdout.split_once("\r\n\r\n").unwrap_or((&stdout, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_owned();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    CurlOutput {
        version,
        status,
        headers,
        body: body.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_h2_prior_knowledge() {
    let backend = Backend::auto()
        .route("/hello", |_req| async {
            http::Response::builder()
                .header("x-backend", "yes")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"hello from the backend\n",
                )))
                .unwrap()
        })
        .spawn()
        .await;
    let proxy = Config::to(backend.addr())
        .route_name("hello")
        .route("match: { path: { prefix: /hello } }")
        .route("headers: { response: { set: { x-via: skiff } } }")
        .start()
        .await;
    let base = format!("http://{}", proxy.main());

    // (curl flags, status-line version)
    let cases: [(&[&str], &str); 2] = [
        (&["--http1.1"], "HTTP/1.1"),
        (&["--http2-prior-knowledge"], "HTTP/2"),
    ];
    for (flags, version) in cases {
        let out = curl(flags, &format!("{base}/hello")).await;
        assert_eq!(out.version, version, "{flags:?}: {out:?}");
        assert_eq!(out.status, 200, "{flags:?}: {out:?}");
        assert_eq!(out.body, "hello from the backend\n", "{flags:?}");
        assert_eq!(out.header("x-backend"), Some("yes"), "{flags:?}: {out:?}");
        assert_eq!(out.header("x-via"), Some("skiff"), "{flags:?}: {out:?}");

        let missing = curl(flags, &format!("{base}/nowhere")).await;
        assert_eq!(missing.status, 404, "{flags:?}: {missing:?}");
        assert_eq!(
            missing.header("skiff-error"),
            Some("no-route"),
            "{flags:?}: {missing:?}"
        );

        // A body, and a header the backend reports having seen.
        let posted = curl(
            &[flags, &["-H", "x-from-curl: 1", "--data-binary", "abc"]].concat(),
            &format!("{base}/hello/echo"),
        )
        .await;
        assert_eq!(posted.status, 200, "{posted:?}");
        let seen = integration_tests::Seen::from_json(posted.body.as_bytes());
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.body, "abc");
        assert_eq!(seen.header("x-from-curl"), Some("1"), "{seen:?}");
        assert!(seen.has("x-request-id"), "{seen:?}");
    }
    backend.join().await;
}
