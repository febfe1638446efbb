//! The `skiff` binary: everything but the allocator lives in the library
//! (`cli/`), so tests run exactly what the binary runs.
#![forbid(unsafe_code)]

/// mimalloc rather than glibc's malloc: the data path allocates and frees
/// small objects (headers, futures, buffers) on every request, across
/// threads, which is where glibc's arenas are slowest. Measured in
/// docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    skiff::cli::main()
}
