//! Inbound authorization (`authorization:`): allow rules by the caller's
//! SPIFFE ID, the request path and the method.
//!
//! Rules are tried in order and the first that matches decides; the only
//! kind of rule is `allow`, so a match admits the request. When rules exist
//! and none matches, the request is refused with `forbidden` (403, or gRPC
//! PERMISSION_DENIED). No rules at all means no authorization.
//!
//! Within a rule, every list given must contain the request's value and an
//! absent or empty list matches anything. A plaintext caller (permissive
//! mode) has no identity, so it matches only rules without `identities`.
//!
//! Rules apply to requests that arrived on inbound listeners: the server
//! marks each request with its listener's `Direction`, and requests marked
//! outbound pass untouched. A request with no mark is checked (fail closed).

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Method, Request, Response};
use skiff_control::model::{AuthorizationRule, Direction};
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::{BoxError, ProxyError, Reason};

/// The caller's SPIFFE ID, from its verified client certificate; attached
/// to each request of an mTLS connection as a request extension.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity(pub Arc<str>);

/// `authorization:` compiled.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    identities: Vec<Pattern>,
    paths: Vec<Pattern>,
    methods: Vec<Method>,
}

/// `*` (anything; for identities: any verified caller), `PREFIX/*`, or exact.
#[derive(Debug)]
enum Pattern {
    Any,
    /// `/api/*` stored as `/api/`.
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(s: &str) -> Self {
        if s == "*" {
            Pattern::Any
        } else if let Some(prefix) = s.strip_suffix('*') {
            Pattern::Prefix(prefix.to_owned())
        } else {
            Pattern::Exact(s.to_owned())
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Exact(e) => value == e,
        }
    }
}

impl Policy {
    pub fn from_config(rules: &[AuthorizationRule]) -> Self {
        let rules = rules
            .iter()
            .map(|r| Rule {
                identities: r
                    .allow
                    .identities
                    .iter()
                    .map(|s| Pattern::parse(s))
                    .collect(),
                paths: r.allow.paths.iter().map(|s| Pattern::parse(s)).collect(),
                // Validation refuses bad methods; one slipping through
                // (in-process configs) can never match: fail closed.
                methods: r
                    .allow
                    .methods
                    .iter()
                    .map(|m| Method::from_bytes(m.as_bytes()).unwrap_or(Method::CONNECT))
                    .collect(),
            })
            .collect();
        Self { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The index of the first rule admitting the request; `None`: refuse.
    pub fn admits(&self, identity: Option<&str>, method: &Method, path: &str) -> Option<usize> {
        let path = normalize(path);
        self.rules.iter().position(|r| {
            (r.identities.is_empty()
                || identity.is_some_and(|id| r.identities.iter().any(|p| p.matches(id))))
                && (r.paths.is_empty() || r.paths.iter().any(|p| p.matches(&path)))
                && (r.methods.is_empty() || r.methods.contains(method))
        })
    }
}

/// The path as a backend will most likely resolve it, so `/api/../admin`
/// cannot pass a rule for `/api/*`: percent-encoded unreserved characters
/// decoded (RFC 3986 6.2.2.2), repeated slashes merged, `.`/`..` segments
/// removed (RFC 3986 5.2.4). The request itself is forwarded unchanged.
fn normalize(path: &str) -> String {
    let decoded = decode_unreserved(path);
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut n = String::with_capacity(decoded.len() + 1);
    for s in &out {
        n.push('/');
        n.push_str(s);
    }
    if trailing || out.is_empty() {
        n.push('/');
    }
    n
}

fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(c) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            && (c.is_ascii_alphanumeric() || b"-._~".contains(&c))
        {
            out.push(char::from(c));
            i += 3;
            continue;
        }
        // Copy one whole character (paths from hyper are ASCII, but be safe).
        let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + ch_len]);
        i += ch_len;
    }
    out
}

// === impl AuthzLayer ===

/// Refuses inbound requests that no `allow` rule admits.
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    policy: Arc<Policy>,
}

