//! The `skiff` binary: everything but the allocator lives in the library
//! (`cli/`), so tests run exactly what the binary runs.
#![deny(unsafe_code)]

/// mimalloc rather than glibc's malloc: the data path allocates and frees
/// small objects (headers, futures, buffers) on every request, across
/// threads, which is where glibc's arenas are slowest. Measured in
/// docs/benchmarks.md.
///
/// `--features system-allocator` leaves the platform's malloc in place, so
/// that heaptrack can attribute every allocation (docs/benchmarks.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the pages mimalloc holds but no longer uses, after a config
/// change (`skiff::memory`).
#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code)]
fn release() {
    // SAFETY: mi_collect takes no pointers and may be called from any
    // thread at any time; it only frees what no allocation uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> std::process::ExitCode {
    #[cfg(not(feature = "system-allocator"))]
    skiff::memory::set_release(release);
    skiff::cli::main()
}
