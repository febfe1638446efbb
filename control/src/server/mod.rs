//! `skiff control`: a control plane that serves a directory of Skiff YAML
//! over xDS v3 ADS, to Skiff proxies, Envoy and proxyless gRPC clients.
//!
//! How a change travels: the directory watch ([`watch`]) reads the whole
//! directory again ([`catalog::read`]), validates it, and on success
//! encodes each node's config into versioned resources ([`served`]) and
//! publishes them on a `watch` channel. Every ADS stream ([`ads`]) wakes,
//! diffs against what its client holds, and sends what changed. A change
//! that does not validate is logged (`FILE:LINE:COL`), shown in `/status`,
//! and not published: clients keep what they have.
//!
//! The server holds no state of its own beyond the directory: versions are
//! content hashes, so replicas agree, and a client may move between them.

pub mod ads;
pub mod catalog;
pub mod served;
pub mod status;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::ads::{Ads, Published};
use self::catalog::Catalog;
use self::served::Served;
use self::status::{Registry, lock, now};
use crate::Vars;
use crate::source::file::{notifications_in, settle};

/// How often the directory is read even without a notification.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// What `skiff control` is told on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// The ADS address (`--listen`).
    pub listen: String,
    /// The admin address (`--admin`).
    pub admin: String,
    pub poll: Duration,
    pub vars: Vars,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind the {what} address {addr}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// A running control plane.
pub struct Running {
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    pub registry: Arc<Registry>,
    stop: tokio_watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops serving: streams end, clients reconnect elsewhere.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Binds both addresses, reads the directory, and serves until stopped.
/// A directory that does not validate at start is served as nothing (and
/// `/ready` says 503) until it does.
pub async fn start(options: Options) -> Result<Running, ServerError> {
    let bind = |what: &'static str, addr: String| async move {
        TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Bind { what, addr, source })
    };
    let xds_socket = bind("listen", options.listen.clone()).await?;
    let admin_socket = bind("admin", options.admin.clone()).await?;
    let local = |s: &TcpListener, what, addr: &str| {
        s.local_addr().map_err(|source| ServerError::Bind {
            what,
            addr: addr.to_owned(),
            source,
        })
    };
    let xds = local(&xds_socket, "listen", &options.listen)?;
    let admin = local(&admin_socket, "admin", &options.admin)?;

    let registry = Arc::new(Registry::default());
    let (publish, published) = tokio_watch::channel(Arc::new(Published::default()));
    let (stop, stopped) = tokio_watch::channel(false);

    // The first read before serving: a client that connects at once gets
    // the directory, not an empty config.
    let mut current = None;
    reload(&options, &registry, &publish, &mut current);

    let watcher = tokio::spawn(watch(options.clone(), registry.clone(), publish, current));
    let service = AggregatedDiscoveryServiceServer::new(Ads {
        published,
        registry: registry.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE);
    let mut until = stopped.clone();
    let grpc = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(xds_socket).with_nodelay(Some(true)),
                async move {
                    let _ = until.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = served {
            warn!(error = %e, "the ADS server stopped");
        }
    });
    let admin_task = tokio::spawn(admin_http::run(admin_socket, registry.clone(), stopped));
    info!(%xds, %admin, dir = %options.dir.display(), "control plane serving");
    Ok(Running {
        xds,
        admin,
        registry,
        stop,
        tasks: vec![watcher, grpc, admin_task],
    })
}

/// Requests larger than this are refused by the gRPC layer: a discovery
/// request is a few names, and a hostile client must not make the server
/// buffer megabytes.
const MAX_MESSAGE: usize = 1024 * 1024;

/// Reads the directory and publishes it if it is valid and new.
fn reload(
    options: &Options,
    registry: &Registry,
    publish: &tokio_watch::Sender<Arc<Published>>,
    current: &mut Option<Catalog>,
) {
    match catalog::read(&options.dir, &options.vars) {
        Ok(catalog) => {
            lock(&registry.catalog).errors.clear();
            if current.as_ref() == Some(&catalog) {
                return;
            }
            let version = publish.borrow().version + 1;
            let published = Published {
                version,
                at: Some(Instant::now()),
                shared: Served::new(&catalog.shared),
                nodes: catalog
                    .nodes
                    .iter()
                    .map(|(id, c)| (id.clone(), Served::new(c)))
                    .collect(),
            };
            info!(
                version,
                listeners = catalog.shared.listeners.len(),
                routes = catalog.shared.routes.len(),
                clusters = catalog.shared.clusters.len(),
                nodes = catalog.nodes.len(),
                "serving the directory"
            );
            publish.send_replace(Arc::new(published));
            *lock(&registry.catalog) = status::CatalogStatus {
                version,
                loaded_at: now(),
                errors: Vec::new(),
            };
            *current = Some(catalog);
            registry.touch();
        }
        Err(errors) => {
            let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            let mut status = lock(&registry.catalog);
            if status.errors == lines {
                return; // Said already.
            }
            registry
                .metrics
                .rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for line in &lines {
                warn!(problem = %line, "directory change refused; clients keep the last good config");
            }
            status.errors = lines;
            drop(status);
            registry.touch();
        }
    }
}

/// Reads the directory on every change (settled) and every poll.
async fn watch(
    options: Options,
    registry: Arc<Registry>,
    publish: tokio_watch::Sender<Arc<Published>>,
    mut current: Option<Catalog>,
) {
    let (mut events, _watcher) =
        notifications_in(options.dir.clone(), notify::RecursiveMode::Recursive);
    let mut tick = tokio::time::interval(options.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // Read already.
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = events.recv() => settle(&mut events).await,
        }
        // Reading parses YAML: off the async workers.
        let (o, r, p) = (options.clone(), registry.clone(), publish.clone());
        let mut c = current.take();
        current = tokio::task::spawn_blocking(move || {
            reload(&o, &r, &p, &mut c);
            c
        })
        .await
        .unwrap_or_default();
    }
}

/// The admin port: `/ready`, `/status`, `/metrics`.
mod admin_http {
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Request, Response, StatusCode};
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    use super::status::{Registry, lock};

    pub async fn run(
        socket: TcpListener,
        registry: Arc<Registry>,
        mut stopped: watch::Receiver<bool>,
    ) {
        loop {
            let (stream, _) = tokio::select! {
                accepted = socket.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
                _ = stopped.wait_for(|s| *s) => return,
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &registry)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
        let (status, kind, body) = match req.uri().path() {
            "/ready" => match lock(&registry.catalog).version {
                0 => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no valid directory read yet\n".to_owned(),
                ),
                _ => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            },
            "/live" => (StatusCode::OK, "text/plain", "live\n".to_owned()),
            "/status" => (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&registry.status()).unwrap_or_default(),
            ),
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                registry.metrics.render(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /ready, /status or /metrics\n".to_owned(),
            ),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    }
}
