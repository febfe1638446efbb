//! Pooled connections to a cluster's endpoints, and the tower service that
//! sends a request to one of them.
//!
//! Skiff owns its pool (rather than hyper-util's legacy client) because the
//! balancer, outlier detection and `/clusters` need per-endpoint state, and
//! because the request's own authority must survive while the TCP peer is an
//! endpoint address: a URI-keyed pool can't express both.
//!
//! HTTP/1: idle connections are kept per endpoint; one is reused only when
//! hyper says it is ready (its previous response fully read). HTTP/2: one
//! shared connection per endpoint, multiplexed, replaced when it closes.
//! Either is let go after the cluster's `idle_timeout` unused
//! (`Endpoint::sweep_idle`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_control::model::ClusterProtocol;

use crate::cluster::{Cluster, ClusterState, Endpoint, Settings};
use skiff_filters::balance::{Expired, Picked};
use skiff_filters::circuit_breaker::Permit;
use skiff_filters::error::{self, BoxError, ProxyError, Reason};
use skiff_filters::outlier;
use skiff_filters::route::Destination;
use skiff_filters::telemetry::RequestContext;
use skiff_filters::{Body, classify, headers};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

pub(crate) mod inline_h1;

/// A byte stream to an endpoint: plain TCP, or TLS over it when the cluster
/// originates mTLS. Boxed once per connection, never per request.
/// Sync so that a response body holding its connection (`inline_h1`) is one.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static> Io for T {}

pub type BoxIo = Box<dyn Io>;

/// Idle HTTP/1 connections kept per endpoint at most; more are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

impl Cluster {
    /// Sends `req` to the endpoint the balancer picks, and reports how it went.
    ///
    /// The cluster's state is read once: settings and endpoints swapped
    /// meanwhile apply to the next request, and this one keeps its endpoint
    /// (and its pool) alive until it ends.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let start = Instant::now();
        let state = self.state();
        if let Some(rewrite) = state.settings.passthrough {
            return self.send_through(&state, rewrite, req, start).await;
        }
        let Ok(i) = state.set.balancer.pick(&req, start) else {
            return Err(ProxyError::new(
                Reason::NoHealthyEndpoints,
                format!(
                    "cluster {}: every endpoint is ejected or unhealthy",
                    self.name
                ),
            )
            .into());
        };
        let ep = &state.set.endpoints[i];
        if let Some(slot) = req.extensions().get::<Picked>() {
            slot.set(ep.id());
        }
        let span = match req.extensions().get::<Arc<RequestContext>>().cloned() {
            Some(cx) => cx.attempt(&ep.stats, &mut req),
            None => None,
        };
        let _in_flight = ep.stats.start();
        // If a timeout above drops this attempt, the guard reports it as a
        // failure: an endpoint that accepts and never answers must lose
        // traffic and be ejected like one that refuses (Envoy counts
        // timeouts as 5xx). A client hanging up is nobody's failure.
        let mut outcome = Outcome {
            cluster: self,
            state: &state,
            index: i,
            start,
            reported: false,
            expired: req.extensions().get::<Expired>().cloned(),
        };
        let result = state.settings.send_to(ep, req).await;
        if let Some(span) = span {
            span.end(result.as_ref().ok().map(|r| r.status().as_u16()));
        }
        let failed = match &result {
            Ok(rsp) => {
                rsp.status().is_server_error() || classify::grpc_status(rsp.headers()) == Some(14)
            }
            // Only failures of the endpoint count against it: not a client's
            // broken body (bad-request), not a local breaker refusal
            // (circuit-open), which carry no endpoint.
            Err(e) => e.endpoint().is_some(),
        };
        outcome.report(failed);
        Ok(result?)
    }

    /// Sends `req` where its connection was going (a passthrough cluster):
    /// the address its transparent listener read, or `rewrite` at its port.
    async fn send_through(
        &self,
        state: &ClusterState,
        rewrite: Option<std::net::IpAddr>,
        req: Request<Body>,
        start: Instant,
    ) -> Result<Response<Body>, BoxError> {
        let to = destination(self, rewrite, req.extensions().get::<Destination>())?;
        let ep = self.destination(to, &state.settings);
        if let Some(slot) = req.extensions().get::<Picked>() {
            slot.set(ep.id());
        }
        let _in_flight = ep.stats.start();
        let result = state.settings.send_to(&ep, req).await;
        let failed = match &result {
            Ok(rsp) => rsp.status().is_server_error(),
            Err(e) => e.endpoint().is_some(),
        };
        let now = Instant::now();
        ep.stats.observe(now - start, failed, now);
        Ok(result?)
    }

    /// Feeds the outcome of a request to `state.set.endpoints[i]` to the
    /// latency estimate and to outlier detection.
    fn report(&self, state: &ClusterState, i: usize, start: Instant, failed: bool) {
        let Some(ep) = state.set.endpoints.get(i) else {
            return;
        };
        let now = Instant::now();
        ep.stats.observe(now - start, failed, now);
        let s = &state.settings;
        let Some(cfg) = &s.outlier else { return };
        if outlier::report(
            cfg,
            state.set.balancer.endpoints(),
            i,
            failed,
            s.health_checked,
            now,
        ) {
            self.ejections.inc();
            warn!(
                cluster = %self.name,
                endpoint = %ep.address,
                times = ep.stats.outlier.times_ejected(),
                "endpoint ejected after consecutive failures"
            );
        }
    }
}

