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

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_control::model::{self, ClusterProtocol};
use skiff_filters::error::{BoxError, ProxyError, Reason};
use skiff_filters::{Body, headers};
use tokio::net::TcpStream;
use tracing::debug;

/// A byte stream to an endpoint: plain TCP, or TLS over it when the cluster
/// originates mTLS. Boxed once per connection, never per request.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

pub type BoxIo = Box<dyn Io>;

/// Idle HTTP/1 connections kept per endpoint at most; more are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// One upstream address and its connections.
#[derive(Debug)]
pub struct Endpoint {
    pub address: String,
    pub weight: u32,
    in_flight: AtomicU64,
    idle_h1: Mutex<Vec<http1::SendRequest<Body>>>,
    h2: ArcSwapOption<http2::SendRequest<Body>>,
    /// Serialises HTTP/2 connects so a burst opens one connection, not many.
    h2_connecting: tokio::sync::Mutex<()>,
}

impl Endpoint {
    fn new(address: String, weight: u32) -> Self {
        Self {
            address,
            weight,
            in_flight: AtomicU64::new(0),
            idle_h1: Mutex::new(Vec::new()),
            h2: ArcSwapOption::empty(),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A cluster: its endpoints and how to talk to them.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
    protocol: ClusterProtocol,
    connect_timeout: Duration,
    /// Endpoint indexes repeated by weight, walked in turn (weighted round robin).
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl Cluster {
    pub fn from_config(name: &str, c: &model::Cluster) -> Self {
        let endpoints: Vec<_> = c
            .endpoints
            .iter()
            .map(|e| Arc::new(Endpoint::new(e.address.clone(), e.weight)))
            .collect();
        Self {
            name: Arc::from(name),
            schedule: interleave(&endpoints),
            endpoints,
            protocol: c.protocol,
            connect_timeout: c.connect_timeout.get(),
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> Option<&Arc<Endpoint>> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        self.endpoints.get(self.schedule[n])
    }

    /// Sends `req` to the next endpoint.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let Some(ep) = self.pick() else {
            return Err(ProxyError::new(
                Reason::NoHealthyEndpoints,
                format!("cluster {} has no endpoints", self.name),
            )
            .into());
        };
        let upgrading = headers::is_upgrade(req.headers());
        let h2 = !upgrading
            && match self.protocol {
                ClusterProtocol::Http2 => true,
                ClusterProtocol::Http1 => false,
                ClusterProtocol::Auto => req.version() == Version::HTTP_2,
            };
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        let _done = InFlight(ep);
        let rsp = if h2 {
            self.send_h2(ep, to_h2(req, &ep.address)?).await?
        } else {
            self.send_h1(ep, to_h1(req, &ep.address), upgrading).await?
        };
        let mut rsp = rsp.map(Body::Incoming);
        let switching = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(rsp.headers_mut(), switching);
        Ok(rsp)
    }

    /// Opens a connection to `ep` ready for HTTP: TCP, then TLS if configured.
    async fn connect(&self, ep: &Endpoint) -> Result<BoxIo, ProxyError> {
        let tcp = self.connect_tcp(ep).await?;
        Ok(Box::new(tcp))
    }

    async fn connect_tcp(&self, ep: &Endpoint) -> Result<TcpStream, ProxyError> {
        let fail = |why: String| {
            ProxyError::new(
                Reason::ConnectFailed,
                format!("connect to {} (cluster {}): {why}", ep.address, self.name),
            )
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
    ) -> Result<Response<hyper::body::Incoming>, BoxError> {
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
                    None => return Err(reset(ep, e.into_error())),
                },
            }
        }
        let io = TokioIo::new(self.connect(ep).await?);
        let (mut conn, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| connect_err(ep, e))?;
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                debug!(error = %e, "upstream HTTP/1 connection ended");
            }
        });
        let rsp = conn.send_request(req).await.map_err(|e| reset(ep, e))?;
        self.checkin_h1(ep, conn, upgrading);
        Ok(rsp)
    }

    fn checkout_h1(&self, ep: &Endpoint) -> Option<http1::SendRequest<Body>> {
        let mut idle = ep.idle_h1.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| !c.is_closed());
        let i = idle.iter().rposition(|c| c.is_ready())?;
        Some(idle.swap_remove(i))
    }

    /// Puts a connection back right after its response head arrived: it stays
    /// "not ready" until the body is read, and checkout skips it until then.
    fn checkin_h1(&self, ep: &Endpoint, conn: http1::SendRequest<Body>, upgrading: bool) {
        if upgrading || conn.is_closed() {
            return;
        }
        let mut idle = ep.idle_h1.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(conn);
        }
    }

    async fn send_h2(
        &self,
        ep: &Endpoint,
        mut req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, BoxError> {
        if let Some(conn) = ep.h2.load_full()
            && !conn.is_closed()
        {
            let mut conn = (*conn).clone();
            match conn.try_send_request(req).await {
                Ok(rsp) => return Ok(rsp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(reset(ep, e.into_error())),
                },
            }
        }
        let mut conn = self.h2_connection(ep).await?;
        conn.send_request(req).await.map_err(|e| reset(ep, e))
    }

    async fn h2_connection(&self, ep: &Endpoint) -> Result<http2::SendRequest<Body>, BoxError> {
        let _one = ep.h2_connecting.lock().await;
        if let Some(conn) = ep.h2.load_full()
            && !conn.is_closed()
        {
            return Ok((*conn).clone());
        }
        let io = TokioIo::new(self.connect(ep).await?);
        let (conn, driver) = http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .handshake(io)
            .await
            .map_err(|e| connect_err(ep, e))?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        ep.h2.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }
}

