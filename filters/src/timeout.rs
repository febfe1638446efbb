//! The route `timeout`: bounds the whole exchange, from the request to the
//! last byte of the response body, retries included (the interface: "the whole
//! request"; Envoy's route timeout and `max_stream_duration` alike).
//!
//! It sits outside retries (issue "Filter chain") so that it bounds every
//! attempt. Before the response head it fails the request (504 / gRPC
//! DEADLINE_EXCEEDED); after it, the response body carries the deadline on
//! (`body::DeadlineBody`) and is cut there. Routes that carry long-lived
//! streams (gRPC server or bidi streaming, downloads, server-sent events)
//! leave `timeout` unset, or set it as long as a stream may live; gRPC
//! clients bound their own calls with `grpc-timeout`. See docs/filters.md.
//!
//! A gRPC client states its own deadline in `grpc-timeout`; for gRPC requests
//! the smaller of it and the route timeout applies, so the proxy answers
//! DEADLINE_EXCEEDED no later than the client would give up anyway.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::balance::Expired;
use crate::body::{Body, DeadlineBody};
use crate::classify;
use crate::error::{BoxError, ProxyError, Reason};

/// A timeout layer; `None` passes requests through untouched.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    after: Option<Duration>,
}

impl TimeoutLayer {
    pub fn new(after: Option<Duration>) -> Self {
        Self { after }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    after: Option<Duration>,
}

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let grpc = classify::is_grpc(req.headers());
        let client = if grpc {
            classify::grpc_timeout(req.headers())
        } else {
            None
        };
        let (after, source) = match (self.after, client) {
            (Some(route), Some(grpc)) if grpc < route => (Some(grpc), Source::Grpc),
            (None, Some(grpc)) => (Some(grpc), Source::Grpc),
            (route, _) => (route, Source::Route),
        };
        let expired = after.map(|_| {
            let flag = Expired::default();
            req.extensions_mut().insert(flag.clone());
            flag
        });
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: after.map(tokio::time::sleep),
            after: after.unwrap_or_default(),
            source,
            expired,
            grpc,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        after: Duration,
        source: Source,
        expired: Option<Expired>,
        grpc: bool,
    }
}

/// Which deadline was the nearer one, for the error message.
#[derive(Debug, Clone, Copy)]
enum Source {
    Route,
    Grpc,
}

