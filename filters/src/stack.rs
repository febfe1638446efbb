//! The one place that orders the filters of a route.
//!
//! Outermost first; each layer says why it sits where it does. The proxy
//! builds one stack per (route, cluster) when a config snapshot is applied,
//! so requests never assemble middleware.

use std::sync::Arc;

use http::{Request, Response};
use skiff_control::model::{self, Route};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::authz::{AuthzLayer, Policy};
use crate::body::Body;
use crate::circuit_breaker::{Breaker, CircuitBreakerLayer};
use crate::error::BoxError;
use crate::fault::FaultLayer;
use crate::headers::{HeaderEdits, HeadersLayer, InvalidHeader};
use crate::rate_limit::{RateLimitLayer, RateLimiter};
use crate::retry::{RetryBudget, RetryContext, RetryLayer, RetryPolicy};
use crate::telemetry::Metrics;
use crate::timeout::TimeoutLayer;

/// A route's compiled filter stack in front of one cluster.
pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// What a route's stack needs to know about the cluster it sends to. Shared
/// state (breaker counts, the retry budget) is per cluster, so every route to
/// the cluster shares one instance, built once per config snapshot.
#[derive(Debug, Clone)]
pub struct ClusterPolicy {
    pub name: Arc<str>,
    /// `circuit_breaker:` thresholds; `None` when the cluster sets none.
    /// The upstream pool asks it for `try_connection` / `try_pending`.
    pub breaker: Option<Arc<Breaker>>,
    /// `retry_budget:` (on by default: ratio 0.2, 10 retries per second).
    pub budget: Arc<RetryBudget>,
}

impl ClusterPolicy {
    /// The cluster's shared filter state, built once per config snapshot.
    pub fn from_config(name: Arc<str>, c: &model::Cluster, metrics: &Arc<Metrics>) -> Self {
        let breaker = c
            .circuit_breaker
            .as_ref()
            .map(|cb| Breaker::new(name.clone(), cb, metrics.breaker_rejections(&name)));
        Self {
            budget: Arc::new(RetryBudget::from_config(c.retry_budget.as_ref())),
            breaker,
            name,
        }
    }
}

/// Where a route's stack reports.
#[derive(Debug, Clone)]
pub struct RouteContext {
    /// The metrics label, `TABLE/NAME` or `TABLE/INDEX`.
    pub label: Arc<str>,
    pub metrics: Arc<Metrics>,
    /// `authorization:` compiled once per snapshot, shared by every route.
    pub authorization: Arc<Policy>,
    /// The route's token bucket, shared by the stacks of all its clusters
    /// (a split builds one stack per cluster); see `RouteContext::rate_limit`.
    pub rate_limit: Option<Arc<RateLimiter>>,
}

impl RouteContext {
    /// The token bucket for `route`'s `rate_limit:`, if it has one, counting
    /// into `skiff_rate_limited_total{route=label}`.
    pub fn rate_limit(
        route: &Route,
        label: &Arc<str>,
        metrics: &Metrics,
    ) -> Option<Arc<RateLimiter>> {
        route
            .rate_limit
            .as_ref()
            .map(|rl| RateLimiter::new(rl, metrics.rate_limited(label)))
    }
}

/// Builds the filters for `route` in front of `upstream` (the cluster's client).
pub fn route_stack<S>(
    route: &Route,
    ctx: &RouteContext,
    cluster: &ClusterPolicy,
    upstream: S,
) -> Result<RouteService, InvalidHeader>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let request = HeaderEdits::from_config(&route.headers.request)?;
    let response = HeaderEdits::from_config(&route.headers.response)?;
    let retry = RetryContext {
        budget: cluster.budget.clone(),
        breaker: cluster.breaker.clone(),
        retries: ctx.metrics.retries(&ctx.label, &cluster.name),
    };
    let svc = ServiceBuilder::new()
        // Authorization first: a refused caller is answered before it can
        // spend anything below (rate-limit tokens, retries, connections).
        .layer(AuthzLayer::new(ctx.authorization.clone()))
        // The rate limit next: a request over the limit costs nothing else,
        // and every admitted request takes exactly one token, however many
        // attempts it turns into below.
        .layer(RateLimitLayer::new(ctx.rate_limit.clone()))
        // Faults outside the timeout, as Envoy's fault filter: an injected
        // delay tests the caller's patience rather than tripping Skiff's own
        // timeout, and an abort is Skiff's answer, never retried.
        .layer(FaultLayer::new(route.fault.as_ref()))
        // The route timeout (or a nearer gRPC `grpc-timeout`) bounds
        // everything below it: every attempt, backoff and per-try timeout.
        .layer(TimeoutLayer::new(route.timeout.map(|d| d.get())))
        // Header edits run once per request, not once per attempt; response
        // edits apply to the upstream's answer (Skiff's own error replies
        // keep only their own headers).
        .layer(HeadersLayer::new(request, response))
        // Retries see each attempt's outcome and the edited request; below
        // them everything happens once per attempt. The cluster's budget
        // and `max_retries` limit them.
        .layer(RetryLayer::new(
            route.retry.as_ref().map(RetryPolicy::from_config),
            retry,
        ))
        // The breaker counts attempts, not requests: each retry is one more
        // request in flight to the cluster (`max_requests`), and a refused
        // attempt (`circuit-open`) is never retried above.
        .layer(CircuitBreakerLayer::new(cluster.breaker.clone()))
        .service(upstream);
    Ok(BoxCloneSyncService::new(svc))
}
