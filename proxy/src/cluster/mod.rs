//! Clusters and endpoints that outlive config snapshots.
//!
//! Three lifetimes meet here (docs/ARCHITECTURE.md, "What lives how long"):
//!
//! * An [`Endpoint`] lives as long as any cluster lists it, or any request
//!   still uses it: its connection pools, latency estimate, outlier
//!   ejection and health verdict survive every config swap that keeps it.
//!   The [`Registry`] finds it by cluster, address and the TLS identity its
//!   connections verify, so a new snapshot looks endpoints up instead of
//!   building them. An endpoint no set lists any more is drained by being
//!   let go: requests in flight hold it and finish, and its idle
//!   connections close when the last holder drops it.
//! * A [`Cluster`] lives as long as configs name it. Its settings and its
//!   endpoint set are swapped in place ([`ClusterState`]), so route stacks
//!   built against it stay valid, and its endpoints can change on their own
//!   ([`Cluster::set_endpoints`]) without recompiling a route. Its policy
//!   state (breaker counts, retry budget) and its health probe carry over
//!   a swap unless their own config changed.
//! * A snapshot's compiled routes (`runtime.rs`) hold `Arc<Cluster>`s.
//!
//! Applying a config is two steps, so a config refused halfway (a route
//! that does not compile, a listener that cannot bind) changes nothing:
//! [`Clusters::plan`] builds the new state beside the running one, and
//! [`Plan::commit`] swaps it in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::client::conn::{http1, http2};
use prometheus_client::metrics::counter::Counter;
use skiff_control::model::{self, ClusterProtocol};
use skiff_filters::Body;
use skiff_filters::balance::{Balancer, EndpointStats};
use skiff_filters::outlier::OutlierConfig;
use skiff_filters::stack::ClusterPolicy;
use skiff_filters::telemetry::Metrics;
use tokio::task::AbortHandle;

use tracing::debug;

use crate::health::{self, Probe};
use crate::tls::{Connector, Identity};

/// One upstream address and its connections.
#[derive(Debug)]
pub struct Endpoint {
    pub address: String,
    /// Load and health, shared with the balancer and `/clusters`.
    pub stats: Arc<EndpointStats>,
    /// Idle connections of hyper's HTTP/1 client, each with the sweep it
    /// went idle in (see [`Endpoint::sweep_idle`]).
    pub(crate) idle_h1: Mutex<Vec<(http1::SendRequest<Body>, u32)>>,
    /// Idle connections of the inline HTTP/1 client (requests without a
    /// body; see `upstream::inline_h1`), stamped the same way.
    pub(crate) idle_inline: Mutex<Vec<(crate::upstream::inline_h1::Conn, u32)>>,
    pub(crate) h2: arc_swap::ArcSwapOption<http2::SendRequest<Body>>,
    /// Serialises HTTP/2 connects so a burst opens one connection, not many.
    pub(crate) h2_connecting: tokio::sync::Mutex<()>,
    /// Idle sweeps made so far: the clock pooled connections are stamped by.
    /// A counter rather than a time, so stamping a connection costs a load.
    sweeps: AtomicU32,
    /// The sweep in which the HTTP/2 connection last started a stream.
    h2_used: AtomicU32,
}

/// Sweeps a pooled connection stays idle for: swept every half
/// `idle_timeout`, one is closed between one and one and a half
/// `idle_timeout`s after it went idle.
const IDLE_SWEEPS: u32 = 3;

