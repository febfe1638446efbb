//! A route table indexed so that finding a request's route costs the same
//! with one route or ten thousand.
//!
//! Routes stay an ordered list, and the first route whose every condition
//! holds still wins (SPEC.md). What changes is which routes are tried: a
//! request can only match routes whose host condition its host meets, and
//! whose exact or prefix path its path meets. So routes are grouped as
//! Envoy's virtual hosts group them (exact hosts in a map, `*.suffix`
//! wildcards by suffix, a catch-all group for routes that name no host), and
//! within a group indexed by path (exact paths in a map, prefixes in a byte
//! trie, everything else — regexes, no path — in an ordered list).
//!
//! A request gathers its candidate lists (its exact host's group, the group
//! of each wildcard suffix it ends with, the catch-all group; in each, its
//! exact path's routes, the routes of each prefix along its path, the
//! unindexed routes). Every list is in table order, so the first route that
//! matches is the smallest position that matches in any list: each list is
//! tried only up to the best position found so far.

use std::collections::HashMap;
use std::sync::Arc;

use http::Request;

use super::{HostKey, Matcher, PathKey, lowercase_host};

/// Positions in the table, in table order.
type Positions = Vec<u32>;

/// A route table: `R` is what a match hands back (the compiled route).
#[derive(Debug)]
pub struct Table<R> {
    /// The routes' conditions and the index over them, shared by the
    /// tables [`Table::with_targets`] makes: a change to what routes send
    /// to (a cluster's settings) leaves them as they are.
    index: Arc<Index>,
    /// What each route hands back, by position.
    targets: Vec<R>,
}

/// The conditions of a table's routes, in order, and the index over them.
#[derive(Debug)]
struct Index {
    matchers: Vec<Matcher>,
    exact_hosts: HashMap<Box<str>, Group>,
    suffixes: HashMap<Box<str>, Group>,
    /// The lengths of the keys of `suffixes`, shortest first: a host is
    /// looked up by each of its suffixes of these lengths.
    suffix_lengths: Vec<usize>,
    any_host: Group,
}

/// The routes of one host condition, indexed by path.
#[derive(Debug, Default)]
struct Group {
    exact_paths: HashMap<Box<str>, Positions>,
    prefixes: Trie,
    /// Routes with a regex path or no path condition.
    others: Positions,
}

/// Path prefixes, byte by byte: walking a path visits every prefix of it
/// that some route names, in as many steps as the path has bytes.
#[derive(Debug)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// By byte, sorted: a binary search per step.
    children: Vec<(u8, u32)>,
    /// Routes whose prefix ends here.
    routes: Positions,
}

impl Default for Trie {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
        }
    }
}

impl Trie {
    fn insert(&mut self, prefix: &str, position: u32) {
        let mut at = 0usize;
        for &b in prefix.as_bytes() {
            let children = &self.nodes[at].children;
            at = match children.binary_search_by_key(&b, |(k, _)| *k) {
                Ok(i) => children[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes[at].children.insert(i, (b, next as u32));
                    self.nodes.push(Node::default());
                    next
                }
            };
        }
        self.nodes[at].routes.push(position);
    }

    /// Calls `visit` with the routes of every prefix of `path`, shortest first.
    fn walk(&self, path: &str, mut visit: impl FnMut(&[u32])) {
        let mut node = &self.nodes[0];
        for &b in path.as_bytes() {
            if !node.routes.is_empty() {
                visit(&node.routes);
            }
            match node.children.binary_search_by_key(&b, |(k, _)| *k) {
                Ok(i) => node = &self.nodes[node.children[i].1 as usize],
                Err(_) => return,
            }
        }
        if !node.routes.is_empty() {
            visit(&node.routes);
        }
    }

    fn shrink(&mut self) {
        self.nodes.shrink_to_fit();
        for n in &mut self.nodes {
            n.children.shrink_to_fit();
            n.routes.shrink_to_fit();
        }
    }
}

