//! Request and connection metrics, with the names docs/reference/metrics.md lists.
//!
//! A request is recorded once, when its response body ends (or is dropped),
//! so the duration covers the whole exchange and `grpc_status` can come from
//! the trailers where gRPC puts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::HeaderMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::access_log::AccessLog;
use crate::classify;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub code: u16,
    pub grpc_status: &'static str,
    /// The caller's SPIFFE ID on mTLS listeners, empty otherwise (Linkerd's
    /// `client_id`): bounded by the mesh's service accounts, and the first
    /// thing an operator asks of inbound traffic.
    pub peer_identity: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DurationLabels {
    pub direction: &'static str,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteClusterLabels {
    pub route: Arc<str>,
    pub cluster: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub listener: Arc<str>,
    /// `ok`, or why the handshake failed (`no_client_cert`, `bad_cert`, `error`, ...).
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    pub listener: Arc<str>,
    /// `head-too-large`, `malformed`, `wrong-protocol`, `unknown-coding`,
    /// `bad-host`, `header-timeout`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AccessLogLabels {
    /// The access log's `path` (from the config: bounded).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConfigUpdateLabels {
    pub source: &'static str,
    /// `applied` or `rejected`.
    pub result: &'static str,
}

/// Upper bounds of the request-duration buckets, in seconds: from 0.5 ms
/// (a proxy's own added latency) to 30 s (a slow upstream), about three
/// per decade, so a p99 read from them is within a factor of two.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A text exposition format for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4, the default.
    Prometheus,
    /// OpenMetrics 1.0.0, for scrapers that ask for it.
    OpenMetrics,
}

