//! Closed-loop HTTP/1.1 load for the in-process benchmarks (`skiff-reload`,
//! `skiff-telemetry`): keep-alive connections sending `GET /` back to back,
//! on a two-worker runtime, the CPU budget of a sidecar on this machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// The runtime every in-process benchmark runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn(hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>);

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Self(send))
    }

    /// Sends `GET /`; the `x-version` it came back with, if it succeeded.
    pub async fn get(&mut self) -> anyhow::Result<Option<u64>> {
        self.0.ready().await?;
        let req = http::Request::get("/")
            .header("host", "bench")
            .body(Empty::new())?;
        let rsp = self.0.send_request(req).await?;
        let ok = rsp.status().is_success();
        let version = rsp
            .headers()
            .get("x-version")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        rsp.into_body().collect().await?;
        anyhow::ensure!(ok, "not a 2xx");
        Ok(version)
    }
}

/// What a load run saw.
pub struct Load {
    /// Latencies of the requests that succeeded, sorted.
    pub latencies: Vec<Duration>,
    pub failures: u64,
}

/// `connections` closed-loop clients against `addr` while `meanwhile`
/// runs (it decides how long the run lasts, and what changes during it).
pub async fn run<T>(
    addr: SocketAddr,
    connections: usize,
    meanwhile: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(Load, T)> {
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (stop, failures) = (stop.clone(), failures.clone());
        let mut conn = Conn::open(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match conn.get().await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let outcome = meanwhile.await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    latencies.sort_unstable();
    let load = Load {
        latencies,
        failures: failures.load(Ordering::Relaxed),
    };
    Ok((load, outcome?))
}

/// The `p` quantile of sorted `durations`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
