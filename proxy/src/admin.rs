//! The admin server: readiness, liveness, metrics, config and cluster state.
//!
//! `/config` shows the whole effective config, so it answers only callers on
//! loopback, even when the admin address is opened up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use skiff_filters::Body;
use skiff_filters::telemetry::Format;
use tokio::net::TcpListener;
use tracing::debug;

use crate::app::Shared;

/// Every path the admin server answers, with what it is for: the 404 lists
/// them, and `docs/reference/admin.md` is generated from them.
pub const ENDPOINTS: [(&str, &str); 9] = [
    (
        "/",
        "A live page for people: listeners, routes with the last minute's rate, success and p50/p99/p99.9, clusters and their endpoints with health, ejection, in-flight requests and EWMA, refreshed every second from `/config`, `/stats` and `/clusters`. One HTML file, no external script.",
    ),
    (
        "/stats",
        "JSON: per route and cluster over the last minute, `requests`, `rate_per_second`, `success` (no 5xx, no gRPC server error) and exact `p50_ms`, `p90_ms`, `p99_ms`, `p999_ms` (HDR histograms, 1% precision).",
    ),
    (
        "/ready",
        "200 `ready` once every listener is bound and the first config is applied (with `control:`, the first complete config from the control plane; it stays 200 while the control plane is away); 503 `not ready` before that and while draining. For readiness probes and scripts.",
    ),
    (
        "/live",
        "200 `live` while the process runs. For liveness probes.",
    ),
    (
        "/metrics",
        "Every `skiff_*` metric (docs/reference/metrics.md): Prometheus text (`text/plain; version=0.0.4`) by default, OpenMetrics (`application/openmetrics-text; version=1.0.0`) when `Accept` asks for it.",
    ),
    (
        "/config",
        "The running config as JSON: `version`, `source`, `applied_at` (Unix seconds), `config` (defaults filled in), and `last_rejection`: the last config a source offered that was not applied (`source`, `at`, `problems`), or null; with `control:`, `control`: the feed's address, node, protocol, whether it is connected, each type's version applied and ACKed, and the last NACK with its text. Loopback callers only (403 otherwise): it may hold header values set from `${VAR}`.",
    ),
    (
        "/logging",
        "`POST /logging?level=FILTER` sets the log filter while Skiff runs (`debug`, `skiff=debug,hyper=info`; as `--log-level` takes). Loopback callers only (403 otherwise); 503 when the process's logging is not Skiff's own (an embedder's).",
    ),
    (
        "/shutdown",
        "`POST /shutdown`: shut down as on SIGTERM: `/ready` turns 503, inbound listeners drain while outbound ones keep serving until the app stops calling out (1 s without an outbound connection) or `drain_timeout`, then exit. For Jobs whose app has finished. Loopback callers only (403 otherwise).",
    ),
    (
        "/clusters",
        "Each cluster's endpoints as JSON: address, weight, health, outlier ejection, requests in flight and latency EWMA.",
    ),
];

/// Where `skiff inject` points the app's HTTP probes: `/app-health/CONTAINER/KIND`.
pub const APP_HEALTH: &str = "/app-health/";

/// The environment variable `skiff inject` sets on the sidecar: the app's
/// original HTTP probes, as JSON `{"/app-health/app/readiness": {"port":
/// 8080, "path": "/healthz"}}`.
pub const APP_PROBES_ENV: &str = "SKIFF_APP_PROBES";

/// One of the app's own probes.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AppProbe {
    pub port: u16,
    #[serde(default = "root_path")]
    pub path: String,
}

fn root_path() -> String {
    "/".to_owned()
}

/// The app's probes, read once from [`APP_PROBES_ENV`] (empty without it,
/// or when it does not parse: the probes then fail, which says so).
fn app_probes() -> &'static std::collections::HashMap<String, AppProbe> {
    static PROBES: std::sync::OnceLock<std::collections::HashMap<String, AppProbe>> =
        std::sync::OnceLock::new();
    PROBES.get_or_init(|| {
        std::env::var(APP_PROBES_ENV)
            .ok()
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default()
    })
}

/// An app probe, asked of the app on loopback (not captured: the proxy's
/// own connection), with the kubelet's rule: 200 to 399 is healthy.
async fn app_health(probe: AppProbe) -> Response<Body> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The path goes into a request line: no spaces or control characters.
    if !probe.path.starts_with('/') || probe.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the app's probe path is not a plain path\n",
        );
    }
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", probe.port)).await?;
        let req = format!(
            "GET {} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nuser-agent: skiff-probe\r\nconnection: close\r\n\r\n",
            probe.path, probe.port
        );
        s.write_all(req.as_bytes()).await?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await?;
        std::io::Result::Ok(
            std::str::from_utf8(&head[9..12])
                .ok()
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0),
        )
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), ask).await {
        Ok(Ok(code)) if (200..400).contains(&code) => {
            text(StatusCode::OK, "the app's probe passed\n")
        }
        Ok(Ok(code)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the app answered its probe with {code}\n"),
        ),
        Ok(Err(e)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the app's probe failed: {e}\n"),
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the app's probe timed out\n",
        ),
    }
}

/// The admin page (`GET /`): built into the binary.
const PAGE: &str = include_str!("admin.html");

pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // As in the listeners: don't spin while accept keeps failing.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                // The app's probes, rewritten by `skiff inject`: answered by
                // asking the app itself, which takes a moment.
                let probe = req
                    .uri()
                    .path()
                    .starts_with(APP_HEALTH)
                    .then(|| app_probes().get(req.uri().path()).cloned());
                let rsp = match &probe {
                    None => Some(answer(&shared, peer, &req)),
                    Some(None) => Some(text(StatusCode::NOT_FOUND, "no such app probe\n")),
                    Some(Some(_)) => None,
                };
                async move {
                    let rsp = match (rsp, probe) {
                        (Some(rsp), _) => rsp,
                        (None, Some(Some(target))) => app_health(target).await,
                        (None, _) => text(StatusCode::NOT_FOUND, "no such app probe\n"),
                    };
                    Ok::<_, std::convert::Infallible>(rsp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn answer(shared: &Shared, peer: SocketAddr, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/logging" {
        return logging(peer, req);
    }
    if req.uri().path() == "/shutdown" {
        if !peer.ip().is_loopback() {
            return text(
                StatusCode::FORBIDDEN,
                "/shutdown answers loopback callers only\n",
            );
        }
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "POST /shutdown\n");
        }
        // notify_one keeps a permit: a request before `skiff run` waits
        // still counts.
        shared.shutdown.notify_one();
        return text(
            StatusCode::OK,
            "shutting down: inbound drains, then outbound\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/" => {
            let mut rsp = Response::new(Body::full(PAGE));
            rsp.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            rsp
        }
        "/stats" => json_rsp(&json!({
            "window_seconds": skiff_filters::stats::WINDOW.as_secs(),
            "routes": shared.metrics.stats.rows(),
        })),
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if shared.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let mut rsp = Response::new(Body::full(shared.metrics.encode_as(format)));
            rsp.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(format.content_type()),
            );
            rsp
        }
        "/config" if !peer.ip().is_loopback() => text(
            StatusCode::FORBIDDEN,
            "/config answers loopback callers only\n",
        ),
        "/config" => {
            let runtime = shared.runtime.load();
            let s = &runtime.snapshot;
            let applied_at = runtime
                .applied_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let rejection = shared
                .last_rejection
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            json_rsp(&json!({
                "version": s.version,
                "source": s.source,
                "applied_at": applied_at,
                "config": s.config,
                "last_rejection": rejection,
                "control": shared.feed.get().map(|f| f.get()),
            }))
        }
        "/clusters" => {
            let runtime = shared.runtime.load();
            let now = tokio::time::Instant::now();
            let clusters: Vec<_> = runtime
                .clusters
                .iter()
                .map(|c| {
                    let state = c.state();
                    let endpoints: Vec<_> = state
                        .set
                        .endpoints
                        .iter()
                        .zip(&state.set.weights)
                        .map(|(e, weight)| {
                            let s = &e.stats;
                            json!({
                                "address": e.address,
                                "weight": weight,
                                "healthy": s.healthy(),
                                "ejected": s.outlier.is_ejected(now),
                                "times_ejected": s.outlier.times_ejected(),
                                "in_flight": s.in_flight(),
                                "ewma_ms": s.ewma(now).as_secs_f64() * 1000.0,
                            })
                        })
                        .collect();
                    json!({"name": &*c.name, "endpoints": endpoints})
                })
                .collect();
            json_rsp(&json!({ "clusters": clusters }))
        }
        _ => {
            let paths: Vec<&str> = ENDPOINTS.iter().map(|(path, _)| *path).collect();
            let body = format!("not found: try {}\n", paths.join(" "));
            let mut rsp = Response::new(Body::full(body));
            *rsp.status_mut() = StatusCode::NOT_FOUND;
            rsp
        }
    }
}

/// `POST /logging?level=FILTER`: sets the log filter (`debug`,
/// `skiff=debug,hyper=info`, ...) until the next change or restart.
/// Loopback callers only: debug logs may carry more than operators meant
/// to publish.
fn logging(peer: SocketAddr, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST /logging?level=FILTER\n",
        );
    }
    if !peer.ip().is_loopback() {
        return text(
            StatusCode::FORBIDDEN,
            "/logging answers loopback callers only\n",
        );
    }
    let level = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("level="))
            .map(percent_decode)
    });
    let Some(level) = level.filter(|l| !l.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "POST /logging?level=FILTER\n");
    };
    match crate::logging::set_level(&level) {
        Ok(()) => {
            tracing::info!(%level, "log level changed");
            owned_text(StatusCode::OK, format!("log level: {level}\n"))
        }
        Err(e @ crate::logging::LevelError::NotInstalled) => {
            owned_text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
        Err(e) => owned_text(
            StatusCode::BAD_REQUEST,
            format!("invalid level {level:?}: {e}\n"),
        ),
    }
}

/// `%2C` → `,` and friends, for a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn owned_text(status: StatusCode, body: String) -> Response<Body> {
    let mut rsp = Response::new(Body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut rsp = Response::new(Body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

fn json_rsp(v: &serde_json::Value) -> Response<Body> {
    let mut rsp = Response::new(Body::full(v.to_string()));
    rsp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}