impl Settings {
    pub(crate) async fn send_to(
        &self,
        ep: &Arc<Endpoint>,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let upgrading = headers::is_upgrade(req.headers());
        let h2 = !upgrading
            && match self.protocol {
                ClusterProtocol::Http2 => true,
                ClusterProtocol::Http1 => false,
                ClusterProtocol::Auto => req.version() == Version::HTTP_2,
            };
        let mut rsp = if h2 {
            self.send_h2(ep, to_h2(req, &ep.address)?)
                .await?
                .map(Body::Incoming)
        } else if !upgrading && http_body::Body::is_end_stream(req.body()) {
            self.send_inline(ep, to_h1(req, &ep.address)).await?
        } else {
            self.send_h1(ep, to_h1(req, &ep.address), upgrading)
                .await?
                .map(Body::Incoming)
        };
        let switching = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(rsp.headers_mut(), switching);
        Ok(rsp)
    }

    /// Opens a pooled connection within the breaker's limits: the connection
    /// permit lives as long as the connection, the pending permit only while
    /// the request waits for it.
    async fn connect_pooled(
        &self,
        ep: &Endpoint,
        h2: bool,
    ) -> Result<(BoxIo, Option<Permit>), ProxyError> {
        let Some(breaker) = &self.policy.breaker else {
            return Ok((self.connect_as(ep, h2).await?, None));
        };
        let conn = breaker.try_connection()?;
        let _pending = breaker.try_pending()?;
        Ok((self.connect_as(ep, h2).await?, Some(conn)))
    }

    pub(crate) async fn connect(&self, ep: &Endpoint) -> Result<BoxIo, ProxyError> {
        self.connect_as(ep, false).await
    }

