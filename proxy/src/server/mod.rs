//! One downstream HTTP connection, and every request on it through
//! `Handler::handle`: route, the route's filter stack, the upstream.
//! HTTP/1 connections are served by Skiff's own server (`h1`), HTTP/2
//! connections by hyper's.

pub mod h1;
pub mod h2_frames;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderValue, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode, Version};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use skiff_control::model::Direction;
use skiff_filters::access_log::AccessLog;
use skiff_filters::authz::PeerIdentity;
use skiff_filters::body::RequestBody;
use skiff_filters::error::{self, Reason};
use skiff_filters::telemetry::{AccessFields, CloseHook, Recorder, RequestContext};
use skiff_filters::{Body, classify, headers};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::app::Shared;
use crate::listener::Hold;
use crate::panics;
use crate::protocol::{self, HeadLimits, Prefixed, Servers, Spoken};
use crate::shutdown::Watch;

/// What a request needs to know about the listener it arrived on.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: Arc<str>,
    /// The socket's key: how the runtime finds this listener's route table
    /// (stable across renames and while a removed listener drains).
    pub key: Arc<str>,
    pub direction: Direction,
    /// `header_timeout`: how long a new connection may take to show its
    /// protocol (see `protocol::sniff`) and, for HTTP/1, to send each
    /// request head.
    pub header_timeout: Duration,
    /// `max_request_headers_kb` and `max_request_headers_count`.
    pub limits: HeadLimits,
    /// `idle_timeout`: an HTTP/2 connection without a new request for this
    /// long is sent GOAWAY.
    pub idle_timeout: Duration,
    /// `stream_idle_timeout`: a request or response body that yields
    /// nothing for this long while it streams fails.
    pub stream_idle_timeout: Duration,
}

/// Serves requests of one listener; cloned per connection (two `Arc`s,
/// and the peer's identity once an mTLS handshake has told it).
#[derive(Clone)]
pub struct Handler {
    pub shared: Arc<Shared>,
    pub listener: Arc<ListenerCtx>,
    /// The connection's verified SPIFFE ID; `None` for plaintext.
    pub peer: Option<PeerIdentity>,
    /// `x-forwarded-client-cert` for the peer, made once per connection.
    pub xfcc: Option<http::HeaderValue>,
    /// Where the connection was originally going (a transparent listener):
    /// set on each request for `match.port` and passthrough clusters.
    pub dst: Option<std::net::SocketAddr>,
    /// The connection's place in the counts and limits (`listener::Hold`),
    /// set per connection: a tunnel it opens keeps it. Past
    /// `overload.max_connections`, each request on the connection is
    /// answered 503 `overloaded`; HTTP/1 closes after it, HTTP/2 is sent
    /// GOAWAY with it (`go_away`).
    pub hold: Option<Arc<Hold>>,
    /// Set on a shed HTTP/2 connection: notified with its first answer, so
    /// that the connection is sent GOAWAY.
    pub go_away: Option<Arc<Notify>>,
}

impl Handler {
    /// This connection's place in the counts and limits.
    pub fn hold(&mut self, hold: &Arc<Hold>) {
        self.hold = Some(hold.clone());
    }

