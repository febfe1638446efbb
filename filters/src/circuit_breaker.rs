//! Circuit breaking: Envoy-style concurrency thresholds per cluster.
//!
//! A `Breaker` counts what is in flight to one cluster (connections, requests
//! waiting for a connection, requests, retries) with atomics. Asking for a
//! slot returns a `Permit` that gives the slot back when dropped, so a slot
//! can't leak on an error path or a cancelled future. Over a threshold the
//! caller fails fast with `circuit-open` (503 / UNAVAILABLE) instead of
//! queueing behind a struggling upstream: the breaker is *closed* (traffic
//! flows) while under every threshold and *open* (traffic refused) for
//! whatever kind is at its threshold, and it closes again as soon as a permit
//! is dropped. There is no timer; the state is the counts.
//!
//! Who asks for what:
//! - `CircuitBreakerLayer` (this file): one `try_request` per attempt, held
//!   until the response body ends (`max_requests`).
//! - the retry layer: `try_retry` before each retry, held for the retry
//!   (`max_retries`); a refused retry returns the last answer as it is.
//! - the upstream pool: `try_connection` before opening a connection, held
//!   as long as the connection lives (`max_connections`), and `try_pending`
//!   while a request waits for a connection (`max_pending_requests`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use futures_util::future::{Either, ErrInto, TryFutureExt};
use http::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use skiff_control::model;
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::{BoxError, ProxyError, Reason};

/// Envoy's default thresholds, used for any key a `circuit_breaker:` leaves out.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;
pub const DEFAULT_MAX_RETRIES: u32 = 3;

type BoxFuture = crate::BoxFuture<Response<Body>>;

/// What a permit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connection,
    Pending,
    Request,
    Retry,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Connection => "max_connections",
            Kind::Pending => "max_pending_requests",
            Kind::Request => "max_requests",
            Kind::Retry => "max_retries",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One cluster's thresholds and in-flight counts.
pub struct Breaker {
    cluster: Arc<str>,
    /// Thresholds by `Kind`.
    max: [u32; 4],
    /// In flight now, by `Kind`.
    open: [AtomicU32; 4],
    rejections: Counter,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("cluster", &self.cluster)
            .field("max", &self.max)
            .field("open", &self.open)
            .finish()
    }
}

impl Breaker {
    /// A breaker with `c`'s thresholds (Envoy's defaults where absent);
    /// `rejections` is `skiff_circuit_breaker_rejections_total{cluster}`.
    pub fn new(cluster: Arc<str>, c: &model::CircuitBreaker, rejections: Counter) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            max: [
                c.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
                c.max_pending_requests
                    .unwrap_or(DEFAULT_MAX_PENDING_REQUESTS),
                c.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS),
                c.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            ],
            open: Default::default(),
            rejections,
        })
    }

    /// A slot for one attempt of a request (`max_requests`).
    pub fn try_request(self: &Arc<Self>) -> Result<Permit, ProxyError> {
        self.acquire(Kind::Request)
    }

    /// A slot for one retry (`max_retries`), held until the retry is answered.
    pub fn try_retry(self: &Arc<Self>) -> Result<Permit, ProxyError> {
        self.acquire(Kind::Retry)
    }

    /// A slot for one upstream connection (`max_connections`): the pool asks
    /// before connecting and keeps the permit with the connection, so that
    /// dropping the connection frees the slot.
    pub fn try_connection(self: &Arc<Self>) -> Result<Permit, ProxyError> {
        self.acquire(Kind::Connection)
    }

    /// A slot for a request waiting for a connection (`max_pending_requests`):
    /// the pool asks when no ready connection is at hand and drops the
    /// permit once the request has one.
    pub fn try_pending(self: &Arc<Self>) -> Result<Permit, ProxyError> {
        self.acquire(Kind::Pending)
    }

    /// How many of `kind` are in flight now (for `/clusters` and tests).
    pub fn in_flight(&self, kind: Kind) -> u32 {
        self.open[kind.index()].load(Ordering::Acquire)
    }

    pub fn max(&self, kind: Kind) -> u32 {
        self.max[kind.index()]
    }

    fn acquire(self: &Arc<Self>, kind: Kind) -> Result<Permit, ProxyError> {
        let max = self.max[kind.index()];
        let taken =
            self.open[kind.index()].fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Permit {
                breaker: self.clone(),
                kind,
            }),
            Err(_) => {
                self.rejections.inc();
                Err(ProxyError::new(
                    Reason::CircuitOpen,
                    format!(
                        "cluster {}: {} reached ({max} in flight)",
                        self.cluster,
                        kind.key()
                    ),
                ))
            }
        }
    }
}

/// A slot taken from a `Breaker`; dropping it gives the slot back.
pub struct Permit {
    breaker: Arc<Breaker>,
    kind: Kind,
}

impl Permit {
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("cluster", &self.breaker.cluster)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.open[self.kind.index()].fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl CircuitBreakerLayer ===

/// Enforces `max_requests` on each attempt; `None` passes through.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: Option<Arc<Breaker>>,
}

