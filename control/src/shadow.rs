//! Routes that can never match: an earlier route of the same table takes
//! every request they would (first match wins), so they are dead config,
//! usually a catch-all or a wildcard placed too early. `skiff check` and
//! `skiff run` warn about them.
//!
//! "Takes every request" is decided on the conditions alone, conservatively:
//! a warning is always right, but a route can be dead without one (two
//! regexes, say). Earlier routes are indexed by host and path as the proxy's
//! route tables are, so a table of 10,000 routes is checked in time
//! proportional to its size.

use std::collections::HashMap;

use crate::model::{PathMatch, Route, RouteMatch};

/// One warning per route of `table` that an earlier route shadows.
pub fn warnings(table: &str, routes: &[Route]) -> Vec<String> {
    let mut index = Index::default();
    let mut warnings = Vec::new();
    for (at, route) in routes.iter().enumerate() {
        let m = &route.matches;
        if let Some(by) = index.covering(routes, m) {
            let name = |i: usize| match &routes[i].name {
                Some(n) => format!("routes.{table}[{i}] ({n})"),
                None => format!("routes.{table}[{i}]"),
            };
            warnings.push(format!(
                "{} can never match: {} before it takes every request it would",
                name(at),
                name(by)
            ));
        }
        index.add(at, m);
    }
    warnings
}

/// The host a route names, as it is compared: lower-cased; a wildcard as
/// its suffix with the leading dot (`*.svc` is `.svc`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Any,
    Exact(String),
    Suffix(String),
}

fn host(m: &RouteMatch) -> Host {
    match &m.host {
        None => Host::Any,
        Some(h) => {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(s) => Host::Suffix(s.to_owned()),
                None => Host::Exact(h),
            }
        }
    }
}

/// Earlier routes, by host and then by path.
#[derive(Debug, Default)]
struct Index {
    hosts: HashMap<Host, Paths>,
}

#[derive(Debug, Default)]
struct Paths {
    exact: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
    /// No path condition, or a regex.
    other: Vec<usize>,
}

impl Index {
    fn add(&mut self, at: usize, m: &RouteMatch) {
        let paths = self.hosts.entry(host(m)).or_default();
        match &m.path {
            Some(PathMatch::Exact(p)) => paths.exact.entry(p.clone()).or_default().push(at),
            Some(PathMatch::Prefix(p)) => paths.prefix.entry(p.clone()).or_default().push(at),
            Some(PathMatch::Regex(_)) | None => paths.other.push(at),
        }
    }

    /// The earliest indexed route that takes every request `m` would.
    fn covering(&self, routes: &[Route], m: &RouteMatch) -> Option<usize> {
        // The host conditions that hold for every host `m` admits.
        let mut hosts = vec![Host::Any];
        match host(m) {
            Host::Any => {}
            Host::Exact(h) => {
                hosts.extend(dot_suffixes(&h, 1).map(|s| Host::Suffix(s.to_owned())));
                hosts.push(Host::Exact(h));
            }
            Host::Suffix(s) => {
                hosts.extend(dot_suffixes(&s, 0).map(|s| Host::Suffix(s.to_owned())));
            }
        }
        let mut best: Option<usize> = None;
        let mut consider = |list: &[usize]| {
            for &e in list {
                if best.is_some_and(|b| e >= b) {
                    return;
                }
                if covers(&routes[e].matches, m) {
                    best = Some(e);
                    return;
                }
            }
        };
        for h in &hosts {
            let Some(paths) = self.hosts.get(h) else {
                continue;
            };
            consider(&paths.other);
            let path = match &m.path {
                Some(PathMatch::Exact(p)) => {
                    if let Some(list) = paths.exact.get(p) {
                        consider(list);
                    }
                    Some(p)
                }
                Some(PathMatch::Prefix(p)) => Some(p),
                _ => None,
            };
            if let Some(p) = path {
                for end in (0..=p.len()).filter(|&i| p.is_char_boundary(i)) {
                    if let Some(list) = paths.prefix.get(&p[..end]) {
                        consider(list);
                    }
                }
            }
        }
        best
    }
}

/// The suffixes of `host` that start at a dot at or after `from`.
fn dot_suffixes(host: &str, from: usize) -> impl Iterator<Item = &str> {
    host.char_indices()
        .filter(move |&(i, c)| c == '.' && i >= from)
        .map(move |(i, _)| &host[i..])
}