    /// Whether the connection came past the process's connection budget.
    fn shed(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| h.shed())
    }

    /// The connection's verified identity, and its `x-forwarded-client-cert`.
    pub fn set_peer(&mut self, peer: Option<PeerIdentity>) {
        self.xfcc = peer
            .as_ref()
            .and_then(|p| http::HeaderValue::from_str(&format!("URI={}", p.0)).ok());
        self.peer = peer;
    }

    /// `drain` is the connection's: an upgraded connection outlives the
    /// HTTP exchange, and holds it so the drain waits for (then cuts) it.
    ///
    /// A function returning an `async` block, not an `async fn`: an `async
    /// fn` keeps each argument twice in its future (the request is 312
    /// bytes), and every request's future is moved into its box whole
    /// (docs/benchmarks.md, "Future sizes").
    pub fn handle<'a>(
        &'a self,
        req: Request<RequestBody>,
        drain: &'a Arc<Watch>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'a {
        self.handle_timed(req, drain, None)
    }

    /// [`Handler::handle`], with a timer the connection lends for the wait
    /// for the response head (`head_within`): Skiff's HTTP/1 server lends
    /// its head timer, idle while a request is served, so that a request
    /// registers no timer of its own.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn handle_timed<'a>(
        &'a self,
        mut req: Request<RequestBody>,
        drain: &'a Arc<Watch>,
        timer: Option<Pin<&'a mut tokio::time::Sleep>>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'a {
        async move {
            #[cfg(feature = "panic-probe")]
            if req.headers().contains_key("skiff-test-panic") {
                panic!("panic probe: the request asked for it");
            }
            let start = Instant::now();
            let mut rec = Recorder::new(
                self.shared.metrics.clone(),
                self.listener.direction.as_str(),
                self.listener.name.clone(),
                start,
            );
            if let Some(peer) = &self.peer {
                rec.peer_identity = peer.0.clone();
            }
            if let Some(dst) = self.dst {
                req.extensions_mut()
                    .insert(skiff_filters::route::Destination(dst));
            }
            if self.listener.direction == Direction::Inbound {
                forwarded_client_cert(&mut req, self.xfcc.as_ref());
            }
            let grpc = classify::is_grpc(req.headers());
            // The head is checked as the client sent it, before Skiff adds to it.
            let admitted = if self.shed() || self.shared.overload.memory_over() {
                Err(Refusal {
                    reason: Reason::Overloaded,
                    counted_as: "overloaded",
                    message: Reason::Overloaded.text(),
                })
            } else {
                admit(&mut req, self.listener.limits)
            };
            headers::ensure_request_id(req.headers_mut());
            // Kept for the answer and log line of a failure: copied onto the
            // stack, since cloning a header value Skiff generated would allocate.
            let request_id = RequestId::of(req.headers());
            // The request's context, made now only when the running config has
            // an access log (tracing makes one later if it samples).
            let mut context = self.shared.runtime.load().access_log.clone().map(|sink| {
                let cx = Arc::new(RequestContext::logged(access_fields(sink, &req)));
                rec.access = Some(cx.clone());
                req.extensions_mut().insert(cx.clone());
                cx
            });
            if let Err(refusal) = admitted {
                self.shared
                    .metrics
                    .refused(&self.listener.name, refusal.counted_as);
                self.log_failure(
                    refusal.reason,
                    ("", ""),
                    request_id.as_str(),
                    refusal.message,
                );
                let mut rsp = error::reply(refusal.reason, refusal.message, grpc);
                if self.shed() && req.version() <= Version::HTTP_11 {
                    // hyper closes the connection after this answer.
                    rsp.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                if let Some(go_away) = &self.go_away {
                    go_away.notify_one();
                }
                return finish(stamp(rsp, &request_id), rec, &self.listener);
            }
            // Only a connection that can switch protocols (Skiff's HTTP/1
            // server marks a request without a body that asks to) forwards
            // the ask: otherwise `Upgrade` goes as the hop-by-hop header it is,
            // and no upstream can answer 101 on a connection that stays HTTP.
            let downstream_upgrade = req
                .extensions_mut()
                .remove::<h1::OnUpgrade>()
                .and_then(|u| u.take());
            let upgrading = downstream_upgrade.is_some();
            headers::strip_hop_by_hop(req.headers_mut(), upgrading);
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
                match runtime.route(&self.listener.key, &req) {
                    Some((route, target)) => {
                        rec.route = route.label.clone();
                        rec.cluster = target.cluster.clone();
                        rec.meters = Some(target.meters.clone());
                        if let Some(tracing) = &runtime.tracing
                            && let Some(span) = tracing.begin(&mut req, &route.label)
                        {
                            // The attempts' spans hang from it, through the
                            // request's context (made now if the access log
                            // did not make one).
                            let cx = context.get_or_insert_with(|| {
                                let cx = Arc::new(RequestContext::default());
                                req.extensions_mut().insert(cx.clone());
                                cx
                            });
                            cx.trace(Box::new(span.clone()));
                            cx.set_trace(|| span.traceparent());
                            rec.on_close =
                                Some(CloseHook::new(move |code, grpc| span.end(code, grpc)));
                        } else if let Some(cx) = &context
                            && cx.came_untraced()
                        {
                            // A trace Skiff started and did not sample.
                            cx.set_trace(|| req.headers().get("traceparent").cloned());
                        }
                        target.service.clone()
                    }
                    None => {
                        let detail = format!("no route for {} {}", req.method(), req.uri().path());
                        self.log_failure(Reason::NoRoute, ("", ""), request_id.as_str(), &detail);
                        let rsp = error::reply(Reason::NoRoute, Reason::NoRoute.text(), grpc);
                        return finish(stamp(rsp, &request_id), rec, &self.listener);
                    }
                }
            };

            let idle = self.listener.stream_idle_timeout;
            let streaming = req.body_mut().streaming();
            let req = req.map(|body| {
                let body = body.idle_after(idle);
                Body::Request(match context {
                    Some(cx) => body.counted(cx),
                    None => body,
                })
            });
            let head_by = tokio::time::Instant::from_std(start) + idle;
            let exchange = service.oneshot(req);
            let mut rsp = match head_within(exchange, head_by, idle, streaming, timer).await {
                Ok(rsp) => rsp,
                Err(e) => {
                    // The whole story (endpoint addresses, causes) goes to the
                    // log; the caller gets the reason and a short text.
                    let reason = error::reason_of(&*e);
                    let chain = error::render_chain(&*e);
                    self.log_failure(
                        reason,
                        (&rec.route, &rec.cluster),
                        request_id.as_str(),
                        &chain,
                    );
                    error::respond(&*e, grpc)
                }
            };
            // Skiff's own version, not the upstream's (RFC 9110 §6.2): an
            // HTTP/1.0 upstream's answer must not turn a keep-alive HTTP/1.1
            // client connection into an HTTP/1.0 one that closes.
            *rsp.version_mut() = Version::HTTP_11;
            if let Some(downstream) = downstream_upgrade
                && rsp.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                let upstream = hyper::upgrade::on(&mut rsp);
                // The tunnel outlives this exchange and its connection's task:
                // it keeps the connection counted, and its own panics contained.
                let cx = panics::Context {
                    listener: self.listener.name.clone(),
                    metrics: self.shared.metrics.clone(),
                };
                let (hold, drain) = (self.hold.clone(), Watch::clone(drain));
                tokio::spawn(panics::contained(
                    cx,
                    None,
                    hold,
                    tunnel(downstream, upstream, drain),
                ));
            }
            finish(stamp(rsp, &request_id), rec, &self.listener)
        }
    }
}