impl Format {
    /// The format a scraper's `Accept` header asks for: OpenMetrics when it
    /// names `application/openmetrics-text`, else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a page in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The process's metric families.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    connections_active: Family<ListenerLabels, Gauge>,
    connections_total: Family<ListenerLabels, Counter>,
    retries: Family<RouteClusterLabels, Counter>,
    breaker_rejections: Family<ClusterLabels, Counter>,
    ejections: Family<ClusterLabels, Counter>,
    rate_limited: Family<RouteLabels, Counter>,
    tls_handshakes: Family<HandshakeLabels, Counter>,
    config_updates: Family<ConfigUpdateLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    panics: Family<ListenerLabels, Counter>,
    access_log_dropped: Family<AccessLogLabels, Counter>,
    /// Exact percentiles over the last minute, for `/stats`.
    pub stats: crate::stats::Stats,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("skiff");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations =
            Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let connections_active = Family::<ListenerLabels, Gauge>::default();
        let connections_total = Family::<ListenerLabels, Counter>::default();
        registry.register("requests", "Requests handled, by outcome", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response body",
            durations.clone(),
        );
        registry.register(
            "connections_active",
            "Downstream connections open now",
            connections_active.clone(),
        );
        registry.register(
            "connections",
            "Downstream connections accepted",
            connections_total.clone(),
        );
        let retries = Family::default();
        let breaker_rejections = Family::default();
        let ejections = Family::default();
        let rate_limited = Family::default();
        let tls_handshakes = Family::default();
        let config_updates = Family::default();
        registry.register("retries", "Retries sent", retries.clone());
        registry.register(
            "circuit_breaker_rejections",
            "Requests refused by a circuit breaker threshold",
            breaker_rejections.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a route's rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Inbound TLS handshakes by outcome",
            tls_handshakes.clone(),
        );
        registry.register(
            "config_updates",
            "Configs received, applied or rejected",
            config_updates.clone(),
        );
        let refusals = Family::default();
        registry.register(
            "downstream_refusals",
            "Requests and connections refused before routing, by why",
            refusals.clone(),
        );
        let panics = Family::default();
        registry.register(
            "panics",
            "Connection and stream tasks that panicked (each closed alone)",
            panics.clone(),
        );
        let access_log_dropped = Family::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        Arc::new(Self {
            stats: crate::stats::Stats::default(),
            access_log_dropped,
            registry,
            requests,
            durations,
            connections_active,
            connections_total,
            retries,
            breaker_rejections,
            ejections,
            rate_limited,
            tls_handshakes,
            config_updates,
            refusals,
            panics,
        })
    }

    /// The Prometheus text exposition (format 0.0.4): what Prometheus,
    /// `promtool check metrics` and most scrapers read. Counters are named
    /// `NAME_total` in their `# HELP`/`# TYPE` lines too.
    pub fn encode(&self) -> String {
        self.encode_as(Format::Prometheus)
    }

    /// The exposition in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        out
    }

    /// Counts a new connection; the guard keeps it in `connections_active` until dropped.
    pub fn connection_opened(&self, listener: &Arc<str>) -> ConnectionGuard {
        let labels = ListenerLabels {
            listener: listener.clone(),
        };
        self.connections_total.get_or_create(&labels).inc();
        let active = self.connections_active.get_or_create_owned(&labels);
        active.inc();
        ConnectionGuard(active)
    }

    /// The counter for retries on `route` to `cluster`; resolve once, increment per retry.
    pub fn retries(&self, route: &Arc<str>, cluster: &Arc<str>) -> Counter {
        self.retries.get_or_create_owned(&RouteClusterLabels {
            route: route.clone(),
            cluster: cluster.clone(),
        })
    }

    pub fn breaker_rejections(&self, cluster: &Arc<str>) -> Counter {
        self.breaker_rejections.get_or_create_owned(&ClusterLabels {
            cluster: cluster.clone(),
        })
    }

    pub fn ejections(&self, cluster: &Arc<str>) -> Counter {
        self.ejections.get_or_create_owned(&ClusterLabels {
            cluster: cluster.clone(),
        })
    }

    pub fn rate_limited(&self, route: &Arc<str>) -> Counter {
        self.rate_limited.get_or_create_owned(&RouteLabels {
            route: route.clone(),
        })
    }

    pub fn tls_handshake(&self, listener: &Arc<str>, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels {
                listener: listener.clone(),
                result,
            })
            .inc();
    }

    /// Connections open now on `listener` (`skiff_connections_active`).
    pub fn connections_active(&self, listener: &str) -> i64 {
        self.connections_active
            .get_or_create(&ListenerLabels {
                listener: Arc::from(listener),
            })
            .get()
    }

    pub fn config_update(&self, source: &'static str, result: &'static str) {
        self.config_updates
            .get_or_create(&ConfigUpdateLabels { source, result })
            .inc();
    }

    /// The counter of lines the access log at `path` dropped.
    pub fn access_log_dropped(&self, path: &str) -> Counter {
        self.access_log_dropped
            .get_or_create_owned(&AccessLogLabels {
                path: path.to_owned(),
            })
    }

    /// Counts a request or connection refused before it reached a route.
    pub fn refused(&self, listener: &Arc<str>, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                listener: listener.clone(),
                reason,
            })
            .inc();
    }

    /// Counts a connection or stream task of `listener` that panicked.
    pub fn panicked(&self, listener: &Arc<str>) {
        self.panics
            .get_or_create(&ListenerLabels {
                listener: listener.clone(),
            })
            .inc();
    }

    fn record(&self, r: &Recorder) {
        let took = r.start.elapsed();
        if let Some(meters) = &r.meters {
            meters.record(self, r, took);
            return;
        }
        self.requests
            .get_or_create(&RequestLabels::of(
                r,
                classify::grpc_status_label(r.grpc_status),
            ))
            .inc();
        self.durations
            .get_or_create(&DurationLabels {
                direction: r.direction,
                route: r.route.clone(),
                cluster: r.cluster.clone(),
            })
            .observe(took.as_secs_f64());
        // Requests that never reached a route are not a route's latency.
        if !r.route.is_empty() {
            let failed = r.code >= 500 || r.grpc_status.is_some_and(classify::is_server_failure);
            self.stats.record(&r.route, &r.cluster, took, failed);
        }
    }
}

/// One route target's meters, resolved on its first request and kept with
/// the compiled route: a request then records by comparing a few labels
/// instead of hashing all of them into three maps (SipHash over seven
/// strings, two read locks: about 2,400 instructions a request under
/// callgrind; docs/benchmarks.md). Families never drop a label set, so a
/// handle kept here stays the one `/metrics` reads.
#[derive(Debug, Default)]
pub struct Meters {
    /// `skiff_requests_total` counters met so far, by the labels that vary
    /// from request to request; at most [`Meters::MAX_COUNTERS`], past
    /// which requests take the family's own lookup.
    requests: arc_swap::ArcSwap<Vec<(Varying, Counter)>>,
    /// `skiff_request_duration_seconds`, inbound and outbound.
    durations: [std::sync::OnceLock<Histogram>; 2],
    /// The route's window in `/stats`.
    window: std::sync::OnceLock<Option<crate::stats::WindowRef>>,
}

