//! Builds a running proxy from a config: binds every listener and the admin
//! server, and returns their addresses so tests can bind port 0 and run the
//! real proxy in-process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use skiff_control::model::TlsMode;
use skiff_control::source::{Delivery, Outcome, Update};
use skiff_control::{Config, Snapshot};
use skiff_filters::access_log::{AccessLog, AccessLogs};
use skiff_filters::telemetry::Metrics;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin;
use crate::cluster::{Cluster, Clusters, Plan};
use crate::listener::{self, Listeners};
use crate::runtime::{CompileError, Runtime};
use crate::shutdown::{Signal, Watch};
use crate::tls::{self, Identity, IdentityError};
use crate::trace::Tracing;

/// What `Shared::apply_clusters` commits: the runtime, the plan of the
/// clusters whose settings changed, and the endpoint sets swapped in place.
type Patch = (
    Runtime,
    Option<Plan>,
    Vec<(Arc<Cluster>, Vec<skiff_control::model::Endpoint>)>,
);

/// How often a sidecar's shutdown looks at its open connections.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How long outbound must stay without connections before a sidecar's
/// shutdown takes it as the app having stopped calling out.
pub const QUIET: Duration = Duration::from_secs(1);

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
    /// The running listeners: they outlive runtimes too.
    pub listeners: Listeners,
    /// A watch on the process's drain, which new accept loops start from;
    /// `None` once the drain started (nothing new may start then).
    base: Mutex<Option<Watch>>,
    /// `runtime.drain_timeout`, fixed at start: how long a removed
    /// listener's connections may take.
    drain_timeout: Duration,
    /// The last config a source offered that was not applied, for `/config`.
    pub last_rejection: Mutex<Option<Rejection>>,
    /// Access-log writers by path: they outlive runtimes.
    pub access_logs: AccessLogs,
    /// The running span exporter: kept while its config is unchanged.
    tracing: Mutex<Option<Arc<Tracing>>>,
    /// `POST /shutdown` (a Job whose app has finished): `skiff run` waits
    /// on it as on SIGTERM.
    pub shutdown: tokio::sync::Notify,
    /// Set once a shutdown starts: `/ready` stays 503 whatever is applied.
    stopping: AtomicBool,
    /// The control feed's state, when `control:` is set: for `/config`.
    pub feed: std::sync::OnceLock<Arc<skiff_control::source::xds::FeedStatus>>,
    /// One apply at a time: plans are made against the running state and
    /// committed over it, so two interleaved would undo each other.
    applying: Mutex<()>,
    /// `overload:`: the process's budgets, and what is spent of them.
    pub overload: Arc<crate::overload::Overload>,
}

/// A config that was not applied, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    pub source: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub problems: Vec<String>,
}

impl Shared {
    /// Applies a new config while traffic flows: listeners, routes,
    /// clusters, endpoints, filters and authorization change at once for
    /// new requests; requests in flight finish on the config they started
    /// with. What outlives a snapshot (endpoints and their pools, policy
    /// state, probes, listener sockets) is kept wherever its own config is
    /// unchanged. What is fixed at start (the admin address, `identity`,
    /// `runtime`) cannot change this way, and a listener that cannot bind
    /// refuses the config: either is refused whole, and nothing changes.
    ///
    /// `source` names the kind of source for `skiff_config_updates_total`
    /// (`file`, `in-process`): a few fixed values, never a path.
    pub fn apply(
        self: &Arc<Self>,
        source: &'static str,
        snapshot: Arc<Snapshot>,
    ) -> Result<(), BuildError> {
        let result = self.try_apply(snapshot);
        let outcome = if result.is_ok() {
            "applied"
        } else {
            "rejected"
        };
        self.metrics.config_update(source, outcome);
        result
    }

