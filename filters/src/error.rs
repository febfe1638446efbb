//! Errors on the data path, and the one table that turns them into replies.
//!
//! Every failure travels back up the stack as a `BoxError`. Its cause chain is
//! walked (never its text matched) to find the `Reason`, and `respond` is the
//! single place where a reason becomes an HTTP or gRPC answer, so every
//! listener and protocol answers the same way (docs/reference/errors.md).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why Skiff answered a request itself; the value of the `skiff-error` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NoRoute,
    ConnectFailed,
    NoHealthyEndpoints,
    CircuitOpen,
    UpstreamReset,
    Timeout,
    RateLimited,
    Forbidden,
    /// The client's request can't be forwarded: an HTTP/1.1 request without
    /// `Host`, or a request body that broke off (a bad chunk, a client gone
    /// mid-body). Never retried, never counted against an endpoint.
    BadRequest,
    /// `bad-request` for a request head over the listener's
    /// `max_request_headers_kb` or `max_request_headers_count`: 431.
    HeadTooLarge,
    /// `bad-request` for a transfer coding Skiff does not know (RFC 9112
    /// §6.1: a server answers 501 rather than guess the body's framing).
    UnknownCoding,
    /// The process is past a budget of `overload:` (connections, memory):
    /// shed before routing. 503, gRPC UNAVAILABLE; a client may retry
    /// elsewhere or later.
    Overloaded,
    /// Fault injection: the status comes with the fault's config.
    FaultInjected {
        status: u16,
        grpc_status: Option<u32>,
    },
}

impl Reason {
    /// Every reason, for the reference (`docs/reference/errors.md`); the
    /// fault's status stands for "as configured".
    pub const ALL: [Reason; 13] = [
        Reason::NoRoute,
        Reason::ConnectFailed,
        Reason::NoHealthyEndpoints,
        Reason::CircuitOpen,
        Reason::UpstreamReset,
        Reason::Timeout,
        Reason::RateLimited,
        Reason::Forbidden,
        Reason::BadRequest,
        Reason::HeadTooLarge,
        Reason::UnknownCoding,
        Reason::Overloaded,
        Reason::FaultInjected {
            status: 503,
            grpc_status: None,
        },
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no-route",
            Reason::ConnectFailed => "connect-failed",
            Reason::NoHealthyEndpoints => "no-healthy-endpoints",
            Reason::CircuitOpen => "circuit-open",
            Reason::UpstreamReset => "upstream-reset",
            Reason::Timeout => "timeout",
            Reason::RateLimited => "rate-limited",
            Reason::Forbidden => "forbidden",
            Reason::BadRequest | Reason::HeadTooLarge | Reason::UnknownCoding => "bad-request",
            Reason::Overloaded => "overloaded",
            Reason::FaultInjected { .. } => "fault-injected",
        }
    }

    /// Whether the failure's detail speaks only of the caller's own request
    /// (its identity, method, path, body), so the reply may carry it.
    fn is_about_the_caller(self) -> bool {
        matches!(
            self,
            Reason::Forbidden | Reason::BadRequest | Reason::HeadTooLarge | Reason::UnknownCoding
        )
    }

    /// The short text a caller reads in the body or `grpc-message`. Fixed
    /// per reason: what went wrong inside (endpoint addresses, cluster
    /// names, causes) goes to the log and `/clusters`, never to the network.
    pub fn text(self) -> &'static str {
        match self {
            Reason::NoRoute => "no route matches the request",
            Reason::ConnectFailed => "could not connect to the upstream service",
            Reason::NoHealthyEndpoints => "the upstream service has no healthy endpoint",
            Reason::CircuitOpen => "the upstream service's circuit breaker is open",
            Reason::UpstreamReset => "the upstream service reset the request",
            Reason::Timeout => "the request timed out",
            Reason::RateLimited => "rate limited",
            Reason::Forbidden => "not allowed by the authorization policy",
            Reason::BadRequest => "malformed request",
            Reason::HeadTooLarge => "request headers too large",
            Reason::UnknownCoding => "transfer coding not implemented",
            Reason::Overloaded => "the proxy is overloaded",
            Reason::FaultInjected { .. } => "fault injected",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Reason::NoRoute => StatusCode::NOT_FOUND,
            Reason::ConnectFailed
            | Reason::NoHealthyEndpoints
            | Reason::CircuitOpen
            | Reason::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamReset => StatusCode::BAD_GATEWAY,
            Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::Forbidden => StatusCode::FORBIDDEN,
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
            Reason::FaultInjected { status, .. } => {
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// The gRPC status code for a gRPC caller.
    pub fn grpc_status(self) -> u32 {
        match self {
            Reason::NoRoute => 12,
            Reason::ConnectFailed
            | Reason::NoHealthyEndpoints
            | Reason::CircuitOpen
            | Reason::UpstreamReset
            | Reason::Overloaded => 14,
            Reason::Timeout => 4,
            Reason::RateLimited => 8,
            Reason::Forbidden => 7,
            // gRPC's mapping of HTTP 400 (INTERNAL for all three).
            Reason::BadRequest | Reason::HeadTooLarge | Reason::UnknownCoding => 13,
            Reason::FaultInjected {
                grpc_status: Some(code),
                ..
            } => code,
            Reason::FaultInjected { status, .. } => grpc_from_http(status),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// gRPC's standard mapping of HTTP statuses to codes (doc/http-grpc-status-mapping.md).
fn grpc_from_http(status: u16) -> u32 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// A failure Skiff detected itself. `detail` is for logs only (it may name
/// addresses and causes, never secrets); callers get `Reason::text`.
#[derive(Debug)]
pub struct ProxyError {
    reason: Reason,
    detail: Cow<'static, str>,
    source: Option<BoxError>,
    /// The endpoint (index in its cluster) that failed, so retries can avoid
    /// it and outlier detection can count it.
    endpoint: Option<usize>,
}

impl ProxyError {
    pub fn new(reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            source: None,
            endpoint: None,
        }
    }

    pub fn at_endpoint(mut self, endpoint: usize) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    pub fn endpoint(&self) -> Option<usize> {
        self.endpoint
    }

    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Finds why a request failed by walking the cause chain.
///
/// A `ProxyError` anywhere in the chain decides; an elapsed tokio timer is a
/// timeout; anything else happened after the upstream had the request, so it
/// is reported as a reset (502), as Envoy and Linkerd do.
pub fn reason_of(err: &(dyn StdError + 'static)) -> Reason {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<ProxyError>() {
            return p.reason;
        }
        if e.is::<tokio::time::error::Elapsed>() {
            return Reason::Timeout;
        }
        cur = e.source();
    }
    Reason::UpstreamReset
}

/// The first `ProxyError` in the cause chain, if any.
pub fn proxy_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a ProxyError> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<ProxyError>() {
            return Some(p);
        }
        cur = e.source();
    }
    None
}

/// Renders a failure as the answer docs/reference/errors.md lists.
///
/// gRPC callers get a trailers-only response (HTTP 200, `grpc-status` and
/// `grpc-message` in the only header block) because gRPC clients read the
/// status from there and treat other HTTP statuses as transport failures.
pub fn respond(err: &(dyn StdError + 'static), grpc: bool) -> Response<Body> {
    let reason = reason_of(err);
    match proxy_error(err) {
        // Who the caller is and what it asked for is the caller's to know.
        Some(p) if reason.is_about_the_caller() => reply(reason, &p.detail, grpc),
        _ => reply(reason, reason.text(), grpc),
    }
}

/// The reply for `reason`, with `message` as the body or `grpc-message`.
pub fn reply(reason: Reason, message: &str, grpc: bool) -> Response<Body> {
    let mut rsp = Response::new(Body::Empty);
    let h = rsp.headers_mut();
    h.insert("skiff-error", HeaderValue::from_static(reason.as_str()));
    if grpc {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(reason.grpc_status()));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
            h.insert("grpc-message", v);
        }
    } else {
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        *rsp.status_mut() = reason.http_status();
        *rsp.body_mut() = Body::full(format!("{message}\n"));
    }
    rsp
}