impl CircuitBreakerLayer {
    pub fn new(breaker: Option<Arc<Breaker>>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Option<Arc<Breaker>>,
}

impl<S> Service<Request<Body>> for CircuitBreaker<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    /// Unboxed without a breaker (no `circuit_breaker:`), the default.
    type Future = Either<ErrInto<S::Future, BoxError>, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(breaker) = &self.breaker else {
            return Either::Left(self.inner.call(req).err_into());
        };
        // Refused before the inner service sees the request: failing fast is
        // the point, and nothing upstream is touched.
        let permit = match breaker.try_request() {
            Ok(p) => p,
            Err(e) => return Either::Right(Box::pin(std::future::ready(Err(e.into())))),
        };
        let fut = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let rsp = fut.await.map_err(Into::into)?;
            // The request stays counted while its body streams.
            Ok(rsp.map(|b| Body::Guarded(Box::new(b), permit)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::reason_of;
    use tower::ServiceExt;
    use tower_test::mock;

    fn breaker(max_requests: u32, max_retries: u32) -> (Arc<Breaker>, Counter) {
        let counter = Counter::default();
        let c = model::CircuitBreaker {
            max_connections: Some(2),
            max_pending_requests: Some(1),
            max_requests: Some(max_requests),
            max_retries: Some(max_retries),
        };
        (Breaker::new(Arc::from("app"), &c, counter.clone()), counter)
    }

    #[test]
    fn permits_are_released_on_drop() {
        let (b, rejected) = breaker(2, 1);
        let p1 = b.try_request().unwrap();
        let p2 = b.try_request().unwrap();
        assert_eq!(b.in_flight(Kind::Request), 2);
        let err = b.try_request().unwrap_err();
        assert_eq!(err.reason(), Reason::CircuitOpen);
        assert!(err.to_string().contains("max_requests"), "{err}");
        assert_eq!(rejected.get(), 1);
        drop(p1);
        assert_eq!(b.in_flight(Kind::Request), 1);
        let _p3 = b.try_request().unwrap();
        drop(p2);
        assert_eq!(b.in_flight(Kind::Request), 1);
    }

    #[test]
    fn each_kind_has_its_own_threshold() {
        let (b, rejected) = breaker(1, 1);
        let _c1 = b.try_connection().unwrap();
        let _c2 = b.try_connection().unwrap();
        assert!(b.try_connection().is_err());
        let pending = b.try_pending().unwrap();
        assert!(b.try_pending().is_err());
        drop(pending);
        assert!(b.try_pending().is_ok());
        let _r = b.try_retry().unwrap();
        assert!(b.try_retry().is_err());
        let _q = b.try_request().unwrap();
        assert_eq!(rejected.get(), 3);
    }

    #[test]
    fn defaults_are_envoys() {
        let c = model::CircuitBreaker {
            max_connections: None,
            max_pending_requests: None,
            max_requests: None,
            max_retries: None,
        };
        let b = Breaker::new(Arc::from("app"), &c, Counter::default());
        assert_eq!(b.max(Kind::Connection), 1024);
        assert_eq!(b.max(Kind::Pending), 1024);
        assert_eq!(b.max(Kind::Request), 1024);
        assert_eq!(b.max(Kind::Retry), 3);
    }

    #[tokio::test]
    async fn layer_fails_fast_over_max_requests_and_holds_until_body_ends() {
        let (b, rejected) = breaker(1, 1);
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = CircuitBreakerLayer::new(Some(b.clone())).layer(svc);

        let first = tokio::spawn(svc.clone().oneshot(Request::new(Body::Empty)));
        let (_req, send) = handle.next_request().await.unwrap();
        assert_eq!(b.in_flight(Kind::Request), 1);

        // A second caller is refused without reaching the upstream.
        let err = svc
            .clone()
            .oneshot(Request::new(Body::Empty))
            .await
            .unwrap_err();
        assert_eq!(reason_of(&*err), Reason::CircuitOpen);
        assert_eq!(rejected.get(), 1);

        send.send_response(Response::new(Body::full("slow")));
        let rsp = first.await.unwrap().unwrap();
        assert_eq!(b.in_flight(Kind::Request), 1, "held while the body streams");
        drop(rsp);
        assert_eq!(b.in_flight(Kind::Request), 0);
    }

    #[tokio::test]
    async fn permit_released_when_the_attempt_fails_or_is_cancelled() {
        let (b, _) = breaker(1, 1);
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = CircuitBreakerLayer::new(Some(b.clone())).layer(svc);
        let call = tokio::spawn(svc.clone().oneshot(Request::new(Body::Empty)));
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_error(ProxyError::new(Reason::UpstreamReset, "boom"));
        assert!(call.await.unwrap().is_err());
        assert_eq!(b.in_flight(Kind::Request), 0);

        let call = tokio::spawn(svc.oneshot(Request::new(Body::Empty)));
        let (_req, _send) = handle.next_request().await.unwrap();
        assert_eq!(b.in_flight(Kind::Request), 1);
        call.abort();
        let _ = call.await;
        assert_eq!(b.in_flight(Kind::Request), 0);
    }
}
