//! The route `retry`: send a failed request again, within limits.
//!
//! Per attempt: a fresh copy of the request (its body replayed from a bounded
//! copy, see `body::ReplayBody`), `Avoid` naming the endpoint that just failed
//! so the balancer picks another, and `per_try_timeout` around the attempt.
//! Between attempts: exponential backoff with full jitter. A retry is made
//! only when all of these agree:
//! - the outcome matches `on:` (`classify::RetryOn`), or the attempt hit its
//!   per-try timeout (always retried, as Envoy does);
//! - attempts are left (`attempts` = retries after the first try);
//! - the request body could be replayed whole (it ended within 64 KiB);
//! - the cluster's retry budget has room (`budget::RetryBudget`);
//! - the cluster's breaker allows another concurrent retry (`max_retries`).
//!
//! Otherwise the last attempt's answer (response or error) goes back as it
//! is. The route timeout sits outside this layer and bounds all of it.

pub mod backoff;
pub mod budget;
mod peek;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, ErrInto, TryFutureExt};
use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use prometheus_client::metrics::counter::Counter;
use skiff_control::model;
use tower::{Layer, Service, ServiceExt};
use tracing::{debug, warn};

use crate::balance::{Avoid, Expired, Picked};
use crate::body::{Body, ReplayBody};
use crate::circuit_breaker::Breaker;
use crate::classify::{self, RetryOn};
use crate::error::{self, BoxError, ProxyError, Reason};

pub use backoff::{Backoff, Jitter};
pub use budget::RetryBudget;

/// Request bodies are kept for replay up to this many bytes (and gRPC
/// responses read ahead up to as many to find their status).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// One route's retry policy, parsed once.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on: RetryOn,
    pub per_try_timeout: Option<Duration>,
    pub backoff: Backoff,
    pub body_limit: usize,
}

