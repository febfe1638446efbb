//! The route `timeout`: bounds the time until the response headers arrive.
//!
//! It sits outside retries (issue "Filter chain") so that it bounds the whole
//! request. It stops at the response headers rather than the last body byte so
//! that long-lived streams (gRPC streaming, downloads) are not cut off; see
//! docs/routing.md for this choice.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tower::{Layer, Service};

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

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: self.after.map(tokio::time::sleep),
            after: self.after.unwrap_or_default(),
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
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out.map_err(Into::into));
        }
        let Some(sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        if sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        let msg = format!("no response within the route timeout of {:?}", this.after);
        Poll::Ready(Err(ProxyError::new(Reason::Timeout, msg).into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::reason_of;
    use tower::ServiceExt;
    use tower_test::mock;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline() {
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let svc = TimeoutLayer::new(Some(Duration::from_millis(250))).layer(svc);
        let start = tokio::time::Instant::now();
        let call = tokio::spawn(svc.oneshot("req"));
        let (_req, _send) = handle.next_request().await.unwrap();
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(reason_of(&*err), Reason::Timeout);
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn passes_responses_before_the_deadline() {
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let svc = TimeoutLayer::new(Some(Duration::from_secs(1))).layer(svc);
        let call = tokio::spawn(svc.oneshot("req"));
        let (_req, send) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_millis(999)).await;
        send.send_response("ok");
        assert_eq!(call.await.unwrap().unwrap(), "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn none_never_fires() {
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let svc = TimeoutLayer::new(None).layer(svc);
        let call = tokio::spawn(svc.oneshot("req"));
        let (_req, send) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        send.send_response("late");
        assert_eq!(call.await.unwrap().unwrap(), "late");
    }
}