impl Endpoint {
    fn new(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            stats: Arc::new(EndpointStats::new(address.to_owned())),
            idle_h1: Mutex::new(Vec::new()),
            idle_inline: Mutex::new(Vec::new()),
            h2: arc_swap::ArcSwapOption::empty(),
            h2_connecting: tokio::sync::Mutex::new(()),
            sweeps: AtomicU32::new(0),
            h2_used: AtomicU32::new(0),
        }
    }

    /// What a connection going idle now is stamped with.
    pub(crate) fn idle_since(&self) -> u32 {
        self.sweeps.load(Ordering::Relaxed)
    }

    /// Notes that the HTTP/2 connection starts a stream. Written only when
    /// the sweep moved on, so streams on many cores do not all write.
    pub(crate) fn h2_starts(&self) {
        let now = self.sweeps.load(Ordering::Relaxed);
        if self.h2_used.load(Ordering::Relaxed) != now {
            self.h2_used.store(now, Ordering::Relaxed);
        }
    }

    /// Closes the pooled connections idle for [`IDLE_SWEEPS`] sweeps: the
    /// HTTP/1 ones that went idle then (and those the server closed), and
    /// the HTTP/2 one if it started no stream since. Dropping a handle is
    /// enough: an HTTP/1 connection closes with it, and an HTTP/2 one once
    /// the streams still open on it (a long gRPC stream) finish; new
    /// requests get a new connection.
    fn sweep_idle(&self) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let fresh = |since: u32| now.wrapping_sub(since) < IDLE_SWEEPS;
        self.idle_h1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(c, since)| fresh(*since) && !c.is_closed());
        self.idle_inline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, since)| fresh(*since));
        if !fresh(self.h2_used.load(Ordering::Relaxed)) && self.h2.load().is_some() {
            debug!(endpoint = %self.address, "idle HTTP/2 connection let go");
            self.h2.store(None);
        }
    }

    /// How retries and errors name this endpoint: stable while sets change.
    pub fn id(&self) -> usize {
        self.stats.id
    }
}

/// Who an endpoint is: the cluster that lists it, its address, and the
/// identity its TLS connections must present (a pool of connections
/// verified for one identity must not serve a cluster that expects
/// another). Per cluster, as Envoy keeps hosts: two clusters listing one
/// address have their own health verdicts, ejections and pools.
type Key = (String, String, Option<String>);

/// Every endpoint some cluster lists, by address and TLS identity. Holds
/// them weakly: the sets that list them keep them alive.
#[derive(Debug, Default)]
pub struct Registry {
    endpoints: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<Key, Weak<Endpoint>>,
    /// How many entries the last sweep left: the next sweep waits until
    /// there are twice as many, so forgetting dead entries costs O(1) per
    /// new endpoint, not a pass over all of them (10,000 endpoints loaded
    /// at once would be 10,000 passes).
    swept: usize,
}

impl Registry {
    /// Cluster `cluster`'s endpoint at `address` for connections verifying
    /// `identity`: the running one if any set still holds it, else a new one.
    pub fn get(&self, cluster: &str, address: &str, identity: Option<&str>) -> Arc<Endpoint> {
        let mut entries = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            cluster.to_owned(),
            address.to_owned(),
            identity.map(str::to_owned),
        );
        if let Some(ep) = entries.by_key.get(&key).and_then(Weak::upgrade) {
            return ep;
        }
        // A good moment to forget endpoints nothing holds any more.
        if entries.by_key.len() >= 2 * entries.swept.max(16) {
            entries.by_key.retain(|_, e| e.strong_count() > 0);
            entries.swept = entries.by_key.len();
        }
        let ep = Arc::new(Endpoint::new(address));
        entries.by_key.insert(key, Arc::downgrade(&ep));
        ep
    }
}

/// A cluster's endpoints as of one update, and the balancer over them.
#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub weights: Vec<u32>,
    pub(crate) balancer: Balancer,
}

impl EndpointSet {
    fn new(c: &model::Cluster, endpoints: Vec<(Arc<Endpoint>, u32)>) -> Self {
        let (endpoints, weights): (Vec<_>, Vec<_>) = endpoints.into_iter().unzip();
        let stats = endpoints.iter().map(|e| e.stats.clone()).collect();
        Self {
            balancer: Balancer::new(c, stats, &weights),
            endpoints,
            weights,
        }
    }

