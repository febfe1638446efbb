//! Control-feed delta benchmark: how long a Skiff proxy holding N host
//! routes and N EDS clusters from a delta xDS stream takes to apply a change
//! to one cluster's endpoints.
//!
//! One process on loopback: two upstreams, a minimal delta ADS server that
//! serves the resources `skiff_control::xds::encode` makes of N services and
//! pushes exactly the changes this benchmark makes, and Skiff in-process
//! (`skiff::build_from` and `Bound::watch_feed`, what `skiff run` runs with
//! `control:` set).
//!
//! ```text
//! bash bench/xds_delta.sh                    # N = 10,000, 50 changes
//! bash bench/xds_delta.sh --services 1000
//! ```
//!
//! Each round of the first part sends one `ClusterLoadAssignment` (the
//! last service's endpoint, moved between the two upstreams) and times:
//! - **to ACK**: from the response leaving the server to the proxy's ACK of
//!   its nonce. The proxy ACKs only after the config holding the change is
//!   applied, so this is decode, validate and apply, plus one loopback trip.
//! - **to served**: from the response leaving the server until a request
//!   for that service is answered by the new endpoint.
//!
//! The second part changes one `Cluster`'s settings (its connect timeout)
//! each round, timed to the ACK.
#![forbid(unsafe_code)]

#[path = "../backend.rs"]
#[allow(dead_code)]
mod backend;
#[path = "../closed_loop.rs"]
#[allow(dead_code)]
mod closed_loop;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use skiff_control::xds::{self, Resources};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::closed_loop::percentile;

#[derive(Debug, Parser)]
#[command(
    name = "skiff-xds-delta",
    about = "Time for a proxy with N services from a delta xDS feed to apply a one-cluster endpoint change"
)]
struct Args {
    /// Host routes and EDS clusters served.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoint changes timed.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
}

/// The skiff binary's allocator: Skiff runs in this process, and is measured
/// as it ships.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    closed_loop::runtime()?.block_on(run(Args::parse()))
}

fn host(i: usize) -> String {
    format!("svc-{i}.ns.svc.cluster.local")
}