    /// Applies `snapshot`, which is `over` with `clusters` changed and
    /// nothing else (`Update::Clusters`), doing work for those clusters
    /// alone while `over` is what runs: a cluster whose settings are
    /// unchanged gets its endpoint set swapped; one whose settings changed
    /// is planned again (`Clusters::plan_only`) and the routes that send to
    /// it are compiled again (`Runtime::recompile`), every other route,
    /// pool and piece of policy state staying. Requests in flight finish on
    /// what they picked. Otherwise, as [`Shared::apply`].
    pub fn apply_clusters(
        self: &Arc<Self>,
        source: &'static str,
        over: &Arc<Snapshot>,
        snapshot: Arc<Snapshot>,
        clusters: &[String],
    ) -> Result<(), BuildError> {
        {
            let _one = self.applying.lock().unwrap_or_else(|p| p.into_inner());
            let current = self.runtime.load_full();
            // Checked first: a patch over another snapshot is applied whole.
            if Arc::ptr_eq(&current.snapshot, over)
                && let Some(next) = self.patch(&current, &snapshot, clusters)
            {
                let (runtime, plan, swaps) = match next {
                    Ok(next) => next,
                    Err(e) => {
                        self.metrics.config_update(source, "rejected");
                        return Err(e);
                    }
                };
                for (cluster, endpoints) in swaps {
                    cluster.set_endpoints(&self.clusters.registry, &endpoints);
                }
                if let Some(plan) = plan {
                    self.clusters.commit(plan);
                }
                let version = snapshot.version;
                self.runtime.store(Arc::new(runtime));
                self.metrics.config_update(source, "applied");
                info!(version, clusters = clusters.len(), "clusters applied");
                return Ok(());
            }
        }
        self.apply(source, snapshot)
    }

    /// The runtime, cluster plan and endpoint swaps that make `snapshot`
    /// (`current`'s with `clusters` changed) run; `None` when a listed
    /// cluster does not run or is not in both configs (applied whole).
    fn patch(
        &self,
        current: &Runtime,
        snapshot: &Arc<Snapshot>,
        clusters: &[String],
    ) -> Option<Result<Patch, BuildError>> {
        let (old, new) = (&current.snapshot.config, &snapshot.config);
        let mut swaps = Vec::new();
        let mut replanned: Vec<&str> = Vec::new();
        for name in clusters {
            let running = current.cluster(name)?;
            let (was, now) = (old.clusters.get(name)?, new.clusters.get(name)?);
            if was.same_but_endpoints(now) {
                swaps.push((running.clone(), now.endpoints.clone()));
            } else {
                replanned.push(name);
            }
        }
        if replanned.is_empty() {
            return Some(Ok((current.with_snapshot(snapshot.clone()), None, swaps)));
        }
        let plan =
            self.clusters
                .plan_only(new, &replanned, &self.metrics, self.identity.as_ref())?;
        let runtime = current.recompile(snapshot.clone(), &self.metrics, &plan, &replanned);
        Some(
            runtime
                .map(|runtime| (runtime, Some(plan), swaps))
                .map_err(BuildError::from),
        )
    }