    /// Opens a connection to `ep`: TCP, then, when the cluster has
    /// `tls.server_identity`, an mTLS handshake offering `h2` or `http/1.1`
    /// by ALPN. A peer that fails verification (wrong identity, foreign CA,
    /// expired) fails the request as `connect-failed`, never as plaintext.
    pub(crate) async fn connect_as(&self, ep: &Endpoint, h2: bool) -> Result<BoxIo, ProxyError> {
        let tcp = self.connect_tcp(ep).await?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let handshake = tls.connect(tcp, &ep.address, h2);
        let why = match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(stream)) => return Ok(Box::new(stream)),
            Ok(Err(why)) => why,
            Err(_) => format!("no TLS handshake within {:?}", self.connect_timeout),
        };
        warn!(
            cluster = %self.name,
            endpoint = %ep.address,
            server_identity = tls.server_identity(),
            error = %why,
            "mTLS connect failed"
        );
        Err(ProxyError::new(
            Reason::ConnectFailed,
            format!("mTLS to {} (cluster {}): {why}", ep.address, self.name),
        )
        .at_endpoint(ep.id()))
    }

    async fn connect_tcp(&self, ep: &Endpoint) -> Result<TcpStream, ProxyError> {
        let fail = |why: String| {
            ProxyError::new(
                Reason::ConnectFailed,
                format!("connect to {} (cluster {}): {why}", ep.address, self.name),
            )
            .at_endpoint(ep.id())
        };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*ep.address))
            .await
            .map_err(|_| fail(format!("no answer within {:?}", self.connect_timeout)))?
            .map_err(|e| fail(e.to_string()))?;
        // Small writes (headers, gRPC frames) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn send_h1(
        &self,
        ep: &Endpoint,
        mut req: Request<Body>,
        upgrading: bool,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        // A pooled connection may have been closed by the server just now; if
        // hyper hands the request back unsent, it is safe to try a fresh one.
        while let Some(mut conn) = self.checkout_h1(ep) {
            match conn.try_send_request(req).await {
                Ok(rsp) => {
                    self.checkin_h1(ep, conn, upgrading);
                    return Ok(rsp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        debug!(endpoint = %ep.address, "pooled connection closed, trying another");
                        req = unsent;
                    }
                    None => return Err(reset_hyper(ep, e.into_error())),
                },
            }
        }
        // Boxed: connecting (TCP, maybe TLS) is the rare path, and its large
        // future would otherwise be copied with every request's future.
        let mut conn = Box::pin(self.new_h1(ep)).await?;
        let rsp = conn
            .send_request(req)
            .await
            .map_err(|e| reset_hyper(ep, e))?;
        self.checkin_h1(ep, conn, upgrading);
        Ok(rsp)
    }

    /// A request without a body, over the inline HTTP/1 client: on a pooled
    /// connection if one is idle and still open, else on a new one. A pooled
    /// connection the server closed while it sat idle fails silently; the
    /// request then goes on the next one (see `inline_h1::Failed::retry`).
    async fn send_inline(
        &self,
        ep: &Arc<Endpoint>,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        while let Some(conn) = checkout_inline(ep) {
            match conn.send(&req, ep).await {
                Ok(rsp) => return Ok(rsp),
                Err(failed) if failed.retry => {
                    debug!(endpoint = %ep.address, error = %failed.error, "pooled connection closed, trying another");
                }
                Err(failed) => return Err(reset(ep, failed.error)),
            }
        }
        // Boxed, as in `send_h1`: the connect path stays out of the request's future.
        let (io, permit) = Box::pin(self.connect_pooled(ep, false)).await?;
        inline_h1::Conn::new(io, permit)
            .send(&req, ep)
            .await
            .map_err(|failed| reset(ep, failed.error))
    }

    async fn new_h1(&self, ep: &Endpoint) -> Result<http1::SendRequest<Body>, ProxyError> {
        let (io, permit) = self.connect_pooled(ep, false).await?;
        let (conn, driver) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| connect_err(ep, e))?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = driver.with_upgrades().await {
                debug!(error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(conn)
    }

    fn checkout_h1(&self, ep: &Endpoint) -> Option<http1::SendRequest<Body>> {
        let mut idle = ep.idle_h1.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(c, _)| !c.is_closed());
        let i = idle.iter().rposition(|(c, _)| c.is_ready())?;
        Some(idle.swap_remove(i).0)
    }

    /// Puts a connection back right after its response head arrived: it stays
    /// "not ready" until the body is read, and checkout skips it until then.
    fn checkin_h1(&self, ep: &Endpoint, conn: http1::SendRequest<Body>, upgrading: bool) {
        if upgrading || conn.is_closed() {
            return;
        }
        let since = ep.idle_since();
        let mut idle = ep.idle_h1.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push((conn, since));
        }
    }

    async fn send_h2(
        &self,
        ep: &Endpoint,
        mut req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        ep.h2_starts();
        if let Some(conn) = ep.h2.load_full()
            && !conn.is_closed()
        {
            let mut conn = (*conn).clone();
            match conn.try_send_request(req).await {
                Ok(rsp) => return Ok(rsp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(reset_hyper(ep, e.into_error())),
                },
            }
        }
        // Boxed for the same reason as `new_h1`: the slow path stays out of
        // every request's future.
        let mut conn = Box::pin(self.h2_connection(ep)).await?;
        conn.send_request(req).await.map_err(|e| reset_hyper(ep, e))
    }

    async fn h2_connection(&self, ep: &Endpoint) -> Result<http2::SendRequest<Body>, ProxyError> {
        let _one = ep.h2_connecting.lock().await;
        if let Some(conn) = ep.h2.load_full()
            && !conn.is_closed()
        {
            return Ok((*conn).clone());
        }
        let (io, permit) = self.connect_pooled(ep, true).await?;
        let (conn, driver) = http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| connect_err(ep, e))?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = driver.await {
                debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        ep.h2.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }
}

