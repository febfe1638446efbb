//! Serde types for the YAML configuration described in docs/reference/config.md (generated from these types).
//!
//! Every struct rejects unknown keys: a typo in a config must be an error, not
//! a silently ignored setting. Defaults live next to each field so that the
//! effective config (served on `/config`) is complete and self-describing.
//!
//! The `///` comments on these types are the config reference: the schema
//! (`json_schema`) and `docs/reference/config.md` are generated from them, so
//! they are written for an operator writing YAML, with YAML key names.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::duration::Duration;

/// The whole configuration of one Skiff.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the admin server listens.
    #[serde(default)]
    pub admin: Admin,
    /// Process-wide settings: worker threads and the shutdown drain.
    #[serde(default)]
    pub runtime: Runtime,
    /// The sockets Skiff accepts traffic on; names and addresses are unique.
    /// They change live: added ones bind, removed ones drain, changed ones keep their socket.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Route tables by name, each an ordered list of routes where the first match wins.
    /// A listener's `routes` names the table that serves it.
    #[serde(default)]
    pub routes: BTreeMap<String, Vec<Route>>,
    /// Upstream clusters by name, named by routes and by `tcp` listeners.
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    /// This workload's mTLS identity: certificate, key and trust bundle as PEM files.
    /// Absent: no mTLS; a config that uses `tls` on any listener or cluster is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Inbound authorization rules, tried in order; the first that matches admits the request.
    /// When rules exist and none matches: 403 `forbidden`. Only inbound listeners are checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<AuthorizationRule>,
    /// Access logs and tracing. Absent: no access log and no tracing
    /// (`traceparent` is still passed on untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
    /// The streaming control feed (xDS v3 over ADS). Absent: the config comes from the
    /// file alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlFeed>,
    /// The process's budgets: past them, new requests get 503 `overloaded` instead of
    /// taking the process down. Changes live.
    #[serde(default)]
    pub overload: Overload,
}

/// When Skiff sheds load: 503 `skiff-error: overloaded` (gRPC UNAVAILABLE) for new
/// requests while a budget is spent, served again once it is not.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overload {
    /// Downstream connections open at once, all listeners together. A connection past it
    /// is answered 503 `overloaded` and closed after that answer. 1 to 10000000.
    #[serde(default = "default_overload_connections")]
    pub max_connections: u32,
    /// Resident memory (RSS) in MiB. From 95% of it, new requests get 503 `overloaded`
    /// until it is back under 90%. Absent: no memory budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u32>,
}

impl Default for Overload {
    fn default() -> Self {
        Self {
            max_connections: default_overload_connections(),
            max_memory_mib: None,
        }
    }
}

/// Envoy's advice for `global_downstream_max_connections` is "set one";
/// 100,000 is far above what one sidecar's workload opens, and far below
/// the file descriptors a pod gets (two per proxied connection).
fn default_overload_connections() -> u32 {
    100_000
}

impl Config {
    /// What is valid but probably not meant, for `skiff check` to print and
    /// `skiff run` to log: a config that loads and does nothing must not
    /// look like one that works.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.listeners.is_empty() && self.control.is_none() {
            warnings.push("no listeners: this config accepts no traffic".to_owned());
        }
        for (table, routes) in &self.routes {
            warnings.extend(crate::shadow::warnings(table, routes));
        }
        warnings
    }
}

/// The admin server (`/ready`, `/live`, `/metrics`, `/config`, `/clusters`); fixed at start.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// The `IP:port` the admin server listens on (IPv6 in brackets).
    /// Keep it on loopback unless `/config` and state may be read from outside the pod.
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

/// Process-wide settings, fixed at start: a live reload that changes them is refused.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Tokio worker threads, 1 to 1024. With 1, everything runs on a single thread.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// How long in-flight requests may run after SIGTERM or SIGINT before Skiff exits anyway.
    /// Keep it inside the pod's termination grace period (30s by default in Kubernetes).
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