impl Group {
    fn insert(&mut self, path: PathKey<'_>, position: u32) {
        match path {
            PathKey::Exact(p) => self
                .exact_paths
                .entry(Box::from(p))
                .or_default()
                .push(position),
            PathKey::Prefix(p) => self.prefixes.insert(p, position),
            PathKey::Other => self.others.push(position),
        }
    }

    /// Lowers `best` to the first route of this group that matches, if it
    /// comes before `best`.
    fn first<B>(&self, matchers: &[Matcher], req: &Request<B>, host: Option<&str>, best: &mut u32) {
        let path = req.uri().path();
        let mut try_list = |list: &[u32]| {
            for &at in list {
                if at >= *best {
                    return;
                }
                if matchers[at as usize].matches_with(req, host) {
                    *best = at;
                    return;
                }
            }
        };
        if let Some(list) = self.exact_paths.get(path) {
            try_list(list);
        }
        self.prefixes.walk(path, &mut try_list);
        try_list(&self.others);
    }

    fn shrink(&mut self) {
        self.exact_paths.shrink_to_fit();
        self.prefixes.shrink();
        self.others.shrink_to_fit();
    }
}

impl<R> Table<R> {
    /// Indexes `routes`, in their order. Positions are `u32`: a table of
    /// more than four billion routes is refused long before it gets here.
    pub fn new(routes: Vec<(Matcher, R)>) -> Self {
        let mut exact_hosts: HashMap<Box<str>, Group> = HashMap::new();
        let mut suffixes: HashMap<Box<str>, Group> = HashMap::new();
        let mut any_host = Group::default();
        let (matchers, targets): (Vec<Matcher>, Vec<R>) = routes.into_iter().unzip();
        for (position, matcher) in matchers.iter().enumerate() {
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            let group = match matcher.host_key() {
                HostKey::Any => &mut any_host,
                HostKey::Exact(h) => exact_hosts.entry(Box::from(h)).or_default(),
                HostKey::Suffix(s) => suffixes.entry(Box::from(s)).or_default(),
            };
            group.insert(matcher.path_key(), position);
        }
        for g in exact_hosts.values_mut().chain(suffixes.values_mut()) {
            g.shrink();
        }
        any_host.shrink();
        let mut suffix_lengths: Vec<usize> = suffixes.keys().map(|s| s.len()).collect();
        suffix_lengths.sort_unstable();
        suffix_lengths.dedup();
        Self {
            index: Arc::new(Index {
                matchers,
                exact_hosts,
                suffixes,
                suffix_lengths,
                any_host,
            }),
            targets,
        }
    }

    /// This table with the same routes (conditions and index shared, not
    /// built again) and each target `f` gives: `f` sees each position and
    /// its target, and answers a new target or `None` to keep it. Costs a
    /// pass over the targets, whatever the size of the index.
    pub fn with_targets<E>(
        &self,
        mut f: impl FnMut(usize, &R) -> Result<Option<R>, E>,
    ) -> Result<Self, E>
    where
        R: Clone,
    {
        let targets = self
            .targets
            .iter()
            .enumerate()
            .map(|(at, r)| Ok(f(at, r)?.unwrap_or_else(|| r.clone())))
            .collect::<Result<_, E>>()?;
        Ok(Self {
            index: self.index.clone(),
            targets,
        })
    }

    /// The first route that matches `req`.
    pub fn route<B>(&self, req: &Request<B>) -> Option<&R> {
        let host = lowercase_host(req);
        let host = host.as_deref();
        let ix = &*self.index;
        let m = &ix.matchers;
        let mut best = u32::MAX;
        if let Some(h) = host {
            if let Some(g) = ix.exact_hosts.get(h) {
                g.first(m, req, host, &mut best);
            }
            for &len in &ix.suffix_lengths {
                // `*.svc` matches `a.svc`, not `.svc`: the host is longer.
                if len >= h.len() {
                    break;
                }
                let Some(suffix) = h.get(h.len() - len..) else {
                    continue;
                };
                if let Some(g) = ix.suffixes.get(suffix) {
                    g.first(m, req, host, &mut best);
                }
            }
        }
        ix.any_host.first(m, req, host, &mut best);
        self.targets.get(best as usize)
    }