    fn try_apply(self: &Arc<Self>, snapshot: Arc<Snapshot>) -> Result<(), BuildError> {
        let _one = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.runtime.load();
        let (old, new) = (&current.snapshot.config, &snapshot.config);
        let fixed = [
            ("admin", old.admin != new.admin),
            ("identity", old.identity != new.identity),
            ("runtime", old.runtime != new.runtime),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Err(CompileError::NeedsRestart { key }.into());
        }
        let Some(base) = self.base.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Err(BuildError::Draining);
        };
        let clusters = self
            .clusters
            .plan(&snapshot.config, &self.metrics, self.identity.as_ref());
        let access_log = access_log(&self.access_logs, &snapshot.config, &self.metrics)?;
        let running = self
            .tracing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let tracing = tracing(running, &snapshot.config)?;
        let mut next = Runtime::compile(
            snapshot,
            &self.metrics,
            &clusters,
            Some(&current),
            access_log,
            tracing.clone(),
        )?;
        let wanted = &next.snapshot.config.listeners;
        let binding = self.listeners.bind_keys(wanted);
        let listeners = self
            .listeners
            .plan(wanted, &binding, self, self.identity.as_ref())?;
        next.bind_listeners(&binding.bound, &binding.draining, Some(&current));
        // Nothing could fail from here on.
        *self.tracing.lock().unwrap_or_else(|p| p.into_inner()) = tracing;
        let version = next.snapshot.version;
        self.overload.set_budget(&next.snapshot.config.overload);
        self.clusters.commit(clusters);
        self.runtime.store(Arc::new(next));
        self.listeners
            .commit(listeners, &self.metrics, &base, self.drain_timeout);
        info!(version, "config applied");
        Ok(())
    }

    /// Applies one delivery from a source and answers it; whether it was
    /// applied. `kind` labels `skiff_config_updates_total`.
    fn deliver(self: &Arc<Self>, kind: &'static str, delivery: Delivery) -> bool {
        let Delivery { update, reply } = delivery;
        let outcome = match update {
            Update::Valid(snapshot) => {
                let source = snapshot.source.clone();
                let result = self.apply(kind, snapshot);
                // The parse behind the new snapshot is gone, and the old snapshot
                // with it unless a request in flight still holds it.
                crate::memory::release();
                self.outcome(&source, result)
            }
            Update::Clusters {
                over,
                snapshot,
                clusters,
            } => {
                let source = snapshot.source.clone();
                self.outcome(
                    &source,
                    self.apply_clusters(kind, &over, snapshot, &clusters),
                )
            }
            Update::Invalid(errors) => {
                // Never reached `apply`, which counts the others.
                self.metrics.config_update(kind, "rejected");
                for e in &errors.0 {
                    warn!(problem = %e, "config change refused; keeping the last good config");
                }
                let problems: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                let source = errors.0.first().map_or(String::new(), |e| e.file.clone());
                self.rejected(&source, problems.clone());
                Outcome::Rejected(problems)
            }
        };
        let applied = outcome == Outcome::Applied;
        reply.send(outcome);
        applied
    }

    /// What a source hears of an apply of its config.
    fn outcome(&self, source: &str, result: Result<(), BuildError>) -> Outcome {
        match result {
            Ok(()) => Outcome::Applied,
            Err(e) => {
                let why = skiff_filters::error::render_chain(&e);
                warn!(%source, error = %why, "config change refused; keeping the last good config");
                self.rejected(source, vec![why.clone()]);
                Outcome::Rejected(vec![why])
            }
        }
    }

    /// Turns `/ready` to 503 under the drain's lock, so a config applied
    /// meanwhile cannot turn it back; with `stop_base`, no new listener may
    /// start either (the process's drain).
    fn not_ready(&self, stop_base: bool) {
        let mut base = self.base.lock().unwrap_or_else(|p| p.into_inner());
        if stop_base {
            base.take();
        }
        self.stopping.store(true, Ordering::Release);
        self.ready.store(false, Ordering::Release);
    }

    /// Notes a config that was not applied, for `/config`.
    pub fn rejected(&self, source: &str, problems: Vec<String>) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        *self
            .last_rejection
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Rejection {
            source: source.to_owned(),
            at,
            problems,
        });
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
    #[error("the proxy is draining: no new config is applied")]
    Draining,
}

/// A running proxy: its bound addresses and its shutdown handle.
pub struct Bound {
    admin: SocketAddr,
    shared: Arc<Shared>,
    signal: Signal,
    drain_timeout: Duration,
    admin_task: JoinHandle<()>,
    /// Polls the identity files for rotation; stopped with the proxy.
    reloader: Option<JoinHandle<()>>,
    /// Config sources (the file watcher); stopped with the proxy.
    background: Vec<JoinHandle<()>>,
    /// When a sidecar's shutdown must be over (set by `drain_inbound_first`).
    deadline: std::sync::OnceLock<tokio::time::Instant>,
}

