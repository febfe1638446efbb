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

use crate::model::{
    AllowRule, Cluster, Config, Discovery, HeaderMatch, HeaderOps, LbPolicy, Listener,
    ListenerProtocol, PathMatch, Route, TlsMode,
};

/// A problem validation found, named by its key path
/// (`clusters.web.endpoints[2]`). Where the config came from decides how
/// it is shown: the YAML loader adds `FILE:LINE:COL`, a pushed resource
/// has only the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    /// The value at `path` is wrong (else the key's presence, or absence,
    /// is): what a position should point at.
    pub at_value: bool,
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem of `config`, in no particular order. The same checks
/// serve a file, a merged directory and a pushed resource.
pub fn validate(config: &Config) -> Vec<Invalid> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    c.admin_and_runtime(config);
    c.refused_top_level(config);
    c.mtls(config);
    c.listeners(config);
    for (table, routes) in &config.routes {
        c.route_table(config, table, routes);
    }
    for (name, cluster) in &config.clusters {
        c.cluster(name, cluster);
    }
    c.problems
}

/// The problems of cluster `name` on its own: what a change to its
/// endpoints alone can break (its settings, and what refers to it, were
/// checked with the config it joins).
pub fn validate_cluster(name: &str, cluster: &Cluster) -> Vec<Invalid> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    c.cluster(name, cluster);
    c.problems
}

struct Checker {
    problems: Vec<Invalid>,
}

impl Checker {
    /// A problem with the value at `path`.
    fn at_value(&mut self, path: &str, message: impl std::fmt::Display) {
        self.push(path, true, message);
    }

    /// A problem with the key `path` itself (its presence).
    fn at_key(&mut self, path: &str, message: impl std::fmt::Display) {
        self.push(path, false, message);
    }

