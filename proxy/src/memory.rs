//! Giving memory back to the system after a config change.
//!
//! A config change at mesh scale parses, decodes and compiles tens of
//! megabytes that live for a moment. The allocator keeps the pages they
//! used, and gives them back only when later allocations make it look
//! (mimalloc purges on activity): an idle sidecar that took 100 reloads
//! held 7 to 16% more than after its first, although its live heap had not
//! grown by more than 2 KB (heaptrack, docs/benchmarks.md). The binary
//! registers how to release what the allocator holds ([`set_release`]);
//! the proxy calls [`release`] once a config change is applied, off the
//! data path.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// What [`release`] calls: set once, by the binary that chose the allocator.
pub fn set_release(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Asks the allocator to return the memory it holds but no longer uses. A
/// no-op where the binary registered nothing (tests, the system allocator).
pub fn release() {
    if let Some(f) = RELEASE.get() {
        f();
    }
}
