//! Builds a running proxy from a config: binds every listener and the admin
//! server, and returns their addresses so tests can bind port 0 and run the
//! real proxy in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use skiff_control::model::{Listener, ListenerProtocol, TlsMode};
use skiff_control::source::{Delivery, Outcome, Update};
use skiff_control::{Config, Snapshot};
use skiff_filters::telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cluster::Clusters;
use crate::listener::{self, Serve};
use crate::runtime::{CompileError, Runtime};
use crate::server::{Handler, ListenerCtx};
use crate::shutdown::Signal;
use crate::tls::{self, Identity, IdentityError, Inbound};
use crate::{admin, protocol};

/// State every connection and the admin server share.
pub struct Shared {
    /// The current compiled config; swapped whole when a new one is applied.
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    /// `/ready`: set once every listener is bound, cleared when draining.
    pub ready: AtomicBool,
    /// This workload's mTLS identity (`identity:`), loaded once at build and
    /// reloaded in place when its files change; compile new runtimes with it.
    pub identity: Option<Arc<Identity>>,
    /// The budget of `warn` lines for answers Skiff makes itself.
    pub errors: crate::error_log::ErrorLog,
    /// Clusters and endpoints: they outlive runtimes.
    pub clusters: Clusters,
}

impl Shared {
    /// Applies a new config while traffic flows: routes, clusters, filters
    /// and authorization change at once for new requests; requests in flight
    /// finish on the config they started with. Endpoints that stay keep their
    /// balancing and ejection state. What is fixed at start (listeners, the
    /// admin address, `identity`, `runtime`) cannot change this way: such a
    /// config is refused whole, since applying half of it could leave a
    /// listener pointing at a route table that is gone.
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), CompileError> {
        let current = self.runtime.load();
        let (old, new) = (&current.snapshot.config, &snapshot.config);
        let fixed = [
            ("listeners", old.listeners != new.listeners),
            ("admin", old.admin != new.admin),
            ("identity", old.identity != new.identity),
            ("runtime", old.runtime != new.runtime),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Err(CompileError::NeedsRestart { key });
        }
        let plan = self
            .clusters
            .plan(&snapshot.config, &self.metrics, self.identity.as_ref());
        let next = Runtime::compile(Arc::new(snapshot), &self.metrics, &plan, Some(&current))?;
        let version = next.snapshot.version;
        self.clusters.commit(plan);
        self.runtime.store(Arc::new(next));
        info!(version, "config applied");
        Ok(())
    }
}

/// Why a config could not be turned into a running proxy.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    // The cause is the error's source, which `{:#}` prints once after this.
    #[error("{what}: cannot bind {addr}")]
    Bind {
        what: String,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("listener {listener}: tls.mode {mode:?} needs `identity:` (cert, key, trust_bundle)")]
    NoIdentity { listener: String, mode: TlsMode },
    #[error("listener {listener}: cannot set up TLS")]
    Tls {
        listener: String,
        source: rustls::Error,
    },
}

/// A running proxy: its bound addresses and its shutdown handle.
pub struct Bound {
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
    shared: Arc<Shared>,
    signal: Signal,
    drain_timeout: Duration,
    admin_task: JoinHandle<()>,
    /// Polls the identity files for rotation; stopped with the proxy.
    reloader: Option<JoinHandle<()>>,
    /// Config sources (the file watcher); stopped with the proxy.
    background: Vec<JoinHandle<()>>,
}

impl Bound {
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Reads the identity files now, as the periodic poll does: `Ok(true)`
    /// when new material is in use, `Ok(false)` when nothing changed or
    /// there is no identity. On an error the previous material stays.
    /// Lets tests rotate deterministically instead of waiting for a poll.
    pub fn reload_identity(&self) -> Result<bool, IdentityError> {
        match &self.shared.identity {
            Some(identity) => identity.reload(),
            None => Ok(false),
        }
    }

    /// Applies a new config while traffic flows (see `Shared::apply`).
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), CompileError> {
        self.shared.apply(snapshot)
    }

    /// Applies every valid change of the config file at `path` (what `skiff
    /// run -c FILE` does), counting outcomes in `skiff_config_updates_total`.
    /// An invalid change is logged, problem by problem, and the last good
    /// config stays. Stops with the proxy.
    pub fn watch_file(
        &mut self,
        path: std::path::PathBuf,
        interval: Duration,
        vars: skiff_control::Vars,
    ) {
        let current = self.shared.runtime.load().snapshot.clone();
        let (mut updates, poller) =
            skiff_control::source::file::watch(path, &current, interval, vars);
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            while let Some(Delivery { update, reply }) = updates.recv().await {
                let outcome = match update {
                    Update::Valid(snapshot) => {
                        let source = snapshot.source.clone();
                        match shared.apply(*snapshot) {
                            Ok(()) => Outcome::Applied,
                            Err(e) => {
                                warn!(%source, error = %e, "config change refused; keeping the last good config");
                                Outcome::Rejected(vec![e.to_string()])
                            }
                        }
                    }
                    Update::Invalid(errors) => {
                        for e in &errors.0 {
                            warn!(problem = %e, "config change refused; keeping the last good config");
                        }
                        Outcome::Rejected(errors.0.iter().map(ToString::to_string).collect())
                    }
                };
                let result = match outcome {
                    Outcome::Applied => "applied",
                    Outcome::Rejected(_) => "rejected",
                };
                shared.metrics.config_update("file", result);
                reply.send(outcome);
            }
            poller.abort();
        });
        self.background.push(task);
    }

    /// Starts a graceful drain, as SIGTERM does: `/ready` turns 503, the
    /// listeners close, open connections are asked to finish.
    pub fn drain(&self) {
        self.shared.ready.store(false, Ordering::Release);
        self.signal.drain();
    }

    /// Resolves once a drain has started and every connection has finished,
    /// or the drain timeout has passed.
    pub async fn wait_termination(mut self) -> Result<(), BuildError> {
        let timeout = self.drain_timeout;
        if tokio::time::timeout(timeout, self.signal.drained())
            .await
            .is_err()
        {
            warn!(
                ?timeout,
                "drain timeout passed: closing the connections still open"
            );
            self.signal.terminate();
            // Connection tasks end at once on `terminated`; wait so callers
            // see every connection closed when this returns.
            self.signal.drained().await;
        } else {
            info!("drained");
        }
        self.admin_task.abort();
        if let Some(reloader) = &self.reloader {
            reloader.abort();
        }
        for task in &self.background {
            task.abort();
        }
        Ok(())
    }
}

