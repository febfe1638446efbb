//! The one place that orders the filters of a route.
//!
//! Outermost first; each layer says why it sits where it does. The proxy
//! builds one stack per (route, cluster) when a config snapshot is applied,
//! so requests never assemble middleware.

use std::sync::Arc;

use http::{Request, Response};
use skiff_control::model::Route;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::body::Body;
use crate::error::BoxError;
use crate::headers::{HeaderEdits, HeadersLayer, InvalidHeader};
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
}

/// Where a route's stack reports.
#[derive(Debug, Clone)]
pub struct RouteContext {
    /// The metrics label, `TABLE/NAME` or `TABLE/INDEX`.
    pub label: Arc<str>,
    pub metrics: Arc<Metrics>,
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
    let _ = (ctx, cluster);
    let request = HeaderEdits::from_config(&route.headers.request)?;
    let response = HeaderEdits::from_config(&route.headers.response)?;
    let svc = ServiceBuilder::new()
        // The route timeout is outermost: it bounds everything below it,
        // including (with the filter chain) every retry and backoff.
        .layer(TimeoutLayer::new(route.timeout.map(|d| d.get())))
        // Header edits run once per request, not once per attempt, and the
        // response edits also apply to answers the layers below produce.
        .layer(HeadersLayer::new(request, response))
        .service(upstream);
    Ok(BoxCloneSyncService::new(svc))
}
