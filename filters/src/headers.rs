//! Header handling: hop-by-hop stripping (RFC 9110 §7.6.1), `x-request-id`,
//! and the per-route `headers:` edits as a Layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Request, Response};
use skiff_control::model::HeaderOps;
use tower::{Layer, Service};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1,
/// plus the obsolete `proxy-connection` that some clients still send).
static HOP_BY_HOP: [HeaderName; 5] = [
    // First: `strip_hop_by_hop` reads its bit as "has a Connection header".
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes hop-by-hop headers before a message is forwarded.
///
/// With `upgrading`, `Connection: upgrade` and `Upgrade` survive, since they
/// must reach the upstream for the switch to happen. `TE: trailers` survives
/// too: gRPC servers require it and it is the only TE value allowed in HTTP/2.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // One pass over the message's names (a handful of equality checks
    // each) finds which hop-by-hop headers it carries; only those are
    // removed. A hashed removal of every hop-by-hop name cost ~1,200
    // instructions per message (callgrind), and nearly every message has
    // none, or only `connection: keep-alive` (every nginx response).
    let mut present = 0u8;
    let mut te = false;
    for k in headers.keys() {
        if k == TE {
            te = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if !upgrading && present == 0 && !te {
        return;
    }
    // Headers listed in Connection are hop-by-hop as well. The usual tokens
    // (`keep-alive`, `close`, `upgrade`) are skipped: they name no header or
    // one removed below anyway, so the common request allocates nothing here.
    if present & 1 != 0 {
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|t| {
                !["keep-alive", "close", "upgrade", ""]
                    .iter()
                    .any(|usual| t.eq_ignore_ascii_case(usual))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) == 0 || (upgrading && (name == CONNECTION || name == UPGRADE)) {
            continue;
        }
        headers.remove(name);
    }
    if upgrading {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te && let Some(te) = headers.get(TE) {
        let trailers = te.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(TE);
        }
    }
}

/// `x-request-id`: set when absent, and named in the log line of a failure.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds a random UUIDv4 `x-request-id` when the client sent none, so that
/// logs on both sides of the proxy can be joined.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(&REQUEST_ID) {
        return;
    }
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        text[at] = HEX[usize::from(b >> 4)];
        text[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    if let Ok(v) = HeaderValue::from_bytes(&text) {
        headers.insert(REQUEST_ID.clone(), v);
    }
}

/// Pre-parsed `set` and `remove` lists, so that requests pay no parsing.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

/// A header name or value in a route's `headers:` that HTTP cannot carry.
#[derive(Debug, thiserror::Error)]
#[error("invalid header {0:?}")]
pub struct InvalidHeader(pub String);

impl HeaderEdits {
    pub fn from_config(ops: &HeaderOps) -> Result<Self, InvalidHeader> {
        let name =
            |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|_| InvalidHeader(n.to_owned()));
        let mut set = Vec::with_capacity(ops.set.len());
        for (n, v) in &ops.set {
            let value = HeaderValue::from_str(v).map_err(|_| InvalidHeader(format!("{n}: {v}")))?;
            set.push((name(n)?, value));
        }
        let remove = ops
            .remove
            .iter()
            .map(|n| name(n))
            .collect::<Result<_, _>>()?;
        Ok(Self { set, remove })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
    }
}

// === impl HeadersLayer ===

/// Applies a route's request edits on the way up and response edits on the way back.
#[derive(Debug, Clone)]
pub struct HeadersLayer {
    edits: Arc<(HeaderEdits, HeaderEdits)>,
}

impl HeadersLayer {
    pub fn new(request: HeaderEdits, response: HeaderEdits) -> Self {
        Self {
            edits: Arc::new((request, response)),
        }
    }
}

impl<S> Layer<S> for HeadersLayer {
    type Service = Headers<S>;

    fn layer(&self, inner: S) -> Headers<S> {
        Headers {
            inner,
            edits: self.edits.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Headers<S> {
    inner: S,
    edits: Arc<(HeaderEdits, HeaderEdits)>,
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for Headers<S>
where
    S: Service<Request<ReqB>, Response = Response<RspB>>,
{
    type Response = Response<RspB>;
    type Error = S::Error;
    type Future = HeadersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        self.edits.0.apply(req.headers_mut());
        HeadersFuture {
            inner: self.inner.call(req),
            edits: self.edits.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Runs the response edits when the response headers arrive.
    pub struct HeadersFuture<F> {
        #[pin]
        inner: F,
        edits: Arc<(HeaderEdits, HeaderEdits)>,
    }
}

impl<F, B, E> Future for HeadersFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.inner.poll(cx))?;
        this.edits.1.apply(rsp.headers_mut());
        Poll::Ready(Ok(rsp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn te_trailers_and_upgrades_survive() {
        let mut h = map(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");

        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn request_id_added_once() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], id.as_str());
    }

    #[test]
    fn edits() {
        let ops = HeaderOps {
            set: [("x-env".to_owned(), "prod".to_owned())].into(),
            remove: vec!["x-debug".to_owned()],
        };
        let edits = HeaderEdits::from_config(&ops).unwrap();
        let mut h = map(&[("x-debug", "1"), ("x-env", "dev")]);
        edits.apply(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-env"], "prod");
    }
}