/// Builds from a config with no file behind it (tests, the demo).
pub async fn build(config: Config) -> Result<Bound, BuildError> {
    build_from(Snapshot {
        version: 1,
        source: "in-process".to_owned(),
        config,
    })
    .await
}

/// Binds every listener and the admin server and serves them on the current runtime.
pub async fn build_from(snapshot: Snapshot) -> Result<Bound, BuildError> {
    let snapshot = Arc::new(snapshot);
    let config = &snapshot.config;
    let drain_timeout = config.runtime.drain_timeout.get();
    let admin_address = config.admin.address.clone();
    let mut sockets = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        sockets.push(bind(&format!("listener {}", l.name), &l.address).await?);
    }
    let admin_socket = bind("admin", &admin_address).await?;

    // The identity first: clusters with `tls` and TLS listeners need it,
    // and a missing or invalid file must stop the start, not the first request.
    let identity = match &config.identity {
        Some(i) => Some(Arc::new(Identity::load(i)?)),
        None => None,
    };
    let metrics = Metrics::new();
    let clusters = Clusters::default();
    let plan = clusters.plan(config, &metrics, identity.as_ref());
    let runtime = Runtime::compile(snapshot.clone(), &metrics, &plan, None)?;
    clusters.commit(plan);
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(runtime),
        metrics,
        ready: AtomicBool::new(false),
        identity: identity.clone(),
        errors: crate::error_log::ErrorLog::default(),
        clusters,
    });
    let signal = Signal::new();
    let mut listeners = Vec::with_capacity(sockets.len());
    for (l, socket) in config.listeners.iter().zip(sockets) {
        let addr = local_addr(&socket, &l.address)?;
        let name: Arc<str> = Arc::from(l.name.as_str());
        let serve = match l.protocol {
            ListenerProtocol::Tcp => Serve::Tcp {
                cluster: l.cluster.clone().unwrap_or_default(),
                shared: shared.clone(),
            },
            p => Serve::Http {
                servers: Arc::new(protocol::servers(
                    p,
                    l.header_timeout.get(),
                    protocol::HeadLimits::of(l),
                )),
                handler: Handler {
                    shared: shared.clone(),
                    listener: Arc::new(ListenerCtx {
                        name: name.clone(),
                        direction: l.direction,
                        routes: l.routes.clone().unwrap_or_default(),
                        header_timeout: l.header_timeout.get(),
                        limits: protocol::HeadLimits::of(l),
                    }),
                    peer: None,
                },
            },
        };
        let tls = inbound_tls(l, &name, identity.as_ref(), &shared.metrics)?;
        info!(listener = %l.name, %addr, protocol = %l.protocol, tls = %l.tls.as_ref().map(|t| t.mode).unwrap_or_default(), "listening");
        tokio::spawn(listener::run(
            socket,
            name,
            serve,
            tls,
            shared.metrics.clone(),
            signal.watch(),
        ));
        listeners.push((l.name.clone(), addr));
    }
    let admin = local_addr(&admin_socket, &admin_address)?;
    info!(%admin, "admin listening");
    let admin_task = tokio::spawn(admin::run(admin_socket, shared.clone()));
    let reloader = identity.map(|i| tls::spawn_reloader(i, tls::RELOAD_INTERVAL));
    shared.ready.store(true, Ordering::Release);
    Ok(Bound {
        admin,
        listeners,
        shared,
        signal,
        drain_timeout,
        admin_task,
        reloader,
        background: Vec::new(),
    })
}

/// The listener's TLS termination, when `tls.mode` is strict or permissive.
fn inbound_tls(
    l: &Listener,
    name: &Arc<str>,
    identity: Option<&Arc<Identity>>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<Inbound>>, BuildError> {
    let mode = l.tls.as_ref().map_or(TlsMode::Disabled, |t| t.mode);
    if mode == TlsMode::Disabled {
        return Ok(None);
    }
    let Some(identity) = identity else {
        return Err(BuildError::NoIdentity {
            listener: l.name.clone(),
            mode,
        });
    };
    let inbound = Inbound::new(
        identity,
        mode,
        protocol::alpn(l.protocol),
        name.clone(),
        metrics.clone(),
        l.header_timeout.get(),
    )
    .map_err(|source| BuildError::Tls {
        listener: l.name.clone(),
        source,
    })?;
    Ok(Some(Arc::new(inbound)))
}

async fn bind(what: &str, addr: &str) -> Result<TcpListener, BuildError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BuildError::Bind {
            what: what.to_owned(),
            addr: addr.to_owned(),
            source,
        })
}

fn local_addr(socket: &TcpListener, addr: &str) -> Result<SocketAddr, BuildError> {
    socket.local_addr().map_err(|source| BuildError::Bind {
        what: "local address".to_owned(),
        addr: addr.to_owned(),
        source,
    })
}