/// N services as a Skiff config: one listener, one route per host, one
/// cluster per route.
fn services(n: usize, listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<Resources> {
    let mut y = format!(
        "listeners:\n  - {{ name: main, address: \"{listen}\", routes: main }}\nroutes:\n  main:\n"
    );
    for i in 0..n {
        writeln!(
            y,
            "    - {{ name: r{i}, match: {{ host: {} }}, cluster: svc-{i} }}",
            host(i)
        )?;
    }
    y.push_str("clusters:\n");
    for i in 0..n {
        writeln!(y, "  svc-{i}: {{ endpoints: [\"{upstream}\"] }}")?;
    }
    let config =
        skiff_control::load_str(&y, "services.yaml").map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(xds::encode(&config))
}

/// A delta ADS server: answers subscriptions from `resources`, forwards
/// every ACK's nonce, and hands the bench the stream's sender for pushes.
struct Server {
    resources: Resources,
    nonce: AtomicU64,
    acks: mpsc::UnboundedSender<(String, Instant)>,
    push: Mutex<Option<mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>>>,
}

/// The tonic service: the server, shared with the bench.
struct Ads(Arc<Server>);

type Outbound<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Outbound<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Outbound<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        *self.0.push.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let server = self.0.clone();
        tokio::spawn(async move {
            let mut asked: BTreeSet<String> = BTreeSet::new();
            while let Ok(Some(req)) = inbound.message().await {
                if !req.response_nonce.is_empty() && req.error_detail.is_none() {
                    let _ = server
                        .acks
                        .send((req.response_nonce.clone(), Instant::now()));
                }
                if let Some(e) = &req.error_detail {
                    eprintln!("NACK: {}", e.message);
                }
                // Wildcard on the first request of a type without names.
                let first = asked.insert(req.type_url.clone());
                let wildcard = first && req.resource_names_subscribe.is_empty();
                if !wildcard && req.resource_names_subscribe.is_empty() {
                    continue;
                }
                let names: BTreeSet<&String> = req.resource_names_subscribe.iter().collect();
                let resources = server
                    .resources
                    .of_type(&req.type_url)
                    .into_iter()
                    .filter(|(n, _)| wildcard || names.contains(n))
                    .map(|(name, any)| Resource {
                        name,
                        version: "1".to_owned(),
                        resource: Some(any),
                        ..Default::default()
                    })
                    .collect();
                let rsp = server.response(&req.type_url, resources);
                if tx.send(Ok(rsp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl Server {
    fn response(&self, type_url: &str, resources: Vec<Resource>) -> DeltaDiscoveryResponse {
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed).to_string();
        DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            system_version_info: nonce.clone(),
            nonce,
            resources,
            ..Default::default()
        }
    }
}

/// `cla` with every endpoint's port set to `port`.
fn moved(mut cla: ClusterLoadAssignment, port: u16) -> ClusterLoadAssignment {
    for lb in cla.endpoints.iter_mut().flat_map(|l| &mut l.lb_endpoints) {
        if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &mut lb.host_identifier
            && let Some(address::Address::SocketAddress(sa)) =
                e.address.as_mut().and_then(|a| a.address.as_mut())
        {
            sa.port_specifier = Some(socket_address::PortSpecifier::PortValue(port.into()));
        }
    }
    cla
}

/// A keep-alive HTTP/1.1 client connection.
struct Conn(hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>);

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Self(send))
    }

    async fn get(&mut self, host: &str) -> anyhow::Result<()> {
        self.0.ready().await?;
        let req = http::Request::get("/")
            .header("host", host)
            .body(Empty::new())?;
        let rsp = self.0.send_request(req).await?;
        let ok = rsp.status().is_success();
        rsp.into_body().collect().await?;
        anyhow::ensure!(ok, "not a 2xx");
        Ok(())
    }
}

/// Pushes `rsp` and waits for the proxy's ACK of it: the time between.
async fn round_trip(
    push: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    acks: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    rsp: DeltaDiscoveryResponse,
) -> anyhow::Result<Duration> {
    let nonce = rsp.nonce.clone();
    let sent = Instant::now();
    push.send(Ok(rsp)).await.context("the stream closed")?;
    loop {
        let (got, at) = tokio::time::timeout(Duration::from_secs(30), acks.recv())
            .await
            .context("no ACK within 30 s")?
            .context("the server stopped")?;
        if got == nonce {
            return Ok(at - sent);
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.services.max(1);
    let counts = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let upstreams = [
        backend::Backend::start("127.0.0.1:0".parse()?, counts[0].clone()).await?,
        backend::Backend::start("127.0.0.1:0".parse()?, counts[1].clone()).await?,
    ];
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let resources = services(n, listen, upstreams[0].addr())?;
    let last = format!("svc-{}", n - 1);
    let cluster = resources
        .clusters
        .get(&last)
        .cloned()
        .context("the last service's cluster")?;
    let cla = resources
        .endpoints
        .get(&last)
        .cloned()
        .context("the last service's endpoints")?;

    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let server = Arc::new(Server {
        resources,
        nonce: AtomicU64::new(1),
        acks: acks_tx,
        push: Mutex::new(None),
    });
    let ads = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ads_addr = ads.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Ads(server.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(ads)),
    );

    let base = format!(
        "admin: {{ address: 127.0.0.1:0 }}\ncontrol: {{ address: \"{ads_addr}\", node: bench }}\n"
    );
    let snapshot = skiff_control::Snapshot {
        version: 1,
        source: "bench".to_owned(),
        config: skiff_control::load_str(&base, "base.yaml").map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let started = Instant::now();
    let mut bound = skiff::build_from(snapshot).await?;
    bound.watch_feed();
    let feed = bound.feed().context("the control feed")?;
    // Applied, and every type ACKed: the client has finished with the
    // first config before the first change is timed.
    feed.wait_for(|s| s.applied >= 1 && s.versions.len() == xds::TYPES.len())
        .await;
    println!(
        "{n} services from the feed, applied in {}",
        ms(started.elapsed())
    );
    let mut conn = Conn::open(listen).await?;
    let target = host(n - 1);
    conn.get(&target).await?;
    anyhow::ensure!(
        counts[0].load(Ordering::Relaxed) == 1,
        "the first request did not reach the first upstream"
    );
    while acks.try_recv().is_ok() {}

    let push = server
        .push
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .context("no stream open")?;
    let (mut acked, mut served) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let to = (round + 1) % 2;
        let moved = moved(cla.clone(), upstreams[to].addr().port());
        let rsp = server.response(
            xds::ENDPOINT,
            vec![Resource {
                name: last.clone(),
                version: format!("r{round}"),
                resource: Some(envoy_types::util::pack_any(moved)),
                ..Default::default()
            }],
        );
        let before = counts[to].load(Ordering::Relaxed);
        let sent = Instant::now();
        acked.push(round_trip(&push, &mut acks, rsp).await?);
        loop {
            conn.get(&target).await?;
            if counts[to].load(Ordering::Relaxed) > before {
                served.push(sent.elapsed());
                break;
            }
            anyhow::ensure!(
                sent.elapsed() < Duration::from_secs(30),
                "round {round} never served"
            );
        }
    }
    // One cluster's settings: its connect timeout, 1 s and 2 s in turn.
    let mut settings = Vec::new();
    for round in 0..args.rounds {
        let mut c = cluster.clone();
        c.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 1 + (round % 2) as i64,
            nanos: 0,
        });
        let rsp = server.response(
            xds::CLUSTER,
            vec![Resource {
                name: last.clone(),
                version: format!("c{round}"),
                resource: Some(envoy_types::util::pack_any(c)),
                ..Default::default()
            }],
        );
        settings.push(round_trip(&push, &mut acks, rsp).await?);
    }
    acked.sort_unstable();
    served.sort_unstable();
    settings.sort_unstable();
    println!(
        "\n## One-cluster deltas at {n} services ({} rounds each)\n",
        args.rounds
    );
    println!("| | median | p99 | max |\n|---|---:|---:|---:|");
    for (what, d) in [
        ("endpoints (EDS): to ACK", &acked),
        ("endpoints (EDS): to served", &served),
        ("settings (CDS): to ACK", &settings),
    ] {
        println!(
            "| {what} | {} | {} | {} |",
            ms(percentile(d, 0.5)),
            ms(percentile(d, 0.99)),
            ms(*d.last().unwrap_or(&Duration::ZERO))
        );
    }
    bound.drain();
    bound.wait_termination().await?;
    for u in upstreams {
        u.kill().await;
    }
    Ok(())
}