impl RetryPolicy {
    /// Unknown `on:` entries (refused by validation before a config gets
    /// here) are logged and skipped.
    pub fn from_config(c: &model::Retry) -> Self {
        let known: Vec<&str> =
            c.on.iter()
                .map(String::as_str)
                .filter(|item| match RetryOn::parse(&[item]) {
                    Ok(_) => true,
                    Err(e) => {
                        warn!(error = %e, "ignoring retry condition");
                        false
                    }
                })
                .collect();
        Self {
            attempts: c.attempts,
            on: RetryOn::parse(&known).unwrap_or_default(),
            per_try_timeout: c.per_try_timeout.map(|d| d.get()),
            backoff: Backoff::from_config(c.backoff.as_ref()),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// What the retry layer shares with the rest of the cluster's routes.
#[derive(Debug, Clone)]
pub struct RetryContext {
    pub budget: Arc<RetryBudget>,
    pub breaker: Option<Arc<Breaker>>,
    /// `skiff_retries_total{route,cluster}`.
    pub retries: Counter,
}

/// Retries a route's requests per its policy; without one it only counts
/// requests into the cluster's retry budget.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Option<Arc<RetryPolicy>>,
    ctx: RetryContext,
}

impl RetryLayer {
    pub fn new(policy: Option<RetryPolicy>, ctx: RetryContext) -> Self {
        Self {
            policy: policy.filter(|p| p.attempts > 0).map(Arc::new),
            ctx,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: self.policy.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Option<Arc<RetryPolicy>>,
    ctx: RetryContext,
}

type BoxFuture = crate::BoxFuture<Response<Body>>;

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    /// Unboxed for routes without a retry policy.
    type Future = Either<ErrInto<S::Future, BoxError>, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.ctx.budget.deposit();
        let Some(policy) = self.policy.clone() else {
            return Either::Left(self.inner.call(req).err_into());
        };
        // The ready service takes the first attempt; a clone, made ready
        // again each time, takes the retries.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(send(inner, req, policy, self.ctx.clone())))
    }
}

/// The parts of a request every attempt gets a copy of.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

impl Template {
    fn build(&self, body: Body, avoid: Option<usize>) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        if let Some(ep) = avoid {
            req.extensions_mut().insert(Avoid(ep));
        }
        req
    }
}

/// What an attempt came back with, and what that means for the next one.
struct Judged {
    outcome: Result<Response<Body>, BoxError>,
    retryable: bool,
    /// The endpoint that answered or failed, for `Avoid`.
    endpoint: Option<usize>,
}

async fn send<S>(
    mut first: S,
    req: Request<Body>,
    policy: Arc<RetryPolicy>,
    ctx: RetryContext,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let (parts, body) = req.into_parts();
    let grpc = classify::is_grpc(&parts.headers);
    let template = Template {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        extensions: parts.extensions,
    };
    // A body already at its end is sent as empty every time; one known to
    // be over the limit is sent once, unretried; any other is kept (up to
    // the limit) while it streams to the first attempt.
    let mut once = None;
    let replay = if body.is_end_stream() {
        None
    } else if body.size_hint().lower() > policy.body_limit as u64 {
        once = Some(body);
        None
    } else {
        Some(ReplayBody::new(body, policy.body_limit))
    };
    let mut retries_left = if once.is_some() { 0 } else { policy.attempts };
    let mut retry = 0u32;
    let mut avoid = None;
    // Held from the decision to retry until the retry is answered.
    let mut _retry_permit = None;
    let mut svc = first.clone();
    loop {
        let body = match (once.take(), &replay) {
            (Some(body), _) => body,
            (None, None) => Body::Empty,
            (None, Some(r)) => match r.replay() {
                Some(b) => Body::Replay(b),
                // Unreachable: a retry is only made after `can_replay`, and
                // nothing else reads the body in between.
                None => {
                    return Err(ProxyError::new(
                        Reason::UpstreamReset,
                        "request body can no longer be replayed",
                    )
                    .into());
                }
            },
        };
        let req = template.build(body, avoid);
        let last = retries_left == 0;
        let attempt = if retry == 0 {
            // The ready service from `call`.
            attempt(&mut first, req, &policy, grpc, last, false).await
        } else {
            attempt(&mut svc, req, &policy, grpc, last, true).await
        };
        let Judged {
            outcome,
            retryable,
            endpoint,
        } = attempt;
        let replayable = replay.as_ref().is_none_or(ReplayBody::can_replay);
        if !retryable || last || !replayable {
            if !replayable && retryable && !last {
                debug!("not retried: the request body is over the replay limit");
            }
            if let Some(r) = &replay {
                r.stop_buffering();
            }
            return outcome;
        }
        if !ctx.budget.withdraw() {
            debug!("not retried: the cluster's retry budget is spent");
            return outcome;
        }
        if let Some(breaker) = &ctx.breaker {
            match breaker.try_retry() {
                Ok(p) => _retry_permit = Some(p),
                Err(e) => {
                    debug!(error = %e, "not retried");
                    return outcome;
                }
            }
        }
        ctx.retries.inc();
        // Let go of the failed answer (and its connection) before sleeping.
        drop(outcome);
        tokio::time::sleep(policy.backoff.delay(retry)).await;
        retry += 1;
        retries_left -= 1;
        avoid = endpoint;
    }
}

/// Makes one attempt, bounded by the per-try timeout, and judges it.
async fn attempt<S>(
    svc: &mut S,
    req: Request<Body>,
    policy: &RetryPolicy,
    grpc: bool,
    last: bool,
    make_ready: bool,
) -> Judged
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    let mut req = req;
    // Where the attempt went, as the upstream notes it: the endpoint the
    // next attempt avoids. With a per-try timeout the attempt may also be
    // dropped mid-flight, and gets its own slot to say it expired.
    let picked = Picked::default();
    req.extensions_mut().insert(picked.clone());
    let expired = policy.per_try_timeout.map(|_| {
        let expired = Expired::default();
        req.extensions_mut().insert(expired.clone());
        expired
    });
    let exchange = async {
        if make_ready {
            svc.ready().await.map_err(Into::into)?;
        }
        let rsp = svc.call(req).await.map_err(Into::into)?;
        // The status of a gRPC response may be in its trailers; read ahead
        // for it only when it matters: gRPC codes are listed and another
        // attempt could follow.
        let peek = grpc
            && !last
            && policy.on.wants_grpc_status()
            && classify::grpc_status(rsp.headers()).is_none();
        if peek {
            return peek::grpc_status(rsp, policy.body_limit, picked.get()).await;
        }
        let status = classify::grpc_status(rsp.headers());
        Ok::<_, BoxError>((rsp, status))
    };
    let result = match policy.per_try_timeout {
        None => exchange.await,
        Some(limit) => match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(expired) = &expired {
                    expired.raise();
                }
                return Judged {
                    outcome: Err(ProxyError::new(
                        Reason::Timeout,
                        format!("no response within the per-try timeout of {limit:?}"),
                    )
                    .into()),
                    retryable: true,
                    // The attempt was dropped mid-flight: the upstream's
                    // note of where it went is the only record.
                    endpoint: picked.get(),
                };
            }
        },
    };
    match result {
        Ok((rsp, grpc_status)) => Judged {
            retryable: policy.on.retries_response(rsp.status(), grpc_status),
            endpoint: picked.get(),
            outcome: Ok(rsp),
        },
        Err(e) => Judged {
            retryable: policy.on.retries_error(error::reason_of(&*e)),
            endpoint: error::proxy_error(&*e).and_then(ProxyError::endpoint),
            outcome: Err(e),
        },
    }
}

#[cfg(test)]
mod tests;