/// A listener: a socket Skiff accepts connections on, and what it does with them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// The listener's name, unique and non-empty; labels metrics.
    pub name: String,
    /// The `IP:port` to bind (IPv6 in brackets); two listeners cannot share one.
    /// Port 0 picks a free port.
    pub address: String,
    /// Which side of the workload the listener serves: `inbound` or `outbound`.
    /// Labels metrics; `authorization` applies to `inbound` listeners only.
    #[serde(default)]
    pub direction: Direction,
    /// What the listener speaks: `auto`, `http1`, `http2` or `tcp`.
    /// `tcp` needs `cluster`; the others need `routes`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// How long a client has to start speaking and to send each HTTP/1 request head.
    /// It also bounds the TLS handshake. Above zero.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// How long an HTTP/2 connection may go without a new request before it is sent
    /// GOAWAY (streams open then finish first). HTTP/1 keep-alive connections wait at most
    /// `header_timeout` for their next request. Above zero.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// How long a request or response body may go without a byte while it streams
    /// before the request fails, noticed within twice this (a stalled upload: 400
    /// `bad-request`; a stalled download: the response is cut). Envoy's
    /// `stream_idle_timeout`. Above zero.
    #[serde(default = "default_stream_idle_timeout")]
    pub stream_idle_timeout: Duration,
    /// Largest request head accepted, in KiB; a larger one gets 431 `bad-request`.
    /// Counts header names and values plus method and target; 1 to 8192, HTTP/1 and HTTP/2.
    #[serde(default = "default_max_request_headers_kb")]
    pub max_request_headers_kb: u32,
    /// Most header fields a request may carry; more gets 431 `bad-request`. 1 to 10000.
    #[serde(default = "default_max_request_headers_count")]
    pub max_request_headers_count: u32,
    /// Connections this listener holds open at once; one past it is closed as it is
    /// accepted. 1 or more. Absent: no limit but `overload.max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// HTTP/2 streams a client may have open on one connection; more are refused with
    /// `REFUSED_STREAM`, which a client may retry. 1 to 2147483647.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Takes connections redirected to it (by `skiff iptables`): reads each one's original
    /// destination (SO_ORIGINAL_DST) and detects its protocol. TLS is terminated when `tls`
    /// is set and relayed untouched otherwise; HTTP/2 and HTTP/1 are served by `routes`,
    /// which may match on the original destination's `port`; anything else, or a client
    /// silent for `detect_timeout` (a server-first protocol), is relayed as TCP to the
    /// original destination, or to `cluster` when set.
    #[serde(default)]
    pub transparent: bool,
    /// How long a transparent listener waits for a client's first bytes before relaying
    /// the connection as TCP (for protocols where the server speaks first). Above zero.
    #[serde(default = "default_detect_timeout")]
    pub detect_timeout: Duration,
    /// Terminates TLS on this listener: `{ mode: disabled | permissive | strict }`.
    /// Absent: plaintext only, as `mode: disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// The route table (a key of `routes`) that serves this listener's requests.
    /// Required unless `protocol: tcp`, and refused with it. Absent: only on `tcp` listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<String>,
    /// The cluster (a key of `clusters`) a `tcp` listener relays to.
    /// Required with `protocol: tcp`, refused otherwise. Absent: only on HTTP listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Envoy's `stream_idle_timeout` default.
fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

/// Envoy's `idle_timeout` default for downstream connections.
fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

/// Long enough for a client that connects and then writes (HTTP, TLS: at
/// once); short enough that a server-first protocol's handshake (MySQL,
/// SMTP) waits little.
fn default_detect_timeout() -> Duration {
    Duration::from_millis(250)
}

fn default_max_request_headers_kb() -> u32 {
    60
}

fn default_max_request_headers_count() -> u32 {
    100
}

/// Envoy's default is 2^31-1, with 100 advised for edge proxies; a sidecar's
/// one client multiplexes more than an edge's many, so 1024.
fn default_max_concurrent_streams() -> u32 {
    1024
}