    /// Whether this set lists exactly these endpoints with these weights.
    fn same_as(&self, wanted: &[(Arc<Endpoint>, u32)]) -> bool {
        self.endpoints.len() == wanted.len()
            && self
                .endpoints
                .iter()
                .zip(&self.weights)
                .zip(wanted)
                .all(|((e, w), (we, ww))| Arc::ptr_eq(e, we) && w == ww)
    }
}

/// How a cluster talks to its endpoints, from its config (its endpoints
/// aside). Replaced whole when that config changes.
#[derive(Debug)]
pub struct Settings {
    pub name: Arc<str>,
    /// The config these settings were built from, endpoints aside: what a
    /// new config is compared with.
    config: model::Cluster,
    pub(crate) protocol: ClusterProtocol,
    pub(crate) connect_timeout: Duration,
    /// `idle_timeout`: how long a pooled connection may sit unused.
    pub(crate) idle_timeout: Duration,
    pub(crate) outlier: Option<OutlierConfig>,
    /// Active health checks run: an ejected endpoint then returns only once a probe passes.
    pub health_checked: bool,
    /// Per-cluster filter state (breaker, retry budget), shared by every
    /// route to this cluster; the pool enforces the breaker's connection and
    /// pending limits.
    pub policy: ClusterPolicy,
    /// `tls.server_identity`: originate mTLS.
    pub(crate) tls: Option<Connector>,
    /// `tls.server_identity`, shared: what a passthrough endpoint is keyed by.
    pub(crate) identity: Option<Arc<str>>,
    /// `discovery: original_destination`: each request goes where its
    /// connection was going, to `original_destination.host` when set.
    pub(crate) passthrough: Option<Option<std::net::IpAddr>>,
}

/// What a request reads from its cluster, in one atomic load.
#[derive(Debug)]
pub struct ClusterState {
    pub settings: Arc<Settings>,
    pub set: Arc<EndpointSet>,
}

/// A cluster: a name that configs refer to, and its current state.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    state: ArcSwap<ClusterState>,
    pub(crate) ejections: Counter,
    /// The health-check task, and the config it was started with.
    probe: Mutex<Option<(model::HealthCheck, ClusterProtocol, AbortHandle)>>,
    /// The task that closes idle pooled connections, and the
    /// `idle_timeout` it runs for.
    sweeper: Mutex<Option<(Duration, AbortHandle)>>,
    /// A passthrough cluster's endpoints, one per destination met: each
    /// keeps its pool across requests (the app calling one service over and
    /// over reuses connections). Bounded by [`MAX_DESTINATIONS`].
    destinations: Mutex<HashMap<Destination, Arc<Endpoint>>>,
}

/// A passthrough cluster's endpoint key: the address, and the identity its
/// TLS connections verify.
type Destination = (std::net::SocketAddr, Option<Arc<str>>);