impl Bound {
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where the listener called `name` is bound now.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listeners.addr(name)
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
    /// Counted as `skiff_config_updates_total{source="in-process"}`.
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), BuildError> {
        self.shared.apply("in-process", Arc::new(snapshot))
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
            while let Some(delivery) = updates.recv().await {
                shared.deliver("file", delivery);
            }
            poller.abort();
        });
        self.background.push(task);
    }

    /// Takes listeners, routes and clusters from the control plane named
    /// by `control:` (xDS v3 over ADS), beside the ones in the proxy's own
    /// file, counting outcomes in `skiff_config_updates_total{source="control"}`.
    /// `/ready` turns 200 with the first complete config applied, and stays
    /// 200 while the control plane is away. Does nothing without `control:`.
    pub fn watch_feed(&mut self) {
        let current = self.shared.runtime.load().snapshot.clone();
        let Some(feed) = skiff_control::source::xds::subscribe(&current) else {
            return;
        };
        let _ = self.shared.feed.set(feed.status.clone());
        let shared = self.shared.clone();
        let mut updates = feed.updates;
        let client = feed.task;
        let task = tokio::spawn(async move {
            while let Some(delivery) = updates.recv().await {
                if shared.deliver("control", delivery) {
                    // Under the lock `drain` takes: a drain that started
                    // meanwhile keeps /ready at 503.
                    let _base = shared.base.lock().unwrap_or_else(|p| p.into_inner());
                    if !shared.stopping.load(Ordering::Acquire) {
                        shared.ready.store(true, Ordering::Release);
                    }
                }
            }
            client.abort();
        });
        self.background.push(task);
    }

    /// Resolves when `POST /shutdown` asks the process to stop.
    pub async fn shutdown_requested(&self) {
        self.shared.shutdown.notified().await;
    }

    /// The feed's state, when `control:` is set (tests wait on it).
    pub fn feed(&self) -> Option<Arc<skiff_control::source::xds::FeedStatus>> {
        self.shared.feed.get().cloned()
    }

    /// A sidecar's shutdown, what SIGTERM and `POST /shutdown` start:
    /// `/ready` turns 503 and the inbound listeners drain at once (no new
    /// callers; those in flight finish), while the outbound ones keep
    /// serving the app, which may still call out as it shuts down. Returns
    /// once inbound connections are done and outbound ones have stayed at
    /// zero for [`QUIET`] (the app has stopped calling), or at the drain
    /// timeout; then [`Bound::drain`] closes the rest.
    pub async fn drain_inbound_first(&self) {
        use skiff_control::model::Direction;
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        // One deadline for the whole shutdown: wait_termination keeps it.
        let _ = self.deadline.set(deadline);
        self.shared.not_ready(false);
        let inbound = self.shared.listeners.drain_direction(Direction::Inbound);
        info!(?inbound, "draining inbound; outbound keeps serving the app");
        let open = |names: &[String]| -> i64 {
            names
                .iter()
                .map(|n| self.shared.metrics.connections_active(n))
                .sum()
        };
        let mut tick = tokio::time::interval(DRAIN_POLL);
        let mut quiet_since = None;
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            if open(&inbound) > 0 {
                continue;
            }
            let outbound = self.shared.listeners.names(Direction::Outbound);
            if open(&outbound) > 0 {
                quiet_since = None;
                continue;
            }
            let since = *quiet_since.get_or_insert(now);
            if now - since >= QUIET {
                break;
            }
        }
    }

    /// Starts a graceful drain, as SIGTERM does: `/ready` turns 503, the
    /// listeners close, open connections are asked to finish.
    pub fn drain(&self) {
        // The base watch counts as work in flight: let it go, and let no
        // new listener start. /ready turns 503 under the same lock, so a
        // config applied meanwhile cannot turn it back.
        self.shared.not_ready(true);
        self.signal.drain();
    }

    /// Resolves once a drain has started and every connection has finished,
    /// or the drain timeout has passed.
    pub async fn wait_termination(mut self) -> Result<(), BuildError> {
        // After drain_inbound_first, what is left of its deadline.
        let timeout = match self.deadline.get() {
            Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
            None => self.drain_timeout,
        };
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
        // Listener states hold handlers that hold `Shared`: let them go, so
        // `Shared` (and with it the span exporter, the access log's writer
        // and the health probes) is freed when the last handle drops. Spans
        // still queued are flushed now, before the process exits.
        self.shared.listeners.clear();
        let tracing = self
            .shared
            .tracing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = tracing {
            let _ = tokio::task::spawn_blocking(move || t.flush()).await;
        }
        Ok(())
    }
}

