//! Serde types for the YAML configuration described in SPEC.md.
//!
//! Every struct rejects unknown keys: a typo in a config must be an error, not
//! a silently ignored setting. Defaults live next to each field so that the
//! effective config (served on `/config`) is complete and self-describing.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::duration::Duration;

/// The whole configuration of one Skiff.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the admin server listens. Loopback by default, so that nothing
    /// outside the pod can read `/config` or scrape state unless asked to.
    #[serde(default)]
    pub admin: Admin,
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: Runtime,
    /// The sockets Skiff accepts traffic on; names are unique.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Route tables by name; each is an ordered list where the first match wins.
    #[serde(default)]
    pub routes: BTreeMap<String, Vec<Route>>,
    /// Upstream clusters by name.
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    /// This workload's mTLS identity (issue "mTLS"): parsed, refused for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Inbound authorization rules (issue "mTLS"): parsed, refused for now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<AuthorizationRule>,
    /// Access logs and tracing: parsed, refused for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
    /// The streaming control feed: parsed, refused for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlFeed>,
}

impl Config {
    /// What is valid but probably not meant, for `skiff check` to print and
    /// `skiff run` to log: a config that loads and does nothing must not
    /// look like one that works.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.listeners.is_empty() {
            warnings.push("no listeners: this config accepts no traffic".to_owned());
        }
        warnings
    }
}

/// The admin server (`/ready`, `/live`, `/metrics`, `/config`, `/clusters`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `host:port`; default `127.0.0.1:15000`.
    #[serde(default = "default_admin_address")]
    pub address: String,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
        }
    }
}

fn default_admin_address() -> String {
    "127.0.0.1:15000".to_owned()
}

/// Process-wide runtime settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Tokio worker threads; default 2, a sidecar's usual CPU budget.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// How long in-flight requests may run after SIGTERM before Skiff exits
    /// anyway; default `20s`, inside Kubernetes' default 30s grace period.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Duration,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_workers() -> usize {
    2
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(20)
}

/// One accepting socket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique; labels metrics.
    pub name: String,
    /// `host:port` to bind; port 0 picks a free port (tests).
    pub address: String,
    /// Labels telemetry; default outbound.
    #[serde(default)]
    pub direction: Direction,
    /// How connections are spoken to; default auto.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// A client must finish its request head within this; default `10s`.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Request heads (HTTP/1 header lines, HTTP/2 decoded header list) larger
    /// than this many KiB get 431 `bad-request`; default 60, as Envoy's
    /// `max_request_headers_kb`.
    #[serde(default = "default_max_request_headers_kb")]
    pub max_request_headers_kb: u32,
    /// Requests with more header fields than this get 431 `bad-request`;
    /// default 100, as Envoy's `max_headers_count`.
    #[serde(default = "default_max_request_headers_count")]
    pub max_request_headers_count: u32,
    /// Read SO_ORIGINAL_DST of redirected connections (issue "Kubernetes").
    #[serde(default)]
    pub transparent: bool,
    /// Inbound TLS termination (issue "mTLS").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// The route table serving this listener (HTTP protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<String>,
    /// The cluster a `tcp` listener relays to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_request_headers_kb() -> u32 {
    60
}

fn default_max_request_headers_count() -> u32 {
    100
}

/// Which side of the workload a listener serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    #[default]
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What a listener expects on a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// Sniff: an HTTP/2 prior-knowledge preface, else HTTP/1.x.
    #[default]
    Auto,
    Http1,
    Http2,
    /// A plain TCP relay to `cluster`.
    Tcp,
}

/// Inbound TLS settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub mode: TlsMode,
}

/// Inbound TLS mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    Disabled,
    Permissive,
    Strict,
}

/// This workload's identity as PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub cert: String,
    pub key: String,
    pub trust_bundle: String,
}

/// One entry of a route table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Labels metrics as `TABLE/NAME`; without it `TABLE/INDEX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions that must all hold; absent matches every request.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// The cluster to send to (exactly one of `cluster` and `split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Weighted clusters (exactly one of `cluster` and `split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<WeightedCluster>>,
    /// Bounds the request, retries included; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy (issue "Filter chain").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Local token bucket (issue "Filter chain").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Fault injection (issue "Filter chain").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Header edits on the way up and on the way back.
    #[serde(default)]
    pub headers: HeaderRules,
}

/// Conditions on a request; every one given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Authority without port; exact, or `*.suffix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// An HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header name to condition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
}

/// How the path is matched.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Must match the whole path.
    Regex(String),
}

/// How one header is matched: a value, `{ regex }` or `{ present }`.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatch {
    Exact(String),
    Regex(String),
    Present(bool),
}

/// A cluster and its share of a split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

/// Header edits in both directions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default)]
    pub request: HeaderOps,
    #[serde(default)]
    pub response: HeaderOps,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// Headers to set (replace) and to remove.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Retries after the first try.
    pub attempts: u32,
    #[serde(default)]
    pub on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// Exponential backoff bounds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// A local token bucket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Fault injection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    pub duration: Duration,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    pub status: u16,
    pub percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

/// An upstream service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Static endpoints: `host:port` or `{ address, weight }`.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// `original_destination` or `dns` instead of static endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    /// `host:port` re-resolved with `discovery: dns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// Upstream protocol; auto keeps the downstream one.
    #[serde(default)]
    pub protocol: ClusterProtocol,
    /// Balancer; `round_robin` is the only one until the filter chain lands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<LbPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// TCP connect bound; default `1s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

/// One static endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: String,
    /// Relative share of traffic; default 1.
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    Static,
    OriginalDestination,
    Dns,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterProtocol {
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    Ewma,
    LeastRequest,
    RoundRobin,
    RingHash,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    pub header: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    pub server_identity: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    pub ratio: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    pub allow: AllowRule,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    pub otlp_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFeed {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

// === impl Endpoint ===

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            address: String,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Plain(String),
            Full(Full),
        }
        match Either::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "an endpoint is `host:port` or `{ address: host:port, weight: N }`",
            )
        })? {
            Either::Plain(address) => Ok(Endpoint { address, weight: 1 }),
            Either::Full(f) => Ok(Endpoint {
                address: f.address,
                weight: f.weight,
            }),
        }
    }
}

// === impl HeaderMatch ===

impl<'de> Deserialize<'de> for HeaderMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        enum Tagged {
            Regex(String),
            Present(bool),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Value(String),
            Tagged(Tagged),
        }
        match Either::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a header match is a value, `{ regex: ... }` or `{ present: true|false }`",
            )
        })? {
            Either::Value(v) => Ok(HeaderMatch::Exact(v)),
            Either::Tagged(Tagged::Regex(r)) => Ok(HeaderMatch::Regex(r)),
            Either::Tagged(Tagged::Present(p)) => Ok(HeaderMatch::Present(p)),
        }
    }
}

impl Serialize for HeaderMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            HeaderMatch::Exact(v) => s.serialize_str(v),
            HeaderMatch::Regex(r) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("regex", r)?;
                m.end()
            }
            HeaderMatch::Present(p) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("present", p)?;
                m.end()
            }
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Disabled => "disabled",
            TlsMode::Permissive => "permissive",
            TlsMode::Strict => "strict",
        })
    }
}

impl fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenerProtocol::Auto => "auto",
            ListenerProtocol::Http1 => "http1",
            ListenerProtocol::Http2 => "http2",
            ListenerProtocol::Tcp => "tcp",
        })
    }
}