/// Spreads each endpoint's turns across the schedule instead of in a run, so
/// weight 3 vs 1 goes a,b,a,a rather than a,a,a,b.
fn interleave(endpoints: &[Arc<Endpoint>]) -> Vec<usize> {
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    let mut current = vec![0i64; endpoints.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        // Smooth weighted round robin (as nginx): add weights, take the
        // largest, subtract the total from it.
        for (c, e) in current.iter_mut().zip(endpoints) {
            *c += i64::from(e.weight);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
        else {
            break;
        };
        current[best] -= total as i64;
        schedule.push(best);
    }
    schedule
}

struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn connect_err(ep: &Endpoint, e: hyper::Error) -> BoxError {
    ProxyError::new(
        Reason::ConnectFailed,
        format!("handshake with {}", ep.address),
    )
    .with_source(e)
    .into()
}

fn reset(ep: &Endpoint, e: hyper::Error) -> BoxError {
    ProxyError::new(
        Reason::UpstreamReset,
        format!("{} failed before a complete response", ep.address),
    )
    .with_source(e)
    .into()
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
fn to_h2(mut req: Request<Body>, endpoint: &str) -> Result<Request<Body>, BoxError> {
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
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let cluster = self.0.clone();
        Box::pin(async move { cluster.send(req).await })
    }
}

/// Opens a plain TCP connection to the cluster's next endpoint (tcp listeners).
pub async fn connect_tcp(cluster: &Cluster) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let ep = cluster.pick().ok_or_else(|| {
        ProxyError::new(
            Reason::NoHealthyEndpoints,
            format!("cluster {} has no endpoints", cluster.name),
        )
    })?;
    let stream = cluster.connect_tcp(ep).await?;
    let peer = stream
        .peer_addr()
        .map_err(|e| ProxyError::new(Reason::ConnectFailed, "peer address").with_source(e))?;
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_schedule_is_smooth() {
        let eps: Vec<_> = [("a", 3), ("b", 1)]
            .iter()
            .map(|(a, w)| Arc::new(Endpoint::new(a.to_string(), *w)))
            .collect();
        assert_eq!(interleave(&eps), vec![0, 0, 1, 0]);
        let eps: Vec<_> = [("a", 1), ("b", 1), ("c", 1)]
            .iter()
            .map(|(a, w)| Arc::new(Endpoint::new(a.to_string(), *w)))
            .collect();
        assert_eq!(interleave(&eps), vec![0, 1, 2]);
    }

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