impl Handler {
    /// Logs an answer Skiff made before any request was read.
    fn log_refusal(&self, reason: Reason, detail: &str) {
        self.log_failure(reason, ("", ""), None, detail);
    }

    /// One `warn` line per proxy-made answer, within the log's budget
    /// (`error_log`): reason, listener, route, cluster, request id, and the
    /// whole cause chain.
    fn log_failure(
        &self,
        reason: Reason,
        (route, cluster): (&str, &str),
        request_id: Option<&str>,
        detail: &str,
    ) {
        let Some(dropped) = self.shared.errors.admit(std::time::Instant::now()) else {
            return;
        };
        if dropped > 0 {
            warn!(
                dropped,
                "proxy-made answers not logged in the last second (rate limit)"
            );
        }
        warn!(
            skiff_error = %reason,
            listener = %self.listener.name,
            route,
            cluster,
            request_id = request_id.unwrap_or(""),
            error = detail,
            "proxy answered"
        );
    }
}

/// A request's access-log fields, from handles it already holds.
fn access_fields<B>(sink: Arc<AccessLog>, req: &Request<B>) -> AccessFields {
    let h = req.headers();
    AccessFields {
        sink,
        time: std::time::SystemTime::now(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        host: h.get(HOST).cloned(),
        version: req.version(),
        request_id: h.get(&headers::REQUEST_ID).cloned(),
        traceparent: h.get("traceparent").cloned(),
    }
}

/// The header that marks an answer Skiff made.
const SKIFF_ERROR: &str = "skiff-error";

/// A request's `x-request-id`, copied into a fixed buffer so the failure
/// path can name it after the request has gone down the stack; ids longer
/// than the buffer (Skiff's own are 36 bytes) are not named.
struct RequestId {
    buf: [u8; 64],
    len: usize,
}

impl RequestId {
    fn of(map: &http::HeaderMap) -> Self {
        let mut id = Self {
            buf: [0; 64],
            len: 0,
        };
        if let Some(v) = map.get(&headers::REQUEST_ID)
            && v.len() <= id.buf.len()
        {
            id.buf[..v.len()].copy_from_slice(v.as_bytes());
            id.len = v.len();
        }
        id
    }

    fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.buf[..self.len])
            .ok()
            .filter(|s| !s.is_empty())
    }
}

/// Why Skiff refuses a request before routing it.
struct Refusal {
    reason: Reason,
    /// The `reason` label of `skiff_downstream_refusals_total`.
    counted_as: &'static str,
    /// For the caller: about its own request, never about the inside.
    message: &'static str,
}