impl AuthzLayer {
    pub fn new(policy: Arc<Policy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> Service<Request<Body>> for Authz<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let outbound = req.extensions().get::<Direction>() == Some(&Direction::Outbound);
        if self.policy.is_empty() || outbound {
            return Either::Right(self.inner.call(req));
        }
        let identity = req.extensions().get::<PeerIdentity>().map(|p| &*p.0);
        if self
            .policy
            .admits(identity, req.method(), req.uri().path())
            .is_some()
        {
            return Either::Right(self.inner.call(req));
        }
        let who = identity.unwrap_or("a caller without identity (plaintext)");
        let err = ProxyError::new(
            Reason::Forbidden,
            format!(
                "{who} is not allowed to {} {}",
                req.method(),
                req.uri().path()
            ),
        );
        tracing::info!(peer_identity = identity.unwrap_or("none"), method = %req.method(), path = req.uri().path(), "request refused by authorization");
        Either::Left(ready(Err(err.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_control::model::AllowRule;
    use tower::ServiceExt;

    fn rule(identities: &[&str], paths: &[&str], methods: &[&str]) -> AuthorizationRule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        AuthorizationRule {
            allow: AllowRule {
                identities: v(identities),
                paths: v(paths),
                methods: v(methods),
            },
        }
    }

    const FRONT: &str = "spiffe://cluster.local/ns/default/sa/frontend";
    const OTHER: &str = "spiffe://cluster.local/ns/default/sa/other";

    #[test]
    fn first_matching_rule_admits() {
        let p = Policy::from_config(&[
            rule(&[FRONT], &["/api/*"], &["GET"]),
            rule(&[], &["/health"], &[]),
            rule(&["spiffe://cluster.local/ns/admin/*"], &[], &[]),
        ]);
        let get = Method::GET;
        let post = Method::POST;
        for (identity, method, path, want) in [
            (Some(FRONT), &get, "/api/x", Some(0)),
            (Some(FRONT), &post, "/api/x", None),
            (Some(FRONT), &get, "/api", None),
            (Some(OTHER), &get, "/api/x", None),
            (None, &get, "/api/x", None),
            (None, &post, "/health", Some(1)),
            (Some(OTHER), &get, "/health", Some(1)),
            (Some(FRONT), &get, "/api/../admin", None),
            (Some(FRONT), &get, "/api/%2e%2e/admin", None),
            (Some(FRONT), &get, "//api//x", Some(0)),
            (
                Some("spiffe://cluster.local/ns/admin/sa/ops"),
                &post,
                "/x",
                Some(2),
            ),
        ] {
            assert_eq!(
                p.admits(identity, method, path),
                want,
                "{identity:?} {method} {path}"
            );
        }
    }

    #[test]
    fn any_identity_means_any_verified_caller() {
        let p = Policy::from_config(&[rule(&["*"], &[], &[])]);
        assert_eq!(p.admits(Some(OTHER), &Method::GET, "/"), Some(0));
        assert_eq!(p.admits(None, &Method::GET, "/"), None);
    }

    #[test]
    fn normalizes() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a/./b/../c", "/a/c"),
            ("/../..", "/"),
            ("/a/%62", "/a/b"),
            ("/a/%2F", "/a/%2F"),
            ("/a//b", "/a/b"),
        ] {
            assert_eq!(normalize(raw), want, "{raw}");
        }
    }

    async fn call(policy: &Arc<Policy>, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let inner = tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, BoxError>(Response::new(Body::Empty))
        });
        AuthzLayer::new(policy.clone())
            .layer(inner)
            .oneshot(req)
            .await
    }

    #[tokio::test]
    async fn refuses_with_forbidden_and_skips_outbound() {
        let policy = Arc::new(Policy::from_config(&[rule(&[FRONT], &[], &[])]));
        let mut req = Request::get("/x").body(Body::Empty).unwrap();
        req.extensions_mut().insert(Direction::Inbound);
        req.extensions_mut().insert(PeerIdentity(Arc::from(OTHER)));
        let err = call(&policy, req).await.unwrap_err();
        assert_eq!(crate::error::reason_of(&*err), Reason::Forbidden);

        let mut req = Request::get("/x").body(Body::Empty).unwrap();
        req.extensions_mut().insert(Direction::Inbound);
        req.extensions_mut().insert(PeerIdentity(Arc::from(FRONT)));
        assert!(call(&policy, req).await.is_ok());

        let mut req = Request::get("/x").body(Body::Empty).unwrap();
        req.extensions_mut().insert(Direction::Outbound);
        assert!(
            call(&policy, req).await.is_ok(),
            "outbound is not authorized"
        );

        let req = Request::get("/x").body(Body::Empty).unwrap();
        assert!(call(&policy, req).await.is_err(), "unmarked fails closed");
    }
}
