//! Route matching: the indexed table (hosts hashed, wildcards by suffix,
//! paths in a trie) picks exactly the route an in-order scan of the same
//! routes picks, first match wins, for any routes and any request built
//! from the input.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use skiff_control::model::{HeaderMatch, PathMatch, RouteMatch};
use skiff_filters::route::{Matcher, Table};

/// Reads the input a byte at a time; zeros once it runs out.
struct Bytes<'a>(std::slice::Iter<'a, u8>);

impl Bytes<'_> {
    fn pick<'t, T>(&mut self, from: &'t [T]) -> &'t T {
        let b = self.0.next().copied().unwrap_or(0) as usize;
        &from[b % from.len()]
    }
}

const HOSTS: &[Option<&str>] = &[
    None,
    Some("a.svc"),
    Some("b.svc"),
    Some("*.svc"),
    Some("*.b.svc"),
    Some("A.SVC"),
    Some("*.a.svc"),
    Some("[::1]"),
    Some("10.0.0.1"),
    Some("*"),
    Some("*.c"),
];
const PATHS: &[Option<(u8, &str)>] = &[
    None,
    Some((b'p', "/")),
    Some((b'p', "/a")),
    Some((b'p', "/a/b")),
    Some((b'p', "")),
    Some((b'p', "/ab")),
    Some((b'e', "/a")),
    Some((b'e', "/")),
    Some((b'e', "/a/b")),
    Some((b'r', "/a.*")),
    Some((b'r', "/[ab]")),
];
const METHODS: &[Option<&str>] = &[None, None, Some("GET"), Some("POST")];
const HEADERS: &[Option<(&str, u8, &str)>] = &[
    None,
    None,
    Some(("x", b'e', "1")),
    Some(("x", b'p', "")),
    Some(("x", b'a', "")),
    Some(("x", b'r', "1|2")),
    Some(("y", b'e', "1")),
];
const PORTS: &[Option<u16>] = &[None, None, None, Some(80)];

const REQUEST_HOSTS: &[Option<&str>] = &[
    None,
    Some("a.svc"),
    Some("b.svc"),
    Some("x.b.svc"),
    Some("x.a.svc"),
    Some("svc"),
    Some(".svc"),
    Some("A.Svc:80"),
    Some("a.svc."),
    Some("10.0.0.1"),
    Some("[::1]:8080"),
    Some("q.c"),
];
const REQUEST_PATHS: &[&str] = &["/", "/a", "/a/b", "/ab", "/b", "/a?x=1", "/a/b/c", "*"];
const REQUEST_METHODS: &[&str] = &["GET", "POST", "PUT"];
const REQUEST_X: &[Option<&str>] = &[None, Some("1"), Some("2"), Some("3")];

fn route(b: &mut Bytes) -> RouteMatch {
    let path = b.pick(PATHS).map(|(kind, p)| match kind {
        b'p' => PathMatch::Prefix(p.to_owned()),
        b'e' => PathMatch::Exact(p.to_owned()),
        _ => PathMatch::Regex(p.to_owned()),
    });
    let mut headers = BTreeMap::new();
    if let Some((name, kind, v)) = b.pick(HEADERS) {
        let m = match kind {
            b'e' => HeaderMatch::Exact((*v).to_owned()),
            b'p' => HeaderMatch::Present(true),
            b'a' => HeaderMatch::Present(false),
            _ => HeaderMatch::Regex((*v).to_owned()),
        };
        headers.insert((*name).to_owned(), m);
    }
    RouteMatch {
        host: b.pick(HOSTS).map(str::to_owned),
        path,
        port: *b.pick(PORTS),
        method: b.pick(METHODS).map(str::to_owned),
        headers,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data.iter());
    let n = 1 + *b.pick(&[0usize, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    let mut routes = Vec::with_capacity(n);
    let mut scan = Vec::with_capacity(n);
    for i in 0..n {
        let m = route(&mut b);
        let Ok(matcher) = Matcher::from_config(&m) else {
            return;
        };
        let Ok(again) = Matcher::from_config(&m) else {
            return;
        };
        routes.push((matcher, i));
        scan.push(again);
    }
    let table = Table::new(routes);
    // Several requests against one table.
    while b.0.len() > 0 {
        let path = *b.pick(REQUEST_PATHS);
        let host = *b.pick(REQUEST_HOSTS);
        let absolute = *b.pick(&[false, true]);
        let mut req = http::Request::builder().method(*b.pick(REQUEST_METHODS));
        req = match (host, absolute, path.starts_with('/')) {
            (Some(h), true, true) => req.uri(format!("http://{h}{path}")),
            (Some(h), _, _) => req.uri(path).header("host", h),
            (None, _, _) => req.uri(path),
        };
        if let Some(x) = b.pick(REQUEST_X) {
            req = req.header("x", *x);
        }
        let Ok(req) = req.body(()) else {
            continue;
        };
        let indexed = table.route(&req).copied();
        let in_order = scan.iter().position(|m| m.matches(&req));
        assert_eq!(indexed, in_order, "{req:?}");
    }
});
