//! Load balancing over a cluster's endpoints.
//!
//! Four policies (`lb:`):
//! - `ewma` (default): peak-EWMA latency with power of two choices, as
//!   linkerd2-proxy and Finagle do. Each endpoint's cost is its decaying
//!   latency estimate × (in-flight + 1) ÷ weight; failures count as slow
//!   responses, so a failing endpoint loses traffic before it is ejected.
//! - `least_request`: power of two choices on in-flight ÷ weight (Envoy's).
//! - `round_robin`: smooth weighted round robin (nginx's), no bursts.
//! - `ring_hash`: a consistent hash ring keyed on a request header; an
//!   endpoint joining or leaving moves only the keys next to its points.
//!
//! Ejected (outlier detection) and unhealthy (health checks) endpoints are
//! skipped; if nothing is left the request fails with `no-healthy-endpoints`.
//!
//! The markers `Picked` and `Avoid` are how the retry layer and the
//! upstream talk about endpoints without knowing each other: the retry
//! layer gives each attempt a `Picked` slot where the upstream notes the
//! endpoint it chose (and every failure names it, `ProxyError::at_endpoint`);
//! the retry layer asks the next attempt to `Avoid` the endpoint that
//! failed. A slot rather than a mark on the response: only requests with a
//! retry policy make one, so bare forwarding pays for nothing (a response's
//! first extension allocates its map).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderName;
use http::Request;
use skiff_control::model::{self, LbPolicy};
use tokio::time::Instant;

use crate::outlier::OutlierState;

/// Request extension: don't pick the endpoint with this id if another one
/// is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avoid(pub usize);

/// Request extension: a slot where the upstream notes which endpoint it
/// picked (its [`EndpointStats::id`]), for the retry layer to avoid next:
/// after an answer it does not like, and when an attempt times out (a
/// dropped attempt leaves no response or error to say so).
#[derive(Debug, Clone, Default)]
pub struct Picked(Arc<AtomicUsize>);

