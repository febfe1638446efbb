//! Control-plane push benchmark: how long from a change in `skiff
//! control`'s directory until every connected client has ACKed it, with 1,
//! 100 and 1,000 clients, and the server's memory per connected client.
//!
//! The server runs in a child process (this binary again, `--serve`: the
//! same `skiff_control::server::start` that `skiff control` runs), so its
//! resident memory is its own; the parent holds the clients. Each client is
//! a lightweight ADS client on its own HTTP/2 connection, as a Skiff proxy
//! opens one: a delta stream (or SotW with `--sotw`) subscribing to every
//! listener and cluster and to the route configurations and endpoints they
//! name, ACKing every response at once.
//!
//! Each round rewrites one cluster's endpoints in the directory (written
//! beside it and renamed into place, as a ConfigMap update does) and times,
//! for every client, the moment it ACKs the endpoint update. Reported per
//! client count: p50, p99 and max over all clients and rounds, and the
//! server's resident memory per client (RSS with the clients connected and
//! synced, less RSS before they connected, divided by their number).
//!
//! ```text
//! bash bench/control.sh                      # 1, 100, 1000 clients, 20 rounds each
//! bash bench/control.sh --clients 1000 --rounds 5
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::mpsc;
use tokio::time::Instant;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

#[derive(Debug, Parser)]
#[command(
    name = "skiff-control-push",
    about = "Time from a change in skiff control's directory until every client ACKed it, and memory per client"
)]
struct Args {
    /// Client counts to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    clients: Vec<usize>,
    /// Changes timed per client count.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Clusters (each with a listener and a route table) in the directory.
    #[arg(long, default_value_t = 20)]
    services: usize,
    /// State-of-the-world streams instead of delta.
    #[arg(long)]
    sotw: bool,
    /// Only connect (HTTP/2, no stream) and report memory: how much of a
    /// client's cost is the connection itself.
    #[arg(long)]
    connect_only: bool,
    /// Internal: run the server on DIR, print its address, serve until stdin closes.
    #[arg(long, hide = true, num_args = 1)]
    serve: Option<PathBuf>,
}

/// The skiff binary's allocator: the server child is measured as `skiff
/// control` ships.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match &args.serve {
        Some(dir) => rt.block_on(serve(dir.clone())),
        None => rt.block_on(run(args)),
    }
}

/// The child: `skiff control` on DIR, its address on stdout.
async fn serve(dir: PathBuf) -> anyhow::Result<()> {
    let running = skiff_control::server::start(skiff_control::server::Options {
        dir,
        listen: "127.0.0.1:0".to_owned(),
        admin: "127.0.0.1:0".to_owned(),
        poll: skiff_control::server::POLL_INTERVAL,
        vars: skiff_control::Vars::process(),
    })
    .await?;
    println!("{}", running.xds);
    // Until the parent closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await? > 0 {}
    running.stop().await;
    Ok(())
}

fn directory(dir: &Path, services: usize, round: usize) -> anyhow::Result<()> {
    let mut text = String::from("listeners:\n");
    for i in 0..services {
        text.push_str(&format!(
            "  - {{ name: l{i}, address: 127.0.0.1:{}, routes: r{i} }}\n",
            20000 + i
        ));
    }
    text.push_str("routes:\n");
    for i in 0..services {
        text.push_str(&format!(
            "  r{i}:\n    - match: {{ path: {{ prefix: /api/ }} }}\n      cluster: c{i}\n      retry: {{ attempts: 2, on: [connect-failure, reset] }}\n    - cluster: c{i}\n"
        ));
    }
    text.push_str("clusters:\n");
    for i in 0..services {
        // Round N moves cluster c0's third endpoint.
        let moving = if i == 0 { 30000 + round } else { 9003 };
        text.push_str(&format!(
            "  c{i}:\n    circuit_breaker: {{ max_requests: 100 }}\n    endpoints: [10.0.{i}.1:9001, 10.0.{i}.2:9002, 10.0.{i}.3:{moving}]\n"
        ));
    }
    let tmp = dir.join(".mesh.yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join("mesh.yaml"))?;
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// What a client tells the bench: it ACKed an endpoint update (or, with
/// `round` 0, that it is synced).
struct Acked {
    at: Instant,
}

async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "skiff control push benchmark: {} services, {} rounds per client count, {} streams",
        args.services,
        args.rounds,
        if args.sotw { "SotW" } else { "delta" }
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>14} {:>12}",
        "clients", "p50 ms", "p99 ms", "max ms", "RSS/client KiB", "server RSS MiB"
    );
    for &n in &args.clients {
        one(n, &args).await?;
    }
    Ok(())
}

