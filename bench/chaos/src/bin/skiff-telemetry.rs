//! Telemetry benchmark: what metrics, a JSON access log to a file and
//! tracing at 1% to a local OTLP receiver cost, against telemetry off, in
//! the same run.
//!
//! One process on loopback: one upstream, Skiff in-process, a local OTLP
//! receiver (a tonic server counting spans) and closed-loop HTTP/1.1
//! clients, on one tokio runtime with two worker threads. The config is
//! switched between "off" and "on" with `Bound::apply` between rounds, and
//! the rounds alternate, each starting one setting later, so drift hits
//! all alike. The access log's file is synced to disk between rounds.
//!
//! ```text
//! bash bench/telemetry.sh                 # 10 rounds of each, 2 s each, 8 connections
//! ```
#![forbid(unsafe_code)]

#[path = "../backend.rs"]
#[allow(dead_code)]
mod backend;
#[path = "../closed_loop.rs"]
#[allow(dead_code)]
mod closed_loop;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::closed_loop::percentile;

#[derive(Debug, Parser)]
#[command(
    name = "skiff-telemetry",
    about = "Throughput and latency with telemetry on against off"
)]
struct Args {
    /// Rounds of each setting, alternating.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Seconds per round.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Run only these settings (0 off, 1 access log, 2 tracing, 3 both),
    /// e.g. to profile one: `--only 3`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<usize>,
    /// Closed-loop client connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

/// Counts the spans it receives.
#[derive(Clone, Default)]
struct Receiver(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The telemetry settings compared.
const SETTINGS: [&str; 4] = [
    "off",
    "access log",
    "tracing at 1%",
    "access log and tracing at 1%",
];

fn config(upstream: SocketAddr, setting: usize, collector: SocketAddr, log: &str) -> String {
    let access = format!("  access_log: {{ path: \"{log}\" }}\n");
    let tracing =
        format!("  tracing: {{ otlp_endpoint: \"http://{collector}\", sample_ratio: 0.01 }}\n");
    let telemetry = match setting {
        1 => format!("telemetry:\n{access}"),
        2 => format!("telemetry:\n{tracing}"),
        3 => format!("telemetry:\n{access}{tracing}"),
        _ => String::new(),
    };
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
{telemetry}listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
    - name: app
      cluster: app
clusters:
  app:
    endpoints: [{upstream}]
"
    )
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
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector = listener.local_addr()?;
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = std::env::temp_dir().join(format!("skiff-telemetry-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("access.log");
    let log_path = log.display().to_string();
    let configs: Vec<String> = (0..SETTINGS.len())
        .map(|i| config(upstream.addr(), i, collector, &log_path))
        .collect();
    let load_config = |text: &str| {
        skiff_control::load_str(text, "bench.yaml").map_err(|e| anyhow::anyhow!("{e}"))
    };
    let bound = skiff::build(load_config(&configs[0])?).await?;
    let addr = bound
        .listener_addr("main")
        .ok_or_else(|| anyhow::anyhow!("no listener"))?;
    let mut version = 1;
    let mut runs: Vec<Vec<(f64, Duration)>> = vec![Vec::new(); SETTINGS.len()];
    for round in 0..args.rounds as usize {
        // Each round starts one setting later, so no setting always
        // follows another (and inherits, say, its page-cache writeback).
        for i in (0..SETTINGS.len()).map(|k| (k + round) % SETTINGS.len()) {
            if !args.only.is_empty() && !args.only.contains(&i) {
                continue;
            }
            let text = &configs[i];
            version += 1;
            bound.apply(skiff_control::Snapshot {
                version,
                source: "bench".to_owned(),
                config: load_config(text)?,
            })?;
            let secs = Duration::from_secs_f64(args.secs);
            let (load, ()) = closed_loop::run(addr, args.connections, async {
                tokio::time::sleep(secs).await;
                Ok(())
            })
            .await?;
            let lat = &load.latencies;
            runs[i].push((lat.len() as f64 / args.secs, percentile(lat, 0.99)));
            // The kernel writes the round's log lines to disk now, between
            // rounds, rather than during the next one.
            if let Ok(file) = std::fs::File::open(&log) {
                let _ = tokio::task::spawn_blocking(move || file.sync_all()).await;
            }
        }
    }
    // Medians over the rounds: one round slowed by the host (this is a
    // shared VM) moves a mean by more than the cost being measured.
    let median = |runs: &[(f64, Duration)]| {
        let mut rps: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let mut p99: Vec<f64> = runs.iter().map(|r| r.1.as_secs_f64()).collect();
        rps.sort_by(f64::total_cmp);
        p99.sort_by(f64::total_cmp);
        let mid = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or_default();
        (mid(&rps), mid(&p99) * 1000.0)
    };
    // Let the last batch of spans arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines = std::fs::read_to_string(&log)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!(
        "## Telemetry on against off ({} rounds of {} s each, alternating; {} connections)\n\nMedians over the rounds; the cost is the median of each round's throughput against the same round's \"off\".\n",
        args.rounds, args.secs, args.connections
    );
    println!("| telemetry (metrics always on) | requests/s | p99 | cost |\n|---|---:|---:|---:|");
    for (name, r) in SETTINGS.iter().zip(&runs).filter(|(_, r)| !r.is_empty()) {
        let (rps, p99) = median(r);
        // Each round's throughput against the same round's "off": rounds
        // are a few seconds apart, so the host's slow and fast phases
        // cancel out of the ratio.
        let ratios: Vec<(f64, Duration)> = r
            .iter()
            .zip(&runs[0])
            .map(|(on, off)| (on.0 / off.0, Duration::ZERO))
            .collect();
        let cost = match ratios.is_empty() {
            true => "-".to_owned(),
            false => format!("{:.1}%", 100.0 * (1.0 - median(&ratios).0)),
        };
        println!("| {name} | {rps:.0} | {p99:.2} ms | {cost} |");
    }
    println!("\nEach round's requests/s, in the order run:\n");
    for (name, r) in SETTINGS.iter().zip(&runs).filter(|(_, r)| !r.is_empty()) {
        let each: Vec<String> = r.iter().map(|r| format!("{:.0}", r.0)).collect();
        println!("- {name}: {}", each.join(", "));
    }
    println!(
        "\nAccess log lines written: {lines}; spans received: {}.",
        receiver.0.load(Ordering::Relaxed)
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