/// Which side of the workload a listener serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Traffic coming into this workload; `authorization` rules apply.
    Inbound,
    /// Traffic this workload sends out; `authorization` rules do not apply.
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/2 if the connection opens with the prior-knowledge preface, else HTTP/1.x.
    #[default]
    Auto,
    /// HTTP/1.0 and 1.1 only; an HTTP/2 preface gets 505 and the connection closes.
    Http1,
    /// HTTP/2 only; anything else is a connection error (GOAWAY `PROTOCOL_ERROR`).
    Http2,
    /// Relays the connection's bytes to `cluster`, with no HTTP handling.
    Tcp,
}

/// Inbound TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Whether the listener takes mTLS: `disabled`, `permissive` or `strict`.
    /// `permissive` and `strict` need `identity`.
    pub mode: TlsMode,
}

/// How a listener treats TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plaintext only.
    #[default]
    Disabled,
    /// mTLS and plaintext on the same port, told apart by the connection's first byte.
    Permissive,
    /// mTLS only: a client must present a certificate that chains to `identity.trust_bundle`.
    Strict,
}

/// This workload's mTLS identity as PEM files, re-read when their contents change.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Path of the certificate chain, leaf first; the leaf carries a `spiffe://` URI SAN.
    pub cert: String,
    /// Path of the private key: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
    pub key: String,
    /// Path of the CA certificates that peers' certificates must chain to.
    pub trust_bundle: String,
}

/// A route: which requests it takes and where it sends them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The route's name, unique within its table; metrics label the route `TABLE/NAME`.
    /// Absent: metrics label it `TABLE/INDEX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The conditions a request must all meet to take this route.
    /// An empty `match` takes every request.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// The cluster that receives the route's requests.
    /// Exactly one of `cluster` and `split`. Absent: the route uses `split`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Clusters that share the route's requests by weight; a non-empty list.
    /// Exactly one of `cluster` and `split`. Absent: the route uses `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<WeightedCluster>>,
    /// Bounds the whole exchange, retries and backoff included; past it, 504 `timeout`.
    /// Above zero. Absent: no timeout, except a gRPC request's own `grpc-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries failed attempts. Absent: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Limits the route's request rate with a local token bucket. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Injects delays and aborts, for testing. Absent: no faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Header edits on the request going up and on the response coming back.
    #[serde(default)]
    pub headers: HeaderRules,
}

/// Conditions on a request; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The request's host without port: an exact name or IP, or `*.suffix` for any name
    /// ending in `.suffix`. Case-insensitive. Absent: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How the request path (without the query) must match: `{ exact }`, `{ prefix }`
    /// or `{ regex }`. Absent: any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The port the connection was originally sent to, on a `transparent` listener (the
    /// app's own port for inbound traffic, the service's for outbound). On other listeners
    /// a route with `port` never matches. Absent: any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The request's HTTP method, e.g. `GET`; case-sensitive. Absent: any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Conditions on request headers, `name: condition`; all must hold.
    /// Each condition is a value (exact match), `{ regex: RE }` or `{ present: true|false }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
}

/// How the request path (without the query) is matched: one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathMatch {
    /// The path equals this string.
    Exact(String),
    /// The path starts with this string (so `/api` also matches `/apis`).
    Prefix(String),
    /// The whole path matches this regex (anchored; Rust `regex` syntax).
    Regex(String),
}

/// How one header is matched: a value, `{ regex }` or `{ present }`.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatch {
    /// A plain value: one of the header's values equals it exactly.
    Exact(String),
    /// `{ regex: RE }`: one of the header's values matches RE as a whole.
    Regex(String),
    /// `{ present: true|false }`: the header is there, or is not.
    Present(bool),
}

/// One cluster of a `split` and its share of the route's requests.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// The cluster (a key of `clusters`) that receives this share.
    pub cluster: String,
    /// This cluster's share, relative to the other weights of the split; 1 to 1,000,000.
    pub weight: u32,
}