/// Destinations a passthrough cluster keeps pools for; past it, those no
/// request is using are let go first.
const MAX_DESTINATIONS: usize = 4096;

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some((_, _, task)) = self.probe.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
        if let Some((_, task)) = self.sweeper.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl Cluster {
    /// The current settings and endpoints (an `Arc` each: a request holds
    /// them for its whole exchange, whatever is swapped meanwhile).
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.load_full()
    }

    pub fn protocol(&self) -> ClusterProtocol {
        self.state.load().settings.protocol
    }

    /// A passthrough cluster's endpoint for `to`: the one kept for it, or a
    /// new one. A short lock per request on this cluster only; the map
    /// holds one entry per destination the app talks to.
    /// Keyed by the identity its TLS connections verify too: a settings
    /// change (mTLS added, another identity) must not reuse connections
    /// made, or verified, under the old ones.
    pub(crate) fn destination(
        &self,
        to: std::net::SocketAddr,
        settings: &Settings,
    ) -> Arc<Endpoint> {
        let key = (to, settings.identity.clone());
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ep) = map.get(&key) {
            return ep.clone();
        }
        if map.len() >= MAX_DESTINATIONS {
            // Let go of the destinations nothing uses now (their idle
            // connections close with them).
            map.retain(|_, ep| Arc::strong_count(ep) > 1);
        }
        let ep = Arc::new(Endpoint::new(&to.to_string()));
        if map.len() < MAX_DESTINATIONS {
            map.insert(key, ep.clone());
        }
        ep
    }

    /// Sweeps the pools of every endpoint this cluster lists now, and of
    /// each passthrough destination it keeps (see [`Endpoint::sweep_idle`]).
    /// Endpoints a set no longer lists are not swept: they close with the
    /// last request that holds them.
    fn sweep_idle(&self) {
        for ep in &self.state().set.endpoints {
            ep.sweep_idle();
        }
        let destinations = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        for ep in destinations.values() {
            ep.sweep_idle();
        }
    }

    /// Runs the idle sweep for `idle_timeout` (the running one is kept if it
    /// has the same), every half of it. The task holds the cluster weakly
    /// and ends with it.
    fn sweep_every(self: &Arc<Self>, idle_timeout: Duration) {
        let mut sweeper = self.sweeper.lock().unwrap_or_else(|p| p.into_inner());
        if sweeper.as_ref().is_some_and(|(t, _)| *t == idle_timeout) {
            return;
        }
        if let Some((_, task)) = sweeper.take() {
            task.abort();
        }
        let every = (idle_timeout / 2).max(Duration::from_millis(1));
        let cluster = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                cluster.sweep_idle();
            }
        });
        *sweeper = Some((idle_timeout, task.abort_handle()));
    }

    /// Replaces the endpoint set alone: routes, policies and the endpoints
    /// that stay are untouched. What a control feed's endpoint update does.
    pub fn set_endpoints(&self, registry: &Registry, endpoints: &[model::Endpoint]) {
        let current = self.state.load_full();
        let set = current
            .settings
            .endpoint_set(registry, Some(&current), endpoints);
        if Arc::ptr_eq(&set, &current.set) {
            return;
        }
        self.state.store(Arc::new(ClusterState {
            settings: current.settings.clone(),
            set,
        }));
    }
}

impl Settings {
    /// The set of `endpoints` under these settings: `old`'s own when it has
    /// these settings and lists exactly these endpoints, else a new set
    /// (its endpoints looked up in the registry, its balancer rebuilt).
    fn endpoint_set(
        &self,
        registry: &Registry,
        old: Option<&ClusterState>,
        endpoints: &[model::Endpoint],
    ) -> Arc<EndpointSet> {
        let wanted = lookup(registry, &self.name, &self.config, endpoints);
        match old {
            Some(o) if std::ptr::eq(&*o.settings, self) && o.set.same_as(&wanted) => o.set.clone(),
            _ => Arc::new(EndpointSet::new(&self.config, wanted)),
        }
    }
}

/// The endpoints `endpoints` names, found in (or added to) the registry.
fn lookup(
    registry: &Registry,
    cluster: &str,
    c: &model::Cluster,
    endpoints: &[model::Endpoint],
) -> Vec<(Arc<Endpoint>, u32)> {
    let identity = c.tls.as_ref().map(|t| t.server_identity.as_str());
    endpoints
        .iter()
        .map(|e| (registry.get(cluster, &e.address, identity), e.weight))
        .collect()
}

/// Every cluster the running config names, and every endpoint they list.
#[derive(Debug, Default)]
pub struct Clusters {
    by_name: Mutex<HashMap<Arc<str>, Arc<Cluster>>>,
    pub registry: Registry,
}

/// A config's clusters, built beside the running ones: nothing running has
/// changed until [`Plan::commit`].
pub struct Plan {
    /// By name; new clusters are already here, existing ones are the
    /// running `Arc`s (their new state waits in `states`).
    pub clusters: HashMap<Arc<str>, Arc<Cluster>>,
    /// Each cluster's state to be, and its health check, by name.
    states: HashMap<Arc<str>, Planned>,
    /// Made by [`Clusters::plan_only`]: the clusters given new state; the
    /// others keep what they run, and the running set stays as it is.
    only: Option<Vec<Arc<str>>>,
}