/// Checks a request's head before it is routed, and makes routing,
/// authorization, logs and the upstream agree on one authority: an
/// absolute-form target (`GET http://a.example/ HTTP/1.1`) or an HTTP/2
/// `:authority` names the host, and a `Host` header saying otherwise is
/// replaced by it (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
fn admit<B>(req: &mut Request<B>, limits: HeadLimits) -> Result<(), Refusal> {
    if let Some(why) = host_problem(req) {
        return Err(Refusal {
            reason: Reason::BadRequest,
            counted_as: "bad-host",
            message: why,
        });
    }
    if req.version() <= Version::HTTP_11 && !codings_known(req) {
        return Err(Refusal {
            reason: Reason::UnknownCoding,
            counted_as: "unknown-coding",
            message: "only the chunked transfer coding is implemented",
        });
    }
    let (bytes, fields) = head_size(req);
    if bytes > limits.bytes || fields > limits.count {
        return Err(Refusal {
            reason: Reason::HeadTooLarge,
            counted_as: "head-too-large",
            message: if fields > limits.count {
                "too many request header fields"
            } else {
                "request headers too large"
            },
        });
    }
    // Only a `Host` that disagrees is rewritten: a request without one keeps
    // its authority in the URI, where routing reads it and the upstream path
    // puts it (`Host` for HTTP/1, `:authority` for HTTP/2), so the common
    // HTTP/2 request costs nothing here.
    if let Some(authority) = req.uri().authority() {
        let host = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, h)| h);
        if req
            .headers()
            .get(HOST)
            .is_some_and(|h| h.as_bytes() != host.as_bytes())
        {
            // An authority that parsed as a URI is a valid header value.
            if let Ok(v) = HeaderValue::from_str(host) {
                req.headers_mut().insert(HOST, v);
            }
        }
    }
    Ok(())
}

/// Whether every transfer coding is one Skiff can frame a body by: hyper
/// refuses a last coding other than `chunked`, but forwards `x, chunked` as
/// if `x` were not there.
fn codings_known<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .all(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A request head's size as Envoy counts it for `max_request_headers_kb`
/// (names and values, the target included), and its number of fields.
fn head_size<B>(req: &Request<B>) -> (usize, usize) {
    let h = req.headers();
    let bytes = h
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum::<usize>()
        + req.method().as_str().len()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    (bytes, h.len())
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
/// Gives an answer Skiff made (it carries `skiff-error`, whichever filter
/// made it) the request's id, so that a caller who reports it can be found
/// in the logs: in `x-request-id`, and at the end of a text body. A
/// backend's own answers pass untouched.
fn stamp(mut rsp: Response<Body>, id: &RequestId) -> Response<Body> {
    if !rsp.headers().contains_key(SKIFF_ERROR) {
        return rsp;
    }
    let Some(text) = id.as_str() else {
        return rsp;
    };
    if let Ok(value) = http::HeaderValue::from_str(text) {
        rsp.headers_mut().insert(&headers::REQUEST_ID, value);
    }
    if let Body::Full(Some(said)) = rsp.body() {
        let said = String::from_utf8_lossy(said);
        let body = format!("{} (request id {text})\n", said.trim_end());
        *rsp.body_mut() = Body::full(body);
    }
    rsp
}

fn finish(rsp: Response<Body>, mut rec: Recorder, listener: &ListenerCtx) -> Response<Body> {
    rec.observe_head(rsp.status().as_u16(), rsp.headers());
    let idle = listener.stream_idle_timeout;
    rsp.map(|body| body.with_recorder(rec, Some(idle)))
}

/// Relays bytes both ways once both sides agreed to switch protocols.
async fn tunnel(downstream: h1::Switched, upstream: hyper::upgrade::OnUpgrade, mut drain: Watch) {
    let (mut down, up) = match tokio::join!(downstream, upstream) {
        (Ok(down), Ok(up)) => (down, up),
        (Err(e), _) => {
            debug!(error = %e, "upgrade failed downstream");
            return;
        }
        (_, Err(e)) => {
            debug!(error = %e, "upgrade failed upstream");
            return;
        }
    };
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
///
/// The connection first shows which HTTP version it speaks
/// (`protocol::sniff`, bounded by `header_timeout`); a listener refuses a
/// version it is not configured for (`protocol::admit`).
///
/// A function returning an `async` block, not an `async fn`, for the same
/// reason as `h1::serve`: an idle connection's task keeps this state.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve_connection<I>(
    io: I,
    servers: Arc<Servers>,
    handler: Handler,
    drain: Watch,
) -> impl std::future::Future<Output = ()> + Send
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static,
{
    async move {
        let listener = handler.listener.name.clone();
        let metrics = handler.shared.metrics.clone();
        let (spoken, mut io) = match protocol::sniff(io, handler.listener.header_timeout).await {
            Ok(sniffed) => sniffed,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    metrics.refused(&listener, "header-timeout");
                }
                debug!(%listener, error = %e, "connection closed before it showed its protocol");
                return;
            }
        };
        let spoken = match protocol::admit(servers.protocol, spoken) {
            Ok(spoken) => spoken,
            Err(reply) if spoken == Spoken::Garbage => {
                metrics.refused(&listener, "malformed");
                handler.log_refusal(
                    Reason::BadRequest,
                    "the connection's first bytes are not HTTP",
                );
                let _ = io.write_all(reply).await;
                let _ = io.shutdown().await;
                return;
            }
            Err(reply) => {
                metrics.refused(&listener, "wrong-protocol");
                debug!(%listener, protocol = %servers.protocol, ?spoken, "wrong protocol: connection refused");
                let _ = io.write_all(reply).await;
                let _ = io.shutdown().await;
                return;
            }
        };
        let for_tunnels = Arc::new(drain.clone());
        // The HTTP/2 connection's future is boxed: a task is as large as the
        // largest state of its future, and an idle HTTP/1 connection, which
        // the task's own state serves, should not carry the room hyper's
        // HTTP/2 connection needs (docs/benchmarks.md).
        if spoken == Spoken::Http1 {
            // Not kept in an HTTP/1 connection's task.
            drop((servers, listener, metrics));
            h1::serve(io, handler, drain, for_tunnels).await;
        } else {
            Box::pin(serve_h2(
                io,
                servers,
                handler,
                drain,
                for_tunnels,
                listener,
                metrics,
            ))
            .await;
        }
    }
}