/// Whether every request `later` matches, `earlier` matches too.
fn covers(earlier: &RouteMatch, later: &RouteMatch) -> bool {
    let host_ok = match (host(earlier), host(later)) {
        (Host::Any, _) => true,
        (Host::Exact(e), Host::Exact(l)) => e == l,
        (Host::Suffix(e), Host::Exact(l)) => l.len() > e.len() && l.ends_with(&e),
        (Host::Suffix(e), Host::Suffix(l)) => l.ends_with(&e),
        _ => false,
    };
    let path_ok = match (&earlier.path, &later.path) {
        (None, _) => true,
        (Some(PathMatch::Exact(e)), Some(PathMatch::Exact(l))) => e == l,
        (Some(PathMatch::Prefix(e)), Some(PathMatch::Exact(l) | PathMatch::Prefix(l))) => {
            l.starts_with(e.as_str())
        }
        (Some(PathMatch::Regex(e)), Some(PathMatch::Regex(l))) => e == l,
        _ => false,
    };
    host_ok
        && path_ok
        && (earlier.port.is_none() || earlier.port == later.port)
        && (earlier.method.is_none() || earlier.method == later.method)
        && earlier.headers.iter().all(|(name, want)| {
            later
                .headers
                .iter()
                .any(|(n, w)| n.eq_ignore_ascii_case(name) && w == want)
        })
}

#[cfg(test)]
mod tests {
    use crate::load_str;

    fn warnings(routes: &str) -> Vec<String> {
        let text = format!(
            "listeners: [ {{ name: l, address: 127.0.0.1:0, routes: r }} ]\nclusters: {{ c: {{ endpoints: [127.0.0.1:1] }} }}\nroutes:\n  r:\n{routes}"
        );
        load_str(&text, "x.yaml").unwrap().warnings()
    }

    /// Each way one route can take all of a later one's requests is
    /// warned about, naming both; routes that differ are not.
    #[test]
    fn shadowed_routes_are_named() {
        let w = warnings(
            "    - { match: { host: '*.svc' }, cluster: c }
    - { name: api, match: { host: api.ns.svc, path: { prefix: /api } }, cluster: c }
    - { match: { host: '*.ns.svc' }, cluster: c }
    - { match: { path: { prefix: /v1 } }, cluster: c }
    - { match: { path: { exact: /v1/x }, method: GET }, cluster: c }
    - { match: { path: { exact: /v2 }, headers: { x-a: '1', x-b: '2' } }, cluster: c }
    - { match: { path: { exact: /v2 }, headers: { x-a: '1' } }, cluster: c }
    - { match: { path: { exact: /v2 }, headers: { x-a: '1' } }, cluster: c }
    - { match: { path: { regex: '/u/.*' } }, cluster: c }
    - { match: { path: { prefix: /u/1 } }, cluster: c }
    - { match: { host: other, method: GET }, cluster: c }
    - { match: { host: OTHER, method: GET, path: { exact: /x } }, cluster: c }
    - { cluster: c }
    - { match: { host: x }, cluster: c }
",
        );
        assert_eq!(
            w,
            [
                "routes.r[1] (api) can never match: routes.r[0] before it takes every request it would",
                "routes.r[2] can never match: routes.r[0] before it takes every request it would",
                "routes.r[4] can never match: routes.r[3] before it takes every request it would",
                "routes.r[7] can never match: routes.r[6] before it takes every request it would",
                "routes.r[11] can never match: routes.r[10] before it takes every request it would",
                "routes.r[13] can never match: routes.r[12] before it takes every request it would",
            ]
        );
    }

    /// A table of 10,000 distinct hosts and prefixes has nothing to say.
    #[test]
    fn distinct_routes_are_quiet() {
        let mut routes = String::new();
        for i in 0..5_000 {
            routes.push_str(&format!(
                "    - {{ match: {{ host: svc-{i}.ns }}, cluster: c }}\n"
            ));
            routes.push_str(&format!(
                "    - {{ match: {{ path: {{ prefix: /svc-{i}/ }} }}, cluster: c }}\n"
            ));
        }
        assert!(warnings(&routes).is_empty());
    }
}