    fn push(&mut self, path: &str, at_value: bool, message: impl std::fmt::Display) {
        self.problems.push(Invalid {
            path: path.to_owned(),
            at_value,
            message: message.to_string(),
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
        let o = &config.overload;
        if !(1..=10_000_000).contains(&o.max_connections) {
            self.at_value(
                "overload.max_connections",
                format!("{} is not between 1 and 10000000", o.max_connections),
            );
        }
        if o.max_memory_mib == Some(0) {
            self.at_value(
                "overload.max_memory_mib",
                "0: a memory budget is at least 1 MiB",
            );
        }
    }

    fn refused_top_level(&mut self, config: &Config) {
        if let Some(t) = &config.telemetry {
            if let Some(tr) = &t.tracing {
                let e = &tr.otlp_endpoint;
                let rest = e
                    .strip_prefix("http://")
                    .or_else(|| e.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                    self.at_value(
                        "telemetry.tracing.otlp_endpoint",
                        format!("{e:?}: an OTLP/gRPC endpoint is `http://host:port`"),
                    );
                }
                if let Some(r) = tr.sample_ratio
                    && !(0.0..=1.0).contains(&r)
                {
                    self.at_value(
                        "telemetry.tracing.sample_ratio",
                        format!("{r} is not a ratio from 0 to 1"),
                    );
                }
            }
            if let Some(log) = &t.access_log {
                if let Some(format) = log.format.as_deref().filter(|f| *f != "json") {
                    self.at_value(
                        "telemetry.access_log.format",
                        format!("{format:?}: the access log is written as `json` only"),
                    );
                }
                if log.path.as_deref() == Some("") {
                    self.at_value(
                        "telemetry.access_log.path",
                        "an empty path: give a file, or `/dev/stdout`",
                    );
                }
            }
        }
        if let Some(feed) = &config.control {
            let rest = feed
                .address
                .strip_prefix("http://")
                .unwrap_or(&feed.address)
                .trim_end_matches('/');
            let port = rest.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            if rest.contains("://") {
                self.at_value(
                    "control.address",
                    format!(
                        "{:?}: the control feed is plaintext gRPC: host:port or http://host:port",
                        feed.address
                    ),
                );
            } else if !matches!(port, Some((h, Ok(p))) if !h.is_empty() && p > 0) {
                self.at_value(
                    "control.address",
                    format!(
                        "{:?}: the control server as host:port or http://host:port (e.g. http://skiff-control:15010)",
                        feed.address
                    ),
                );
            }
            if feed.node.as_deref().is_some_and(|n| n.trim().is_empty()) {
                self.at_value(
                    "control.node",
                    "an empty node id: give one, or leave `node` out to use the host name",
                );
            }
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
            if l.detect_timeout.0.is_zero() {
                self.at_value(
                    &format!("{at}.detect_timeout"),
                    "timeout 0s: a timeout is above zero",
                );
            }
            if l.stream_idle_timeout.0.is_zero() {
                self.at_value(
                    &format!("{at}.stream_idle_timeout"),
                    "timeout 0s: a timeout is above zero",
                );
            }
            if l.idle_timeout.0.is_zero() {
                self.at_value(
                    &format!("{at}.idle_timeout"),
                    "timeout 0s: a timeout is above zero",
                );
            }
            if l.header_timeout.0.is_zero() {
                self.at_value(
                    &format!("{at}.header_timeout"),
                    "timeout 0s: a timeout is above zero",
                );
            }
            // hyper and h2 need headroom above these to parse a head Skiff
            // then refuses itself (see proxy/src/protocol.rs); 8 MiB and
            // 10,000 fields are far past anything a real client sends.
            if !(1..=8192).contains(&l.max_request_headers_kb) {
                self.at_value(
                    &format!("{at}.max_request_headers_kb"),
                    format!("{} is not between 1 and 8192", l.max_request_headers_kb),
                );
            }
            if !(1..=10_000).contains(&l.max_request_headers_count) {
                self.at_value(
                    &format!("{at}.max_request_headers_count"),
                    format!("{} is not between 1 and 10000", l.max_request_headers_count),
                );
            }
            if l.max_connections == Some(0) {
                self.at_value(
                    &format!("{at}.max_connections"),
                    "0: a listener takes at least one connection".to_owned(),
                );
            }
            if !(1..=i32::MAX as u32).contains(&l.max_concurrent_streams) {
                self.at_value(
                    &format!("{at}.max_concurrent_streams"),
                    format!(
                        "{} is not between 1 and 2147483647",
                        l.max_concurrent_streams
                    ),
                );
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
            if let (true, Some(name)) = (l.transparent, &l.cluster) {
                // A transparent listener's opaque TCP goes to this cluster.
                self.cluster_ref(config, &format!("{at}.cluster"), name);
            } else if l.cluster.is_some() {
                self.at_key(
                    &format!("{at}.cluster"),
                    format!(
                        "only a tcp or transparent listener names a cluster; a listener with protocol {protocol} uses `routes: TABLE`"
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
                    } else if w.weight > MAX_SPLIT_WEIGHT {
                        self.at_value(
                            &format!("{wat}.weight"),
                            format!("weight {} is over {MAX_SPLIT_WEIGHT}", w.weight),
                        );
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

        self.route_policies(at, r);
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
                // In the long form the loader points at `address:`.
                self.at_value(&eat, why);
            }
            if e.weight == 0 {
                self.at_value(&format!("{eat}.weight"), "weight 0: a weight is at least 1");
            } else if e.weight > MAX_ENDPOINT_WEIGHT {
                self.at_value(
                    &format!("{eat}.weight"),
                    format!("weight {} is over {MAX_ENDPOINT_WEIGHT}", e.weight),
                );
            }
        }
        if c.connect_timeout.0.is_zero() {
            self.at_value(
                &format!("{at}.connect_timeout"),
                "timeout 0s: a timeout is above zero",
            );
        }
        if c.idle_timeout.0.is_zero() {
            self.at_value(
                &format!("{at}.idle_timeout"),
                "timeout 0s: a timeout is above zero",
            );
        }

        match (c.discovery, &c.original_destination) {
            (Some(Discovery::OriginalDestination), od) => {
                if !c.endpoints.is_empty() {
                    self.at_key(
                        &format!("{at}.endpoints"),
                        "`discovery: original_destination` takes no endpoints: each connection's destination is its endpoint",
                    );
                }
                if let Some(od) = od
                    && od.host.parse::<std::net::IpAddr>().is_err()
                {
                    self.at_value(
                        &format!("{at}.original_destination.host"),
                        format!("{:?} is not an IP address", od.host),
                    );
                }
            }
            (_, Some(_)) => self.at_key(
                &format!("{at}.original_destination"),
                "only with `discovery: original_destination`",
            ),
            _ => {}
        }
        let refused: [(&str, bool); 2] = [
            ("discovery", c.discovery == Some(Discovery::Dns)),
            ("dns", c.dns.is_some()),
        ];
        for (key, present) in refused {
            if present {
                self.not_supported(&format!("{at}.{key}"));
            }
        }
        self.balancing(&at, c);
        self.outlier_and_health(&at, c);
        self.breaker_and_budget(&at, c);
    }
}

// === filter chain: retries, rate limits, faults, breakers, budgets ===

/// `retry.on` conditions besides gRPC status names; kept in step with
/// `skiff_filters::classify::RetryOn` (a filters test loads every name).
const RETRY_CONDITIONS: [&str; 5] = [
    "connect-failure",
    "reset",
    "5xx",
    "gateway-error",
    "retriable-4xx",
];

/// gRPC status names in `retry.on` (kebab-case canonical names, `ok` aside).
const GRPC_STATUS_NAMES: [&str; 16] = [
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// More retries than this multiply load more than any outage is worth.
const MAX_RETRY_ATTEMPTS: u32 = 10;

fn is_retry_condition(s: &str) -> bool {
    RETRY_CONDITIONS.contains(&s)
        || GRPC_STATUS_NAMES.contains(&s)
        || (s.len() == 3 && s.parse::<u16>().is_ok_and(|n| (100..=599).contains(&n)))
}

fn is_percent(p: f64) -> bool {
    p.is_finite() && (0.0..=100.0).contains(&p)
}

impl Checker {
    fn route_policies(&mut self, at: &str, r: &Route) {
        if let Some(retry) = &r.retry {
            let rat = format!("{at}.retry");
            if retry.attempts > MAX_RETRY_ATTEMPTS {
                self.at_value(
                    &format!("{rat}.attempts"),
                    format!(
                        "{}: at most {MAX_RETRY_ATTEMPTS} retries after the first try",
                        retry.attempts
                    ),
                );
            }
            if retry.on.is_empty() {
                self.at_key(
                    &rat,
                    "a retry needs `on: [...]`, the conditions to retry on (e.g. [5xx, reset])",
                );
            }
            for (i, cond) in retry.on.iter().enumerate() {
                if !is_retry_condition(cond) {
                    self.at_value(
                        &format!("{rat}.on[{i}]"),
                        format!(
                            "unknown retry condition {cond:?}: expected {}, an HTTP status like \"503\", or a gRPC status name like unavailable",
                            RETRY_CONDITIONS.join(", ")
                        ),
                    );
                }
            }
            if retry.per_try_timeout.is_some_and(|d| d.0.is_zero()) {
                self.at_value(
                    &format!("{rat}.per_try_timeout"),
                    "timeout 0s: a timeout is above zero",
                );
            }
            if let Some(b) = &retry.backoff {
                if b.base.0.is_zero() {
                    self.at_value(
                        &format!("{rat}.backoff.base"),
                        "0s: a backoff base is above zero",
                    );
                }
                if b.max < b.base {
                    self.at_value(
                        &format!("{rat}.backoff.max"),
                        format!("{} is below base {}: max is at least base", b.max, b.base),
                    );
                }
            }
        }
        if let Some(rl) = &r.rate_limit {
            let lat = format!("{at}.rate_limit");
            if rl.requests_per_second == 0 {
                self.at_value(
                    &format!("{lat}.requests_per_second"),
                    "0: at least 1 request per second",
                );
            }
            if rl.burst == Some(0) {
                self.at_value(&format!("{lat}.burst"), "0: a burst is at least 1 request");
            }
        }
        if let Some(f) = &r.fault {
            let fat = format!("{at}.fault");
            if f.delay.is_none() && f.abort.is_none() {
                self.at_key(&fat, "a fault needs `delay: {...}` or `abort: {...}`");
            }
            if let Some(d) = &f.delay {
                if d.duration.0.is_zero() {
                    self.at_value(
                        &format!("{fat}.delay.duration"),
                        "0s: a delay is above zero",
                    );
                }
                if !is_percent(d.percent) {
                    self.at_value(
                        &format!("{fat}.delay.percent"),
                        format!("{}: a percentage from 0 to 100", d.percent),
                    );
                }
            }
            if let Some(a) = &f.abort {
                if !(200..=599).contains(&a.status) {
                    self.at_value(
                        &format!("{fat}.abort.status"),
                        format!("{}: an HTTP status from 200 to 599", a.status),
                    );
                }
                if !is_percent(a.percent) {
                    self.at_value(
                        &format!("{fat}.abort.percent"),
                        format!("{}: a percentage from 0 to 100", a.percent),
                    );
                }
                if let Some(g) = a.grpc_status
                    && g > 16
                {
                    self.at_value(
                        &format!("{fat}.abort.grpc_status"),
                        format!("{g}: a gRPC status code from 0 to 16"),
                    );
                }
            }
        }
    }

    fn breaker_and_budget(&mut self, at: &str, c: &Cluster) {
        if let Some(cb) = &c.circuit_breaker {
            let bat = format!("{at}.circuit_breaker");
            for (key, n) in [
                ("max_connections", cb.max_connections),
                ("max_pending_requests", cb.max_pending_requests),
                ("max_requests", cb.max_requests),
            ] {
                if n == Some(0) {
                    self.at_value(
                        &format!("{bat}.{key}"),
                        "0: at least 1 (0 would refuse every request)",
                    );
                }
            }
        }
        if let Some(b) = &c.retry_budget {
            let bat = format!("{at}.retry_budget");
            if !(b.ratio.is_finite() && (0.0..=1000.0).contains(&b.ratio)) {
                self.at_value(
                    &format!("{bat}.ratio"),
                    format!(
                        "{}: a ratio of retries to requests from 0 to 1000 (0.2 = 20%)",
                        b.ratio
                    ),
                );
            }
            if let Some(n) = b.min_per_second
                && n >= i32::MAX as u32
            {
                self.at_value(
                    &format!("{bat}.min_per_second"),
                    format!("{n}: below {}", i32::MAX),
                );
            }
        }
    }
}

impl Checker {
    fn balancing(&mut self, at: &str, c: &Cluster) {
        match (c.lb, &c.hash_on) {
            (Some(LbPolicy::RingHash), None) => self.at_value(
                &format!("{at}.lb"),
                "ring_hash needs `hash_on: { header: NAME }` to know what to hash",
            ),
            (lb, Some(h)) => {
                if lb != Some(LbPolicy::RingHash) {
                    self.at_key(
                        &format!("{at}.hash_on"),
                        "hash_on applies to `lb: ring_hash` only",
                    );
                }
                if !is_token(&h.header) {
                    self.at_value(
                        &format!("{at}.hash_on.header"),
                        format!("{:?} is not a valid header name", h.header),
                    );
                }
            }
            _ => {}
        }
    }

    fn outlier_and_health(&mut self, at: &str, c: &Cluster) {
        if let Some(o) = &c.outlier_detection {
            let oat = format!("{at}.outlier_detection");
            if o.consecutive_failures == Some(0) {
                self.at_value(
                    &format!("{oat}.consecutive_failures"),
                    "0: at least 1 failure",
                );
            }
            if o.base_ejection_time.is_some_and(|d| d.0.is_zero()) {
                self.at_value(
                    &format!("{oat}.base_ejection_time"),
                    "0s: a time above zero",
                );
            }
            if let Some(p) = o.max_ejection_percent
                && p > 100
            {
                self.at_value(
                    &format!("{oat}.max_ejection_percent"),
                    format!("{p}: 0 to 100"),
                );
            }
        }
        if let Some(h) = &c.health_check {
            let hat = format!("{at}.health_check");
            if let Some(path) = &h.path
                && !path.starts_with('/')
            {
                self.at_value(
                    &format!("{hat}.path"),
                    format!("{path:?}: a path starts with /"),
                );
            }
            for (key, d) in [("interval", h.interval), ("timeout", h.timeout)] {
                if d.is_some_and(|d| d.0.is_zero()) {
                    self.at_value(&format!("{hat}.{key}"), "0s: a time above zero");
                }
            }
            for (key, n) in [
                ("unhealthy_threshold", h.unhealthy_threshold),
                ("healthy_threshold", h.healthy_threshold),
            ] {
                if n == Some(0) {
                    self.at_value(&format!("{hat}.{key}"), "0: at least 1");
                }
            }
        }
    }
}

// === mTLS and authorization ===

impl Checker {
    /// `identity`, `listeners[].tls`, `clusters.X.tls` and `authorization`:
    /// any use of TLS needs an identity, and identities named anywhere must
    /// be well-formed SPIFFE IDs (a typo would otherwise refuse every peer).
    fn mtls(&mut self, config: &Config) {
        if let Some(id) = &config.identity {
            for (key, value) in [
                ("cert", &id.cert),
                ("key", &id.key),
                ("trust_bundle", &id.trust_bundle),
            ] {
                if value.trim().is_empty() {
                    self.at_value(&format!("identity.{key}"), "needs the path of a PEM file");
                }
            }
        }
        let needs_identity =
            "needs `identity:` (cert, key, trust_bundle), the certificate this workload presents";
        for (i, l) in config.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if let Some(tls) = &l.tls
                && tls.mode != TlsMode::Disabled
                && config.identity.is_none()
            {
                self.at_key(
                    &format!("{at}.tls"),
                    format!("mode {} {needs_identity}", tls_mode_name(tls.mode)),
                );
            }
            if l.protocol == ListenerProtocol::Tcp
                && let Some(name) = &l.cluster
                && config.clusters.get(name).is_some_and(|c| c.tls.is_some())
            {
                self.at_value(
                    &format!("{at}.cluster"),
                    format!(
                        "cluster {name:?} originates mTLS (`tls`), which tcp listeners do not support yet"
                    ),
                );
            }
        }
        for (name, c) in &config.clusters {
            let Some(tls) = &c.tls else { continue };
            let at = format!("clusters.{name}.tls");
            if config.identity.is_none() {
                self.at_key(&at, needs_identity);
            }
            if let Err(why) = crate::spiffe::check(&tls.server_identity) {
                self.at_value(&format!("{at}.server_identity"), why);
            }
        }
        for (i, rule) in config.authorization.iter().enumerate() {
            self.allow_rule(&format!("authorization[{i}].allow"), &rule.allow);
        }
    }

    fn allow_rule(&mut self, at: &str, allow: &AllowRule) {
        for (j, id) in allow.identities.iter().enumerate() {
            let base = id.strip_suffix("/*").unwrap_or(id);
            if id != "*" && crate::spiffe::check(base).is_err() {
                self.at_value(
                    &format!("{at}.identities[{j}]"),
                    format!(
                        "{id:?} is not an identity pattern: a SPIFFE ID (spiffe://trust-domain/path), `spiffe://trust-domain/prefix/*`, or `*` for any mTLS caller"
                    ),
                );
            }
        }
        for (j, p) in allow.paths.iter().enumerate() {
            let body = p.strip_suffix("/*").unwrap_or(p);
            let ok = p == "*"
                || (p.starts_with('/')
                    && !body.contains('*')
                    && p.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'));
            if !ok {
                self.at_value(
                    &format!("{at}.paths[{j}]"),
                    format!(
                        "{p:?} is not a path pattern: an exact path (/api/users), a prefix (/api/*), or `*`"
                    ),
                );
            }
        }
        for (j, m) in allow.methods.iter().enumerate() {
            if !is_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
                self.at_value(
                    &format!("{at}.methods[{j}]"),
                    format!("{m:?} is not an HTTP method (upper case, like GET or POST)"),
                );
            }
        }
    }
}

fn tls_mode_name(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Disabled => "disabled",
        TlsMode::Permissive => "permissive",
        TlsMode::Strict => "strict",
    }
}

// === value checks ===

/// Endpoint weights are relative shares: 10,000 to 1 is finer than any
/// deployment needs, and bounds the round-robin schedule and the hash ring
/// (which grow with the weights) to a few MB.
const MAX_ENDPOINT_WEIGHT: u32 = 10_000;
/// Split weights are percentages or per-mille in practice.
const MAX_SPLIT_WEIGHT: u32 = 1_000_000;

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
