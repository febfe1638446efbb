//! The filter chain against sick upstreams: retries, ejection, breakers,
//! balancing, rate limits, faults, deadlines and health checks, each with a
//! real backend that misbehaves on cue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use integration_tests::body::{self, empty, full};
use integration_tests::client::{greeter_client, hello};
use integration_tests::{
    Backend, Client, Config, Gate, Greeter, Listening, Proxy, guard, handlers,
};
use tonic::Code;

/// A backend whose first `fail` requests get `status`, then 200.
async fn failing_first(fail: usize, status: u16) -> (Listening, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let backend = Backend::auto()
        .fallback(move |_req| {
            let n = count.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < fail {
                    handlers::text(status, "failing on purpose")
                } else {
                    handlers::text(200, "ok")
                }
            }
        })
        .spawn()
        .await;
    (backend, seen)
}

/// The value of the first sample of `name` whose labels contain all of `with`.
fn sample(metrics: &str, name: &str, with: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && with.iter().all(|w| l.contains(w)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn clusters(proxy: &Proxy) -> serde_json::Value {
    Client::http1(proxy.admin())
        .await
        .get("/clusters")
        .await
        .json()
}

/// Polls `/clusters` until `check` holds for endpoint `address` (health checks
/// and ejections happen on their own clock; this waits on the observable state).
async fn until_endpoint(
    proxy: &Proxy,
    address: SocketAddr,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    guard("endpoint state in /clusters", async {
        loop {
            let c = clusters(proxy).await;
            let ep = c["clusters"][0]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["address"] == address.to_string())
                .cloned()
                .unwrap();
            if check(&ep) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_make_a_failing_backend_whole() {
    let (backend, seen) = failing_first(2, 503).await;
    let proxy = Config::to(backend.addr())
        .route("retry: { attempts: 2, on: [5xx], backoff: { base: 1ms, max: 2ms } }")
        .start()
        .await;
    let rsp = Client::http1(proxy.main()).await.get("/").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "two failures, then the success"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        sample(
            &m,
            "skiff_retries_total",
            &["route=\"main/0\"", "cluster=\"app\""]
        ),
        Some(2.0),
        "{m}"
    );

    // Out of attempts: the upstream's own last answer comes back.
    let (backend, seen) = failing_first(usize::MAX, 503).await;
    let proxy = Config::to(backend.addr())
        .route("retry: { attempts: 1, on: [gateway-error], backoff: { base: 1ms, max: 2ms } }")
        .start()
        .await;
    let rsp = Client::http1(proxy.main()).await.get("/").await;
    assert_eq!(rsp.status, 503);
    assert_eq!(
        rsp.header("skiff-error"),
        None,
        "the backend's answer, not Skiff's"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_with_its_body_intact() {
    let hashes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = hashes.clone();
    let backend = Backend::auto()
        .fallback(move |req: Request<Incoming>| {
            let log = log.clone();
            async move {
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                let hash = body::sha256_hex(&bytes);
                let first = {
                    let mut log = log.lock().unwrap();
                    log.push(hash.clone());
                    log.len() == 1
                };
                let status = if first { 503 } else { 200 };
                Response::builder()
                    .status(status)
                    .header("x-sha256", hash)
                    .body(empty())
                    .unwrap()
            }
        })
        .spawn()
        .await;
    let proxy = Config::to(backend.addr())
        .route("retry: { attempts: 2, on: [5xx], backoff: { base: 1ms, max: 2ms } }")
        .start()
        .await;
    let payload: Bytes = body::pattern(48 * 1024);
    let want = body::sha256_hex(&payload);
    for streamed in [false, true] {
        hashes.lock().unwrap().clear();
        let body = if streamed {
            body::streamed(payload.clone(), 4096)
        } else {
            full(payload.clone())
        };
        let req = Request::post("/upload").body(body).unwrap();
        let rsp = Client::http1(proxy.main()).await.request(req).await;
        assert_eq!(rsp.status, 200, "streamed={streamed}");
        assert_eq!(rsp.header("x-sha256"), Some(want.as_str()));
        assert_eq!(*hashes.lock().unwrap(), vec![want.clone(), want.clone()]);
    }
}

/// A gRPC endpoint that answers every call with `grpc-status: code`, trailers-only.
async fn grpc_failing(code: u32) -> Listening {
    Backend::http2()
        .fallback(move |_req| async move {
            Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code.to_string())
                .header("grpc-message", "failing on purpose")
                .body(empty())
                .unwrap()
        })
        .spawn()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_and_not_found_is_not() {
    for (code, retried) in [(14u32, true), (5, false)] {
        let bad = grpc_failing(code).await;
        let greeter = Greeter::spawn("good").await;
        let proxy = Config::over(&[bad.addr(), greeter.addr()])
            .route("retry: { attempts: 1, on: [unavailable], backoff: { base: 1ms, max: 2ms } }")
            .cluster("protocol: http2")
            .cluster("lb: round_robin")
            .start()
            .await;
        let mut client = greeter_client(proxy.main()).await;
        let mut codes = Vec::new();
        for _ in 0..4 {
            let call = client.say_hello(hello("x", 0));
            codes.push(match guard("SayHello", call).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            });
        }
        if retried {
            // Every call that met the bad endpoint was retried on the good one
            // (a retry takes a round-robin turn, so the bad one sees each call).
            assert_eq!(
                codes,
                vec![Code::Ok; 4],
                "UNAVAILABLE retried on the other endpoint"
            );
            assert!(
                bad.requests() >= 2,
                "the bad endpoint was tried: {}",
                bad.requests()
            );
        } else {
            // Round robin sends every other call to the bad endpoint, once.
            assert_eq!(bad.requests(), 2, "code {code}");
            let not_found = codes.iter().filter(|c| **c == Code::NotFound).count();
            assert_eq!(
                not_found, 2,
                "NOT_FOUND passed through unretried: {codes:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_endpoint_of_three_is_ejected() {
    let good_a = Backend::named("a").spawn().await;
    let good_b = Backend::named("b").spawn().await;
    let (bad, bad_seen) = failing_first(usize::MAX, 500).await;
    let proxy = Config::over(&[good_a.addr(), bad.addr(), good_b.addr()])
        .cluster("lb: round_robin")
        .cluster("outlier_detection: { consecutive_failures: 3, base_ejection_time: 30s, max_ejection_percent: 50 }")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    let mut ok = 0;
    for _ in 0..30 {
        if client.get("/").await.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(
        bad_seen.load(Ordering::SeqCst),
        3,
        "ejected at its third failure"
    );
    assert_eq!(ok, 27);
    let c = clusters(&proxy).await;
    let eps = c["clusters"][0]["endpoints"].as_array().unwrap().clone();
    let bad_ep = eps
        .iter()
        .find(|e| e["address"] == bad.addr().to_string())
        .unwrap();
    assert_eq!(bad_ep["ejected"], true, "{c}");
    assert_eq!(eps.iter().filter(|e| e["ejected"] == true).count(), 1);
    let m = proxy.metrics().await;
    assert_eq!(
        sample(&m, "skiff_outlier_ejections_total", &["cluster=\"app\""]),
        Some(1.0)
    );
}

/// The address's entry in `/clusters`.
async fn endpoint_state(proxy: &Proxy, address: SocketAddr) -> serde_json::Value {
    let c = clusters(proxy).await;
    c["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address.to_string())
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_loses_its_traffic_and_is_ejected() {
    let hung = Backend::auto().fallback(handlers::never).spawn().await;
    let good = Backend::named("good").spawn().await;
    let proxy = Config::over(&[hung.addr(), good.addr()])
        .route("timeout: 200ms")
        .cluster("outlier_detection: { consecutive_failures: 1, base_ejection_time: 30s, max_ejection_percent: 50 }")
        .start()
        .await;
    let mut timeouts = 0;
    for _ in 0..12 {
        // A fresh connection each time: a timed-out HTTP/1 exchange may
        // leave the downstream connection closed.
        let rsp = Client::http1(proxy.main()).await.get("/").await;
        match rsp.status.as_u16() {
            200 => assert_eq!(rsp.header("x-backend"), Some("good")),
            504 => timeouts += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // A new endpoint is tried early, times out once, and that timeout counts
    // against it: ejected, and every other request goes to the good one.
    assert_eq!(timeouts, 1);
    let state = endpoint_state(&proxy, hung.addr()).await;
    assert_eq!(state["ejected"], true, "{state}");
    assert_eq!(hung.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_retries_on_another_endpoint() {
    let hung = Backend::auto().fallback(handlers::never).spawn().await;
    let good = Backend::named("good").spawn().await;
    let proxy = Config::over(&[hung.addr(), good.addr()])
        .route("retry: { attempts: 1, on: [5xx], per_try_timeout: 100ms, backoff: { base: 1ms, max: 2ms } }")
        .cluster("lb: round_robin")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    for _ in 0..4 {
        let rsp = client.get("/").await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert_eq!(rsp.header("x-backend"), Some("good"));
    }
    assert!(
        hung.requests() >= 1,
        "round robin sent first tries to the hung endpoint"
    );
}

/// Sends one request that waits at `gate`; returns once it is there, with
/// the handle that yields its status after the gate opens.
async fn hold_one(proxy: &Proxy, gate: &Gate) -> tokio::task::JoinHandle<http::StatusCode> {
    let mut first = Client::http1(proxy.main()).await;
    let held = tokio::spawn(async move { first.get("/slow").await.status });
    gate.arrived().await;
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_breaker_fails_concurrent_callers_fast() {
    let gate = Gate::new();
    let backend = Backend::auto().fallback(gate.handler()).spawn().await;
    let proxy = Config::to(backend.addr())
        .cluster("circuit_breaker: { max_requests: 1 }")
        .start()
        .await;
    let held = hold_one(&proxy, &gate).await;

    let rsp = Client::http1(proxy.main()).await.get("/second").await;
    assert_eq!(rsp.status, 503);
    assert_eq!(rsp.header("skiff-error"), Some("circuit-open"));

    gate.open();
    assert_eq!(guard("the held request", held).await.unwrap(), 200);
    let m = proxy.metrics().await;
    assert_eq!(
        sample(
            &m,
            "skiff_circuit_breaker_rejections_total",
            &["cluster=\"app\""]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_refusal_is_not_held_against_the_endpoint() {
    let gate = Gate::new();
    let backend = Backend::http1().fallback(gate.handler()).spawn().await;
    let proxy = Config::to(backend.addr())
        .cluster_protocol("http1")
        .cluster("circuit_breaker: { max_connections: 1 }")
        .cluster("outlier_detection: { consecutive_failures: 1, max_ejection_percent: 100 }")
        .start()
        .await;
    let held = hold_one(&proxy, &gate).await;

    // The only upstream connection is busy: a second one is over the limit.
    let rsp = Client::http1(proxy.main()).await.get("/second").await;
    assert_eq!(rsp.header("skiff-error"), Some("circuit-open"));
    let state = endpoint_state(&proxy, backend.addr()).await;
    assert_eq!(
        state["ejected"], false,
        "a local refusal ejected the endpoint: {state}"
    );

    gate.open();
    assert_eq!(guard("the held request", held).await.unwrap(), 200);
    let rsp = Client::http1(proxy.main()).await.get("/third").await;
    assert_eq!(rsp.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_sends_most_traffic_to_the_faster_endpoint() {
    let fast = Backend::named("fast").spawn().await;
    let slow = Backend::auto()
        .fallback(|_req| async {
            // Simulated service time, not synchronisation.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Response::builder()
                .header("x-backend", "slow")
                .body(full("slow"))
                .unwrap()
        })
        .spawn()
        .await;
    let proxy = Config::over(&[fast.addr(), slow.addr()])
        .cluster("lb: ewma")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    let mut to_fast = 0;
    for _ in 0..100 {
        if client.get("/").await.header("x-backend") == Some("fast") {
            to_fast += 1;
        }
    }
    assert!(to_fast >= 80, "fast endpoint got {to_fast} of 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_a_key_on_one_endpoint() {
    let backends = [
        Backend::named("a").spawn().await,
        Backend::named("b").spawn().await,
        Backend::named("c").spawn().await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(Listening::addr).collect();
    let proxy = Config::over(&addrs)
        .cluster("lb: ring_hash")
        .cluster("hash_on: { header: x-user }")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    let mut used = std::collections::HashSet::new();
    for user in 0..30 {
        let key = format!("user-{user}");
        let first = client.get_with("/", &[("x-user", &key)]).await;
        let backend = first.header("x-backend").unwrap().to_owned();
        for _ in 0..4 {
            let again = client.get_with("/", &[("x-user", &key)]).await;
            assert_eq!(
                again.header("x-backend"),
                Some(backend.as_str()),
                "{key} moved"
            );
        }
        used.insert(backend);
    }
    assert!(used.len() >= 2, "30 keys all landed on {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_fault_answers() {
    let backend = Backend::named("a").spawn().await;
    let proxy = Config::to(backend.addr())
        .route("rate_limit: { requests_per_second: 1, burst: 2 }")
        .start()
        .await;
    let mut client = Client::http1(proxy.main()).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let rsp = client.get("/").await;
        got.push((rsp.status, rsp.header("skiff-error").map(str::to_owned)));
    }
    assert_eq!(got[0].0, 200);
    assert_eq!(got[1].0, 200);
    assert_eq!(
        got[2],
        (
            http::StatusCode::TOO_MANY_REQUESTS,
            Some("rate-limited".to_owned())
        )
    );
    let m = proxy.metrics().await;
    assert_eq!(
        sample(&m, "skiff_rate_limited_total", &["route=\"main/0\""]),
        Some(1.0)
    );

    let proxy = Config::to(backend.addr())
        .route("fault: { abort: { status: 418, percent: 100 } }")
        .start()
        .await;
    let before = backend.requests();
    let rsp = Client::http1(proxy.main()).await.get("/").await;
    assert_eq!(rsp.status, 418);
    assert_eq!(rsp.header("skiff-error"), Some("fault-injected"));
    assert_eq!(
        backend.requests(),
        before,
        "an aborted request never leaves the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_from_the_client_is_honoured() {
    let backend = Backend::http2().fallback(handlers::never).spawn().await;
    // The route allows 30s; the client's 100ms deadline is smaller and wins.
    let proxy = Config::to(backend.addr())
        .route("timeout: 30s")
        .cluster("protocol: http2")
        .start()
        .await;
    let req = Request::post("/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "100m")
        .body(full(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let rsp = guard("a gRPC call with a deadline", async {
        Client::h2c(proxy.main()).await.request(req).await
    })
    .await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.header("grpc-status"), Some("4"), "DEADLINE_EXCEEDED");
    assert_eq!(rsp.header("skiff-error"), Some("timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_failing_endpoint_out_and_back() {
    let healthy = Backend::named("healthy").spawn().await;
    let sick_flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = sick_flag.clone();
    let sick = Backend::named("sick")
        .route("/healthz", move |_req| {
            let sick = flag.load(Ordering::SeqCst);
            async move { handlers::text(if sick { 503 } else { 200 }, "health") }
        })
        .spawn()
        .await;
    let proxy = Config::over(&[healthy.addr(), sick.addr()])
        .cluster("lb: round_robin")
        .cluster("health_check: { path: /healthz, interval: 20ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }")
        .start()
        .await;
    until_endpoint(&proxy, sick.addr(), |e| e["healthy"] == false).await;
    let mut client = Client::http1(proxy.main()).await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.header("x-backend"), Some("healthy"));
    }
    sick_flag.store(false, Ordering::SeqCst);
    until_endpoint(&proxy, sick.addr(), |e| e["healthy"] == true).await;
    let mut seen_sick = false;
    for _ in 0..4 {
        seen_sick |= client.get("/").await.header("x-backend") == Some("sick");
    }
    assert!(seen_sick, "a recovered endpoint gets traffic again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_endpoints_when_every_one_fails_its_checks() {
    let backend = Backend::auto()
        .route("/healthz", |_req| async { handlers::text(503, "sick") })
        .spawn()
        .await;
    let proxy = Config::to(backend.addr())
        .cluster("health_check: { path: /healthz, interval: 20ms, unhealthy_threshold: 1 }")
        .start()
        .await;
    until_endpoint(&proxy, backend.addr(), |e| e["healthy"] == false).await;
    let rsp = Client::http1(proxy.main()).await.get("/").await;
    assert_eq!(rsp.status, 503);
    assert_eq!(rsp.header("skiff-error"), Some("no-healthy-endpoints"));
}