impl RequestLabels {
    /// `r`'s labels, its gRPC status as the label shows it.
    fn of(r: &Recorder, grpc_status: &'static str) -> Self {
        Self {
            direction: r.direction,
            listener: r.listener.clone(),
            route: r.route.clone(),
            cluster: r.cluster.clone(),
            code: r.code,
            grpc_status,
            peer_identity: r.peer_identity.clone(),
        }
    }
}

/// The labels of `skiff_requests_total` a route target does not fix.
#[derive(Debug, Clone)]
struct Varying {
    direction: &'static str,
    listener: Arc<str>,
    code: u16,
    grpc_status: &'static str,
    peer_identity: Arc<str>,
}

impl Varying {
    fn matches(&self, r: &Recorder, grpc_status: &str) -> bool {
        fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
            Arc::ptr_eq(a, b) || a == b
        }
        self.code == r.code
            && self.direction == r.direction
            && self.grpc_status == grpc_status
            && same(&self.listener, &r.listener)
            && same(&self.peer_identity, &r.peer_identity)
    }
}

impl Meters {
    /// Distinct (listener, code, gRPC status, peer) combinations kept.
    const MAX_COUNTERS: usize = 64;

    fn record(&self, metrics: &Metrics, r: &Recorder, took: std::time::Duration) {
        let grpc_status = classify::grpc_status_label(r.grpc_status);
        let seen = self.requests.load();
        match seen.iter().find(|(k, _)| k.matches(r, grpc_status)) {
            Some((_, counter)) => {
                counter.inc();
            }
            None => {
                let counter = metrics
                    .requests
                    .get_or_create(&RequestLabels::of(r, grpc_status))
                    .clone();
                counter.inc();
                if seen.len() < Self::MAX_COUNTERS {
                    let key = || Varying {
                        direction: r.direction,
                        listener: r.listener.clone(),
                        code: r.code,
                        grpc_status,
                        peer_identity: r.peer_identity.clone(),
                    };
                    self.requests.rcu(|old| {
                        let mut all = Vec::with_capacity(old.len() + 1);
                        all.extend(old.iter().cloned());
                        if !all.iter().any(|(k, _)| k.matches(r, grpc_status)) {
                            all.push((key(), counter.clone()));
                        }
                        all
                    });
                }
            }
        }
        let inbound = usize::from(r.direction != "inbound");
        self.durations[inbound]
            .get_or_init(|| {
                metrics
                    .durations
                    .get_or_create(&DurationLabels {
                        direction: r.direction,
                        route: r.route.clone(),
                        cluster: r.cluster.clone(),
                    })
                    .clone()
            })
            .observe(took.as_secs_f64());
        if !r.route.is_empty()
            && let Some(window) = self
                .window
                .get_or_init(|| metrics.stats.window(&r.route, &r.cluster))
        {
            let failed = r.code >= 500 || r.grpc_status.is_some_and(classify::is_server_failure);
            metrics.stats.record_in(window, took, failed);
        }
    }
}

/// Decrements `connections_active` when the connection ends.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    /// Connections open now on the guard's listener, this one included: a
    /// listener's `max_connections` reads it without a lookup.
    pub fn active(&self) -> i64 {
        self.0.get()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The label of a request that never reached a route or cluster; shared so
/// that making a `Recorder` allocates nothing.
fn empty() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

/// One request's labels and clock; records itself exactly once, when dropped.
#[derive(Debug)]
pub struct Recorder {
    metrics: Arc<Metrics>,
    pub direction: &'static str,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub code: u16,
    pub grpc_status: Option<u32>,
    /// The mTLS peer's SPIFFE ID, when the listener terminated mTLS.
    pub peer_identity: Arc<str>,
    start: Instant,
    /// The request's shared context when it is access-logged (what only
    /// the log needs); `None`, and no allocation, without a log.
    pub access: Option<Arc<RequestContext>>,
    /// Runs once when the request ends, with its status and gRPC status:
    /// how the proxy's trace span ends with the response.
    pub on_close: Option<CloseHook>,
    /// The route target's meters, once routed (`route` and `cluster` are
    /// then the target's, which the meters were resolved for).
    pub meters: Option<Arc<Meters>>,
}

/// Work to do when a request ends (its status, its gRPC status).
pub struct CloseHook(Box<dyn FnOnce(u16, Option<u32>) + Send + Sync>);

impl CloseHook {
    pub fn new(hook: impl FnOnce(u16, Option<u32>) + Send + Sync + 'static) -> Self {
        Self(Box::new(hook))
    }
}

impl std::fmt::Debug for CloseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloseHook")
    }
}