/// Header edits a route makes in both directions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Edits to the request before it goes upstream, once per request (not per retry).
    #[serde(default)]
    pub request: HeaderOps,
    /// Edits to the upstream's response before it goes back to the client.
    /// Skiff's own error answers are not edited.
    #[serde(default)]
    pub response: HeaderOps,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// Headers to set and headers to remove, in one direction.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers to set, `name: value`, replacing any value already there.
    /// Names are HTTP tokens; values are visible ASCII, spaces and tabs.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Names of headers to remove; removal happens before `set`.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// A route's retry policy: which failed attempts are tried again, and how often.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// How many retries may follow the first try, 0 to 10.
    /// Each also needs room in the cluster's `retry_budget` and `max_retries`.
    pub attempts: u32,
    /// The outcomes that are retried; required. One or more of `connect-failure`, `reset`,
    /// `5xx`, `gateway-error`, `retriable-4xx`, an HTTP status like `"503"`,
    /// or a gRPC status name like `unavailable`.
    #[serde(default)]
    pub on: Vec<String>,
    /// Bounds each attempt; an attempt that hits it is retried whatever `on` says.
    /// Above zero. Absent: attempts are bounded only by the route `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Bounds of the random wait before each retry.
    /// Absent: `{ base: 25ms, max: 250ms }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// Exponential backoff with full jitter: before retry n (from 0) Skiff waits a random
/// time below `min(max, base × 2^n)`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The bound of the wait before the first retry, doubled for each one after; above zero.
    pub base: Duration,
    /// The largest the bound of the wait grows to; at least `base`.
    pub max: Duration,
}

/// A local token bucket per route, in each Skiff process; retries take no tokens.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The sustained rate admitted, in requests per second; at least 1.
    /// A request over the limit gets 429 `rate-limited`.
    pub requests_per_second: u32,
    /// How many requests may come at once (the bucket size); at least 1.
    /// Absent: equal to `requests_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Fault injection for testing; at least one of `delay` and `abort`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delays a share of requests before they go on. Absent: no delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answers a share of requests with an error instead of sending them upstream.
    /// Never retried. Absent: no abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// An injected delay; each request rolls for it separately.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long a delayed request waits; above zero.
    pub duration: Duration,
    /// The share of requests delayed, in percent, 0 to 100 (fractions allowed).
    pub percent: f64,
}

/// An injected abort: Skiff answers with `skiff-error: fault-injected`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status of the answer, 200 to 599.
    pub status: u16,
    /// The share of requests aborted, in percent, 0 to 100 (fractions allowed).
    pub percent: f64,
    /// The gRPC status code gRPC callers get, 0 to 16.
    /// Absent: gRPC's mapping of `status` (e.g. 503 gives 14, UNAVAILABLE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

/// An upstream service: its endpoints, and how Skiff connects to them and spreads load.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The cluster's endpoints, each `host:port` or `{ address, weight }`.
    /// Required: a cluster without endpoints is refused.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Where the endpoints come from, instead of `endpoints`: `original_destination`
    /// sends each request (or TCP connection) where its connection was originally going,
    /// on a `transparent` listener, with a pool per destination: the passthrough cluster.
    /// `dns` is not supported yet. Absent: `endpoints` is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    /// With `discovery: original_destination`: connect to `host` at the original port
    /// instead of the original address (`127.0.0.1` for the inbound side: the app on
    /// loopback). Absent: the original address itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_destination: Option<OriginalDestination>,
    /// The `host:port` whose DNS answers are the endpoints, with `discovery: dns`.
    /// Not supported yet: a config that sets it is refused. Absent: no DNS discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// The HTTP version spoken to the endpoints: `auto`, `http1` or `http2`.
    #[serde(default)]
    pub protocol: ClusterProtocol,
    /// How an endpoint is picked for each attempt: `ewma`, `least_request`,
    /// `round_robin` or `ring_hash`. Absent: `ewma`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<LbPolicy>,
    /// The request header `lb: ring_hash` hashes; required with `ring_hash`, refused
    /// with any other `lb`. Absent: only when `lb` is not `ring_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Bounds each TCP connect to an endpoint, and the TLS handshake after it; above zero.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// How long a pooled connection to an endpoint may sit without a request
    /// before it is closed (an HTTP/2 one: without a new stream). Envoy's
    /// `common_http_protocol_options.idle_timeout` for upstreams. Above zero.
    #[serde(default = "default_upstream_idle_timeout")]
    pub idle_timeout: Duration,
    /// Originates mTLS to the endpoints, presenting `identity`, which it needs.
    /// Not yet for the cluster of a `tcp` listener. Absent: plaintext to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// Concurrency limits; over one, a request fails fast with 503 `circuit-open`.
    /// Absent: no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Ejects endpoints that fail several times in a row. Absent: no ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Probes every endpoint and skips unhealthy ones.
    /// Absent: no probes; every endpoint counts as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Caps retries to this cluster relative to its traffic.
    /// Absent: `{ ratio: 0.2, min_per_second: 10 }`: the budget is always on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

