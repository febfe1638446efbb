//! What `skiff control` knows about its clients, for `/status` and
//! `/metrics`: each open stream's node, and per resource type the version
//! last sent and last ACKed, and the last NACK.
//!
//! The control plane is not a data path: a stream's record sits behind a
//! mutex, touched once per message. Counters are atomics, so `/metrics`
//! never waits on a stream.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Every open stream, by a process-unique id.
#[derive(Debug)]
pub struct Registry {
    streams: Mutex<BTreeMap<u64, Arc<Mutex<Stream>>>>,
    next: AtomicU64,
    pub metrics: Metrics,
    /// The directory's state: its version, and the last change refused.
    pub catalog: Mutex<CatalogStatus>,
    /// Bumped on every change of the above, for [`Registry::wait_for`].
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            streams: Mutex::default(),
            next: AtomicU64::default(),
            metrics: Metrics::default(),
            catalog: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// The directory as last read.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CatalogStatus {
    /// Increases with every change served; 0 before the first good read.
    pub version: u64,
    /// Seconds since the Unix epoch of the last change served.
    pub loaded_at: u64,
    /// The problems of the last change refused (`FILE:LINE:COL: ...`), if
    /// the directory still holds it.
    pub errors: Vec<String>,
}

/// One client's stream.
#[derive(Debug, Clone, Serialize)]
pub struct Stream {
    pub node: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    pub peer: String,
    pub connected_at: u64,
    /// The directory version this stream has caught up with (sent what it
    /// changed; the ACKs may still be on their way).
    pub version: u64,
    /// By short type name (`Cluster`, `ClusterLoadAssignment`, ...).
    pub types: BTreeMap<String, TypeStatus>,
    pub last_nack: Option<Nack>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    pub sent: Option<String>,
    pub acked: Option<String>,
    /// The names subscribed to; empty for a wildcard subscription.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    pub type_url: String,
    /// The version the client kept.
    pub version: String,
    pub message: String,
    pub at: u64,
}

/// A stream's handle on its record; removes it when dropped.
pub struct Handle {
    id: u64,
    registry: Arc<Registry>,
    pub stream: Arc<Mutex<Stream>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.registry.streams).remove(&self.id);
        self.registry
            .metrics
            .connected
            .fetch_sub(1, Ordering::Relaxed);
        self.registry.touch();
    }
}

impl Handle {
    pub fn update(&self, f: impl FnOnce(&mut Stream)) {
        f(&mut lock(&self.stream));
        self.registry.touch();
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The part of a type URL after its last dot: `Cluster`, `Listener`, ...
pub fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

impl Registry {
    /// Records a new stream.
    pub fn open(self: &Arc<Self>, protocol: &'static str, peer: String) -> Handle {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(Mutex::new(Stream {
            node: String::new(),
            protocol,
            peer,
            connected_at: now(),
            version: 0,
            types: BTreeMap::new(),
            last_nack: None,
        }));
        lock(&self.streams).insert(id, stream.clone());
        self.metrics.connected.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Handle {
            id,
            registry: self.clone(),
            stream,
        }
    }

    /// Tells waiters something changed.
    pub fn touch(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Resolves once `pred` holds of `/status` (tests and benchmarks wait
    /// on it instead of polling).
    pub async fn wait_for(&self, pred: impl Fn(&serde_json::Value) -> bool) {
        let mut rx = self.changed.subscribe();
        loop {
            if pred(&self.status()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let streams: Vec<Stream> = lock(&self.streams)
            .values()
            .map(|s| lock(s).clone())
            .collect();
        serde_json::json!({
            "catalog": *lock(&self.catalog),
            "connected": streams.len(),
            "nodes": streams,
        })
    }
}

/// Upper bounds of the push-latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connected: AtomicU64,
    pub pushes: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    /// Directory reads refused.
    pub rejected: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    /// Microseconds.
    latency_sum: AtomicU64,
}

impl Metrics {
    /// A push ACKed `took` after the change (or request) that caused it.
    pub fn acked_after(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        counter(
            "skiff_control_clients_connected",
            "Open ADS streams.",
            "gauge",
            get(&self.connected),
        );
        counter(
            "skiff_control_pushes_total",
            "Discovery responses sent.",
            "counter",
            get(&self.pushes),
        );
        counter(
            "skiff_control_acks_total",
            "Responses ACKed by clients.",
            "counter",
            get(&self.acks),
        );
        counter(
            "skiff_control_nacks_total",
            "Responses NACKed by clients.",
            "counter",
            get(&self.nacks),
        );
        counter(
            "skiff_control_config_rejections_total",
            "Directory changes refused as invalid.",
            "counter",
            get(&self.rejected),
        );
        let name = "skiff_control_push_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From a change (or a request) to the client's ACK of the push it caused.\n# TYPE {name} histogram"
        );
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", get(count));
        }
        let total = get(&self.latency_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            get(&self.latency_sum) as f64 / 1_000_000.0
        );
        let _ = writeln!(out, "{name}_count {total}");
        out
    }
}