/// Serves an HTTP/2 connection with hyper's server until it ends or the
/// drain ends it (GOAWAY, then closed at the drain timeout).
async fn serve_h2<I>(
    io: Prefixed<I>,
    servers: Arc<Servers>,
    handler: Handler,
    mut drain: Watch,
    for_tunnels: Arc<Watch>,
    listener: Arc<str>,
    metrics: Arc<skiff_filters::telemetry::Metrics>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static,
{
    // A shed HTTP/2 connection is sent GOAWAY once its first answer (503)
    // is on its way: it opens no more streams here, closes, and gives its
    // place in the budget back. (HTTP/1 closes after the answer itself.)
    let go_away = handler.shed().then(|| Arc::new(Notify::new()));
    let mut handler = handler;
    handler.go_away = go_away.clone();
    // Requests started, for the idle timeout (`went_idle`).
    let started = Arc::new(AtomicU64::new(0));
    let counted = started.clone();
    let idle_timeout = handler.listener.idle_timeout;
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        counted.fetch_add(1, Ordering::Relaxed);
        let (h, d) = (handler.clone(), for_tunnels.clone());
        async move { Ok::<_, std::convert::Infallible>(h.handle(req.map(RequestBody::from), &d).await) }
    });
    let io = h2_frames::Watched::new(io, metrics.clone(), listener.clone());
    let conn = servers.http2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => Some(res),
        _ = drain.draining() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                res = conn => Some(res),
                _ = drain.terminated() => None,
            }
        }
        () = wind_down(go_away.as_deref(), &started, idle_timeout) => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                res = conn => Some(res),
                _ = drain.terminated() => None,
            }
        }
    };
    match res {
        Some(res) => log_end(res, &metrics, &listener),
        None => debug!("drain timeout: connection closed"),
    }
}

