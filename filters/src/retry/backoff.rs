//! Exponential backoff with full jitter (the AWS architecture blog's "full
//! jitter", as Envoy does): before retry `n` (0-based) sleep a duration drawn
//! uniformly from `[0, min(max, base * 2^n))`. Spreading retries over the
//! whole interval keeps many clients that failed together from retrying
//! together.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use skiff_control::model;

/// Envoy's defaults.
pub const DEFAULT_BASE: Duration = Duration::from_millis(25);
pub const DEFAULT_MAX: Duration = Duration::from_millis(250);

/// Draws a number uniformly from [0, 1); injectable so tests pin the jitter.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The backoff of one retry policy.
#[derive(Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: Jitter,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("base", &self.base)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(DEFAULT_BASE, DEFAULT_MAX)
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            jitter: Arc::new(fastrand::f64),
        }
    }

    pub fn from_config(c: Option<&model::Backoff>) -> Self {
        c.map_or_else(Self::default, |b| Self::new(b.base.get(), b.max.get()))
    }

    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The upper bound of the sleep before retry `n`: `min(max, base * 2^n)`.
    pub fn cap(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The sleep before retry `n`.
    pub fn delay(&self, n: u32) -> Duration {
        let unit = (self.jitter)().clamp(0.0, 1.0);
        self.cap(n).mul_f64(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_double_up_to_max() {
        let b = Backoff::new(Duration::from_millis(25), Duration::from_millis(250));
        let caps: Vec<u128> = (0..7).map(|n| b.cap(n).as_millis()).collect();
        assert_eq!(caps, [25, 50, 100, 200, 250, 250, 250]);
        assert_eq!(b.cap(40), Duration::from_millis(250), "no overflow");
    }

    #[test]
    fn full_jitter_spans_zero_to_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let low = b.clone().with_jitter(Arc::new(|| 0.0));
        let half = b.clone().with_jitter(Arc::new(|| 0.5));
        assert_eq!(low.delay(3), Duration::ZERO);
        assert_eq!(half.delay(0), Duration::from_millis(50));
        assert_eq!(half.delay(2), Duration::from_millis(200));
        assert_eq!(half.delay(9), Duration::from_millis(500));
        for n in 0..10 {
            let d = b.delay(n);
            assert!(d < b.cap(n), "{d:?} within [0, {:?})", b.cap(n));
        }
    }

    #[test]
    fn defaults_are_envoys() {
        let b = Backoff::from_config(None);
        assert_eq!(b.cap(0), Duration::from_millis(25));
        assert_eq!(b.cap(10), Duration::from_millis(250));
    }
}
