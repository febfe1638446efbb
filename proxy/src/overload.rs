//! Shedding load before the process falls over (`overload:` in the config).
//!
//! Two budgets, both changed live with the config:
//!
//! * **connections**: downstream connections open at once, all listeners
//!   together. Each accepted connection takes a [`Ticket`]; one taken past
//!   the budget marks its connection as shed: every request on it is
//!   answered 503 `overloaded` (gRPC UNAVAILABLE) and an HTTP/1 connection
//!   closes after that answer. Closing at once would tell the client
//!   nothing; answering says why and lets it back off. The ticket is
//!   returned when the connection closes, so the next one is served again.
//! * **memory**: the process's resident memory, sampled by [`watch`] every
//!   [`SAMPLE_EVERY`]. From 95% of the budget, new requests are answered 503
//!   `overloaded`; below 90% they are served again. Requests in flight
//!   finish: they already hold their memory, and cutting them would lose
//!   work the caller is waiting for.
//!
//! The data path reads two atomics per connection and one per request;
//! nothing here takes a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use skiff_control::model;
use tracing::{info, warn};

/// How often [`watch`] reads the process's resident memory: often enough
/// that a burst is caught within a few hundred requests, rarely enough
/// that reading `/proc` costs nothing measurable.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Shedding starts at this share of `max_memory_mib` and stops below
/// [`RESUME_AT`]: the gap keeps a process near its budget from flapping.
const SHED_AT: f64 = 0.95;
const RESUME_AT: f64 = 0.90;

/// The budgets and what is spent of them.
#[derive(Debug)]
pub struct Overload {
    max_connections: AtomicUsize,
    /// Bytes; 0: no memory budget.
    max_memory: AtomicU64,
    connections: AtomicUsize,
    memory_over: AtomicBool,
    /// One sample at a time: [`watch`]'s and the one a new budget takes
    /// must not cross (a stale reading would undo a budget just set).
    /// Never taken on the data path.
    sampling: std::sync::Mutex<()>,
}

impl Overload {
    pub fn new(budget: &model::Overload) -> Arc<Self> {
        let o = Arc::new(Self {
            max_connections: AtomicUsize::new(0),
            max_memory: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            memory_over: AtomicBool::new(false),
            sampling: std::sync::Mutex::new(()),
        });
        o.set_budget(budget);
        o
    }

    /// Takes the budgets of a newly applied config. Connections already
    /// open stay as they are; a lowered memory budget is checked at once.
    pub fn set_budget(&self, budget: &model::Overload) {
        self.max_connections
            .store(budget.max_connections as usize, Ordering::Relaxed);
        let bytes = budget
            .max_memory_mib
            .map_or(0, |mib| u64::from(mib) * 1024 * 1024);
        {
            // Stored under the sampling lock: a sample under way finishes
            // on the old budget before this one is taken and sampled.
            let _one = self.sampling.lock().unwrap_or_else(|p| p.into_inner());
            self.max_memory.store(bytes, Ordering::Relaxed);
        }
        self.sample();
    }

    /// A ticket for a connection just accepted; `shed()` says whether it
    /// came past the connection budget.
    pub fn connection(self: &Arc<Self>) -> Ticket {
        let open = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        Ticket {
            overload: self.clone(),
            shed: open > self.max_connections.load(Ordering::Relaxed),
        }
    }

    /// Whether new requests are shed for memory now.
    pub fn memory_over(&self) -> bool {
        self.memory_over.load(Ordering::Relaxed)
    }

    /// Downstream connections open now, all listeners together.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Compares resident memory with the budget, and flips shedding on or
    /// off across the two thresholds.
    fn sample(&self) {
        let _one = self.sampling.lock().unwrap_or_else(|p| p.into_inner());
        let budget = self.max_memory.load(Ordering::Relaxed);
        if budget == 0 {
            if self.memory_over.swap(false, Ordering::Relaxed) {
                info!("memory budget removed: serving again");
            }
            return;
        }
        let Some(rss) = resident_bytes() else {
            return;
        };
        let share = rss as f64 / budget as f64;
        let was = self.memory_over.load(Ordering::Relaxed);
        if !was && share >= SHED_AT {
            self.memory_over.store(true, Ordering::Relaxed);
            warn!(
                rss_mib = rss >> 20,
                budget_mib = budget >> 20,
                "memory near its budget: shedding new requests (503 overloaded)"
            );
        } else if was && share < RESUME_AT {
            self.memory_over.store(false, Ordering::Relaxed);
            info!(
                rss_mib = rss >> 20,
                budget_mib = budget >> 20,
                "memory back under its budget: serving again"
            );
        }
    }
}

/// One open downstream connection's share of the connection budget.
#[derive(Debug)]
pub struct Ticket {
    overload: Arc<Overload>,
    shed: bool,
}

impl Ticket {
    /// Whether this connection came past the budget: its requests get 503.
    pub fn shed(&self) -> bool {
        self.shed
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.overload.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Samples resident memory against the budget until the process ends.
/// Reading `/proc/self/status` is a few microseconds from the kernel's own
/// counters, never a disk: done inline, not on a blocking thread.
pub async fn watch(overload: Arc<Overload>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        overload.sample();
    }
}

/// The process's resident set in bytes (`VmRSS` in `/proc/self/status`,
/// which the kernel gives in KiB whatever the page size); `None` where
/// there is no procfs.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_connections: u32, max_memory_mib: Option<u32>) -> model::Overload {
        model::Overload {
            max_connections,
            max_memory_mib,
        }
    }

    #[test]
    fn connections_past_the_budget_are_shed_until_one_closes() {
        let o = Overload::new(&budget(2, None));
        let a = o.connection();
        let b = o.connection();
        let c = o.connection();
        assert!(!a.shed() && !b.shed());
        assert!(c.shed(), "the third of two");
        assert_eq!(o.connections(), 3);
        drop(c);
        drop(a);
        assert!(!o.connection().shed(), "one closed: served again");
        assert_eq!(o.connections(), 1, "the temporary ticket was returned");
        drop(b);
        assert_eq!(o.connections(), 0);
    }

    #[test]
    fn memory_over_its_budget_sheds_and_a_raised_budget_serves_again() {
        // This test process holds more than one MiB.
        let o = Overload::new(&budget(100, Some(1)));
        assert!(o.memory_over());
        o.set_budget(&budget(100, Some(u32::MAX)));
        assert!(!o.memory_over());
        o.set_budget(&budget(100, Some(1)));
        assert!(o.memory_over());
        o.set_budget(&budget(100, None));
        assert!(!o.memory_over(), "no budget: nothing shed");
        assert!(resident_bytes().is_some_and(|b| b > 1 << 20));
    }
}
