//! Outlier detection: eject an endpoint after N consecutive failures.
//!
//! Each endpoint is a small state machine:
//! - **in rotation** (traffic flows): failures are counted; a success resets
//!   the count; the Nth consecutive failure ejects, unless that would take
//!   more than `max_ejection_percent` of the cluster out.
//! - **ejected** (no traffic) until `base_ejection_time × times ejected`
//!   (capped at `max(300s, base)`, as Envoy), then back in rotation with a
//!   fresh count. With health checks, an ejection also marks the endpoint
//!   unhealthy, so it returns only once a probe passes.
//!
//! Failures are connect errors, resets, 5xx and gRPC UNAVAILABLE; the
//! upstream reports each outcome.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use skiff_control::model::OutlierDetection;
use tokio::time::Instant;

use crate::balance::EndpointStats;

/// Ejection multiplier growth stops at this duration (Envoy's `max_ejection_time`).
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// The cluster's outlier settings with defaults applied (Envoy's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl OutlierConfig {
    pub fn from_config(o: &OutlierDetection) -> Self {
        Self {
            consecutive_failures: o.consecutive_failures.unwrap_or(5).max(1),
            base_ejection_time: o
                .base_ejection_time
                .map_or(Duration::from_secs(30), |d| d.get()),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10).min(100),
        }
    }
}

/// One endpoint's failure count and ejection.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    times_ejected: AtomicU32,
    /// Ejected until this instant (ns since `origin()`, so it fits an
    /// atomic); 0 = never ejected.
    until_ns: AtomicU64,
}

/// A process-wide origin for instants stored in atomics.
fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    Instant::from_std(*ORIGIN.get_or_init(std::time::Instant::now))
}

fn to_ns(t: Instant) -> u64 {
    t.saturating_duration_since(origin()).as_nanos() as u64
}

impl OutlierState {
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.until_ns.load(Ordering::Relaxed);
        until != 0 && to_ns(now) < until
    }

    /// True exactly once after an ejection has run out: the caller that sees
    /// it returns the endpoint to rotation with a clean slate.
    pub fn take_return(&self, now: Instant) -> bool {
        let until = self.until_ns.load(Ordering::Relaxed);
        until != 0
            && to_ns(now) >= until
            && self
                .until_ns
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    /// How long the next ejection lasts.
    fn ejection_for(&self, cfg: &OutlierConfig, times: u32) -> Duration {
        let cap = MAX_EJECTION.max(cfg.base_ejection_time);
        cfg.base_ejection_time.saturating_mul(times).min(cap)
    }
}

/// Records one outcome for `endpoints[i]`; returns true when it ejected it.
pub fn report(
    cfg: &OutlierConfig,
    endpoints: &[std::sync::Arc<EndpointStats>],
    i: usize,
    failed: bool,
    health_checked: bool,
    now: Instant,
) -> bool {
    let Some(e) = endpoints.get(i) else {
        return false;
    };
    let s = &e.outlier;
    if !failed {
        s.consecutive.store(0, Ordering::Relaxed);
        return false;
    }
    let n = s.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
    if n < cfg.consecutive_failures || s.is_ejected(now) {
        return false;
    }
    let ejected = endpoints
        .iter()
        .filter(|e| e.outlier.is_ejected(now))
        .count();
    // Envoy's rule: eject only if the cluster stays within the percentage,
    // counting the one about to go; but one endpoint may always go, so the
    // 10% default still works for small clusters.
    if ejected > 0 && (ejected + 1) * 100 > cfg.max_ejection_percent as usize * endpoints.len() {
        return false;
    }
    let times = s.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
    let until = now + s.ejection_for(cfg, times);
    s.until_ns.store(to_ns(until).max(1), Ordering::Relaxed);
    s.consecutive.store(0, Ordering::Relaxed);
    if health_checked {
        e.set_healthy(false);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn eps(n: usize) -> Vec<Arc<EndpointStats>> {
        (0..n)
            .map(|i| Arc::new(EndpointStats::new(format!("e{i}"))))
            .collect()
    }

    fn cfg(pct: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: pct,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_on_the_nth_consecutive_failure_for_growing_times() {
        let e = eps(2);
        let c = cfg(50);
        let t0 = Instant::now();
        assert!(!report(&c, &e, 0, true, false, t0));
        assert!(
            !report(&c, &e, 0, false, false, t0),
            "success resets the count"
        );
        assert!(!report(&c, &e, 0, true, false, t0));
        assert!(!report(&c, &e, 0, true, false, t0));
        assert!(report(&c, &e, 0, true, false, t0));
        assert!(e[0].outlier.is_ejected(t0 + Duration::from_millis(29_999)));
        assert!(!e[0].outlier.is_ejected(t0 + Duration::from_millis(30_000)));

        // Second ejection lasts twice the base.
        let t1 = t0 + Duration::from_secs(30);
        for _ in 0..3 {
            report(&c, &e, 0, true, false, t1);
        }
        assert!(e[0].outlier.is_ejected(t1 + Duration::from_millis(59_999)));
        assert!(!e[0].outlier.is_ejected(t1 + Duration::from_millis(60_000)));
        assert_eq!(e[0].outlier.times_ejected(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_is_capped() {
        let s = OutlierState::default();
        let c = cfg(100);
        assert_eq!(s.ejection_for(&c, 100), MAX_EJECTION);
        let long = OutlierConfig {
            base_ejection_time: Duration::from_secs(600),
            ..c
        };
        assert_eq!(s.ejection_for(&long, 3), Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_percent() {
        let e = eps(3);
        let c = cfg(50);
        let now = Instant::now();
        for _ in 0..3 {
            report(&c, &e, 0, true, false, now);
        }
        assert!(e[0].outlier.is_ejected(now));
        for _ in 0..3 {
            report(&c, &e, 1, true, false, now);
        }
        assert!(!e[1].outlier.is_ejected(now), "2 of 3 is over 50%");
    }

    #[tokio::test(start_paused = true)]
    async fn one_endpoint_may_always_go() {
        let e = eps(3);
        let c = cfg(10);
        let now = Instant::now();
        for _ in 0..3 {
            report(&c, &e, 0, true, false, now);
        }
        assert!(
            e[0].outlier.is_ejected(now),
            "10% of 3 rounds down, yet one may go"
        );
        for _ in 0..3 {
            report(&c, &e, 1, true, false, now);
        }
        assert!(!e[1].outlier.is_ejected(now));
    }

    #[tokio::test(start_paused = true)]
    async fn health_checked_endpoints_come_back_unhealthy() {
        let e = eps(2);
        let c = cfg(50);
        let now = Instant::now();
        for _ in 0..3 {
            report(&c, &e, 1, true, true, now);
        }
        assert!(!e[1].healthy());
        assert!(
            !e[1].available(now + Duration::from_secs(31)),
            "waits for a probe"
        );
        e[1].set_healthy(true);
        assert!(e[1].available(now + Duration::from_secs(31)));
    }
}
