//! Route matching: the first route whose every condition holds wins.
//!
//! Conditions are compiled once per config (regexes built, names parsed) so a
//! request only compares bytes. A [`Table`] indexes a table's routes by host
//! and path, so finding the first match does not scan routes a request
//! cannot match.

mod table;

pub use table::Table;

use http::header::{HOST, HeaderName};
use http::{Method, Request};
use regex::Regex;
use skiff_control::model::{HeaderMatch, PathMatch, RouteMatch};

/// A route's `match:` compiled.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    host: Option<HostMatch>,
    port: Option<u16>,
    path: Option<PathMatcher>,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatch)>,
}

#[derive(Debug, Clone)]
enum HostMatch {
    /// Lower-cased, without brackets around an IPv6 address (as
    /// [`request_host`] gives it).
    Exact(String),
    /// `*.example.com` stored as `.example.com`, lower-cased.
    Suffix(String),
}

/// What a route asks of the request's host: how a [`Table`] groups it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKey<'a> {
    Any,
    Exact(&'a str),
    /// The part after `*`: a host matches when it ends with this and is longer.
    Suffix(&'a str),
}

/// What a route asks of the request's path: how a [`Table`] indexes it
/// within a host group. `Other` (a regex, or no condition) is checked in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKey<'a> {
    Other,
    Exact(&'a str),
    Prefix(&'a str),
}

#[derive(Debug, Clone)]
enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
enum ValueMatch {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

/// Where a request's connection was originally going: set on requests of
/// `transparent` listeners (SO_ORIGINAL_DST), read by `match.port` and by
/// `discovery: original_destination` clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination(pub std::net::SocketAddr);

/// A `match:` that cannot be compiled (validation normally catches these first).
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("invalid regex {0:?}: {1}")]
    Regex(String, regex::Error),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid header name {0:?}")]
    HeaderName(String),
}

fn whole(re: &str) -> Result<Regex, MatchError> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| MatchError::Regex(re.to_owned(), e))
}

impl Matcher {
    pub fn from_config(m: &RouteMatch) -> Result<Self, MatchError> {
        let host = m.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                None => match h.strip_prefix('[').and_then(|v6| v6.strip_suffix(']')) {
                    Some(v6) => HostMatch::Exact(v6.to_owned()),
                    None => HostMatch::Exact(h),
                },
            }
        });
        let path = match &m.path {
            None => None,
            Some(PathMatch::Exact(p)) => Some(PathMatcher::Exact(p.clone())),
            Some(PathMatch::Prefix(p)) => Some(PathMatcher::Prefix(p.clone())),
            Some(PathMatch::Regex(r)) => Some(PathMatcher::Regex(whole(r)?)),
        };
        let method = m
            .method
            .as_ref()
            .map(|s| Method::from_bytes(s.as_bytes()).map_err(|_| MatchError::Method(s.clone())))
            .transpose()?;
        let mut headers = Vec::with_capacity(m.headers.len());
        for (name, want) in &m.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| MatchError::HeaderName(name.clone()))?;
            let v = match want {
                HeaderMatch::Exact(v) => ValueMatch::Exact(v.clone()),
                HeaderMatch::Regex(r) => ValueMatch::Regex(whole(r)?),
                HeaderMatch::Present(p) => ValueMatch::Present(*p),
            };
            headers.push((n, v));
        }
        Ok(Self {
            host,
            port: m.port,
            path,
            method,
            headers,
        })
    }

    /// Whether `req` meets every condition.
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        let host = lowercase_host(req);
        self.matches_with(req, host.as_deref())
    }

    /// [`Matcher::matches`] with the request's host already found and
    /// lower-cased ([`lowercase_host`]): a table computes it once for all
    /// the routes it tries.
    pub fn matches_with<B>(&self, req: &Request<B>, host: Option<&str>) -> bool {
        if let Some(m) = &self.method
            && req.method() != m
        {
            return false;
        }
        if let Some(port) = self.port
            && req
                .extensions()
                .get::<Destination>()
                .is_none_or(|d| d.0.port() != port)
        {
            return false;
        }
        if let Some(p) = &self.path {
            let path = req.uri().path();
            let ok = match p {
                PathMatcher::Exact(e) => path == e,
                PathMatcher::Prefix(pre) => path.starts_with(pre.as_str()),
                PathMatcher::Regex(re) => re.is_match(path),
            };
            if !ok {
                return false;
            }
        }
        if let Some(h) = &self.host {
            let Some(host) = host else {
                return false;
            };
            let ok = match h {
                HostMatch::Exact(e) => host == e,
                HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            };
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|(name, want)| {
            let mut values = req.headers().get_all(name).iter();
            match want {
                ValueMatch::Present(p) => values.next().is_some() == *p,
                ValueMatch::Exact(e) => values.any(|v| v.as_bytes() == e.as_bytes()),
                ValueMatch::Regex(re) => values.any(|v| v.to_str().is_ok_and(|s| re.is_match(s))),
            }
        })
    }
}

