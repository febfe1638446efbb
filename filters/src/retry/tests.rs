//! Retry tests against a fake upstream (`tower_test::mock`) in paused time.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower_test::mock;

use super::*;
use crate::circuit_breaker::Kind;

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Mock = mock::Mock<Request<Body>, Response<Body>>;

fn policy(attempts: u32, on: &[&str]) -> RetryPolicy {
    RetryPolicy {
        attempts,
        on: RetryOn::parse(on).unwrap(),
        per_try_timeout: None,
        // Half of each cap: exact, checkable sleeps.
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
            .with_jitter(Arc::new(|| 0.5)),
        body_limit: DEFAULT_BODY_LIMIT,
    }
}

fn ctx() -> RetryContext {
    RetryContext {
        budget: Arc::new(RetryBudget::default()),
        breaker: None,
        retries: Counter::default(),
    }
}

fn service(p: RetryPolicy, ctx: &RetryContext) -> (Retry<Mock>, Handle) {
    let (svc, handle) = mock::pair();
    (RetryLayer::new(Some(p), ctx.clone()).layer(svc), handle)
}

fn status(code: u16) -> Response<Body> {
    let mut rsp = Response::new(Body::Empty);
    *rsp.status_mut() = StatusCode::from_u16(code).unwrap();
    rsp
}

/// What the upstream does for each attempt: note the endpoint it picked.
fn served_by(req: &Request<Body>, endpoint: usize) {
    req.extensions()
        .get::<Picked>()
        .expect("every attempt has a slot")
        .set(endpoint);
}

fn grpc_request() -> Request<Body> {
    Request::builder()
        .header("content-type", "application/grpc")
        .body(Body::full("msg"))
        .unwrap()
}

fn trailers_only(code: u32) -> Response<Body> {
    let mut rsp = Response::new(Body::Empty);
    rsp.headers_mut().insert("grpc-status", code.into());
    rsp
}

fn with_trailers(data: &'static [u8], code: u32) -> Response<Body> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", code.into());
    Response::new(Body::Peeked {
        frames: VecDeque::from([Frame::data(Bytes::from_static(data)), Frame::trailers(t)]),
        rest: Box::new(Body::Empty),
    })
}

fn failure(reason: Reason, endpoint: usize) -> ProxyError {
    ProxyError::new(reason, "test failure").at_endpoint(endpoint)
}

async fn body_of(req: Request<Body>) -> Bytes {
    req.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(start_paused = true)]