/// The access log `config` asks for: the running writer for its path, or
/// a new one.
fn access_log(
    logs: &AccessLogs,
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<Arc<AccessLog>>, CompileError> {
    let Some(cfg) = config
        .telemetry
        .as_ref()
        .and_then(|t| t.access_log.as_ref())
    else {
        return Ok(None);
    };
    let path = cfg.path();
    logs.get(path, metrics.access_log_dropped(path))
        .map(Some)
        .map_err(|source| CompileError::AccessLog {
            path: path.to_owned(),
            source,
        })
}

/// The span exporter `config` asks for: `running` when its config is the
/// same, else a new one (the old one flushes as it goes).
fn tracing(
    running: Option<Arc<Tracing>>,
    config: &Config,
) -> Result<Option<Arc<Tracing>>, CompileError> {
    let Some(cfg) = config.telemetry.as_ref().and_then(|t| t.tracing.as_ref()) else {
        return Ok(None);
    };
    match running {
        Some(t) if t.config == *cfg => Ok(Some(t)),
        _ => Ok(Some(Tracing::start(cfg)?)),
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

    // The identity first: clusters with `tls` and TLS listeners need it,
    // and a missing or invalid file must stop the start, not the first request.
    let identity = match &config.identity {
        Some(i) => Some(Arc::new(Identity::load(i)?)),
        None => None,
    };
    let metrics = Metrics::new();
    let clusters = Clusters::default();
    let plan = clusters.plan(config, &metrics, identity.as_ref());
    let access_logs = AccessLogs::default();
    let log = access_log(&access_logs, config, &metrics)?;
    let spans = tracing(None, config)?;
    let mut runtime =
        Runtime::compile(snapshot.clone(), &metrics, &plan, None, log, spans.clone())?;
    let listener_set = Listeners::default();
    let binding = listener_set.bind_keys(&config.listeners);
    runtime.bind_listeners(&binding.bound, &binding.draining, None);
    clusters.commit(plan);
    let signal = Signal::new();
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(runtime),
        metrics,
        ready: AtomicBool::new(false),
        identity: identity.clone(),
        errors: crate::error_log::ErrorLog::default(),
        clusters,
        listeners: listener_set,
        base: Mutex::new(Some(signal.watch())),
        drain_timeout,
        last_rejection: Mutex::new(None),
        access_logs,
        tracing: Mutex::new(spans),
        feed: std::sync::OnceLock::new(),
        shutdown: tokio::sync::Notify::new(),
        stopping: AtomicBool::new(false),
        applying: Mutex::new(()),
        overload: crate::overload::Overload::new(&config.overload),
    });
    let listeners =
        shared
            .listeners
            .plan(&config.listeners, &binding, &shared, identity.as_ref())?;
    let admin_socket = listener::bind("admin", &admin_address)?;
    let base = signal.watch();
    shared
        .listeners
        .commit(listeners, &shared.metrics, &base, drain_timeout);
    drop(base);
    let admin = admin_socket
        .local_addr()
        .map_err(|source| BuildError::Bind {
            what: "local address".to_owned(),
            addr: admin_address.clone(),
            source,
        })?;
    info!(%admin, "admin listening");
    let admin_task = tokio::spawn(admin::run(admin_socket, shared.clone()));
    let overload_watch = tokio::spawn(crate::overload::watch(shared.overload.clone()));
    let reloader = identity.map(|i| tls::spawn_reloader(i, tls::RELOAD_INTERVAL));
    // With a control feed, ready waits for its first complete config.
    let feed = config.control.is_some();
    shared.ready.store(!feed, Ordering::Release);
    Ok(Bound {
        admin,
        shared,
        signal,
        drain_timeout,
        admin_task,
        reloader,
        background: vec![overload_watch],
        deadline: std::sync::OnceLock::new(),
    })
}