impl Matcher {
    /// How a [`Table`] groups this route by host.
    pub fn host_key(&self) -> HostKey<'_> {
        match &self.host {
            None => HostKey::Any,
            Some(HostMatch::Exact(h)) => HostKey::Exact(h),
            Some(HostMatch::Suffix(s)) => HostKey::Suffix(s),
        }
    }

    /// How a [`Table`] indexes this route by path.
    pub fn path_key(&self) -> PathKey<'_> {
        match &self.path {
            None | Some(PathMatcher::Regex(_)) => PathKey::Other,
            Some(PathMatcher::Exact(p)) => PathKey::Exact(p),
            Some(PathMatcher::Prefix(p)) => PathKey::Prefix(p),
        }
    }
}

/// The request's host as routes compare it: [`request_host`], lower-cased
/// (borrowed when it already is, as it nearly always is).
pub fn lowercase_host<B>(req: &Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    let host = request_host(req)?;
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

/// The request's authority without its port: `:authority` for HTTP/2 and
/// absolute-form HTTP/1 requests, else the Host header.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(strip_port(authority))
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split_once(']').map_or(authority, |(h, _)| h);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// A weighted choice among targets (`split:`); one target means no dice roll.
#[derive(Debug, Clone)]
pub struct Split<T> {
    targets: Vec<(T, u64)>,
    total: u64,
}

impl<T> Split<T> {
    /// Targets with weight 0 are never chosen; at least one must be positive.
    pub fn new(targets: Vec<(T, u32)>) -> Option<Self> {
        // Summed in u64: no set of u32 weights can overflow it.
        let targets: Vec<(T, u64)> = targets
            .into_iter()
            .map(|(t, w)| (t, u64::from(w)))
            .collect();
        let total = targets.iter().map(|(_, w)| *w).sum();
        (total > 0).then_some(Self { targets, total })
    }

    pub fn pick(&self) -> &T {
        if self.targets.len() == 1 {
            return &self.targets[0].0;
        }
        let mut roll = fastrand::u64(..self.total);
        for (t, w) in &self.targets {
            if roll < *w {
                return t;
            }
            roll -= w;
        }
        &self.targets[self.targets.len() - 1].0
    }

    pub fn targets(&self) -> impl Iterator<Item = &T> {
        self.targets.iter().map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    fn matcher(
        host: Option<&str>,
        path: Option<PathMatch>,
        method: Option<&str>,
        headers: &[(&str, HeaderMatch)],
    ) -> Matcher {
        Matcher::from_config(&RouteMatch {
            host: host.map(str::to_owned),
            port: None,
            path,
            method: method.map(str::to_owned),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        })
        .unwrap()
    }

    #[test]
    fn matching_table() {
        use HeaderMatch as H;
        use PathMatch as P;
        let cases: Vec<(Matcher, Request<()>, bool)> = vec![
            (matcher(None, None, None, &[]), req("GET", "/", &[]), true),
            (
                matcher(Some("api.local"), None, None, &[]),
                req("GET", "/", &[("host", "api.local:8080")]),
                true,
            ),
            (
                matcher(Some("api.local"), None, None, &[]),
                req("GET", "http://API.local/x", &[]),
                true,
            ),
            (
                matcher(Some("api.local"), None, None, &[]),
                req("GET", "/", &[("host", "web.local")]),
                false,
            ),
            (
                matcher(Some("api.local"), None, None, &[]),
                req("GET", "/", &[]),
                false,
            ),
            (
                matcher(Some("*.svc"), None, None, &[]),
                req("GET", "/", &[("host", "a.b.svc")]),
                true,
            ),
            (
                matcher(Some("*.svc"), None, None, &[]),
                req("GET", "/", &[("host", "svc")]),
                false,
            ),
            (
                matcher(Some("*.svc"), None, None, &[]),
                req("GET", "/", &[("host", "asvc")]),
                false,
            ),
            (
                matcher(Some("::1"), None, None, &[]),
                req("GET", "/", &[("host", "[::1]:80")]),
                true,
            ),
            (
                matcher(None, Some(P::Exact("/a".into())), None, &[]),
                req("GET", "/a", &[]),
                true,
            ),
            (
                matcher(None, Some(P::Exact("/a".into())), None, &[]),
                req("GET", "/a/b", &[]),
                false,
            ),
            (
                matcher(None, Some(P::Exact("/a".into())), None, &[]),
                req("GET", "/a?q=1", &[]),
                true,
            ),
            (
                matcher(None, Some(P::Prefix("/api".into())), None, &[]),
                req("GET", "/api/v1", &[]),
                true,
            ),
            (
                matcher(None, Some(P::Prefix("/api".into())), None, &[]),
                req("GET", "/ap", &[]),
                false,
            ),
            (
                matcher(None, Some(P::Regex("/u/[0-9]+".into())), None, &[]),
                req("GET", "/u/42", &[]),
                true,
            ),
            (
                matcher(None, Some(P::Regex("/u/[0-9]+".into())), None, &[]),
                req("GET", "/u/42/x", &[]),
                false,
            ),
            (
                matcher(None, None, Some("POST"), &[]),
                req("POST", "/", &[]),
                true,
            ),
            (
                matcher(None, None, Some("POST"), &[]),
                req("GET", "/", &[]),
                false,
            ),
            (
                matcher(None, None, None, &[("x-canary", H::Exact("1".into()))]),
                req("GET", "/", &[("x-canary", "1")]),
                true,
            ),
            (
                matcher(None, None, None, &[("x-canary", H::Exact("1".into()))]),
                req("GET", "/", &[("x-canary", "2")]),
                false,
            ),
            (
                matcher(None, None, None, &[("x-user", H::Regex("a.*".into()))]),
                req("GET", "/", &[("x-user", "alice")]),
                true,
            ),
            (
                matcher(None, None, None, &[("x-user", H::Regex("a.*".into()))]),
                req("GET", "/", &[("x-user", "bob")]),
                false,
            ),
            (
                matcher(None, None, None, &[("x-debug", H::Present(true))]),
                req("GET", "/", &[("x-debug", "")]),
                true,
            ),
            (
                matcher(None, None, None, &[("x-debug", H::Present(true))]),
                req("GET", "/", &[]),
                false,
            ),
            (
                matcher(None, None, None, &[("x-debug", H::Present(false))]),
                req("GET", "/", &[]),
                true,
            ),
        ];
        for (i, (m, r, want)) in cases.iter().enumerate() {
            assert_eq!(
                m.matches(r),
                *want,
                "case {i}: {} {:?}",
                r.uri(),
                r.headers()
            );
        }
    }

    #[test]
    fn split_follows_weights() {
        let s = Split::new(vec![("a", 90), ("b", 10), ("never", 0)]).unwrap();
        let mut a = 0;
        for _ in 0..10_000 {
            match *s.pick() {
                "a" => a += 1,
                "b" => {}
                other => panic!("picked {other}"),
            }
        }
        assert!((8_500..9_500).contains(&a), "a picked {a} times");
        assert!(Split::<&str>::new(vec![("x", 0)]).is_none());
    }
}