async fn retries_a_5xx_and_avoids_the_endpoint_that_failed() {
    let ctx = ctx();
    let (svc, mut handle) = service(policy(2, &["5xx"]), &ctx);
    let call = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));

    let (req, send) = handle.next_request().await.unwrap();
    assert!(req.extensions().get::<Avoid>().is_none());
    served_by(&req, 2);
    send.send_response(status(503));

    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<Avoid>(), Some(&Avoid(2)));
    send.send_response(status(200));

    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    assert_eq!(ctx.retries.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn avoid_follows_an_error_endpoint_too() {
    let (svc, mut handle) = service(policy(1, &["connect-failure"]), &ctx());
    let call = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(failure(Reason::ConnectFailed, 7));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<Avoid>(), Some(&Avoid(7)));
    send.send_response(status(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}

/// One line per case: the `on:` list, the first answer, whether it is retried.
#[tokio::test(start_paused = true)]
async fn retried_only_on_listed_conditions() {
    enum First {
        Status(u16),
        Error(Reason),
    }
    use First::*;
    let cases: Vec<(&[&str], First, bool)> = vec![
        (&["5xx"], Status(500), true),
        (&["5xx"], Status(404), false),
        (&["5xx"], Error(Reason::UpstreamReset), true),
        (&["gateway-error"], Status(502), true),
        (&["gateway-error"], Status(500), false),
        (&["retriable-4xx"], Status(409), true),
        (&["retriable-4xx"], Status(400), false),
        (&["503"], Status(503), true),
        (&["503"], Status(502), false),
        (&["connect-failure"], Error(Reason::ConnectFailed), true),
        (&["connect-failure"], Error(Reason::UpstreamReset), false),
        (&["reset"], Error(Reason::UpstreamReset), true),
        (&["reset"], Error(Reason::ConnectFailed), false),
        (&["5xx", "reset"], Error(Reason::CircuitOpen), false),
        (&["5xx", "reset"], Error(Reason::RateLimited), false),
        (&["5xx"], Status(200), false),
    ];
    for (on, first, retried) in cases {
        let ctx = ctx();
        let (svc, mut handle) = service(policy(1, on), &ctx);
        let call = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));
        let (_, send) = handle.next_request().await.unwrap();
        match first {
            Status(c) => send.send_response(status(c)),
            Error(r) => send.send_error(failure(r, 0)),
        }
        if retried {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(status(201));
            assert_eq!(call.await.unwrap().unwrap().status(), 201, "{on:?}");
        } else {
            // The first answer comes back as it is, and nothing else is sent.
            let _ = call.await.unwrap();
            assert_eq!(ctx.retries.get(), 0, "{on:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn grpc_unavailable_retried_not_found_not() {
    // Trailers-only UNAVAILABLE: retried.
    let (svc, mut handle) = service(policy(1, &["unavailable"]), &ctx());
    let call = tokio::spawn(svc.oneshot(grpc_request()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(trailers_only(14));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(trailers_only(0));
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "0");

    // NOT_FOUND: returned as it is.
    let ctx = ctx();
    let (svc, mut handle) = service(policy(1, &["unavailable"]), &ctx);
    let call = tokio::spawn(svc.oneshot(grpc_request()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(trailers_only(5));
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "5");
    assert_eq!(ctx.retries.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn grpc_status_read_from_trailers() {
    let ctx = ctx();
    let (svc, mut handle) = service(policy(1, &["unavailable"]), &ctx);
    let call = tokio::spawn(svc.oneshot(grpc_request()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(with_trailers(b"partial", 14));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(with_trailers(b"reply", 5));
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(ctx.retries.get(), 1);
    // The read-ahead answer is given back whole: data, then trailers.
    let collected = rsp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "5");
    assert_eq!(collected.to_bytes(), "reply");
}

#[tokio::test(start_paused = true)]
async fn backoff_sleeps_are_exact() {
    let (svc, mut handle) = service(policy(3, &["5xx"]), &ctx());
    let start = Instant::now();
    let call = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (_, send) = handle.next_request().await.unwrap();
        seen.push(start.elapsed().as_millis());
        send.send_response(status(503));
    }
    let (_, send) = handle.next_request().await.unwrap();
    seen.push(start.elapsed().as_millis());
    send.send_response(status(503));
    // Caps 100, 200, 400ms; jitter pinned at half: 50, 100, 200ms apart.
    assert_eq!(seen, [0, 50, 150, 350]);
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 503, "the last attempt's answer");
}

#[tokio::test(start_paused = true)]
async fn real_jitter_stays_within_the_cap() {
    let mut p = policy(1, &["5xx"]);
    p.backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let (svc, mut handle) = service(p, &ctx());
    let start = Instant::now();
    let call = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(status(503));
    let (_, send) = handle.next_request().await.unwrap();
    // Jitter is below the 100ms cap, but tokio's timer rounds a sleep up to
    // the next whole millisecond, so 99.6ms is observed as 100ms.
    assert!(
        start.elapsed() <= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    send.send_response(status(200));
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn body_replayed_intact() {
    let (svc, mut handle) = service(policy(1, &["5xx"]), &ctx());
    let req = Request::post("/orders")
        .body(stream_of(&[b"{\"item\":", b" 42}"]))
        .unwrap();
    let call = tokio::spawn(svc.oneshot(req));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.method(), "POST");
    assert_eq!(body_of(req).await, "{\"item\": 42}");
    send.send_response(status(503));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.uri(), "/orders");
    assert_eq!(body_of(req).await, "{\"item\": 42}");
    send.send_response(status(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn body_over_the_limit_is_not_retried() {
    let ctx = ctx();
    let (svc, mut handle) = service(policy(2, &["5xx"]), &ctx);
    let big: &'static [u8] = Box::leak(vec![b'x'; DEFAULT_BODY_LIMIT].into_boxed_slice());
    let req = Request::post("/").body(stream_of(&[big, b"!"])).unwrap();
    let call = tokio::spawn(svc.oneshot(req));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(body_of(req).await.len(), DEFAULT_BODY_LIMIT + 1);
    send.send_response(status(503));
    assert_eq!(call.await.unwrap().unwrap().status(), 503);
    assert_eq!(ctx.retries.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn body_at_the_limit_is_retried() {
    let (svc, mut handle) = service(policy(1, &["5xx"]), &ctx());
    let big: &'static [u8] = Box::leak(vec![b'y'; DEFAULT_BODY_LIMIT].into_boxed_slice());
    let call = tokio::spawn(svc.oneshot(Request::post("/").body(stream_of(&[big])).unwrap()));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(body_of(req).await.len(), DEFAULT_BODY_LIMIT);
    send.send_response(status(503));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(body_of(req).await.len(), DEFAULT_BODY_LIMIT);
    send.send_response(status(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn first_attempt_streams_without_waiting_for_the_whole_body() {
    let (svc, mut handle) = service(policy(1, &["5xx"]), &ctx());
    let (tx, body) = channel_body();
    let call = tokio::spawn(svc.oneshot(Request::post("/chat").body(body).unwrap()));
    // The upstream has the request while the client is still sending.
    let (req, send) = handle.next_request().await.unwrap();
    let mut upstream_body = req.into_body();
    tx.send(Bytes::from_static(b"hello")).await.unwrap();
    let frame = upstream_body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "hello");
    send.send_response(status(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    // The stream carries on after the response.
    tx.send(Bytes::from_static(b" again")).await.unwrap();
    let frame = upstream_body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), " again");
    drop(tx);
    assert!(upstream_body.frame().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn budget_exhaustion_stops_retries() {
    // No ratio, a minimum of 1/s: 10 retries per 10s window, then none.
    let ctx = RetryContext {
        budget: Arc::new(RetryBudget::new(0.0, 1)),
        ..ctx()
    };
    for i in 0..11 {
        let (svc, mut handle) = service(policy(1, &["5xx"]), &ctx);
        let call = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(status(503));
        if i < 10 {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(status(200));
            assert_eq!(call.await.unwrap().unwrap().status(), 200, "request {i}");
        } else {
            assert_eq!(call.await.unwrap().unwrap().status(), 503, "budget spent");
        }
    }
    assert_eq!(ctx.retries.get(), 10);
}

#[tokio::test(start_paused = true)]
async fn breaker_max_retries_refuses_the_retry() {
    let cfg = model::CircuitBreaker {
        max_connections: None,
        max_pending_requests: None,
        max_requests: None,
        max_retries: Some(1),
    };
    let rejections = Counter::default();
    let breaker = Breaker::new(Arc::from("app"), &cfg, rejections.clone());
    let ctx = RetryContext {
        breaker: Some(breaker.clone()),
        ..ctx()
    };
    // The first request's retry takes the only slot...
    let (svc, mut h1) = service(policy(1, &["5xx"]), &ctx);
    let first = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));
    let (_, send1) = h1.next_request().await.unwrap();
    send1.send_response(status(503));
    let (_, send1) = h1.next_request().await.unwrap();
    assert_eq!(breaker.in_flight(Kind::Retry), 1);
    // ...so a second request's failure comes back unretried.
    let (svc, mut h2) = service(policy(1, &["5xx"]), &ctx);
    let second = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));
    let (_, send2) = h2.next_request().await.unwrap();
    send2.send_response(status(503));
    assert_eq!(second.await.unwrap().unwrap().status(), 503);
    assert_eq!(rejections.get(), 1);
    send1.send_response(status(200));
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(breaker.in_flight(Kind::Retry), 0, "released when answered");
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_is_retried_and_bounds_each_attempt() {
    let mut p = policy(1, &["5xx"]);
    p.per_try_timeout = Some(Duration::from_millis(300));
    let (svc, mut handle) = service(p, &ctx());
    let start = Instant::now();
    let call = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));
    let (_, _hung) = handle.next_request().await.unwrap();
    let (_, _hung_too) = handle.next_request().await.unwrap();
    // 300ms per-try timeout, 50ms backoff.
    assert_eq!(start.elapsed(), Duration::from_millis(350));
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(error::reason_of(&*err), Reason::Timeout);
    assert_eq!(start.elapsed(), Duration::from_millis(650));
    assert!(err.to_string().contains("per-try"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn no_policy_passes_through_and_deposits() {
    let ctx = RetryContext {
        budget: Arc::new(RetryBudget::new(0.5, 0)),
        ..ctx()
    };
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let svc = RetryLayer::new(None, ctx.clone()).layer(svc);
    for _ in 0..2 {
        let call = tokio::spawn(svc.clone().oneshot(Request::new(Body::Empty)));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(status(503));
        assert_eq!(call.await.unwrap().unwrap().status(), 503);
    }
    assert!(
        ctx.budget.withdraw(),
        "two requests deposited one retry's worth"
    );
}

// === test bodies ===

/// A client body that sends `chunks` with a yield between each.
fn stream_of(chunks: &[&'static [u8]]) -> Body {
    let (tx, rx) = mpsc::channel(chunks.len().max(1));
    for c in chunks {
        tx.try_send(Bytes::from_static(c)).unwrap();
    }
    drop(tx);
    Body::boxed(ChannelBody(rx))
}

fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, Body::boxed(ChannelBody(rx)))
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test(start_paused = true)]
async fn body_known_to_be_too_big_is_sent_once() {
    let ctx = ctx();
    let (svc, mut handle) = service(policy(2, &["5xx"]), &ctx);
    let big = vec![b'z'; DEFAULT_BODY_LIMIT + 1];
    let call = tokio::spawn(svc.oneshot(Request::post("/").body(Body::full(big)).unwrap()));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(body_of(req).await.len(), DEFAULT_BODY_LIMIT + 1);
    send.send_response(status(503));
    assert_eq!(call.await.unwrap().unwrap().status(), 503);
    assert_eq!(ctx.retries.get(), 0);
}

#[test]
fn every_condition_the_filter_knows_passes_validation() {
    let mut names: Vec<String> = [
        "connect-failure",
        "reset",
        "5xx",
        "gateway-error",
        "retriable-4xx",
        "\"503\"",
    ]
    .map(String::from)
    .to_vec();
    names.extend(
        classify::GRPC_STATUS_NAMES
            .iter()
            .map(|(n, _)| n.to_string()),
    );
    let text = format!(
        "listeners: [{{ name: l, address: 127.0.0.1:0, routes: t }}]\n\
         routes: {{ t: [{{ cluster: c, retry: {{ attempts: 1, on: [{}] }} }}] }}\n\
         clusters: {{ c: {{ endpoints: [127.0.0.1:9000] }} }}\n",
        names.join(", ")
    );
    let config = skiff_control::load_str(&text, "t.yaml").unwrap();
    let retry = config.routes["t"][0].retry.as_ref().unwrap();
    let policy = RetryPolicy::from_config(retry);
    assert_eq!(policy.on.grpc.count_ones(), 16);
    assert_eq!(policy.on.statuses, vec![503]);
}