/// Waits for the response head until `by` (the request's start plus the
/// listener's `stream_idle_timeout`, `idle`), as Envoy's stream idle timer
/// also runs while a request waits for its answer: an upstream that takes
/// a request and never answers would otherwise hold it, and the client,
/// for as long as the route's `timeout` (none by default). While the
/// request body still streams (`streaming` set) the wait goes on, a whole
/// `idle` at a time: the body's own bound covers a stalled upload, so the
/// wait ends within one to two `idle`s after the body's end. Past it the
/// request fails with 504 `timeout`, which drops (so cancels) the upstream
/// request.
///
/// The timer is the connection's when it lends one (`Some`, HTTP/1): it
/// may be set earlier than `by`, and is then moved on when it fires, so a
/// request answered in time touches no timer at all. Without one (HTTP/2
/// streams) a timer of the request's own is registered: ~1,800
/// instructions a request (docs/benchmarks.md).
#[allow(clippy::manual_async_fn)] // on purpose: see `Handler::handle`
fn head_within<'t, F, T>(
    mut exchange: F,
    mut by: tokio::time::Instant,
    idle: Duration,
    streaming: Option<Arc<std::sync::atomic::AtomicBool>>,
    timer: Option<Pin<&'t mut tokio::time::Sleep>>,
) -> impl std::future::Future<Output = Result<T, skiff_filters::BoxError>> + 't
where
    F: std::future::Future<Output = Result<T, skiff_filters::BoxError>> + Unpin + 't,
    T: 't,
{
    async move {
        // `exchange` is polled where it was moved in (it is `Unpin`), not
        // pinned in a copy of its own.
        let mut own = std::pin::pin!(None::<tokio::time::Sleep>);
        let mut timer = match timer {
            Some(lent) => lent,
            None => {
                own.set(Some(tokio::time::sleep_until(by)));
                match own.as_mut().as_pin_mut() {
                    Some(own) => own,
                    None => return exchange.await,
                }
            }
        };
        if timer.deadline() > by {
            timer.as_mut().reset(by);
        }
        // Whether the body streamed when the wait last ran out: its end
        // may have come just before.
        let mut streamed = false;
        loop {
            tokio::select! {
                biased;
                out = &mut exchange => return out,
                () = timer.as_mut() => {
                    let now = tokio::time::Instant::now();
                    if now < by {
                        // A lent timer, set for the connection's own use.
                        timer.as_mut().reset(by);
                        continue;
                    }
                    let still = streaming.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
                    if !still && !streamed {
                        return Err(skiff_filters::ProxyError::new(
                            Reason::Timeout,
                            "no response head within the listener's stream_idle_timeout",
                        )
                        .into());
                    }
                    streamed = still;
                    by = now + idle;
                    timer.as_mut().reset(by);
                }
            }
        }
    }
}

/// Resolves when an HTTP/2 connection should be sent GOAWAY: once
/// `go_away` is notified (a shed connection's first answer), or once a
/// whole `idle` passed with no request started (`started` counts them), so
/// between one and two `idle_timeout`s after the last.
async fn wind_down(go_away: Option<&Notify>, started: &AtomicU64, idle: Duration) {
    let told = async {
        match go_away {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    let went_idle = async {
        let mut seen = started.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(idle).await;
            let now = started.load(Ordering::Relaxed);
            if now == seen {
                debug!(?idle, "HTTP/2 connection idle: GOAWAY");
                return;
            }
            seen = now;
        }
    };
    tokio::select! {
        () = told => {}
        () = went_idle => {}
    }
}

/// Logs how an HTTP/2 connection ended, and counts what hyper refused on
/// its own: past Skiff's limits' headroom (`protocol::PARSER_HEADROOM`) or
/// unparseable, it never reached `Handler::handle`.
fn log_end(
    res: Result<(), hyper::Error>,
    metrics: &skiff_filters::telemetry::Metrics,
    listener: &Arc<str>,
) {
    let Err(e) = res else { return };
    if e.is_parse_too_large() {
        metrics.refused(listener, "head-too-large");
    } else if e.is_parse() {
        metrics.refused(listener, "malformed");
    } else if e.is_timeout() {
        metrics.refused(listener, "header-timeout");
    }
    debug!(error = %e, "downstream connection ended with an error");
}

/// Envoy's `x-forwarded-client-cert`, as its default (`SANITIZE_SET`) on an
/// inbound listener: whatever a client sent is removed (it could claim any
/// identity), and a caller that proved its identity with mTLS is named,
/// `URI=spiffe://...`, so the app behind the sidecar knows who called.
fn forwarded_client_cert<B>(req: &mut Request<B>, xfcc: Option<&http::HeaderValue>) {
    let headers = req.headers_mut();
    headers.remove(XFCC);
    if let Some(v) = xfcc {
        // A clone of a HeaderValue shares its bytes: no allocation.
        headers.insert(XFCC, v.clone());
    }
}

const XFCC: http::HeaderName = http::HeaderName::from_static("x-forwarded-client-cert");