/// A request's access-log fields beyond the metrics' labels, fixed when the
/// request arrives. Built from handles the request already has (a `Uri` and
/// header values clone as reference counts), and kept inside the request's
/// [`RequestContext`], so a logged request costs that one allocation and its
/// rendered line.
#[derive(Debug)]
pub struct AccessFields {
    pub sink: Arc<AccessLog>,
    pub time: std::time::SystemTime,
    pub method: http::Method,
    pub uri: http::Uri,
    /// `Host`, when the URI has no authority (HTTP/1 origin form).
    pub host: Option<http::HeaderValue>,
    pub version: http::Version,
    pub request_id: Option<http::HeaderValue>,
    /// The `traceparent` the request came with.
    pub traceparent: Option<http::HeaderValue>,
}

/// Request extension: the request's one shared context, and the one way back
/// from below the route's stack to its telemetry (its [`Recorder`]). The
/// upstream notes every attempt here (and starts its client span through
/// `tracer`), the request body the bytes it read, and the response body the
/// bytes it sent; retries share it, since extensions are cloned with the
/// request. Present only when the request is access-logged or traced, so
/// other requests pay nothing for it.
#[derive(Debug, Default)]
pub struct RequestContext {
    count: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// The endpoint last tried; swapped without a lock, since retries of
    /// one request may run on different workers.
    last: arc_swap::ArcSwapOption<crate::balance::EndpointStats>,
    /// Set once the request is known to be traced.
    tracer: std::sync::OnceLock<Box<dyn AttemptTracer>>,
    /// The access log's fields; `None` when the request is only traced.
    access: Option<AccessFields>,
    /// The trace the request belongs to, once tracing has decided: the
    /// server span's `traceparent`, or the caller's when not sampled.
    trace: std::sync::OnceLock<http::HeaderValue>,
    /// `skiff-error` of an answer Skiff made.
    skiff_error: std::sync::OnceLock<http::HeaderValue>,
}

/// Starts the client span of an upstream attempt (implemented by the
/// proxy's tracing, which this crate does not depend on).
pub trait AttemptTracer: Send + Sync + std::fmt::Debug {
    /// Starts the span of an attempt of a `method` request to `endpoint`,
    /// writing its `traceparent` on `headers`.
    fn attempt(
        &self,
        method: &http::Method,
        version: http::Version,
        headers: &mut HeaderMap,
        endpoint: &str,
    ) -> Box<dyn AttemptSpan>;
}

/// One attempt's span, ended with the response's status (`None`: no response).
pub trait AttemptSpan: Send {
    fn end(self: Box<Self>, status: Option<u16>);
}

impl RequestContext {
    /// Notes an attempt to `endpoint` of `req`, and starts its span when
    /// the request is traced.
    pub fn attempt<B>(
        &self,
        endpoint: &Arc<crate::balance::EndpointStats>,
        req: &mut http::Request<B>,
    ) -> Option<Box<dyn AttemptSpan>> {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last.store(Some(endpoint.clone()));
        let tracer = self.tracer.get()?;
        let (method, version) = (req.method().clone(), req.version());
        Some(tracer.attempt(&method, version, req.headers_mut(), &endpoint.address))
    }

    /// The context of an access-logged request.
    pub fn logged(fields: AccessFields) -> Self {
        Self {
            access: Some(fields),
            ..Self::default()
        }
    }

    /// Notes the trace the request belongs to, for the access log (first
    /// call wins); `traceparent` is rendered only when the request is logged.
    pub fn set_trace(&self, traceparent: impl FnOnce() -> Option<http::HeaderValue>) {
        if self.access.is_some()
            && let Some(tp) = traceparent()
        {
            let _ = self.trace.set(tp);
        }
    }