impl Picked {
    pub fn set(&self, endpoint: usize) {
        self.0.store(endpoint + 1, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<usize> {
        self.0.load(Ordering::Relaxed).checked_sub(1)
    }
}

/// Request extension: raised by a timeout (the route's, `grpc-timeout`, or a
/// per-try timeout) just before it drops the request. The upstream counts a
/// dropped attempt against its endpoint only when this says a deadline was
/// missed; a client that hangs up is not the endpoint's failure.
#[derive(Debug, Clone, Default)]
pub struct Expired(Arc<AtomicBool>);

impl Expired {
    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How fast a latency estimate forgets (linkerd2-proxy's default).
const DECAY: Duration = Duration::from_secs(10);
/// What a failure adds to an endpoint's cost, fading with `PENALTY_DECAY`.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// How fast a failure is forgiven: after ~7s the penalty is below a typical
/// loopback latency, so a dead endpoint is probed again every few seconds
/// and a restarted one gets traffic back within seconds, not a minute.
const PENALTY_DECAY: Duration = Duration::from_secs(1);
/// Points on the hash ring per unit of weight.
const RING_POINTS: u32 = 160;

/// The live signals of one endpoint, shared by the balancer, outlier
/// detection, health checks and `/clusters`. Kept across config swaps for
/// endpoints that stay, so a reload does not forget who is slow or ejected.
#[derive(Debug)]
pub struct EndpointStats {
    /// Unique for the process: how retries (`Avoid`, `Picked`) and errors
    /// name an endpoint. A position in a cluster's
    /// list would name another endpoint once the list changes.
    pub id: usize,
    pub address: String,
    in_flight: AtomicU64,
    /// Peak-EWMA estimate in nanoseconds (f64 bits); 0 = no sample yet.
    ewma_ns: AtomicU64,
    /// When the estimate was last updated, in ns since `born`.
    updated_ns: AtomicU64,
    /// When the last failure happened, in ns since `born`; 0 = never.
    failed_ns: AtomicU64,
    born: Instant,
    /// Health-check verdict; true until a check says otherwise.
    healthy: AtomicBool,
    pub outlier: OutlierState,
}

impl EndpointStats {
    pub fn new(address: String) -> Self {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            address,
            in_flight: AtomicU64::new(0),
            ewma_ns: AtomicU64::new(0),
            updated_ns: AtomicU64::new(0),
            failed_ns: AtomicU64::new(0),
            born: Instant::now(),
            healthy: AtomicBool::new(true),
            outlier: OutlierState::default(),
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Whether the balancer may pick this endpoint now.
    pub fn available(&self, now: Instant) -> bool {
        if self.outlier.take_return(now) {
            // Back from an ejection: forget the failures that got it ejected
            // (they would keep its cost high for a minute), so it is tried
            // at once, like a new endpoint.
            self.ewma_ns.store(0, Ordering::Relaxed);
            self.failed_ns.store(0, Ordering::Relaxed);
        }
        self.healthy() && !self.outlier.is_ejected(now)
    }

    fn since_born(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.born).as_nanos() as u64
    }

    /// The latency estimate, decayed for the time since its last sample so
    /// that an endpoint that was slow once and then left alone is tried
    /// again. Zero until the first response.
    pub fn ewma(&self, now: Instant) -> Duration {
        let raw = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        if raw == 0.0 {
            return Duration::ZERO;
        }
        let idle = self
            .since_born(now)
            .saturating_sub(self.updated_ns.load(Ordering::Relaxed));
        let decayed = raw * (-(idle as f64) / DECAY.as_nanos() as f64).exp();
        Duration::from_nanos(decayed as u64)
    }

    /// What the last failure still adds to the cost: the full penalty at
    /// once, fading exponentially.
    fn penalty(&self, now: Instant) -> f64 {
        let failed = self.failed_ns.load(Ordering::Relaxed);
        if failed == 0 {
            return 0.0;
        }
        let since = self.since_born(now).saturating_sub(failed) as f64;
        FAILURE_PENALTY.as_nanos() as f64 * (-since / PENALTY_DECAY.as_nanos() as f64).exp()
    }

    /// The balancing cost: (latency + failure penalty) × (in flight + 1).
    /// An endpoint never heard from costs nothing while idle, so new
    /// endpoints are tried at once, but the full penalty per request once it
    /// has requests outstanding, so an endpoint that never answers is not
    /// flooded (Finagle's rule).
    pub fn cost(&self, now: Instant) -> f64 {
        let pending = self.in_flight();
        let rtt = self.ewma(now);
        if rtt.is_zero() && pending > 0 {
            return FAILURE_PENALTY.as_nanos() as f64 * pending as f64;
        }
        (rtt.as_nanos() as f64 + self.penalty(now)) * (pending + 1) as f64
    }

    /// Folds in a response time. Peak-sensitive: a sample above the estimate
    /// replaces it at once, one below it is averaged in with a weight that
    /// grows with the time since the last sample.
    /// A failure does not enter the estimate (a fast "connection refused"
    /// would make a dead endpoint look quick); it sets the fading penalty.
    pub fn observe(&self, rtt: Duration, failed: bool, now: Instant) {
        if failed {
            self.failed_ns
                .store(self.since_born(now).max(1), Ordering::Relaxed);
            return;
        }
        let sample = rtt.as_nanos() as f64;
        let at = self.since_born(now);
        let prev = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let last = self.updated_ns.swap(at, Ordering::Relaxed);
        let next = if prev == 0.0 || sample > prev {
            sample
        } else {
            let w = (-(at.saturating_sub(last) as f64) / DECAY.as_nanos() as f64).exp();
            prev * w + sample * (1.0 - w)
        };
        // Racing updates may lose a sample; the estimate is a heuristic and
        // a lock here would cost every response.
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// Decrements an endpoint's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// No endpoint can take the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoneAvailable;

#[derive(Debug)]
enum Policy {
    Ewma,
    LeastRequest,
    RoundRobin {
        schedule: Vec<usize>,
        next: AtomicUsize,
    },
    RingHash {
        header: HeaderName,
        ring: Vec<(u64, usize)>,
    },
}

/// Picks endpoints for one cluster.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    endpoints: Vec<Arc<EndpointStats>>,
    weights: Vec<u32>,
}

impl Balancer {
    /// `endpoints[i]` has weight `weights[i]`: the cluster's `lb` and
    /// `hash_on` come from `c`, the endpoints from wherever the cluster's
    /// current set came from (its `endpoints:`, or a control feed).
    /// `ring_hash` without a `hash_on` header (validation refuses that)
    /// falls back to `least_request`.
    pub fn new(c: &model::Cluster, endpoints: Vec<Arc<EndpointStats>>, weights: &[u32]) -> Self {
        let weights: Vec<u32> = weights.iter().map(|w| (*w).max(1)).collect();
        let policy = match c.lb.unwrap_or(LbPolicy::Ewma) {
            LbPolicy::Ewma => Policy::Ewma,
            LbPolicy::LeastRequest => Policy::LeastRequest,
            LbPolicy::RoundRobin => Policy::RoundRobin {
                schedule: smooth_schedule(&weights),
                next: AtomicUsize::new(0),
            },
            LbPolicy::RingHash => match c
                .hash_on
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.header.as_bytes()).ok())
            {
                Some(header) => Policy::RingHash {
                    header,
                    ring: build_ring(&endpoints, &weights),
                },
                None => Policy::LeastRequest,
            },
        };
        Self {
            policy,
            endpoints,
            weights,
        }
    }

    pub fn endpoints(&self) -> &[Arc<EndpointStats>] {
        &self.endpoints
    }

    /// Chooses an endpoint for `req`, avoiding the one named by its `Avoid`
    /// extension when any other is available.
    pub fn pick<B>(&self, req: &Request<B>, now: Instant) -> Result<usize, NoneAvailable> {
        let avoid = req.extensions().get::<Avoid>().map(|a| a.0);
        let usable = |i: usize| self.endpoints[i].available(now);
        if let Some(a) = avoid
            && let Some(i) = self.pick_where(req, now, |i| self.endpoints[i].id != a && usable(i))
        {
            return Ok(i);
        }
        self.pick_where(req, now, usable).ok_or(NoneAvailable)
    }

    fn pick_where<B>(
        &self,
        req: &Request<B>,
        now: Instant,
        ok: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.endpoints.len();
        match &self.policy {
            Policy::Ewma => self.p2c(&ok, |i| self.endpoints[i].cost(now)),
            Policy::LeastRequest => self.p2c(&ok, |i| self.endpoints[i].in_flight() as f64),
            Policy::RoundRobin { schedule, next } => {
                let len = schedule.len();
                (0..len)
                    .map(|_| schedule[next.fetch_add(1, Ordering::Relaxed) % len])
                    .find(|&i| ok(i))
            }
            Policy::RingHash { header, ring } => match req.headers().get(header) {
                Some(v) if !ring.is_empty() => {
                    let h = xxhash_rust::xxh3::xxh3_64(v.as_bytes());
                    let start = ring.partition_point(|(p, _)| *p < h);
                    (0..ring.len())
                        .map(|k| ring[(start + k) % ring.len()].1)
                        .find(|&i| ok(i))
                }
                // No key: any endpoint will do.
                _ => self.p2c(&ok, |i| self.endpoints[i].in_flight() as f64),
            },
        }
        .filter(|&i| i < n)
    }

    /// Power of two choices: two distinct random candidates, the cheaper
    /// (cost ÷ weight) wins. Falls back to scanning when candidates are
    /// unusable, which only happens with ejections or unhealthy endpoints.
    fn p2c(&self, ok: &impl Fn(usize) -> bool, cost: impl Fn(usize) -> f64) -> Option<usize> {
        let n = self.endpoints.len();
        let weighted = |i: usize| cost(i) / f64::from(self.weights.get(i).copied().unwrap_or(1));
        let better = |a: usize, b: usize| if weighted(b) < weighted(a) { b } else { a };
        match n {
            0 => return None,
            1 => return ok(0).then_some(0),
            _ => {}
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        match (ok(a), ok(b)) {
            (true, true) => return Some(better(a, b)),
            (true, false) | (false, true) if n == 2 => return Some(if ok(a) { a } else { b }),
            _ => {}
        }
        let usable: Vec<usize> = (0..n).filter(|&i| ok(i)).collect();
        match usable.len() {
            0 => None,
            1 => Some(usable[0]),
            m => {
                let a = fastrand::usize(..m);
                let b = (a + 1 + fastrand::usize(..m - 1)) % m;
                Some(better(usable[a], usable[b]))
            }
        }
    }
}

/// Smooth weighted round robin (as nginx): each turn add every weight to its
/// counter, take the largest, subtract the total from it. Weight 3:1 gives
/// a,a,b,a rather than a run of three.
pub fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    // 200:100 is the same cycle as 2:1; dividing by the common factor keeps
    // the schedule as short as the ratios allow.
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let weights: Vec<u32> = weights.iter().map(|w| w / g).collect();
    let weights = weights.as_slice();
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total.max(0) as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(weights) {
            *c += i64::from(*w);
        }
        let Some(best) = (0..current.len()).max_by_key(|&i| (current[i], -(i as i64))) else {
            break;
        };
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Points hashed from the endpoint's address, so they do not depend on the
/// other endpoints: that is what keeps the ring consistent.
fn build_ring(endpoints: &[Arc<EndpointStats>], weights: &[u32]) -> Vec<(u64, usize)> {
    // Points in proportion to weight, RING_POINTS per endpoint on average,
    // so the ring's size follows the endpoint count, not the weights' scale.
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
    let budget = u64::from(RING_POINTS) * endpoints.len() as u64;
    let mut ring = Vec::with_capacity(budget as usize + endpoints.len());
    for (i, (e, w)) in endpoints.iter().zip(weights).enumerate() {
        let points = (u64::from(*w) * budget / total).max(1);
        for v in 0..points {
            let key = format!("{}-{v}", e.address);
            ring.push((xxhash_rust::xxh3::xxh3_64(key.as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_control::model::{Cluster, Endpoint, HashOn};

    fn cluster(lb: LbPolicy, addrs: &[(&str, u32)]) -> (Cluster, Vec<Arc<EndpointStats>>) {
        let yaml = "endpoints: [127.0.0.1:1]\n";
        let mut c: Cluster = serde_saphyr::from_str(yaml).unwrap();
        c.lb = Some(lb);
        c.hash_on = Some(HashOn {
            header: "x-user".into(),
        });
        c.endpoints = addrs
            .iter()
            .map(|(a, w)| Endpoint {
                address: a.to_string(),
                weight: *w,
            })
            .collect();
        let stats = addrs
            .iter()
            .map(|(a, _)| Arc::new(EndpointStats::new(a.to_string())))
            .collect();
        (c, stats)
    }

    fn req(user: Option<&str>) -> Request<()> {
        let mut b = Request::builder();
        if let Some(u) = user {
            b = b.header("x-user", u);
        }
        b.body(()).unwrap()
    }

    fn balancer(c: &model::Cluster, stats: &[Arc<EndpointStats>]) -> Balancer {
        let weights: Vec<u32> = c.endpoints.iter().map(|e| e.weight).collect();
        Balancer::new(c, stats.to_vec(), &weights)
    }

    #[test]
    fn smooth_weights() {
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[3000, 1000]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[10_000, 9_999]).len(), 19_999);
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_skips_ejected_and_avoided() {
        let (c, stats) = cluster(LbPolicy::RoundRobin, &[("a:1", 1), ("b:1", 1), ("c:1", 1)]);
        let b = balancer(&c, &stats);
        let now = Instant::now();
        let picks: Vec<_> = (0..6).map(|_| b.pick(&req(None), now).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        stats[1].set_healthy(false);
        let picks: Vec<_> = (0..4).map(|_| b.pick(&req(None), now).unwrap()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        let mut r = req(None);
        r.extensions_mut().insert(Avoid(stats[0].id));
        for _ in 0..4 {
            assert_eq!(b.pick(&r, now).unwrap(), 2);
        }
        // Avoid yields when nothing else is left.
        stats[2].set_healthy(false);
        assert_eq!(b.pick(&r, now).unwrap(), 0);
        stats[0].set_healthy(false);
        assert_eq!(b.pick(&r, now), Err(NoneAvailable));
    }

    #[tokio::test(start_paused = true)]
    async fn ewma_prefers_the_fast_endpoint() {
        let (c, stats) = cluster(LbPolicy::Ewma, &[("fast:1", 1), ("slow:1", 1)]);
        let b = balancer(&c, &stats);
        let now = Instant::now();
        stats[0].observe(Duration::from_millis(2), false, now);
        stats[1].observe(Duration::from_millis(50), false, now);
        let fast = (0..100)
            .filter(|_| b.pick(&req(None), now).unwrap() == 0)
            .count();
        assert_eq!(fast, 100);
        // Load on the fast one shifts traffic: 30 in flight at 2ms > 1 at 50ms.
        let _held: Vec<_> = (0..30).map(|_| stats[0].start()).collect();
        assert_eq!(b.pick(&req(None), now).unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ewma_peaks_then_decays() {
        let e = EndpointStats::new("x".into());
        let t0 = Instant::now();
        assert_eq!(e.ewma(t0), Duration::ZERO);
        assert_eq!(e.cost(t0), 0.0, "new and idle: tried first");
        let held = Arc::new(EndpointStats::new("y".into()));
        let _pending = held.start();
        assert_eq!(
            held.cost(t0),
            FAILURE_PENALTY.as_nanos() as f64,
            "new but stuck"
        );
        e.observe(Duration::from_millis(10), false, t0);
        e.observe(Duration::from_millis(100), false, t0);
        assert_eq!(e.ewma(t0), Duration::from_millis(100), "peaks at once");
        // One decay period later the estimate is 1/e of itself.
        let later = t0 + DECAY;
        let ms = e.ewma(later).as_secs_f64() * 1000.0;
        assert!((ms - 100.0 / std::f64::consts::E).abs() < 0.01, "{ms}");
        // A failure leaves the estimate alone and adds a penalty that fades
        // within seconds.
        let before = e.ewma(later);
        e.observe(Duration::from_millis(1), true, later);
        assert_eq!(e.ewma(later), before);
        let base = before.as_nanos() as f64;
        let full = e.cost(later) - base;
        assert!(
            (full - FAILURE_PENALTY.as_nanos() as f64).abs() < 1.0,
            "{full}"
        );
        let faded = e.cost(later + Duration::from_secs(7))
            - e.ewma(later + Duration::from_secs(7)).as_nanos() as f64;
        assert!(faded < 1_000_000.0, "under 1ms after 7s: {faded}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_back_from_ejection_starts_afresh() {
        use crate::outlier::{OutlierConfig, report};
        let (c, stats) = cluster(LbPolicy::Ewma, &[("a:1", 1), ("b:1", 1)]);
        let b = balancer(&c, &stats);
        let cfg = OutlierConfig {
            consecutive_failures: 1,
            base_ejection_time: Duration::from_secs(5),
            max_ejection_percent: 50,
        };
        let t0 = Instant::now();
        stats[0].observe(Duration::from_millis(1), false, t0);
        stats[1].observe(Duration::from_millis(1), true, t0);
        assert!(report(&cfg, &stats, 1, true, false, t0));
        assert_eq!(b.pick(&req(None), t0).unwrap(), 0);
        let back = t0 + Duration::from_secs(5);
        // Its 1s failure penalty would still dominate; after the return it
        // is unsampled and idle, so it wins the next pick.
        assert_eq!(b.pick(&req(None), back).unwrap(), 1);
        assert_eq!(stats[1].ewma(back), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn least_request_follows_in_flight() {
        let (c, stats) = cluster(LbPolicy::LeastRequest, &[("a:1", 1), ("b:1", 1)]);
        let b = balancer(&c, &stats);
        let _busy = stats[0].start();
        for _ in 0..20 {
            assert_eq!(b.pick(&req(None), Instant::now()).unwrap(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ring_hash_is_sticky_and_consistent() {
        let addrs = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)];
        let (c, stats) = cluster(LbPolicy::RingHash, &addrs);
        let three = balancer(&c, &stats);
        let now = Instant::now();
        let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| three.pick(&req(Some(k)), now).unwrap())
            .collect();
        for (k, &p) in keys.iter().zip(&before).take(50) {
            assert_eq!(three.pick(&req(Some(k)), now).unwrap(), p, "sticky");
        }
        // Every endpoint gets a fair share.
        for i in 0..3 {
            let share = before.iter().filter(|&&p| p == i).count();
            assert!((200..470).contains(&share), "endpoint {i}: {share}");
        }
        // Dropping the third endpoint moves only its keys.
        let (c2, stats2) = cluster(LbPolicy::RingHash, &addrs[..2]);
        let two = balancer(&c2, &stats2);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, p)| **p != 2 && two.pick(&req(Some(k)), now).unwrap() != **p)
            .count();
        assert_eq!(moved, 0);
        // An unhealthy endpoint's keys go to the next point on the ring.
        stats[0].set_healthy(false);
        for (k, &p) in keys.iter().zip(&before).take(100) {
            let now_p = three.pick(&req(Some(k)), now).unwrap();
            if p != 0 {
                assert_eq!(now_p, p);
            } else {
                assert_ne!(now_p, 0);
            }
        }
    }
}
