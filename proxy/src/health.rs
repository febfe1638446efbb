//! Active health checks (`health_check:`): probe every endpoint on an
//! interval and mark it healthy or unhealthy after enough results in a row.
//!
//! HTTP clusters get `GET path` and count any 2xx as a pass. HTTP/2 clusters
//! speak the gRPC health protocol (`grpc.health.v1.Health/Check`, empty
//! service name) and pass on `SERVING`. Probes go through the cluster's own
//! connect path (so TLS origination applies to them too) on a connection of
//! their own, so a probe never queues behind traffic.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, TE};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_control::model::{ClusterProtocol, HealthCheck};
use skiff_filters::classify;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::cluster::{Cluster, Endpoint, Settings};

/// A health check's settings with defaults applied (Envoy-like).
#[derive(Debug, Clone)]
pub struct Probe {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// gRPC health protocol instead of `GET path`.
    pub grpc: bool,
}

impl Probe {
    pub fn from_config(h: &HealthCheck, protocol: ClusterProtocol) -> Self {
        Self {
            path: h.path.clone().unwrap_or_else(|| "/healthz".to_owned()),
            interval: h.interval.map_or(Duration::from_secs(5), |d| d.get()),
            timeout: h.timeout.map_or(Duration::from_secs(1), |d| d.get()),
            unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3).max(1),
            healthy_threshold: h.healthy_threshold.unwrap_or(1).max(1),
            grpc: protocol == ClusterProtocol::Http2,
        }
    }
}

/// Starts one probing task per endpoint. The tasks hold the cluster weakly
/// and stop once a config swap drops it; the handles let the caller stop
/// them sooner.
/// Probes every endpoint of `cluster` each interval, whatever its endpoint
/// set is by then: endpoints added later are probed from the next round,
/// removed ones are forgotten. One task per cluster, kept across config
/// swaps that leave its `health_check` alone (`cluster::Clusters::commit`).
pub fn spawn(cluster: &Arc<Cluster>, probe: Probe) -> AbortHandle {
    tokio::spawn(run(Arc::downgrade(cluster), probe)).abort_handle()
}

/// Results in a row, per endpoint.
#[derive(Default, Clone, Copy)]
struct Streak {
    passes: u32,
    fails: u32,
}

async fn run(cluster: Weak<Cluster>, probe: Probe) {
    let mut streaks: HashMap<usize, Streak> = HashMap::new();
    let mut tick = tokio::time::interval(probe.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        let state = c.state();
        let results = futures_util::future::join_all(state.set.endpoints.iter().map(|ep| {
            let settings = &state.settings;
            let probe = &probe;
            async move {
                let result = tokio::time::timeout(probe.timeout, check(settings, ep, probe)).await;
                (ep, result)
            }
        }))
        .await;
        streaks.retain(|id, _| state.set.endpoints.iter().any(|e| e.id() == *id));
        for (ep, result) in results {
            let streak = streaks.entry(ep.id()).or_default();
            let ok = matches!(result, Ok(Ok(())));
            if ok {
                streak.passes += 1;
                streak.fails = 0;
            } else {
                streak.fails += 1;
                streak.passes = 0;
            }
            let healthy = ep.stats.healthy();
            if !healthy && streak.passes >= probe.healthy_threshold {
                info!(cluster = %c.name, endpoint = %ep.address, "health check passed: endpoint healthy");
                ep.stats.set_healthy(true);
            } else if healthy && streak.fails >= probe.unhealthy_threshold {
                let why = match result {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {:?}", probe.timeout),
                };
                warn!(cluster = %c.name, endpoint = %ep.address, %why, "health check failed: endpoint unhealthy");
                ep.stats.set_healthy(false);
            }
        }
    }
}

async fn check(c: &Settings, ep: &Endpoint, probe: &Probe) -> Result<(), String> {
    let io = TokioIo::new(c.connect(ep).await.map_err(|e| e.to_string())?);
    let host = HeaderValue::from_str(&ep.address).map_err(|e| e.to_string())?;
    if probe.grpc {
        let (mut send, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        // An empty HealthCheckRequest: uncompressed, zero-length message.
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/grpc.health.v1.Health/Check", ep.address))
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .map_err(|e| e.to_string())?;
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let head_status = classify::grpc_status(rsp.headers());
        let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
        let status = head_status.or_else(|| body.trailers().and_then(classify::grpc_status));
        // HealthCheckResponse { status: SERVING (1) } is field 1, varint 1.
        match (status, body.to_bytes().get(5..)) {
            (Some(0), Some([0x08, 0x01])) => Ok(()),
            (Some(0), _) => Err("gRPC health: not SERVING".to_owned()),
            (s, _) => Err(format!("gRPC health: grpc-status {s:?}")),
        }
    } else {
        let (mut send, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(probe.path.as_str())
            .header(HOST, host)
            .header("user-agent", "skiff-health-check")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if rsp.status().is_success() {
            Ok(())
        } else {
            Err(format!("GET {} answered {}", probe.path, rsp.status()))
        }
    }
}