/// An idle inline connection that is still open, if the endpoint has one;
/// closed ones found on the way are dropped.
fn checkout_inline(ep: &Endpoint) -> Option<inline_h1::Conn> {
    let mut idle = ep.idle_inline.lock().unwrap_or_else(|p| p.into_inner());
    while let Some((mut conn, _)) = idle.pop() {
        if conn.is_open() {
            return Some(conn);
        }
    }
    None
}

/// Pools an inline connection whose exchange ended cleanly.
pub(crate) fn checkin_inline(ep: &Endpoint, conn: inline_h1::Conn) {
    let since = ep.idle_since();
    let mut idle = ep.idle_inline.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < MAX_IDLE_PER_ENDPOINT {
        idle.push((conn, since));
    }
}

fn connect_err(ep: &Endpoint, e: hyper::Error) -> ProxyError {
    ProxyError::new(
        Reason::ConnectFailed,
        format!("handshake with {}", ep.address),
    )
    .with_source(e)
    .at_endpoint(ep.id())
}

fn reset_hyper(ep: &Endpoint, e: hyper::Error) -> ProxyError {
    // hyper reports a failure of the request body it was sending as its own
    // error; when that body is the client's (`Body::Request`) and it broke
    // off, the client is to blame, and the endpoint is not named.
    if error::proxy_error(&e).is_some_and(|p| p.reason() == Reason::BadRequest) {
        // The detail goes back to the client: no address in it.
        return ProxyError::new(Reason::BadRequest, "the request body broke off").with_source(e);
    }
    reset(ep, e)
}

/// The endpoint failed before a complete response.
fn reset(ep: &Endpoint, e: impl Into<BoxError>) -> ProxyError {
    ProxyError::new(
        Reason::UpstreamReset,
        format!("{} failed before a complete response", ep.address),
    )
    .with_source(e)
    .at_endpoint(ep.id())
}

/// Reports an attempt's outcome exactly once: explicitly when it completes,
/// or as a failure when a timeout above dropped it first.
struct Outcome<'a> {
    cluster: &'a Cluster,
    state: &'a ClusterState,
    /// The endpoint's place in `state.set`.
    index: usize,
    start: Instant,
    reported: bool,
    /// The nearest timeout's flag (the retry layer's per-try one overrides
    /// the route's in an attempt's extensions, and it is the nearer one).
    expired: Option<Expired>,
}

impl Outcome<'_> {
    fn report(&mut self, failed: bool) {
        self.reported = true;
        self.cluster
            .report(self.state, self.index, self.start, failed);
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        let timed_out = self.expired.as_ref().is_some_and(Expired::is_raised);
        if !self.reported && timed_out {
            self.cluster
                .report(self.state, self.index, self.start, true);
        }
    }
}