    /// Whether the request is logged and came without a `traceparent` (so
    /// one Skiff adds is news to the log).
    pub fn came_untraced(&self) -> bool {
        self.access
            .as_ref()
            .is_some_and(|a| a.traceparent.is_none())
    }

    /// Marks the request traced: its attempts get spans from `tracer`.
    pub fn trace(&self, tracer: Box<dyn AttemptTracer>) {
        let _ = self.tracer.set(tracer);
    }

    /// Notes request body bytes read.
    pub fn read(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// The endpoint last tried.
    pub fn last(&self) -> Option<Arc<crate::balance::EndpointStats>> {
        self.last.load_full()
    }
}

struct Rfc3339Display(std::time::SystemTime);

impl std::fmt::Display for Rfc3339Display {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (year, month, day, h, m, s, ms) = civil(self.0);
        // Written digit by digit: `write!` with padded fields costs more
        // than the rest of the line's numbers together.
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year.clamp(0, 9999) as u64);
        put(5, 2, month as u64);
        put(8, 2, day as u64);
        put(11, 2, h);
        put(14, 2, m);
        put(17, 2, s);
        put(20, 3, u64::from(ms));
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
    }
}

/// A UTC time's year, month, day, hour, minute, second and millisecond,
/// without a date crate (Howard Hinnant's civil-from-days).
fn civil(t: std::time::SystemTime) -> (i64, i64, i64, u64, u64, u64, u32) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis(),
    )
}

impl Recorder {
    pub fn new(
        metrics: Arc<Metrics>,
        direction: &'static str,
        listener: Arc<str>,
        start: Instant,
    ) -> Self {
        Self {
            metrics,
            direction,
            listener,
            route: empty(),
            cluster: empty(),
            code: 0,
            grpc_status: None,
            peer_identity: empty(),
            start,
            access: None,
            on_close: None,
            meters: None,
        }
    }

