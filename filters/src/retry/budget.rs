//! The per-cluster retry budget (`retry_budget: { ratio, min_per_second }`):
//! retries may add at most `ratio` of the requests sent to the cluster over
//! the last 10 seconds, plus `min_per_second` so that a quiet cluster can
//! still retry. It is what stops a retry storm: when an upstream fails
//! everything, retries stop at +20% load instead of multiplying it by
//! `attempts + 1` (Linkerd's budget; Finagle's `RetryBudget` by way of
//! tower's `TpsBudget`).

use std::time::Duration;

use skiff_control::model;
use tower::retry::budget::{Budget, TpsBudget};

pub const DEFAULT_RATIO: f64 = 0.2;
pub const DEFAULT_MIN_PER_SECOND: u32 = 10;
/// How long a request counts toward the budget.
pub const WINDOW: Duration = Duration::from_secs(10);

/// One cluster's retry budget, shared by every route to it.
#[derive(Debug)]
pub struct RetryBudget {
    inner: TpsBudget,
    ratio: f64,
    min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(DEFAULT_RATIO, DEFAULT_MIN_PER_SECOND)
    }
}

impl RetryBudget {
    /// Values outside what validation allows are clamped into range rather
    /// than trusted: the underlying budget asserts on them.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            DEFAULT_RATIO
        };
        let min_per_second = min_per_second.min(i32::MAX as u32 - 1);
        Self {
            inner: TpsBudget::new(WINDOW, min_per_second, ratio as f32),
            ratio,
            min_per_second,
        }
    }

    pub fn from_config(c: Option<&model::RetryBudget>) -> Self {
        match c {
            None => Self::default(),
            Some(b) => Self::new(b.ratio, b.min_per_second.unwrap_or(DEFAULT_MIN_PER_SECOND)),
        }
    }

    /// Counts a request sent to the cluster.
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes the right to one retry, if the budget has it.
    pub fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }

    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    pub fn min_per_second(&self) -> u32 {
        self.min_per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ratio_of_requests() {
        let b = RetryBudget::new(0.5, 0);
        assert!(!b.withdraw(), "nothing deposited, no minimum");
        b.deposit();
        assert!(!b.withdraw());
        b.deposit();
        assert!(b.withdraw(), "two requests buy one retry");
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn minimum_per_second_over_the_window() {
        let b = RetryBudget::new(0.0, 1);
        for i in 0..10 {
            assert!(b.withdraw(), "retry {i}");
        }
        assert!(!b.withdraw(), "1/s over a 10s window is 10");
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let b = RetryBudget::new(1.0, 0);
        b.deposit();
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert!(!b.withdraw());
    }

    #[test]
    fn out_of_range_is_clamped_not_a_panic() {
        let b = RetryBudget::new(f64::NAN, u32::MAX);
        assert_eq!(b.ratio(), DEFAULT_RATIO);
        let b = RetryBudget::new(5000.0, 1);
        assert_eq!(b.ratio(), 1000.0);
    }
}