async fn one(n: usize, args: &Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("skiff-control-push-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    directory(&dir, args.services, 0)?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("no pid")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let addr: SocketAddr = lines.next_line().await?.context("server died")?.parse()?;
    let before = rss_kib(pid)?;

    if args.connect_only {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            // A request makes the connection real on both ends.
            let mut ads = AggregatedDiscoveryServiceClient::new(channel.clone());
            let _ = ads.delta_aggregated_resources(tokio_stream::empty()).await;
            held.push(channel);
        }
        let with = rss_kib(pid)?;
        println!(
            "{n:>8} connections only: {:.1} KiB per connection (server RSS {:.1} MiB)",
            with.saturating_sub(before) as f64 / n as f64,
            with as f64 / 1024.0
        );
        drop(child.stdin.take());
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Acked>();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let tx = tx.clone();
        let sotw = args.sotw;
        let names = args.services;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = client(addr, i, names, sotw, tx).await {
                eprintln!("client {i}: {e:#}");
            }
        }));
    }
    drop(tx);
    // Synced: every client has ACKed its first endpoints.
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .context("clients did not sync in 60 s")?
            .context("clients ended")?;
    }
    let with_clients = rss_kib(pid)?;

    let mut all: Vec<Duration> = Vec::with_capacity(n * args.rounds);
    for round in 1..=args.rounds {
        let t0 = Instant::now();
        directory(&dir, args.services, round)?;
        for _ in 0..n {
            let acked = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .context("a push took over 30 s")?
                .context("clients ended")?;
            all.push(acked.at.duration_since(t0));
        }
    }
    all.sort();
    let pick = |q: f64| all[((all.len() as f64 * q).ceil() as usize).clamp(1, all.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let per_client = with_clients.saturating_sub(before) as f64 / n as f64;
    println!(
        "{:>8} {:>10.1} {:>10.1} {:>10.1} {:>14.1} {:>12.1}",
        n,
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(pick(1.0)),
        per_client,
        with_clients as f64 / 1024.0
    );
    for t in tasks {
        t.abort();
    }
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One simulated client: subscribes like a Skiff proxy, ACKs everything,
/// and reports each endpoint response it ACKs.
async fn client(
    addr: SocketAddr,
    id: usize,
    services: usize,
    sotw: bool,
    tx: mpsc::UnboundedSender<Acked>,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let node = Some(Node {
        id: format!("sim-{id}"),
        ..Default::default()
    });
    let clusters: Vec<String> = (0..services).map(|i| format!("c{i}")).collect();
    let tables: Vec<String> = (0..services).map(|i| format!("r{i}")).collect();
    let (out, rx) = mpsc::channel(16);
    let rx = tokio_stream::wrappers::ReceiverStream::new(rx);
    if sotw {
        let first = [(CDS, vec![]), (LDS, vec![]), (EDS, clusters), (RDS, tables)];
        let (sender, rx2) = mpsc::channel::<DiscoveryRequest>(16);
        drop(out);
        for (i, (t, names)) in first.into_iter().enumerate() {
            sender
                .send(DiscoveryRequest {
                    node: if i == 0 { node.clone() } else { None },
                    type_url: t.to_owned(),
                    resource_names: names,
                    ..Default::default()
                })
                .await?;
        }
        let mut inbound = ads
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx2))
            .await?
            .into_inner();
        let mut names: std::collections::HashMap<String, Vec<String>> = Default::default();
        names.insert(
            EDS.to_owned(),
            (0..services).map(|i| format!("c{i}")).collect(),
        );
        names.insert(
            RDS.to_owned(),
            (0..services).map(|i| format!("r{i}")).collect(),
        );
        while let Some(r) = inbound.message().await? {
            sender
                .send(DiscoveryRequest {
                    version_info: r.version_info.clone(),
                    resource_names: names.get(&r.type_url).cloned().unwrap_or_default(),
                    type_url: r.type_url.clone(),
                    response_nonce: r.nonce.clone(),
                    ..Default::default()
                })
                .await?;
            if r.type_url == EDS && tx.send(Acked { at: Instant::now() }).is_err() {
                break;
            }
        }
        return Ok(());
    }
    let first = [(CDS, vec![]), (LDS, vec![]), (EDS, clusters), (RDS, tables)];
    for (i, (t, names)) in first.into_iter().enumerate() {
        out.send(DeltaDiscoveryRequest {
            node: if i == 0 { node.clone() } else { None },
            type_url: t.to_owned(),
            resource_names_subscribe: names,
            ..Default::default()
        })
        .await?;
    }
    let mut inbound = ads.delta_aggregated_resources(rx).await?.into_inner();
    let mut seen = BTreeSet::new();
    while let Some(r) = inbound.message().await? {
        out.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await?;
        seen.insert(r.type_url.clone());
        if r.type_url == EDS && tx.send(Acked { at: Instant::now() }).is_err() {
            break;
        }
    }
    if seen.is_empty() {
        bail!("the stream ended before any response");
    }
    Ok(())
}