    /// The route at `position`, with its conditions.
    pub fn get(&self, position: usize) -> Option<(&Matcher, &R)> {
        Some((
            self.index.matchers.get(position)?,
            self.targets.get(position)?,
        ))
    }

    /// The routes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.targets.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_control::model::{HeaderMatch, PathMatch, RouteMatch};

    /// A route of the test tables: its conditions in short.
    struct R<'a> {
        host: Option<&'a str>,
        path: Option<PathMatch>,
        method: Option<&'a str>,
        header: Option<(&'a str, &'a str)>,
    }

    fn any<'a>() -> R<'a> {
        R {
            host: None,
            path: None,
            method: None,
            header: None,
        }
    }

    fn host(h: &str) -> R<'_> {
        R {
            host: Some(h),
            ..any()
        }
    }

    fn matcher(r: &R<'_>) -> Matcher {
        Matcher::from_config(&RouteMatch {
            host: r.host.map(str::to_owned),
            port: None,
            path: r.path.clone(),
            method: r.method.map(str::to_owned),
            headers: r
                .header
                .iter()
                .map(|(n, v)| (n.to_string(), HeaderMatch::Exact(v.to_string())))
                .collect(),
        })
        .unwrap()
    }

    fn table(routes: &[R<'_>]) -> Table<usize> {
        Table::new(
            routes
                .iter()
                .enumerate()
                .map(|(i, r)| (matcher(r), i))
                .collect(),
        )
    }

    fn req(
        host: Option<&str>,
        method: &str,
        path: &str,
        header: Option<(&str, &str)>,
    ) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        if let Some((n, v)) = header {
            b = b.header(n, v);
        }
        b.body(()).unwrap()
    }

    /// What the plain ordered scan gives: the definition the table must keep.
    fn scan(routes: &[R<'_>], r: &Request<()>) -> Option<usize> {
        routes.iter().position(|route| matcher(route).matches(r))
    }

    /// New targets over the same conditions: routing picks the same
    /// positions, and hands back what `with_targets` put there.
    #[test]
    fn with_targets_keeps_the_conditions_and_swaps_what_is_handed_back() {
        let routes = [host("a.example"), host("*.example"), any()];
        let t = table(&routes);
        let swapped = t
            .with_targets(|at, &r| Ok::<_, ()>((at == 1).then_some(r + 10)))
            .unwrap();
        assert!(Arc::ptr_eq(&t.index, &swapped.index), "the index is shared");
        for (host, want) in [("a.example", 0), ("b.example", 11), ("other", 2)] {
            let r = req(Some(host), "GET", "/", None);
            assert_eq!(swapped.route(&r), Some(&want), "{host}");
        }
        assert_eq!(
            t.with_targets(|_, _| Err::<Option<usize>, _>("no")).err(),
            Some("no")
        );
    }

    /// First match across groups: the table answers exactly what trying
    /// every route in order answers, whichever group the winner is in.
    #[test]
    fn first_match_across_host_groups() {
        use PathMatch as P;
        let routes = [
            // 0: a wildcard before the exact host it covers wins for it.
            R {
                path: Some(P::Prefix("/wild".into())),
                ..host("*.example.com")
            },
            // 1: an exact host.
            R {
                path: Some(P::Prefix("/api".into())),
                ..host("api.example.com")
            },
            // 2: a catch-all with a method, before the exact host's later routes.
            R {
                method: Some("POST"),
                ..any()
            },
            // 3: the exact host again, a shorter prefix, after the catch-all.
            R {
                path: Some(P::Prefix("/".into())),
                ..host("api.example.com")
            },
            // 4: a longer wildcard suffix, later in the table.
            host("*.b.example.com"),
            // 5: a header condition in the catch-all.
            R {
                header: Some(("x-canary", "1")),
                ..any()
            },
            // 6: an exact path in the catch-all.
            R {
                path: Some(P::Exact("/healthz".into())),
                ..any()
            },
            // 7: a regex, in order.
            R {
                path: Some(P::Regex("/u/[0-9]+".into())),
                ..host("api.example.com")
            },
            // 8: an IPv6 host, written as SPEC.md's hosts are.
            host("[::1]"),
            // 9: the catch-all's last word.
            R {
                path: Some(P::Prefix("/".into())),
                ..any()
            },
        ];
        let t = table(&routes);
        // Host, method, path, a header, and the route that must win.
        type Case<'a> = (
            Option<&'a str>,
            &'a str,
            &'a str,
            Option<(&'a str, &'a str)>,
            Option<usize>,
        );
        let cases: &[Case<'_>] = &[
            (Some("api.example.com"), "GET", "/wild/x", None, Some(0)),
            (
                Some("API.Example.com:8080"),
                "GET",
                "/api/v1",
                None,
                Some(1),
            ),
            (Some("api.example.com"), "POST", "/api/v1", None, Some(1)),
            (Some("api.example.com"), "POST", "/other", None, Some(2)),
            (Some("api.example.com"), "GET", "/other", None, Some(3)),
            (Some("api.example.com"), "GET", "/u/1", None, Some(3)),
            (Some("a.b.example.com"), "GET", "/x", None, Some(4)),
            (Some("a.b.example.com"), "GET", "/wild", None, Some(0)),
            (Some("b.example.com"), "GET", "/x", None, Some(9)),
            (Some("example.com"), "GET", "/wild", None, Some(9)),
            (Some("other"), "GET", "/x", Some(("x-canary", "1")), Some(5)),
            (Some("other"), "GET", "/healthz", None, Some(6)),
            (Some("other"), "GET", "/healthz/x", None, Some(9)),
            (None, "GET", "/healthz", None, Some(6)),
            (Some("[::1]:80"), "GET", "/x", None, Some(8)),
        ];
        for (i, (h, m, p, hdr, want)) in cases.iter().enumerate() {
            let r = req(*h, m, p, *hdr);
            assert_eq!(t.route(&r).copied(), *want, "case {i}: {h:?} {m} {p}");
            assert_eq!(scan(&routes, &r), *want, "case {i} by scan");
        }
    }

    /// Within one host, prefixes along the path, exact paths and regexes
    /// keep table order: a short prefix early beats a long one later.
    #[test]
    fn first_match_among_paths() {
        use PathMatch as P;
        let p = |path: PathMatch| R {
            path: Some(path),
            ..any()
        };
        let routes = [
            p(P::Prefix("/a/b/c".into())),
            p(P::Prefix("/a".into())),
            p(P::Exact("/a/b".into())),
            p(P::Regex("/z.*".into())),
            p(P::Prefix("/z".into())),
            p(P::Prefix("".into())),
        ];
        let t = table(&routes);
        for (path, want) in [
            ("/a/b/c/d", 0),
            ("/a/b/c", 0),
            ("/a/b", 1),
            ("/ab", 1),
            ("/zz", 3),
            ("/y", 5),
            ("/", 5),
        ] {
            let r = req(None, "GET", path, None);
            assert_eq!(t.route(&r).copied(), Some(want), "{path}");
            assert_eq!(scan(&routes, &r), Some(want), "{path} by scan");
        }
    }

    /// The same table through the control feed: a config encoded as xDS
    /// (virtual hosts) and decoded again routes every request to the
    /// cluster the file's table does, across exact hosts, wildcards, a
    /// catch-all placed before a host's own routes, and shadowed routes.
    #[test]
    fn control_feed_tables_route_as_the_file_does() {
        let text = "listeners: [ { name: l, address: 127.0.0.1:8080, routes: r } ]
routes:
  r:
    - { match: { path: { prefix: /early } }, cluster: catch-early }
    - { match: { host: api.example.com, path: { prefix: /api } }, cluster: api }
    - { match: { host: '*.example.com', path: { prefix: /wild } }, cluster: wild }
    - { match: { host: api.example.com }, cluster: api-rest }
    - { match: { host: '*.b.example.com' }, cluster: b-wild }
    - { match: { host: api.example.com, path: { prefix: /api/v2 } }, cluster: shadowed }
    - { match: { path: { exact: /healthz } }, cluster: health }
    - { cluster: last }
clusters:
  catch-early: { endpoints: [127.0.0.1:1] }
  api: { endpoints: [127.0.0.1:2] }
  wild: { endpoints: [127.0.0.1:3] }
  api-rest: { endpoints: [127.0.0.1:4] }
  b-wild: { endpoints: [127.0.0.1:5] }
  shadowed: { endpoints: [127.0.0.1:6] }
  health: { endpoints: [127.0.0.1:7] }
  last: { endpoints: [127.0.0.1:8] }
";
        let file = skiff_control::load_str(text, "x.yaml").unwrap();
        let fed = skiff_control::xds::decode(&skiff_control::xds::encode(&file)).unwrap();
        let table_of = |c: &skiff_control::Config| -> Table<String> {
            let name = c.listeners[0].routes.clone().unwrap();
            Table::new(
                c.routes[&name]
                    .iter()
                    .map(|r| {
                        let m = Matcher::from_config(&r.matches).unwrap();
                        (m, r.cluster.clone().unwrap())
                    })
                    .collect(),
            )
        };
        let (file_t, fed_t) = (table_of(&file), table_of(&fed));
        let hosts = [
            None,
            Some("api.example.com"),
            Some("x.example.com"),
            Some("a.b.example.com"),
            Some("example.com"),
            Some("other"),
        ];
        let paths = [
            "/",
            "/early/x",
            "/api/v2/x",
            "/api",
            "/wild/1",
            "/healthz",
            "/x",
        ];
        let mut checked = 0;
        for h in hosts {
            for p in paths {
                let r = req(h, "GET", p, None);
                let want = file_t.route(&r);
                assert_eq!(fed_t.route(&r), want, "{h:?} {p}");
                checked += usize::from(want.is_some());
            }
        }
        assert_eq!(checked, hosts.len() * paths.len());
    }

    /// Many hosts and prefixes: every route is found by its own request,
    /// and a request for none finds none (or the catch-all at the end).
    #[test]
    fn every_route_of_a_large_table_is_reached() {
        let hosts: Vec<String> = (0..500)
            .map(|i| format!("svc-{i}.ns.svc.cluster.local"))
            .collect();
        let mut routes: Vec<R<'_>> = hosts.iter().map(|h| host(h)).collect();
        let prefixes: Vec<String> = (0..500).map(|i| format!("/svc-{i}/")).collect();
        routes.extend(prefixes.iter().map(|p| R {
            path: Some(PathMatch::Prefix(p.clone())),
            ..any()
        }));
        let t = table(&routes);
        for (i, h) in hosts.iter().enumerate() {
            assert_eq!(t.route(&req(Some(h), "GET", "/", None)).copied(), Some(i));
        }
        for (i, p) in prefixes.iter().enumerate() {
            let r = req(Some("elsewhere"), "GET", &format!("{p}x"), None);
            assert_eq!(t.route(&r).copied(), Some(500 + i));
        }
        assert_eq!(
            t.route(&req(Some("elsewhere"), "GET", "/svc-x/", None)),
            None
        );
    }
}
