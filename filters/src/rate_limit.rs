//! The route `rate_limit`: a local token bucket, shared by every copy of a
//! route's stack (one per cluster of a split), lock-free.
//!
//! The bucket is kept as one number, the *theoretical arrival time* of the
//! next request (GCRA, the generic cell rate algorithm): each admitted request
//! pushes it one interval (1 / `requests_per_second`) later, and a request is
//! refused when that would put it more than `burst` intervals ahead of now.
//! This is exactly a bucket of `burst` tokens refilled continuously at
//! `requests_per_second`, updated with one compare-and-swap, so no request
//! ever waits for a lock. Time is tokio's, so paused-time tests drive it.

use std::future::Ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, ErrInto, TryFutureExt};
use prometheus_client::metrics::counter::Counter;
use skiff_control::model;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::error::{BoxError, ProxyError, Reason};

/// One route's token bucket.
#[derive(Debug)]
pub struct RateLimiter {
    /// Nanoseconds per token.
    interval: u64,
    /// How far ahead of now (ns) the arrival time may run: `burst` tokens.
    tolerance: u64,
    /// The theoretical arrival time, in ns since `epoch`.
    tat: AtomicU64,
    epoch: Instant,
    rps: u32,
    burst: u32,
    limited: Counter,
}

impl RateLimiter {
    /// A full bucket for `c`; `limited` is `skiff_rate_limited_total{route}`.
    /// `burst` defaults to `requests_per_second`; zeros (refused by
    /// validation) are raised to 1 rather than dividing by zero.
    pub fn new(c: &model::RateLimit, limited: Counter) -> Arc<Self> {
        let rps = c.requests_per_second.max(1);
        let burst = c.burst.unwrap_or(rps).max(1);
        let interval = 1_000_000_000 / u64::from(rps);
        Arc::new(Self {
            interval,
            tolerance: interval * u64::from(burst),
            tat: AtomicU64::new(0),
            epoch: Instant::now(),
            rps,
            burst,
            limited,
        })
    }

    /// Takes a token, or says why not.
    pub fn try_acquire(&self) -> Result<(), ProxyError> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            if next - now > self.tolerance {
                self.limited.inc();
                let wait = Duration::from_nanos(next - now - self.tolerance);
                return Err(ProxyError::new(
                    Reason::RateLimited,
                    format!(
                        "over {} requests per second (burst {}); next token in {wait:?}",
                        self.rps, self.burst
                    ),
                ));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

/// Refuses requests over the route's rate; `None` passes through.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<RateLimiter>>,
}

impl RateLimitLayer {
    pub fn new(limiter: Option<Arc<RateLimiter>>) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Option<Arc<RateLimiter>>,
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    /// No box: admitted or refused, a request costs no allocation here.
    type Future = Either<Ready<Result<S::Response, BoxError>>, ErrInto<S::Future, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(limiter) = &self.limiter
            && let Err(e) = limiter.try_acquire()
        {
            return Either::Left(std::future::ready(Err(e.into())));
        }
        Either::Right(self.inner.call(req).err_into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::reason_of;
    use tokio::time::advance;
    use tower::ServiceExt;
    use tower_test::mock;

    fn limiter(rps: u32, burst: Option<u32>) -> (Arc<RateLimiter>, Counter) {
        let c = Counter::default();
        let cfg = model::RateLimit {
            requests_per_second: rps,
            burst,
        };
        (RateLimiter::new(&cfg, c.clone()), c)
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_to_the_millisecond() {
        let (l, limited) = limiter(10, Some(2));
        assert!(l.try_acquire().is_ok());
        assert!(l.try_acquire().is_ok());
        let err = l.try_acquire().unwrap_err();
        assert_eq!(err.reason(), Reason::RateLimited);
        assert_eq!(limited.get(), 1);
        // One token every 100ms.
        advance(Duration::from_millis(99)).await;
        assert!(l.try_acquire().is_err());
        advance(Duration::from_millis(1)).await;
        assert!(l.try_acquire().is_ok());
        assert!(l.try_acquire().is_err());
        // A long pause refills the bucket up to `burst`, not beyond.
        advance(Duration::from_secs(10)).await;
        assert!(l.try_acquire().is_ok());
        assert!(l.try_acquire().is_ok());
        assert!(l.try_acquire().is_err());
        assert_eq!(limited.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_defaults_to_the_rate() {
        let (l, _) = limiter(5, None);
        for i in 0..5 {
            assert!(l.try_acquire().is_ok(), "request {i}");
        }
        assert!(l.try_acquire().is_err());
        advance(Duration::from_millis(200)).await;
        assert!(l.try_acquire().is_ok());
        assert!(l.try_acquire().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_takers_never_exceed_the_bucket() {
        let (l, limited) = limiter(1000, Some(100));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                (0..100).filter(|_| l.try_acquire().is_ok()).count()
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += t.await.unwrap();
        }
        assert_eq!(admitted, 100);
        assert_eq!(limited.get(), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_refuses_without_calling_the_upstream() {
        let (l, _) = limiter(1, Some(1));
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let svc = RateLimitLayer::new(Some(l)).layer(svc);
        let call = tokio::spawn(svc.clone().oneshot("a"));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response("ok");
        assert_eq!(call.await.unwrap().unwrap(), "ok");
        let err = svc.oneshot("b").await.unwrap_err();
        assert_eq!(reason_of(&*err), Reason::RateLimited);
    }
}
