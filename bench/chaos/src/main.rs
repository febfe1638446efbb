//! Chaos benchmark: steady open-loop load through Skiff while one of three
//! endpoints is killed and later brought back on the same port.
//!
//! Everything runs in this one process on loopback: three upstream servers,
//! Skiff itself through its library API (`skiff::build`, as the integration
//! tests run it), and the load generator. They share one tokio runtime with
//! two worker threads, the CPU budget of a sidecar on this 2-core machine.
//!
//! ```text
//! cargo run --release -p skiff-chaos -- --rate 1000 --phase-secs 10
//! bash bench/chaos.sh --phase-secs 2          # smoke
//! ```
//!
//! Phases: healthy → kill one endpoint (accept loop and every established
//! connection torn down at once, as when a process crashes) → down →
//! restart it on the same port → recovered. The report gives each phase's
//! request count, success rate and latency percentiles (measured from each
//! request's scheduled send time), and Skiff's retry and ejection counters.
#![forbid(unsafe_code)]

mod backend;
mod cpu;
mod load;
mod metrics;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::load::Pool;
use crate::metrics::Sample;
use crate::report::{Phase, Report, Row, Timeline};

/// Where `--doc` writes the results, between these two lines.
const DOC_BEGIN: &str = "<!-- chaos:begin -->";
const DOC_END: &str = "<!-- chaos:end -->";

#[derive(Debug, Parser)]
#[command(
    name = "skiff-chaos",
    about = "Kill one of three endpoints under steady load through Skiff and report what callers saw"
)]
struct Args {
    /// Requests per second, sent on a fixed timetable (open loop).
    #[arg(long, env = "CHAOS_RATE", default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of each phase: healthy, down, recovered.
    #[arg(long, env = "CHAOS_PHASE_SECS", default_value_t = 10.0)]
    phase_secs: f64,
    /// Seconds of the recovered phase, if not `--phase-secs`: a long one
    /// shows when the restarted endpoint gets traffic again.
    #[arg(long, env = "CHAOS_RECOVERED_SECS")]
    recovered_secs: Option<f64>,
    /// Seconds of unmeasured load first, to open connections and settle the balancer.
    #[arg(long, env = "CHAOS_WARMUP_SECS", default_value_t = 2.0)]
    warmup_secs: f64,
    /// Which endpoint to kill: 1, 2 or 3, or `busiest`, the one that answered
    /// the most requests in the healthy phase. The default is `busiest`
    /// because the balancer may send an endpoint little or no traffic, and
    /// killing an endpoint nobody uses tests nothing.
    #[arg(long, env = "CHAOS_KILL", default_value = "busiest", value_parser = parse_victim)]
    kill: Victim,
    /// The cluster's balancer: `ewma` (Skiff's default, the issue's setup),
    /// `least_request`, `round_robin`. With `round_robin` the dead endpoint
    /// keeps its turns until outlier detection ejects it, which exercises
    /// ejection and retries harder than `ewma` does.
    #[arg(long, env = "CHAOS_LB", default_value = "ewma", value_parser = ["ewma", "least_request", "round_robin"])]
    lb: String,
    /// At most this many requests in flight (and so client connections).
    #[arg(long, env = "CHAOS_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// A request with no complete answer after this many seconds fails as `client timeout`.
    #[arg(long, env = "CHAOS_CLIENT_TIMEOUT_SECS", default_value_t = 10.0)]
    client_timeout_secs: f64,
    /// Write the results into this Markdown file, between `<!-- chaos:begin -->`
    /// and `<!-- chaos:end -->` (docs/benchmarks.md).
    #[arg(long, env = "CHAOS_DOC")]
    doc: Option<PathBuf>,
}

/// The proxy under test. The retry policy and outlier detection are the
/// issue's; everything else is left at its default (`lb` is spelled out
/// because it decides how the dead endpoint is avoided).
fn config(endpoints: &[SocketAddr], lb: &str) -> String {
    let endpoints = endpoints
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
runtime: {{ drain_timeout: 2s }}
listeners:
  - name: chaos
    address: "127.0.0.1:0"
    protocol: auto
    routes: chaos
routes:
  chaos:
    - name: all
      cluster: app
      retry: {{ attempts: 2, on: [connect-failure, reset, gateway-error], per_try_timeout: 500ms }}
clusters:
  app:
    endpoints: [{endpoints}]
    lb: {lb}
    connect_timeout: 250ms
    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 5s, max_ejection_percent: 50 }}
