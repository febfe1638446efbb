//! Reload benchmark: how soon a config file change serves, and what a
//! stream of changes costs the traffic flowing meanwhile.
//!
//! One process on loopback, as the chaos benchmark: one upstream, Skiff
//! in-process (`skiff::build_from` and `Bound::watch_file`, exactly what
//! `skiff run -c FILE` runs) and the clients, on one tokio runtime with two
//! worker threads.
//!
//! ```text
//! cargo run --release -p skiff-chaos --bin skiff-reload
//! bash bench/reload.sh
//! ```
//!
//! 1. **Change to first request.** 50 times: the config file is replaced
//!    (written beside it, renamed into place, as editors and ConfigMap
//!    updates do) with a route that sets `x-version: N` on responses, and a
//!    client sends requests back to back until one carries it. Reported:
//!    median and p99 of the time from the rename to that response.
//! 2. **Swap cost under load.** `--connections` closed-loop HTTP/1.1
//!    clients for `--secs` seconds with no change, then as long again with
//!    the file changed 10 times a second. Reported: requests per second and
//!    latency percentiles of both runs.
#![forbid(unsafe_code)]

#[path = "../backend.rs"]
#[allow(dead_code)]
mod backend;
#[path = "../closed_loop.rs"]
mod closed_loop;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::time::Instant;

use crate::closed_loop::{Conn, Load, percentile};

#[derive(Debug, Parser)]
#[command(
    name = "skiff-reload",
    about = "Time from a config change to the first request it serves, and the cost of changes under load"
)]
struct Args {
    /// Config changes timed in part 1.
    #[arg(long, default_value_t = 50)]
    changes: u32,
    /// Closed-loop client connections in part 2.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds of each load run in part 2.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Changes per second during the second load run.
    #[arg(long, default_value_t = 10.0)]
    change_rate: f64,
}

fn config(upstream: SocketAddr, version: u64) -> String {
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
    - name: v
      cluster: app
      headers: {{ response: {{ set: {{ x-version: \"{version}\" }} }} }}
clusters:
  app:
    endpoints: [{upstream}]
"
    )
}

/// Replaces `path` the way editors and ConfigMap updates do.
fn replace(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Closed-loop load for `secs`, changing the config `change_rate` times a
/// second when that is above zero: what the clients saw, and the changes made.
async fn load(
    addr: SocketAddr,
    args: &Args,
    path: &Path,
    upstream: SocketAddr,
    change_rate: f64,
    version: &AtomicU64,
) -> anyhow::Result<(Load, u64)> {
    let run = Duration::from_secs_f64(args.secs);
    let changing = async {
        let start = Instant::now();
        let mut changes = 0u64;
        if change_rate > 0.0 {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / change_rate));
            while start.elapsed() < run {
                tick.tick().await;
                let v = version.fetch_add(1, Ordering::Relaxed) + 1;
                replace(path, &config(upstream, v))?;
                changes += 1;
            }
        } else {
            tokio::time::sleep(run).await;
        }
        Ok(changes)
    };
    closed_loop::run(addr, args.connections, changing).await
}

/// The skiff binary's allocator: Skiff runs in this process, and is measured
/// as it ships.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    closed_loop::runtime()?.block_on(run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let served = Arc::new(AtomicU64::new(0));
    let upstream = backend::Backend::start("127.0.0.1:0".parse()?, served).await?;
    let dir = tempfile_dir()?;
    let path = dir.join("skiff.yaml");
    let version = AtomicU64::new(1);
    std::fs::write(&path, config(upstream.addr(), 1))?;
    let snapshot = skiff_control::Snapshot {
        version: 1,
        source: path.display().to_string(),
        config: skiff_control::load_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let mut bound = skiff::build_from(snapshot).await?;
    bound.watch_file(
        path.clone(),
        skiff_control::source::file::POLL_INTERVAL,
        skiff_control::Vars::process(),
    );
    let addr = bound.listener_addr("main").context("listener main")?;

    // 1. Change to first request.
    let mut conn = Conn::open(addr).await?;
    let mut took = Vec::new();
    for _ in 0..args.changes {
        let v = version.fetch_add(1, Ordering::Relaxed) + 1;
        let changed = Instant::now();
        replace(&path, &config(upstream.addr(), v))?;
        loop {
            if conn.get().await? == Some(v) {
                took.push(changed.elapsed());
                break;
            }
            anyhow::ensure!(
                changed.elapsed() < Duration::from_secs(10),
                "change {v} never served"
            );
        }
    }
    took.sort_unstable();
    println!("## Change to first request ({} changes)\n", args.changes);
    println!("| median | p99 | max |\n|---:|---:|---:|");
    println!(
        "| {} | {} | {} |\n",
        ms(percentile(&took, 0.5)),
        ms(percentile(&took, 0.99)),
        ms(*took.last().unwrap_or(&Duration::ZERO))
    );

    // 2. Swap cost under load.
    println!(
        "## Load with and without changes ({} connections, {} s each)\n",
        args.connections, args.secs
    );
    println!(
        "| run | changes | requests/s | failed | p50 | p99 | p99.9 |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (name, rate) in [("no changes", 0.0), ("changes", args.change_rate)] {
        let (load, changes) = load(addr, &args, &path, upstream.addr(), rate, &version).await?;
        let lat = &load.latencies;
        println!(
            "| {name} | {changes} | {:.0} | {} | {} | {} | {} |",
            lat.len() as f64 / args.secs,
            load.failures,
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99)),
            ms(percentile(lat, 0.999)),
        );
    }
    bound.drain();
    bound.wait_termination().await?;
    upstream.kill().await;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// A fresh directory for the config file (removed at the end).
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("skiff-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
