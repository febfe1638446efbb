//! Exact latency percentiles per route and cluster over the last minute,
//! for `/stats` and the admin page: what Prometheus buckets cannot give
//! (a p99.9 within 1%), for a developer looking at one Skiff.
//!
//! Each (route, cluster) keeps six 10-second slots of an HDR histogram
//! (1 µs to 60 s, 2 significant digits: about 1.5 KiB a slot); a slot older
//! than the window is cleared when the clock comes back round to it. A
//! request costs one uncontended lock of its route's window, taken after
//! its response has ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Seconds per slot, and slots per window.
const SLOT_SECS: u64 = 10;
const SLOTS: usize = 6;

/// The window's length.
pub const WINDOW: Duration = Duration::from_secs(SLOT_SECS * SLOTS as u64);

struct Slot {
    /// Which 10-second period this slot holds (seconds since start / 10).
    epoch: u64,
    latency_us: Histogram<u64>,
    failures: u64,
}

impl Slot {
    fn new() -> Option<Self> {
        Some(Self {
            epoch: u64::MAX,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2).ok()?,
            failures: 0,
        })
    }
}

/// One (route, cluster)'s window.
struct Window {
    slots: Vec<Slot>,
}

/// A handle on one (route, cluster)'s window.
#[derive(Clone)]
pub struct WindowRef(Arc<Mutex<Window>>);

impl std::fmt::Debug for WindowRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WindowRef")
    }
}

/// Each cluster's window of one route (a split has several).
type Clusters = Vec<(Arc<str>, Arc<Mutex<Window>>)>;

/// Every route's windows, by route label: looked up by `&str`, so
/// recording a request clones no key.
pub struct Stats {
    start: Instant,
    windows: RwLock<HashMap<Arc<str>, Clusters>>,
}

/// One row of `/stats`.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub route: String,
    pub cluster: String,
    pub requests: u64,
    /// Share of requests that did not fail (no 5xx, no gRPC server error).
    pub success: f64,
    pub rate_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            windows: RwLock::new(HashMap::new()),
        }
    }
}

impl Stats {
    /// Records one request of `route` to `cluster`.
    pub fn record(&self, route: &Arc<str>, cluster: &Arc<str>, took: Duration, failed: bool) {
        if let Some(window) = self.window(route, cluster) {
            self.record_in(&window, took, failed);
        }
    }

    /// `route` to `cluster`'s window, made on first use: a route target
    /// keeps it (`telemetry::Meters`) and records without the lookup.
    pub fn window(&self, route: &Arc<str>, cluster: &Arc<str>) -> Option<WindowRef> {
        let find = |all: &HashMap<Arc<str>, Clusters>| {
            all.get(&**route)?
                .iter()
                .find(|(c, _)| **c == **cluster)
                .map(|(_, w)| w.clone())
        };
        let found = find(&self.windows.read().unwrap_or_else(|p| p.into_inner()));
        Some(WindowRef(match found {
            Some(w) => w,
            None => {
                let slots = (0..SLOTS)
                    .map(|_| Slot::new())
                    .collect::<Option<Vec<_>>>()?;
                let mut all = self.windows.write().unwrap_or_else(|p| p.into_inner());
                match find(&all) {
                    Some(w) => w,
                    None => {
                        let w = Arc::new(Mutex::new(Window { slots }));
                        all.entry(route.clone())
                            .or_default()
                            .push((cluster.clone(), w.clone()));
                        w
                    }
                }
            }
        }))
    }

    /// Records one request in a window [`Stats::window`] gave.
    pub fn record_in(&self, window: &WindowRef, took: Duration, failed: bool) {
        let epoch = self.start.elapsed().as_secs() / SLOT_SECS;
        let mut w = window.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut w.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            slot.epoch = epoch;
            slot.latency_us.reset();
            slot.failures = 0;
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        slot.latency_us.saturating_record(us);
        if failed {
            slot.failures += 1;
        }
    }

    /// Every (route, cluster) seen in the window, sorted.
    pub fn rows(&self) -> Vec<Row> {
        let now = self.start.elapsed();
        let epoch = now.as_secs() / SLOT_SECS;
        // The window covers the slots of the last minute, the current one
        // partly: divide by the time it really spans.
        let span = (now.as_secs_f64()).min(WINDOW.as_secs_f64()).max(1.0);
        let all = self.windows.read().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<Row> = all
            .iter()
            .flat_map(|(route, clusters)| clusters.iter().map(move |(c, w)| (route, c, w)))
            .filter_map(|(route, cluster, window)| {
                let w = window.lock().unwrap_or_else(|p| p.into_inner());
                let mut merged = Histogram::<u64>::new_from(&w.slots[0].latency_us);
                let mut failures = 0;
                for slot in &w.slots {
                    if slot.epoch != u64::MAX && epoch.saturating_sub(slot.epoch) < SLOTS as u64 {
                        merged.add(&slot.latency_us).ok()?;
                        failures += slot.failures;
                    }
                }
                let requests = merged.len();
                if requests == 0 {
                    return None;
                }
                let ms = |q: f64| merged.value_at_quantile(q) as f64 / 1000.0;
                Some(Row {
                    route: route.to_string(),
                    cluster: cluster.to_string(),
                    requests,
                    success: (requests - failures.min(requests)) as f64 / requests as f64,
                    rate_per_second: requests as f64 / span,
                    p50_ms: ms(0.5),
                    p90_ms: ms(0.9),
                    p99_ms: ms(0.99),
                    p999_ms: ms(0.999),
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.route, &a.cluster).cmp(&(&b.route, &b.cluster)));
        rows
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_exact_within_a_percent() {
        let stats = Stats::default();
        let (r, c): (Arc<str>, Arc<str>) = (Arc::from("t/r"), Arc::from("c"));
        for ms in 1..=1000u64 {
            stats.record(&r, &c, Duration::from_millis(ms), ms % 100 == 0);
        }
        let rows = stats.rows();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.requests, 1000);
        assert!((row.success - 0.99).abs() < 1e-9, "{row:?}");
        for (got, want) in [
            (row.p50_ms, 500.0),
            (row.p90_ms, 900.0),
            (row.p99_ms, 990.0),
            (row.p999_ms, 999.0),
        ] {
            assert!((got - want).abs() / want < 0.01, "{got} vs {want}: {row:?}");
        }
    }
}