"#
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.phase_secs > 0.0 && args.warmup_secs >= 0.0) {
        bail!("--rate and --phase-secs must be above zero, --warmup-secs not below");
    }
    let phase = Duration::from_secs_f64(args.phase_secs);
    let recovered_secs = args.recovered_secs.unwrap_or(args.phase_secs);
    if recovered_secs <= 0.0 {
        bail!("--recovered-secs must be above zero");
    }
    let total = 2 * phase + Duration::from_secs_f64(recovered_secs);

    // Three endpoints; each keeps its request counter across a restart.
    let served: [Arc<AtomicU64>; 3] = Default::default();
    let mut backends = Vec::with_capacity(3);
    for counter in &served {
        backends.push(Some(
            Backend::start("127.0.0.1:0".parse()?, counter.clone()).await?,
        ));
    }
    let addrs: Vec<SocketAddr> = backends.iter().flatten().map(Backend::addr).collect();

    let config = skiff_control::load_str(&config(&addrs, &args.lb), "chaos.yaml")?;
    let bound = skiff::build(config).await?;
    let proxy = bound
        .listener_addr("chaos")
        .context("the proxy has no listener `chaos`")?;
    let admin = bound.admin_addr();
    println!(
        "skiff on {proxy} (admin {admin}); endpoints {addrs:?}; {} req/s; phases of {:.1}s; lb {}; killing {:?}",
        args.rate, args.phase_secs, args.lb, args.kill
    );

    let pool = Arc::new(Pool::new(
        proxy,
        args.max_in_flight,
        Duration::from_secs_f64(args.client_timeout_secs),
    ));
    if args.warmup_secs > 0.0 {
        let warmup = load::run(
            pool.clone(),
            args.rate,
            Instant::now(),
            Duration::from_secs_f64(args.warmup_secs),
        )
        .await;
        let failed = warmup.iter().filter(|r| !r.outcome.is_ok()).count();
        if failed > 0 {
            bail!(
                "{failed} of {} warm-up requests failed with every endpoint up",
                warmup.len()
            );
        }
    }

    // The measured run: load on its timetable, and the kill and the restart
    // at the phase boundaries of the same clock.
    let start = Instant::now() + Duration::from_millis(20);
    let baseline = metrics::scrape(admin, Duration::ZERO).await?;
    let snap = || served.each_ref().map(|c| c.load(Ordering::Relaxed));
    let s0 = snap();
    let o0 = (cpu::others_ticks(), Instant::now());
    let (stop_sampler, sampler) = sampler(admin, start, served.clone());
    let load = tokio::spawn(load::run(pool.clone(), args.rate, start, total));

    tokio::time::sleep_until(start + phase).await;
    let s1 = snap();
    let o1 = (cpu::others_ticks(), Instant::now());
    let victim = match args.kill {
        Victim::Index(i) => i,
        Victim::Busiest => (0..3).max_by_key(|&i| s1[i] - s0[i]).unwrap_or(1),
    };
    if let Some(backend) = backends[victim].take() {
        backend.kill().await;
    }
    let kill = start.elapsed();
    println!(
        "killed endpoint #{} at {:.3}s",
        victim + 1,
        kill.as_secs_f64()
    );

    tokio::time::sleep_until(start + 2 * phase).await;
    let s2 = snap();
    let o2 = (cpu::others_ticks(), Instant::now());
    backends[victim] = Some(Backend::start(addrs[victim], served[victim].clone()).await?);
    let restart = start.elapsed();
    println!(
        "restarted endpoint #{} on {} at {:.3}s",
        victim + 1,
        addrs[victim],
        restart.as_secs_f64()
    );

    let records = load.await.context("the load generator panicked")?;
    let s3 = snap();
    let o3 = (cpu::others_ticks(), Instant::now());
    let _ = stop_sampler.send(());
    let mut samples = sampler.await.unwrap_or_default();
    let mut last = metrics::scrape(admin, start.elapsed()).await?;
    last.served = s3;
    samples.push(last);
    for s in &mut samples {
        s.retries -= baseline.retries;
        s.ejections -= baseline.ejections;
    }
    let last = samples.last().copied().unwrap_or_default();
    // Cores used by other processes between two moments.
    let cores = |(a, at): (u64, Instant), (b, bt): (u64, Instant)| {
        b.saturating_sub(a) as f64
            / cpu::TICKS_PER_SECOND
            / bt.saturating_duration_since(at).as_secs_f64().max(1e-3)
    };
    let timeline = Timeline {
        kill,
        restart,
        end: total,
    };

    println!();
    println!("{}", report::per_second(&records, &samples, &timeline)?);

    let phase_of = |p: Phase| {
        let t = timeline;
        move |r: &&load::Record| Phase::of(r, &t) == p
    };
    let healthy = Row::of("healthy", records.iter().filter(phase_of(Phase::Healthy)))?;
    let down = Row::of(
        &format!("**down** (kill → restart, #{} dead)", victim + 1),
        records.iter().filter(phase_of(Phase::Down)),
    )?;
    let first_second = Row::of(
        "down, first second",
        records
            .iter()
            .filter(phase_of(Phase::Down))
            .filter(|r| r.due < kill + Duration::from_secs(1)),
    )?;
    let recovered = Row::of(
        "recovered",
        records.iter().filter(phase_of(Phase::Recovered)),
    )?;
    let diff = |a: [u64; 3], b: [u64; 3]| [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let report = Report {
        rate: args.rate,
        lb: args.lb.clone(),
        phase_secs: args.phase_secs,
        recovered_secs,
        killed: victim + 1,
        healthy_p99: healthy.p99,
        down_p99: down.p99,
        down_success: down.success(),
        rows: vec![healthy, down, first_second, recovered],
        served: [diff(s0, s1), diff(s1, s2), diff(s2, s3)],
        retries: last.retries,
        ejections: last.ejections,
        others: [cores(o0, o1), cores(o1, o2), cores(o2, o3)],
    };
    let table = report.markdown();
    println!("{table}");

    if let Some(path) = &args.doc {
        write_doc(path, &report, &table)?;
        println!("wrote the results into {}", path.display());
    }

    pool.close_idle();
    bound.drain();
    bound.wait_termination().await?;
    for backend in backends.into_iter().flatten() {
        backend.kill().await;
    }
    Ok(())
}

