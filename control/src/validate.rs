//! Cross-field checks, run on a parsed config before anyone may use it.
//!
//! Every check runs and every problem is reported, each naming its key path
//! and the bad value and pointing at the offending key or value: a user
//! fixing a config should need one round trip, not one per mistake.
//!
//! Keys for features that later issues implement are parsed (so their shape
//! is checked early) but refused here: a config asking for mTLS must not run
//! in plaintext because the proxy silently ignored `tls:`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::load::Problem;
use crate::locate::Index;
use crate::model::{
    Cluster, Config, HeaderMatch, HeaderOps, LbPolicy, Listener, ListenerProtocol, PathMatch, Route,
};

/// Every problem of `config`, positioned through `index` (1-based line and
/// column of the text `index` was built from), in no particular order.
pub(crate) fn validate(config: &Config, index: &Index) -> Vec<Problem> {
    let mut c = Checker {
        index,
        problems: Vec::new(),
    };
    c.admin_and_runtime(config);
    c.refused_top_level(config);
    c.listeners(config);
    for (table, routes) in &config.routes {
        c.route_table(config, table, routes);
    }
    for (name, cluster) in &config.clusters {
        c.cluster(name, cluster);
    }
    c.problems
}

struct Checker<'a> {
    index: &'a Index,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    /// A problem with the value at `path`.
    fn at_value(&mut self, path: &str, message: impl std::fmt::Display) {
        self.push(path, true, message);
    }

    /// A problem with the key `path` itself (its presence).
    fn at_key(&mut self, path: &str, message: impl std::fmt::Display) {
        self.push(path, false, message);
    }

    fn push(&mut self, path: &str, at_value: bool, message: impl std::fmt::Display) {
        let mark = self.index.position(path, at_value);
        self.problems.push(Problem {
            line: mark.line,
            column: mark.col + 1,
            message: format!("{path}: {message}"),
        });
    }

    fn not_supported(&mut self, path: &str) {
        self.at_key(path, "not supported yet");
    }

    // === top level ===

    fn admin_and_runtime(&mut self, config: &Config) {
        if let Err(why) = socket_address(&config.admin.address) {
            self.at_value("admin.address", why);
        }
        let workers = config.runtime.workers;
        if !(1..=1024).contains(&workers) {
            self.at_value(
                "runtime.workers",
                format!("{workers} is out of range: between 1 and 1024 worker threads"),
            );
        }
    }

    fn refused_top_level(&mut self, config: &Config) {
        if config.identity.is_some() {
            self.not_supported("identity");
        }
        if !config.authorization.is_empty() {
            self.not_supported("authorization");
        }
        if config.telemetry.is_some() {
            self.not_supported("telemetry");
        }
        if config.control.is_some() {
            self.not_supported("control");
        }
    }

    // === listeners ===

    fn listeners(&mut self, config: &Config) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if l.name.trim().is_empty() {
                self.at_value(&format!("{at}.name"), "a listener needs a non-empty name");
            } else if let Some(first) = names.insert(&l.name, i) {
                names.insert(&l.name, first);
                self.at_value(
                    &format!("{at}.name"),
                    format!(
                        "duplicate listener name {:?} (also listeners[{first}])",
                        l.name
                    ),
                );
            }
            match socket_address(&l.address) {
                Err(why) => self.at_value(&format!("{at}.address"), why),
                Ok(addr) if addr.port() != 0 => {
                    if let Some(&first) = addresses.get(&addr) {
                        self.at_value(
                            &format!("{at}.address"),
                            format!(
                                "{:?} is already the address of listeners[{first}]",
                                l.address
                            ),
                        );
                    } else {
                        addresses.insert(addr, i);
                    }
                }
                Ok(_) => {}
            }
            if l.tls.is_some() {
                self.not_supported(&format!("{at}.tls"));
            }
            if l.transparent {
                self.at_key(&format!("{at}.transparent"), "true is not supported yet");
            }
            self.listener_target(config, &at, l);
        }
    }

    /// A `tcp` listener relays to a cluster; the others serve a route table.
    fn listener_target(&mut self, config: &Config, at: &str, l: &Listener) {
        let protocol = l.protocol;
        if protocol == ListenerProtocol::Tcp {
            if l.routes.is_some() {
                self.at_key(
                    &format!("{at}.routes"),
                    "a tcp listener relays to a `cluster`, it has no routes",
                );
            }
            match &l.cluster {
                None => self.at_key(at, "a tcp listener needs `cluster: NAME`"),
                Some(name) => self.cluster_ref(config, &format!("{at}.cluster"), name),
            }
        } else {
            if l.cluster.is_some() {
                self.at_key(
                    &format!("{at}.cluster"),
                    format!(
                        "only a tcp listener names a cluster; a listener with protocol {protocol} uses `routes: TABLE`"
                    ),
                );
            }
            match &l.routes {
                None => self.at_key(
                    at,
                    format!("a listener with protocol {protocol} needs `routes: TABLE`"),
                ),
                Some(table) if !config.routes.contains_key(table) => self.at_value(
                    &format!("{at}.routes"),
                    format!(
                        "unknown route table {table:?} ({})",
                        known("route tables", config.routes.keys())
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    fn cluster_ref(&mut self, config: &Config, path: &str, name: &str) {
        if !config.clusters.contains_key(name) {
            self.at_value(
                path,
                format!(
                    "unknown cluster {name:?} ({})",
                    known("clusters", config.clusters.keys())
                ),
            );
        }
    }

    // === routes ===

    fn route_table(&mut self, config: &Config, table: &str, routes: &[Route]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            let at = format!("routes.{table}[{i}]");
            if let Some(name) = &r.name {
                if name.trim().is_empty() {
                    self.at_value(&format!("{at}.name"), "a route name cannot be empty");
                } else if let Some(&first) = names.get(name.as_str()) {
                    self.at_value(
                        &format!("{at}.name"),
                        format!("duplicate route name {name:?} (also routes.{table}[{first}])"),
                    );
                } else {
                    names.insert(name, i);
                }
            }
            self.route(config, &at, r);
        }
    }

    fn route(&mut self, config: &Config, at: &str, r: &Route) {
        match (&r.cluster, &r.split) {
            (Some(_), Some(_)) => self.at_key(
                &format!("{at}.split"),
                "a route has `cluster` or `split`, not both",
            ),
            (None, None) => self.at_key(at, "a route needs `cluster: NAME` or `split: [...]`"),
            (Some(name), None) => self.cluster_ref(config, &format!("{at}.cluster"), name),
            (None, Some(split)) => {
                if split.is_empty() {
                    self.at_value(&format!("{at}.split"), "a split needs at least one cluster");
                }
                for (j, w) in split.iter().enumerate() {
                    let wat = format!("{at}.split[{j}]");
                    self.cluster_ref(config, &format!("{wat}.cluster"), &w.cluster);
                    if w.weight == 0 {
                        self.at_value(&format!("{wat}.weight"), "weight 0: a weight is at least 1");
                    }
                }
            }
        }

        let m = &r.matches;
        if let Some(host) = &m.host
            && let Err(why) = host_pattern(host)
        {
            self.at_value(&format!("{at}.match.host"), why);
        }
        if let Some(PathMatch::Regex(re)) = &m.path
            && let Err(e) = regex::Regex::new(&format!("^(?:{re})$"))
        {
            self.at_value(
                &format!("{at}.match.path.regex"),
                format!("invalid regex {re:?}: {}", one_line(&e.to_string())),
            );
        }
        if let Some(method) = &m.method
            && !is_token(method)
        {
            self.at_value(
                &format!("{at}.match.method"),
                format!("{method:?} is not an HTTP method"),
            );
        }
        for (name, hm) in &m.headers {
            let path = format!("{at}.match.headers.{name}");
            if !is_token(name) {
                self.at_key(&path, format!("{name:?} is not a valid header name"));
            }
            if let HeaderMatch::Regex(re) = hm
                && let Err(e) = regex::Regex::new(re)
            {
                self.at_value(
                    &format!("{path}.regex"),
                    format!("invalid regex {re:?}: {}", one_line(&e.to_string())),
                );
            }
        }

        if let Some(t) = r.timeout
            && t.0.is_zero()
        {
            self.at_value(
                &format!("{at}.timeout"),
                "timeout 0s: a timeout is above zero",
            );
        }
        self.header_ops(&format!("{at}.headers.request"), &r.headers.request);
        self.header_ops(&format!("{at}.headers.response"), &r.headers.response);

        if r.retry.is_some() {
            self.not_supported(&format!("{at}.retry"));
        }
        if r.rate_limit.is_some() {
            self.not_supported(&format!("{at}.rate_limit"));
        }
        if r.fault.is_some() {
            self.not_supported(&format!("{at}.fault"));
        }
    }

    fn header_ops(&mut self, at: &str, ops: &HeaderOps) {
        for (name, value) in &ops.set {
            let path = format!("{at}.set.{name}");
            if !is_token(name) {
                self.at_key(&path, format!("{name:?} is not a valid header name"));
            }
            if !is_header_value(value) {
                self.at_value(
                    &path,
                    format!(
                        "{value:?} is not a valid header value (visible ASCII, spaces and tabs only)"
                    ),
                );
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            if !is_token(name) {
                self.at_value(
                    &format!("{at}.remove[{i}]"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
    }

    // === clusters ===

    fn cluster(&mut self, name: &str, c: &Cluster) {
        let at = format!("clusters.{name}");
        if c.endpoints.is_empty() && c.discovery.is_none() {
            self.at_key(&at, "a cluster needs `endpoints: [host:port, ...]`");
        }
        for (i, e) in c.endpoints.iter().enumerate() {
            let eat = format!("{at}.endpoints[{i}]");
            if let Err(why) = endpoint_address(&e.address) {
                // `endpoints[i].address` exists only in the long form.
                let path = if self.index.get(&format!("{eat}.address")).is_some() {
                    format!("{eat}.address")
                } else {
                    eat.clone()
                };
                self.at_value(&path, why);
            }
            if e.weight == 0 {
                self.at_value(&format!("{eat}.weight"), "weight 0: a weight is at least 1");
            }
        }
        if c.connect_timeout.0.is_zero() {
            self.at_value(
                &format!("{at}.connect_timeout"),
                "timeout 0s: a timeout is above zero",
            );
        }

        let refused: [(&str, bool); 8] = [
            ("discovery", c.discovery.is_some()),
            ("dns", c.dns.is_some()),
            ("hash_on", c.hash_on.is_some()),
            ("tls", c.tls.is_some()),
            ("circuit_breaker", c.circuit_breaker.is_some()),
            ("outlier_detection", c.outlier_detection.is_some()),
            ("health_check", c.health_check.is_some()),
            ("retry_budget", c.retry_budget.is_some()),
        ];
        for (key, present) in refused {
            if present {
                self.not_supported(&format!("{at}.{key}"));
            }
        }
        if let Some(lb) = c.lb
            && lb != LbPolicy::RoundRobin
        {
            self.at_value(
                &format!("{at}.lb"),
                format!(
                    "{:?} not supported yet; round_robin is the only balancer for now",
                    lb_name(lb)
                ),
            );
        }
    }
}

// === value checks ===

/// `IP:port` (IPv6 in brackets); port 0 is allowed (pick a free port).
fn socket_address(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "{s:?} is not a socket address: expected IP:port, like 127.0.0.1:8080 or [::1]:8080"
        )
    })
}

/// `host:port`, where host is an IP address or a DNS name and port 1..=65535.
fn endpoint_address(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{s:?} is not an endpoint address: {why}"));
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad("expected host:port, like 10.0.0.1:9080 or app.default.svc:80");
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return bad("the port must be a number from 1 to 65535"),
        Ok(_) => {}
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>().is_ok()
    } else {
        host.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()) || is_dns_name(host)
    };
    if host_ok {
        Ok(())
    } else {
        bad("the host must be an IP address (IPv6 in brackets) or a DNS name")
    }
}

/// A route's `match.host`: a host name, an IP address, or `*.suffix`.
fn host_pattern(s: &str) -> Result<(), String> {
    let name = s.strip_prefix("*.").unwrap_or(s);
    let ok = is_dns_name(name)
        || (name.len() == s.len()
            && (s.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4())
                || s.strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .is_some_and(|h| h.parse::<Ipv6Addr>().is_ok())));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a host name or `*.suffix` (no port, no scheme)"
        ))
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63
/// characters, not starting or ending with `-`; at most 253 characters. A
/// trailing dot (fully qualified) is accepted.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An RFC 9110 token: what header names and methods are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value we are willing to write: visible ASCII, spaces and tabs.
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn lb_name(lb: LbPolicy) -> &'static str {
    match lb {
        LbPolicy::Ewma => "ewma",
        LbPolicy::LeastRequest => "least_request",
        LbPolicy::RoundRobin => "round_robin",
        LbPolicy::RingHash => "ring_hash",
    }
}

/// `known: a, b` for an unknown-reference message.
fn known<'a>(what: &str, names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        format!("no {what} are defined")
    } else {
        format!("known: {}", names.join(", "))
    }
}

/// regex errors are multi-line drawings; one problem is one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