impl<F, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            let rsp = out.map_err(Into::into)?;
            // The head came in time; the body must end by the same deadline.
            let Some(sleep) = this.sleep.as_pin_mut() else {
                return Poll::Ready(Ok(rsp));
            };
            let (deadline, grpc) = (sleep.deadline(), *this.grpc);
            return Poll::Ready(Ok(rsp.map(|b| DeadlineBody::wrap(b, deadline, grpc))));
        }
        let Some(sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        if sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        if let Some(flag) = this.expired {
            flag.raise();
        }
        let msg = match this.source {
            Source::Route => format!("no response within the route timeout of {:?}", this.after),
            Source::Grpc => format!("no response within the grpc-timeout of {:?}", this.after),
        };
        Poll::Ready(Err(ProxyError::new(Reason::Timeout, msg).into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::reason_of;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_test::mock;

    type Rsp = Response<Body>;

    fn ok(body: Body) -> Rsp {
        Response::new(body)
    }

    fn req(grpc_timeout: Option<&str>, grpc: bool) -> Request<()> {
        let mut b = Request::builder();
        if grpc {
            b = b.header("content-type", "application/grpc");
        }
        if let Some(t) = grpc_timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline() {
        let (svc, mut handle) = mock::pair::<Request<()>, Rsp>();
        let svc = TimeoutLayer::new(Some(Duration::from_millis(250))).layer(svc);
        let start = tokio::time::Instant::now();
        let call = tokio::spawn(svc.oneshot(req(None, false)));
        let (_req, _send) = handle.next_request().await.unwrap();
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(reason_of(&*err), Reason::Timeout);
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn passes_responses_before_the_deadline() {
        let (svc, mut handle) = mock::pair::<Request<()>, Rsp>();
        let svc = TimeoutLayer::new(Some(Duration::from_secs(1))).layer(svc);
        let call = tokio::spawn(svc.oneshot(req(None, false)));
        let (_req, send) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_millis(999)).await;
        send.send_response(ok(Body::full("ok")));
        let rsp = call.await.unwrap().unwrap();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test(start_paused = true)]
    async fn none_never_fires() {
        let (svc, mut handle) = mock::pair::<Request<()>, Rsp>();
        let svc = TimeoutLayer::new(None).layer(svc);
        let call = tokio::spawn(svc.oneshot(req(None, false)));
        let (_req, send) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        send.send_response(ok(Body::full("late")));
        let rsp = call.await.unwrap().unwrap();
        assert!(matches!(rsp.body(), Body::Full(_)), "no deadline to carry");
    }

    #[tokio::test(start_paused = true)]
    async fn the_smaller_of_route_and_grpc_timeout_wins() {
        for (route, header, grpc, fires_at) in [
            (Some(1000), Some("200m"), true, 200),
            (Some(100), Some("2S"), true, 100),
            (None, Some("300000u"), true, 300),
            (Some(500), Some("100m"), false, 500), // not gRPC: header ignored
            (Some(500), Some("bogus"), true, 500),
        ] {
            let (svc, mut handle) = mock::pair::<Request<()>, Rsp>();
            let svc = TimeoutLayer::new(route.map(Duration::from_millis)).layer(svc);
            let start = tokio::time::Instant::now();
            let call = tokio::spawn(svc.oneshot(req(header, grpc)));
            let (_req, _send) = handle.next_request().await.unwrap();
            let err = call.await.unwrap().unwrap_err();
            assert_eq!(reason_of(&*err), Reason::Timeout);
            assert_eq!(
                start.elapsed(),
                Duration::from_millis(fires_at),
                "{route:?} {header:?} {grpc}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_deadline_reply_is_deadline_exceeded() {
        let (svc, mut handle) = mock::pair::<Request<()>, Rsp>();
        let svc = TimeoutLayer::new(None).layer(svc);
        let call = tokio::spawn(svc.oneshot(req(Some("1S"), true)));
        let (_req, _send) = handle.next_request().await.unwrap();
        let err = call.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("grpc-timeout"), "{err}");
        let rsp = crate::error::respond(&*err, true);
        assert_eq!(rsp.headers()["grpc-status"], "4");
        assert_eq!(rsp.headers()["skiff-error"], "timeout");
    }

    /// A body that yields one chunk, then nothing until the test drops `tx`.
    fn stalled() -> (tokio::sync::mpsc::Sender<()>, Body) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let first = std::sync::atomic::AtomicBool::new(false);
        let body = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
            if !first.swap(true, std::sync::atomic::Ordering::Relaxed) {
                return Poll::Ready(Some(Ok::<_, BoxError>(http_body::Frame::data(
                    bytes::Bytes::from_static(b"head start"),
                ))));
            }
            rx.poll_recv(cx).map(|_| None)
        }));
        (tx, Body::boxed(body))
    }

    /// Each line: gRPC or not. The head arrives at once, the body stalls:
    /// the deadline still ends the exchange, at the deadline to the
    /// millisecond: gRPC with DEADLINE_EXCEEDED trailers, HTTP with an error
    /// that aborts the response.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_outlives_the_deadline_is_cut_there() {
        for grpc in [true, false] {
            let (svc, mut handle) = mock::pair::<Request<()>, Rsp>();
            let svc = TimeoutLayer::new(Some(Duration::from_millis(300))).layer(svc);
            let start = tokio::time::Instant::now();
            let call = tokio::spawn(svc.oneshot(req(None, grpc)));
            let (_req, send) = handle.next_request().await.unwrap();
            let (_tx, body) = stalled();
            send.send_response(ok(body));
            let mut body = call.await.unwrap().unwrap().into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), "head start");
            let end = body.frame().await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_millis(300), "grpc {grpc}");
            if grpc {
                let trailers = end.unwrap().into_trailers().unwrap();
                assert_eq!(trailers["grpc-status"], "4");
                assert_eq!(trailers["skiff-error"], "timeout");
                assert!(body.frame().await.is_none());
            } else {
                let err = end.unwrap_err();
                assert_eq!(reason_of(&*err), Reason::Timeout);
            }
        }
    }

    /// A body that ends before the deadline is passed through whole.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_is_untouched() {
        let (svc, mut handle) = mock::pair::<Request<()>, Rsp>();
        let svc = TimeoutLayer::new(Some(Duration::from_millis(300))).layer(svc);
        let call = tokio::spawn(svc.oneshot(req(None, true)));
        let (_req, send) = handle.next_request().await.unwrap();
        let (tx, body) = stalled();
        send.send_response(ok(body));
        let mut body = call.await.unwrap().unwrap().into_body();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        tokio::time::advance(Duration::from_millis(299)).await;
        drop(tx);
        assert!(
            body.frame().await.is_none(),
            "ended by the upstream, not cut"
        );
    }
}