/// The endpoint `--kill` names, 0-based.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Index(usize),
    Busiest,
}

fn parse_victim(s: &str) -> Result<Victim, String> {
    match s {
        "busiest" => Ok(Victim::Busiest),
        "1" => Ok(Victim::Index(0)),
        "2" => Ok(Victim::Index(1)),
        "3" => Ok(Victim::Index(2)),
        _ => Err(format!("expected 1, 2, 3 or busiest, not {s:?}")),
    }
}

/// Scrapes `/metrics` once a second from `start` until told to stop, so the
/// per-second timeline can show when retries and ejections happened.
fn sampler(
    admin: SocketAddr,
    start: Instant,
    served: [Arc<AtomicU64>; 3],
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Vec<Sample>>) {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // A missed scrape only leaves a gap in the timeline.
                    let at = start.elapsed();
                    let counts = served.each_ref().map(|c| c.load(Ordering::Relaxed));
                    if let Ok(mut sample) = metrics::scrape(admin, at).await {
                        sample.served = counts;
                        samples.push(sample);
                    }
                }
                _ = &mut stopped => return samples,
            }
        }
    });
    (stop, task)
}

/// Replaces what is between the chaos markers in `path` with this run.
fn write_doc(path: &PathBuf, report: &Report, table: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(DOC_BEGIN), text.find(DOC_END)) else {
        bail!(
            "{} has no `{DOC_BEGIN}` ... `{DOC_END}` section to fill",
            path.display()
        );
    };
    if end < begin {
        bail!("{}: `{DOC_END}` comes before `{DOC_BEGIN}`", path.display());
    }
    let block = format!(
        "{DOC_BEGIN}\nMeasured {} on {}: {} req/s; `lb: {}`; healthy and down {} s each, recovered {} s; endpoint #{} killed.\n\n{table}{DOC_END}",
        today(),
        machine(),
        report.rate,
        report.lb,
        report.phase_secs,
        report.recovered_secs,
        report.killed,
    );
    let updated = format!("{}{block}{}", &text[..begin], &text[end + DOC_END.len()..]);
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(date unknown)".to_owned())
}

/// The CPU model and core count, from /proc/cpuinfo where there is one.
fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "an unknown CPU".to_owned());
    format!("{model}, {cores} cores")
}