/// The whole cause chain in one line, for logs (never for replies).
pub use skiff_control::error_chain as render_chain;

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
fn percent_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(BoxError);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn table() {
        use Reason::*;
        for (reason, http, grpc) in [
            (NoRoute, 404, 12),
            (ConnectFailed, 503, 14),
            (NoHealthyEndpoints, 503, 14),
            (CircuitOpen, 503, 14),
            (UpstreamReset, 502, 14),
            (Timeout, 504, 4),
            (RateLimited, 429, 8),
            (Forbidden, 403, 7),
            (BadRequest, 400, 13),
            (
                FaultInjected {
                    status: 503,
                    grpc_status: None,
                },
                503,
                14,
            ),
            (
                FaultInjected {
                    status: 500,
                    grpc_status: Some(9),
                },
                500,
                9,
            ),
        ] {
            assert_eq!(reason.http_status().as_u16(), http, "{reason}");
            assert_eq!(reason.grpc_status(), grpc, "{reason}");
        }
    }

    #[test]
    fn reason_found_through_causes() {
        let inner = ProxyError::new(Reason::ConnectFailed, "connect 127.0.0.1:1 refused");
        let err = Outer(Box::new(inner));
        assert_eq!(reason_of(&err), Reason::ConnectFailed);
        let plain = Outer("boom".into());
        assert_eq!(reason_of(&plain), Reason::UpstreamReset);
    }

    #[test]
    fn grpc_reply_is_trailers_only() {
        let rsp = reply(Reason::Timeout, "took 100% too long", true);
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], "4");
        assert_eq!(rsp.headers()["grpc-message"], "took 100%25 too long");
        assert_eq!(rsp.headers()["skiff-error"], "timeout");
        assert!(matches!(rsp.body(), Body::Empty));
    }

    #[test]
    fn http_reply() {
        let rsp = reply(Reason::NoRoute, "no route", false);
        assert_eq!(rsp.status(), 404);
        assert_eq!(rsp.headers()["skiff-error"], "no-route");
    }
}