    /// Notes response body bytes sent (only counted for the access log).
    pub fn observe_data(&mut self, bytes: usize) {
        if let Some(cx) = &self.access {
            cx.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Notes the response head: its status, and `grpc-status` for trailers-only replies.
    pub fn observe_head(&mut self, status: u16, headers: &HeaderMap) {
        self.code = status;
        if let Some(s) = classify::grpc_status(headers) {
            self.grpc_status = Some(s);
        }
        if let Some(cx) = &self.access
            && let Some(e) = headers.get("skiff-error")
        {
            let _ = cx.skiff_error.set(e.clone());
        }
    }

    pub fn observe_trailers(&mut self, trailers: &HeaderMap) {
        if let Some(s) = classify::grpc_status(trailers) {
            self.grpc_status = Some(s);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.metrics.record(self);
        if let Some(CloseHook(hook)) = self.on_close.take() {
            hook(self.code, self.grpc_status);
        }
        if let Some(cx) = self.access.take()
            && let Some(a) = &cx.access
        {
            self.write_access(&cx, a);
        }
    }
}

impl Recorder {
    /// Renders the request's access-log line into one buffer and queues it.
    fn write_access(&self, cx: &RequestContext, a: &AccessFields) {
        fn text(v: &Option<http::HeaderValue>) -> Option<&str> {
            v.as_ref().and_then(|v| v.to_str().ok())
        }
        let authority = match a.uri.authority() {
            Some(auth) => auth.as_str(),
            None => text(&a.host).unwrap_or_default(),
        };
        // `traceparent: 00-TRACEID-SPANID-FLAGS` (W3C Trace Context).
        let traceparent = cx.trace.get().or(a.traceparent.as_ref());
        let trace_id = traceparent
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.split('-').nth(1))
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        let last = cx.last();
        let mut line = a.sink.line();
        line.display("time", Rfc3339Display(a.time));
        line.text("direction", self.direction);
        line.text("listener", &self.listener);
        line.text("route", &self.route);
        line.text("cluster", &self.cluster);
        line.maybe_text("upstream", last.as_deref().map(|e| e.address.as_str()));
        line.number("attempts", cx.count());
        line.text("method", a.method.as_str());
        line.text("authority", authority);
        line.text("path", a.uri.path());
        line.text(
            "protocol",
            match a.version {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
        );
        line.number("status", u64::from(self.code));
        line.maybe_number("grpc_status", self.grpc_status.map(u64::from));
        line.millis("duration_ms", self.start.elapsed());
        line.number("bytes_in", cx.bytes_in());
        line.number("bytes_out", cx.bytes_out.load(Ordering::Relaxed));
        line.text("request_id", text(&a.request_id).unwrap_or_default());
        line.maybe_text("trace_id", trace_id);
        line.text("peer_identity", &self.peer_identity);
        line.maybe_text(
            "skiff_error",
            cx.skiff_error.get().and_then(|v| v.to_str().ok()),
        );
        a.sink.send(line.finish());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_as_rfc3339_utc() {
        let at = |secs: u64, ms: u64| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + ms);
            Rfc3339Display(t).to_string()
        };
        assert_eq!(at(1_796_210_526, 123), "2026-12-02T11:22:06.123Z");
        assert_eq!(at(951_868_799, 7), "2000-02-29T23:59:59.007Z");
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn records_with_labels() {
        let m = Metrics::new();
        let listener: Arc<str> = Arc::from("public");
        {
            let _c = m.connection_opened(&listener);
            let text = m.encode();
            assert!(
                text.contains("skiff_connections_active{listener=\"public\"} 1"),
                "{text}"
            );
        }
        {
            let mut r = Recorder::new(m.clone(), "outbound", listener.clone(), Instant::now());
            r.route = Arc::from("app/0");
            r.cluster = Arc::from("app");
            let mut h = HeaderMap::new();
            h.insert("grpc-status", "5".parse().unwrap());
            r.observe_head(200, &HeaderMap::new());
            r.observe_trailers(&h);
        }
        let text = m.encode();
        assert!(
            text.contains("skiff_connections_active{listener=\"public\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("skiff_connections_total{listener=\"public\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("skiff_requests_total{direction=\"outbound\",listener=\"public\",route=\"app/0\",cluster=\"app\",code=\"200\",grpc_status=\"5\",peer_identity=\"\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("skiff_request_duration_seconds_bucket{"),
            "{text}"
        );
    }

    /// A route target's cached meters count exactly what the families'
    /// lookups would: each (direction, listener, code, gRPC status, peer)
    /// its own counter, both directions their own histogram, past the cache's
    /// bound too, and `/stats` sees every request.
    #[test]
    fn meters_count_what_the_families_would() {
        let m = Metrics::new();
        let meters = Arc::new(Meters::default());
        let (public, admin): (Arc<str>, Arc<str>) = (Arc::from("public"), Arc::from("admin"));
        let record = |direction, listener: &Arc<str>, code| {
            let mut r = Recorder::new(m.clone(), direction, listener.clone(), Instant::now());
            r.route = Arc::from("app/0");
            r.cluster = Arc::from("app");
            r.meters = Some(meters.clone());
            r.observe_head(code, &HeaderMap::new());
        };
        for _ in 0..3 {
            record("outbound", &public, 200);
        }
        record("outbound", &public, 503);
        record("inbound", &admin, 200);
        // More distinct codes than the cache keeps.
        let extra = Meters::MAX_COUNTERS as u16 + 5;
        for code in 0..extra {
            record("outbound", &Arc::from("other"), 300 + code);
        }
        let text = m.encode();
        let line = |direction: &str, listener: &str, code: u16| {
            format!(
                "skiff_requests_total{{direction=\"{direction}\",listener=\"{listener}\",route=\"app/0\",cluster=\"app\",code=\"{code}\",grpc_status=\"\",peer_identity=\"\"}}"
            )
        };
        for (want, count) in [
            (line("outbound", "public", 200), 3),
            (line("outbound", "public", 503), 1),
            (line("inbound", "admin", 200), 1),
            (line("outbound", "other", 300), 1),
            (line("outbound", "other", 300 + extra - 1), 1),
        ] {
            assert!(
                text.contains(&format!("{want} {count}\n")),
                "{want} {count} in {text}"
            );
        }
        for direction in ["inbound", "outbound"] {
            let want = format!(
                "skiff_request_duration_seconds_count{{direction=\"{direction}\",route=\"app/0\",cluster=\"app\"}}"
            );
            assert!(text.contains(&want), "{want} in {text}");
        }
        let total = 5 + u64::from(extra);
        let rows = m.stats.rows();
        assert_eq!(
            rows.iter().map(|r| r.requests).sum::<u64>(),
            total,
            "{rows:?}"
        );
    }
}