/// HTTP/1 wants origin-form (`/path?q`) and a Host header.
fn to_h1(mut req: Request<Body>, endpoint: &str) -> Request<Body> {
    if !req.headers().contains_key(HOST) {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .unwrap_or(endpoint);
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut().insert(HOST, v);
        }
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;
    req
}

/// HTTP/2 wants an absolute URI (`:scheme`, `:authority`) and no Host header.
fn to_h2(mut req: Request<Body>, endpoint: &str) -> Result<Request<Body>, ProxyError> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => {
            let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
            Authority::try_from(host.unwrap_or(endpoint))
                .or_else(|_| Authority::try_from(endpoint))
                .map_err(|e| {
                    ProxyError::new(Reason::UpstreamReset, "no usable authority").with_source(e)
                })?
        }
    };
    req.headers_mut().remove(HOST);
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| ProxyError::new(Reason::UpstreamReset, "bad request URI").with_source(e))?;
    *req.version_mut() = Version::HTTP_2;
    Ok(req)
}

// === impl ClusterService ===

/// The cluster as a tower service, the innermost service of every route stack.
#[derive(Debug, Clone)]
pub struct ClusterService(pub Arc<Cluster>);

impl tower::Service<Request<Body>> for ClusterService {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = skiff_filters::BoxFuture<Response<Body>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let cluster = self.0.clone();
        Box::pin(async move { cluster.send(req).await })
    }
}

/// Where a passthrough cluster sends what came in on a connection to `dst`.
fn destination(
    cluster: &Cluster,
    rewrite: Option<std::net::IpAddr>,
    dst: Option<&Destination>,
) -> Result<SocketAddr, ProxyError> {
    let Some(Destination(dst)) = dst else {
        return Err(ProxyError::new(
            Reason::NoHealthyEndpoints,
            format!(
                "cluster {}: original_destination needs a transparent listener (this connection has no original destination)",
                cluster.name
            ),
        ));
    };
    Ok(match rewrite {
        Some(ip) => SocketAddr::new(ip, dst.port()),
        None => *dst,
    })
}

/// Opens a plain TCP connection to the cluster's next endpoint (tcp
/// listeners), or for a passthrough cluster to where the connection was
/// going (`dst`, from a transparent listener).
pub async fn connect_tcp(
    cluster: &Cluster,
    dst: Option<&Destination>,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let state = cluster.state();
    if let Some(rewrite) = state.settings.passthrough {
        let to = destination(cluster, rewrite, dst)?;
        let ep = cluster.destination(to, &state.settings);
        let stream = state.settings.connect_tcp(&ep).await?;
        return Ok((stream, to));
    }
    let i = state
        .set
        .balancer
        .pick(&Request::new(()), Instant::now())
        .map_err(|_| {
            ProxyError::new(
                Reason::NoHealthyEndpoints,
                format!(
                    "cluster {}: every endpoint is ejected or unhealthy",
                    cluster.name
                ),
            )
        })?;
    let ep = &state.set.endpoints[i];
    let start = Instant::now();
    let result = state.settings.connect_tcp(ep).await;
    cluster.report(&state, i, start, result.is_err());
    let stream = result?;
    let peer = stream
        .peer_addr()
        .map_err(|e| ProxyError::new(Reason::ConnectFailed, "peer address").with_source(e))?;
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h1_and_h2_forms() {
        let req = Request::builder()
            .uri("http://api.local:8080/x?y=1")
            .version(Version::HTTP_2)
            .body(Body::Empty)
            .unwrap();
        let h1 = to_h1(req, "10.0.0.1:80");
        assert_eq!(h1.uri(), "/x?y=1");
        assert_eq!(h1.headers()[HOST], "api.local:8080");

        let req = Request::builder()
            .uri("/x")
            .header(HOST, "web.local")
            .body(Body::Empty)
            .unwrap();
        let h2 = to_h2(req, "10.0.0.1:80").unwrap();
        assert_eq!(h2.uri(), "http://web.local/x");
        assert!(!h2.headers().contains_key(HOST));
    }
}
