//! One downstream HTTP connection: hyper serves it, and every request goes
//! through `Handler::handle`: route, the route's filter stack, the upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use skiff_control::model::Direction;
use skiff_filters::authz::PeerIdentity;
use skiff_filters::error::{self, Reason};
use skiff_filters::telemetry::Recorder;
use skiff_filters::{Body, classify, headers};
use tower::ServiceExt;
use tracing::debug;

use crate::app::Shared;
use crate::protocol::PrefaceDeadline;
use crate::shutdown::Watch;

/// What a request needs to know about the listener it arrived on.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: Arc<str>,
    pub direction: Direction,
    /// The route table serving this listener.
    pub routes: String,
    /// `header_timeout`: how long a new connection may take to show its
    /// protocol (see `protocol::PrefaceDeadline`) and, for HTTP/1, to send
    /// each request head.
    pub header_timeout: Duration,
}

/// Serves requests of one listener; cloned per connection (two `Arc`s,
/// and the peer's identity once an mTLS handshake has told it).
#[derive(Clone)]
pub struct Handler {
    pub shared: Arc<Shared>,
    pub listener: Arc<ListenerCtx>,
    /// The connection's verified SPIFFE ID; `None` for plaintext.
    pub peer: Option<PeerIdentity>,
}

impl Handler {
    /// `drain` is the connection's: an upgraded connection outlives the
    /// HTTP exchange, and holds it so the drain waits for (then cuts) it.
    pub async fn handle(self, mut req: Request<Incoming>, drain: &Arc<Watch>) -> Response<Body> {
        let mut rec = Recorder::new(
            self.shared.metrics.clone(),
            self.listener.direction.as_str(),
            self.listener.name.clone(),
            Instant::now(),
        );
        if let Some(peer) = &self.peer {
            rec.peer_identity = peer.0.clone();
        }
        let grpc = classify::is_grpc(req.headers());
        if let Some(why) = host_problem(&req) {
            debug!(listener = %self.listener.name, why, "bad request");
            return finish(error::reply(Reason::BadRequest, why, grpc), rec);
        }
        let upgrading = req.version() <= Version::HTTP_11 && headers::is_upgrade(req.headers());
        let downstream_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        headers::strip_hop_by_hop(req.headers_mut(), upgrading);
        headers::ensure_request_id(req.headers_mut());
        debug!(
            listener = %self.listener.name,
            method = %req.method(),
            path = req.uri().path(),
            peer_identity = self.peer.as_ref().map_or("none", |p| &*p.0),
            "request"
        );

        let service = {
            let runtime = self.shared.runtime.load();
            // Who is asking, for authorization: the listener's direction
            // (rules apply inbound only) and the mTLS peer, if any. Only
            // when there are rules: each extension costs allocations, and
            // without rules nothing reads them.
            if !runtime.snapshot.config.authorization.is_empty() {
                req.extensions_mut().insert(self.listener.direction);
                if let Some(peer) = &self.peer {
                    req.extensions_mut().insert(peer.clone());
                }
            }
            match runtime.route(&self.listener.routes, &req) {
                Some((route, target)) => {
                    rec.route = route.label.clone();
                    rec.cluster = target.cluster.clone();
                    target.service.clone()
                }
                None => {
                    let msg = format!("no route for {} {}", req.method(), req.uri().path());
                    return finish(error::reply(Reason::NoRoute, &msg, grpc), rec);
                }
            }
        };

        let mut rsp = match service.oneshot(req.map(Body::Request)).await {
            Ok(rsp) => rsp,
            Err(e) => {
                debug!(listener = %self.listener.name, route = %rec.route, error = %e, "request failed");
                error::respond(&*e, grpc)
            }
        };
        if let Some(downstream) = downstream_upgrade
            && rsp.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream = hyper::upgrade::on(&mut rsp);
            tokio::spawn(tunnel(downstream, upstream, Watch::clone(drain)));
        }
        finish(rsp, rec)
    }
}

/// Why a request's `Host` makes it unfit to forward, per RFC 9112 §3.2: an
/// HTTP/1.1 request must carry exactly one `Host` (an absolute-form target
/// names its authority itself, so it may go without), and no request may
/// carry two, which would let the proxy and the upstream see different hosts.
/// HTTP/1.0 may go without one; HTTP/2 has `:authority`.
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    if req.version() > Version::HTTP_11 {
        return None;
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Some("more than one Host header"),
        (None, None) if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
            Some("HTTP/1.1 request without a Host header")
        }
        _ => None,
    }
}

/// Attaches the telemetry record to the response: streamed bodies record at
/// their end, bodies Skiff made record now.
fn finish(rsp: Response<Body>, mut rec: Recorder) -> Response<Body> {
    rec.observe_head(rsp.status().as_u16(), rsp.headers());
    rsp.map(|body| body.with_recorder(rec))
}

/// Relays bytes both ways once both sides agreed to switch protocols.
async fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade, mut drain: Watch) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut down, &mut up) => {
            if let Err(e) = res {
                debug!(error = %e, "upgraded connection ended");
            }
        }
        // A byte stream has no graceful close: it runs until the drain
        // timeout, like a tcp relay.
        _ = drain.terminated() => debug!("drain timeout: upgraded connection closed"),
    }
}

/// Serves one accepted connection until it closes, shutting it down
/// gracefully (GOAWAY / `Connection: close`) when the drain starts.
pub async fn serve_connection<I>(
    io: I,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Handler,
    mut drain: Watch,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let io = PrefaceDeadline::new(io, handler.listener.header_timeout);
    let for_tunnels = Arc::new(drain.clone());
    let service = service_fn(move |req| {
        let (h, d) = (handler.clone(), for_tunnels.clone());
        async move { Ok::<_, std::convert::Infallible>(h.handle(req, &d).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => return log_end(res),
        _ = drain.draining() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        res = conn => log_end(res),
        _ = drain.terminated() => debug!("drain timeout: connection closed"),
    }
}

fn log_end(res: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = res {
        debug!(error = %e, "downstream connection ended with an error");
    }
}