struct Planned {
    cluster: Arc<Cluster>,
    state: Arc<ClusterState>,
    probe: Option<model::HealthCheck>,
}

impl Plan {
    /// The cluster called `name`, and the state it will have.
    pub fn get(&self, name: &str) -> Option<(&Arc<Cluster>, &Arc<ClusterState>)> {
        self.states.get(name).map(|p| (&p.cluster, &p.state))
    }
}

impl Clusters {
    /// Builds the state `config`'s clusters should have: settings kept when
    /// unchanged, policy pieces kept when their own config is unchanged,
    /// endpoints looked up in the registry.
    pub fn plan(
        &self,
        config: &skiff_control::Config,
        metrics: &Arc<Metrics>,
        identity: Option<&Arc<Identity>>,
    ) -> Plan {
        let running = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let mut plan = Plan {
            clusters: HashMap::with_capacity(config.clusters.len()),
            states: HashMap::with_capacity(config.clusters.len()),
            only: None,
        };
        for (name, c) in &config.clusters {
            let old = running.get(name.as_str()).cloned();
            let old_state = old.as_ref().map(|o| o.state());
            let settings = match &old_state {
                Some(s) if s.settings.config.same_but_endpoints(c) => s.settings.clone(),
                _ => Arc::new(settings(name, c, metrics, identity, old_state.as_deref())),
            };
            let set = settings.endpoint_set(&self.registry, old_state.as_deref(), &c.endpoints);
            let state = Arc::new(ClusterState { settings, set });
            let cluster = match old {
                Some(cluster) => cluster,
                None => {
                    let name: Arc<str> = Arc::from(name.as_str());
                    Arc::new(Cluster {
                        ejections: metrics.ejections(&name),
                        name,
                        state: ArcSwap::new(state.clone()),
                        probe: Mutex::new(None),
                        sweeper: Mutex::new(None),
                        destinations: Mutex::new(HashMap::new()),
                    })
                }
            };
            plan.states.insert(
                cluster.name.clone(),
                Planned {
                    cluster: cluster.clone(),
                    state,
                    probe: c.health_check.clone(),
                },
            );
            plan.clusters.insert(cluster.name.clone(), cluster);
        }
        plan
    }

    /// A plan in which the running clusters `names`, as `config` has them
    /// now, get new settings and endpoints, and every other cluster keeps
    /// the state it runs: for a control feed's change to a few clusters
    /// (`Update::Clusters`), work for those clusters and not for each of
    /// ten thousand. `None` when one of `names` does not run or is not in
    /// `config`: that change needs [`Clusters::plan`].
    pub fn plan_only(
        &self,
        config: &skiff_control::Config,
        names: &[&str],
        metrics: &Arc<Metrics>,
        identity: Option<&Arc<Identity>>,
    ) -> Option<Plan> {
        let running = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let mut states: HashMap<Arc<str>, Planned> = running
            .iter()
            .map(|(name, cluster)| {
                let planned = Planned {
                    cluster: cluster.clone(),
                    state: cluster.state(),
                    probe: None,
                };
                (name.clone(), planned)
            })
            .collect();
        let mut only = Vec::with_capacity(names.len());
        for &name in names {
            let cluster = running.get(name)?.clone();
            let c = config.clusters.get(name)?;
            let old = cluster.state();
            let settings = Arc::new(settings(name, c, metrics, identity, Some(&old)));
            let set = settings.endpoint_set(&self.registry, Some(&old), &c.endpoints);
            only.push(cluster.name.clone());
            states.insert(
                cluster.name.clone(),
                Planned {
                    cluster,
                    state: Arc::new(ClusterState { settings, set }),
                    probe: c.health_check.clone(),
                },
            );
        }
        Some(Plan {
            clusters: running.clone(),
            states,
            only: Some(only),
        })
    }