impl Cluster {
    /// Whether `other` differs from this cluster in its endpoints alone:
    /// then the proxy swaps the endpoint set and keeps everything built on
    /// the settings (routes, pools, policy state). Field by field rather
    /// than comparing copies without endpoints: a reload of 10,000 clusters
    /// would copy 20,000. The destructuring names every field, so a new one
    /// cannot be forgotten here.
    pub fn same_but_endpoints(&self, other: &Cluster) -> bool {
        let Cluster {
            endpoints: _,
            discovery,
            original_destination,
            dns,
            protocol,
            lb,
            hash_on,
            connect_timeout,
            idle_timeout,
            tls,
            circuit_breaker,
            outlier_detection,
            health_check,
            retry_budget,
        } = self;
        *discovery == other.discovery
            && *original_destination == other.original_destination
            && *dns == other.dns
            && *protocol == other.protocol
            && *lb == other.lb
            && *hash_on == other.hash_on
            && *connect_timeout == other.connect_timeout
            && *idle_timeout == other.idle_timeout
            && *tls == other.tls
            && *circuit_breaker == other.circuit_breaker
            && *outlier_detection == other.outlier_detection
            && *health_check == other.health_check
            && *retry_budget == other.retry_budget
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

/// Envoy's `idle_timeout` default for upstream connection pools.
fn default_upstream_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

/// One static endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// `host:port`: an IP address (IPv6 in brackets) or a DNS name, and a port 1 to 65535.
    /// A DNS name is resolved on each new connection.
    pub address: String,
    /// The endpoint's relative share of traffic, 1 to 10,000.
    pub weight: u32,
}

/// Where `discovery: original_destination` connects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OriginalDestination {
    /// An IP address to connect to, at the connection's original port.
    pub host: String,
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// The `endpoints` list.
    Static,
    /// The address each redirected connection was originally sent to (SO_ORIGINAL_DST).
    OriginalDestination,
    /// The addresses the cluster's `dns` name resolves to, re-resolved over time.
    Dns,
}

/// The HTTP version Skiff speaks to a cluster's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterProtocol {
    /// The version the downstream request came in with.
    #[default]
    Auto,
    /// HTTP/1.1.
    Http1,
    /// HTTP/2, as gRPC needs; health checks then use the gRPC health protocol.
    Http2,
}

/// How a cluster picks an endpoint; endpoint weights apply to every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Power of two choices on peak-EWMA latency × (in flight + 1) ÷ weight.
    Ewma,
    /// Power of two choices on requests in flight ÷ weight.
    LeastRequest,
    /// Smooth weighted round robin: weights 3:1 give a, a, b, a.
    RoundRobin,
    /// Consistent hashing of the `hash_on` header: one value keeps reaching one endpoint.
    RingHash,
}

/// What `lb: ring_hash` hashes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    /// The request header whose value picks the endpoint.
    /// A request without it is balanced like `least_request`.
    pub header: String,
}

/// Outbound mTLS to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// The SPIFFE ID the endpoints must present (`spiffe://trust-domain/path`).
    /// Any other identity fails the request with 503 `connect-failed`.
    pub server_identity: String,
}

