//! One `warn` line per answer Skiff makes itself, without letting a storm of
//! them flood the log.
//!
//! An operator must be able to see why a caller got a 503 or a 400 that no
//! upstream sent: each proxy-made answer is logged at `warn` with its reason,
//! route, cluster and request id (the full cause chain, endpoint addresses
//! included, is in the line; the caller got only the reason and a short
//! text). During an outage that could be thousands of lines a second, so at
//! most [`LINES_PER_SECOND`] are written each second and the rest are
//! counted; the count is logged when the next second's first line goes out.
//! The budget is two atomics, no lock: it sits on the error path of every
//! request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Lines written per second before the rest are only counted.
pub const LINES_PER_SECOND: u64 = 20;

/// The per-second budget of proxy-made-error log lines.
#[derive(Debug)]
pub struct ErrorLog {
    start: Instant,
    /// The second (since `start`) in the high 32 bits, lines taken in it in
    /// the low 32: one word, so a new second and its first line are one swap.
    window: AtomicU64,
    dropped: AtomicU64,
}

impl Default for ErrorLog {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl ErrorLog {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            window: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written at `now`; `Some(n)` when it may, with
    /// `n` lines dropped since the last one written (to be logged with it).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let second = now.saturating_duration_since(self.start).as_secs() & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (at, taken) = (current >> 32, current & 0xffff_ffff);
            let next = if at == second {
                if taken >= LINES_PER_SECOND {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                current + 1
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.dropped.swap(0, Ordering::Relaxed)),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn writes_the_budget_then_counts_then_reports_the_count() {
        let start = Instant::now();
        let log = ErrorLog::new(start);
        for i in 0..LINES_PER_SECOND {
            assert_eq!(log.admit(start), Some(0), "line {i}");
        }
        for _ in 0..7 {
            assert_eq!(log.admit(start + Duration::from_millis(999)), None);
        }
        // The next second: the first line carries the 7 dropped.
        assert_eq!(log.admit(start + Duration::from_secs(1)), Some(7));
        assert_eq!(log.admit(start + Duration::from_secs(1)), Some(0));
    }
}