    /// Makes `plan` the running clusters: swaps each one's state, forgets
    /// the clusters the config no longer names (they go when the last
    /// route holding them does), and keeps each health probe whose config
    /// is unchanged, so a push does not set off a round of probes. A plan
    /// of [`Clusters::plan_only`] touches its own clusters alone.
    pub fn commit(&self, plan: Plan) {
        let touched: Vec<&Planned> = match &plan.only {
            Some(names) => names.iter().filter_map(|n| plan.states.get(n)).collect(),
            None => plan.states.values().collect(),
        };
        for Planned { cluster, state, .. } in touched.iter().copied() {
            if !Arc::ptr_eq(&cluster.state.load(), state) {
                cluster.state.store(state.clone());
            }
            cluster.sweep_every(state.settings.idle_timeout);
        }
        for Planned {
            cluster,
            probe: wanted,
            ..
        } in touched
        {
            let mut probe = cluster.probe.lock().unwrap_or_else(|p| p.into_inner());
            let protocol = cluster.protocol();
            let keep = match (&*probe, wanted) {
                (Some((hc, p, _)), Some(want)) => hc == want && *p == protocol,
                (None, None) => true,
                _ => false,
            };
            if keep {
                continue;
            }
            if let Some((_, _, task)) = probe.take() {
                task.abort();
            }
            match wanted {
                Some(hc) => {
                    let task = health::spawn(cluster, Probe::from_config(hc, protocol));
                    *probe = Some((hc.clone(), protocol, task));
                }
                None => {
                    // Nothing will probe them any more: a verdict from a
                    // removed health check must not keep them out for good.
                    for ep in &cluster.state().set.endpoints {
                        ep.stats.set_healthy(true);
                    }
                }
            }
        }
        if plan.only.is_some() {
            return; // The same clusters run.
        }
        let mut running = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        for gone in running.keys().filter(|n| !plan.clusters.contains_key(*n)) {
            if let Some(c) = running.get(gone)
                && let Some((_, _, task)) = c.probe.lock().unwrap_or_else(|p| p.into_inner()).take()
            {
                task.abort();
            }
        }
        *running = plan.clusters;
    }
}

/// A cluster's settings from its config. The breaker and the retry budget
/// are the running ones when their own config did not change: their counts
/// and tokens carry over.
fn settings(
    name: &str,
    c: &model::Cluster,
    metrics: &Arc<Metrics>,
    identity: Option<&Arc<Identity>>,
    old: Option<&ClusterState>,
) -> Settings {
    let name: Arc<str> = Arc::from(name);
    let mut policy = ClusterPolicy::from_config(name.clone(), c, metrics);
    if let Some(old) = old {
        let was = &old.settings.config;
        if was.circuit_breaker == c.circuit_breaker {
            policy.breaker = old.settings.policy.breaker.clone();
        }
        if was.retry_budget == c.retry_budget {
            policy.budget = old.settings.policy.budget.clone();
        }
    }
    Settings {
        config: model::Cluster {
            endpoints: Vec::new(),
            ..c.clone()
        },
        protocol: c.protocol,
        connect_timeout: c.connect_timeout.get(),
        idle_timeout: c.idle_timeout.get(),
        outlier: c.outlier_detection.as_ref().map(OutlierConfig::from_config),
        health_checked: c.health_check.is_some(),
        policy,
        tls: c
            .tls
            .as_ref()
            .map(|t| Connector::new(identity, &t.server_identity)),
        identity: c
            .tls
            .as_ref()
            .map(|t| Arc::from(t.server_identity.as_str())),
        passthrough: (c.discovery == Some(model::Discovery::OriginalDestination)).then(|| {
            c.original_destination
                .as_ref()
                .and_then(|o| o.host.parse().ok())
        }),
        name,
    }
}