/// Concurrency limits on a cluster, counted while each request, retry or connection lasts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Most upstream connections open at once; at least 1. Absent: 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection at once; at least 1. Absent: 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Most attempts in flight at once, retries included; at least 1. Absent: 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Most retries in flight at once; over it the retry is not made. Absent: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Outlier detection: endpoints that keep failing are taken out of rotation for a while.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// How many failures in a row eject an endpoint; at least 1.
    /// Absent: 5 consecutive failures eject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// How long a first ejection lasts; the nth lasts n times as long, up to the larger
    /// of 300s and this. Above zero. Absent: `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Most of the cluster's endpoints ejected at once, in percent, 0 to 100.
    /// One endpoint may always be ejected. Absent: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Active health checks: a probe to every endpoint on an interval.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// The path probed with `GET` (any 2xx passes); starts with `/`.
    /// `protocol: http2` clusters use the gRPC health protocol instead. Absent: `/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between two probes of an endpoint; above zero. Absent: `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long a probe may take before it fails; above zero. Absent: `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failed probes in a row that mark an endpoint unhealthy; at least 1. Absent: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Passed probes in a row that mark an unhealthy endpoint healthy; at least 1. Absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
}

/// A cap on retries to a cluster relative to its traffic, shared by every route to it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed as a fraction of the requests sent over the last 10 seconds.
    /// 0 to 1000; 0.2 means 20%.
    pub ratio: f64,
    /// Retries per second allowed on top of `ratio`, so a quiet cluster can still retry.
    /// Absent: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
}

/// One authorization rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Admits a request that every list of the rule matches.
    pub allow: AllowRule,
}

/// What an `allow` rule matches; an empty list matches anything.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Caller identities: SPIFFE IDs, `spiffe://domain/prefix/*`, or `*` for any mTLS caller.
    /// A plaintext caller matches only rules that leave this empty.
    #[serde(default)]
    pub identities: Vec<String>,
    /// Request paths: exact (`/healthz`), a prefix (`/api/*`: `/api/` and below), or `*`.
    /// The path is normalised (`..`, `//`, percent-encoding) before matching.
    #[serde(default)]
    pub paths: Vec<String>,
    /// HTTP methods, in upper case (`GET`, `POST`).
    #[serde(default)]
    pub methods: Vec<String>,
}

/// Access logs and tracing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The access log: one line per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// Distributed tracing, exported over OTLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// The access log: one JSON object per request, written off the request's
/// path (docs/filters.md, "Access log").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// The format of each line: `json`, the only one. Absent: `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The file lines are appended to, reopened when moved away or on
    /// SIGHUP; `/dev/stdout` or `-` for stdout. Absent: stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl AccessLog {
    /// Where lines go.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("/dev/stdout")
    }
}

/// Distributed tracing: a server span per request and a client span per
/// upstream attempt, exported over OTLP/gRPC (docs/filters.md, "Tracing").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The OTLP/gRPC collector, `http://host:port` (e.g. an OpenTelemetry
    /// Collector's 4317).
    pub otlp_endpoint: String,
    /// The share of new traces recorded, 0 to 1; a caller's own sampling
    /// decision (in `traceparent`) is always honoured. Absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
}

/// The streaming control feed: Envoy's xDS v3 over ADS (docs/xds.md). Listeners,
/// route tables and clusters from the control server are served beside the ones in
/// this file (a name may not be in both).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlFeed {
    /// The control server, `host:port` or `http://host:port` (gRPC over plaintext HTTP/2).
    pub address: String,
    /// The node id this Skiff gives the control server; absent: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

// === impl Endpoint ===

/// `host:port`, or `{ address: host:port, weight: N }`.
impl JsonSchema for Endpoint {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Endpoint".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "One static endpoint: `host:port`, or `{ address: host:port, weight: N }` to give it a relative share of traffic (default 1).",
            "anyOf": [
                { "type": "string", "description": "`host:port`" },
                {
                    "type": "object",
                    "properties": {
                        "address": { "type": "string", "description": "`host:port`" },
                        "weight": { "type": "integer", "minimum": 1, "default": 1, "description": "Relative share of traffic." }
                    },
                    "required": ["address"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

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

/// A value, `{ regex: ... }` or `{ present: true|false }`.
impl JsonSchema for HeaderMatch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HeaderMatch".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "How one header is matched: a value (the header equals it), `{ regex: RE }` (the whole value matches RE), or `{ present: true|false }` (the header is there, or is not).",
            "anyOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "properties": { "regex": { "type": "string" } },
                    "required": ["regex"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "present": { "type": "boolean" } },
                    "required": ["present"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

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
