//! The control feed (`control: { address, node }`): an xDS v3 ADS client.
//!
//! One task, one loop ([`Client::run`]): connect, open an aggregated
//! stream (delta where the server offers it, else state of the world),
//! subscribe, and for every response: decode it, fold it into a working
//! copy of the resources, subscribe to the route configurations and
//! endpoints it names, and once nothing named is missing (clusters are warm
//! before the listeners that use them), decode the whole set into Skiff's
//! model, put the proxy's own file beside it, validate, and deliver it like
//! any other source. The proxy's answer becomes the ACK (with the new
//! version) or the NACK (with the problems, one per line) of every response
//! that went into it. A response that cannot even be decoded is NACKed at
//! once.
//!
//! When the stream breaks, the proxy keeps serving what it last applied,
//! and the client reconnects with jittered exponential backoff and
//! resyncs: a delta stream tells the server the versions it holds, a
//! state-of-the-world stream the version of each type.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, so tests can pause it.
use tokio::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::Streaming;
use tracing::{debug, info, warn};

use super::{Delivery, Outcome, Update};
use crate::model::{Config, ControlFeed};
use crate::validate::validate_cluster;
use crate::xds::{self, Resources};
use crate::{Snapshot, validate};

/// The first wait before reconnecting; doubled per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a config may wait for what it names before the log says so.
pub const WARMING_WARN: Duration = Duration::from_secs(10);
/// The largest response accepted: a mesh's full cluster list fits well.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// gRPC's status code for a NACK's `error_detail`: INVALID_ARGUMENT.
const INVALID_ARGUMENT: i32 = 3;

/// What `/config` shows of the feed, and what `/ready` waits for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedState {
    pub address: String,
    pub node: String,
    /// `delta` or `sotw` once a stream is open.
    pub protocol: Option<&'static str>,
    pub connected: bool,
    /// Per type (short name), the version applied and ACKed.
    pub versions: BTreeMap<String, String>,
    /// Configs applied from the feed.
    pub applied: u64,
    pub last_nack: Option<FeedNack>,
    /// What the config in hand names and has not been sent yet.
    pub waiting_for: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedNack {
    pub type_url: String,
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// The feed's state, shared with the admin server; tests wait on it.
#[derive(Debug)]
pub struct FeedStatus {
    state: Mutex<FeedState>,
    changed: watch::Sender<u64>,
}

impl FeedStatus {
    fn new(address: String, node: String) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(FeedState {
                address,
                node,
                ..Default::default()
            }),
            changed: watch::channel(0).0,
        })
    }

    pub fn get(&self) -> FeedState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut FeedState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.send_modify(|n| *n += 1);
    }

    /// Resolves once `pred` holds of the state.
    pub async fn wait_for(&self, pred: impl Fn(&FeedState) -> bool) {
        let mut rx = self.changed.subscribe();
        loop {
            if pred(&self.get()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A running feed: its deliveries, its task, and its state.
pub struct Subscription {
    pub updates: mpsc::Receiver<Delivery>,
    pub task: JoinHandle<()>,
    pub status: Arc<FeedStatus>,
}

/// Starts the feed of `base` (the proxy's own file, applied as version
/// `base.version`, with `control:` set; without it, nothing is started
/// and `None` returned).
pub fn subscribe(base: &Snapshot) -> Option<Subscription> {
    let feed = base.config.control.clone()?;
    let node = node_id(&feed);
    let status = FeedStatus::new(feed.address.clone(), node.clone());
    let (tx, rx) = mpsc::channel(1);
    let client = Client::new(base, feed, node, tx, status.clone());
    let task = tokio::spawn(client.run());
    Some(Subscription {
        updates: rx,
        task,
        status,
    })
}

/// `control.node`, else the host name, else `skiff`.
fn node_id(feed: &ControlFeed) -> String {
    feed.node
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "skiff".to_owned())
}

/// One response, whichever protocol brought it.
struct Incoming {
    type_url: String,
    nonce: String,
    /// SotW: the type's version; delta: the server's system version.
    version: String,
    /// Each resource, with its version (delta only).
    resources: Vec<(Option<String>, Any)>,
    removed: Vec<String>,
    /// SotW listeners and clusters: the response holds the whole set, and
    /// what it lacks is gone.
    whole: bool,
}

enum Wire {
    Sotw(mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>),
    Delta(
        mpsc::Sender<DeltaDiscoveryRequest>,
        Streaming<DeltaDiscoveryResponse>,
    ),
}

struct Client {
    address: String,
    node: Node,
    base: Config,
    /// Names the proxy's own file defines: the feed may not redefine them,
    /// and routes may send to its clusters.
    own_clusters: BTreeSet<String>,
    /// The proxy's config version: the base's, then one more per apply.
    version: u64,
    source: String,
    tx: mpsc::Sender<Delivery>,
    status: Arc<FeedStatus>,

    /// What was last applied, and each resource's (delta) version.
    accepted: Resources,
    accepted_versions: BTreeMap<(String, String), String>,
    /// Per type, the version last applied (SotW's `version_info`).
    type_versions: BTreeMap<String, String>,
    /// What has arrived since, folded in.
    working: Resources,
    working_versions: BTreeMap<(String, String), String>,
    /// Per type, the last response's nonce.
    nonces: BTreeMap<String, String>,
    /// Responses folded into `working` and not yet answered: type → (nonce, version).
    pending: BTreeMap<String, (String, String)>,
    /// Route configurations and endpoints subscribed to by name.
    names: BTreeMap<String, BTreeSet<String>>,
    /// Types heard from at least once (listeners and clusters are needed
    /// before a first config).
    heard: BTreeSet<String>,
    /// Whether the server answered the delta call with UNIMPLEMENTED.
    sotw_only: bool,
    warming_since: Option<Instant>,
    warned: bool,
    /// The snapshot last applied from the feed, shared with the proxy: an
    /// endpoint update is made from it.
    applied: Option<Arc<Snapshot>>,
    /// Resources the working copy may hold differently from the accepted
    /// one, as (type, name): a superset of what differs. An update compares,
    /// decodes and copies these alone, so it costs what it changed, not
    /// what the feed holds (10,000 clusters).
    changed: BTreeSet<(String, String)>,
    /// Whether the working copy lacked nothing it names when last settled:
    /// an endpoint update that removes nothing cannot change that.
    complete: bool,
    /// The type of the response being settled.
    newest: Option<String>,
    /// Responses NACKed whose resources are still the working copy's:
    /// type → (nonce, version). ACKed once a config holding them applies.
    refused: BTreeMap<String, (String, String)>,
}

impl Client {
    fn new(
        base: &Snapshot,
        feed: ControlFeed,
        node: String,
        tx: mpsc::Sender<Delivery>,
        status: Arc<FeedStatus>,
    ) -> Self {
        // `host:port` is taken as plaintext gRPC, as Envoy's bootstrap does.
        let address = match feed.address.contains("://") {
            true => feed.address,
            false => format!("http://{}", feed.address),
        };
        Self {
            source: format!("control:{address}"),
            address,
            node: Node {
                id: node,
                cluster: "skiff".to_owned(),
                user_agent_name: "skiff".to_owned(),
                user_agent_version_type: Some(
                    envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                        env!("CARGO_PKG_VERSION").to_owned(),
                    ),
                ),
                ..Default::default()
            },
            own_clusters: base.config.clusters.keys().cloned().collect(),
            base: base.config.clone(),
            version: base.version,
            tx,
            status,
            accepted: Resources::default(),
            accepted_versions: BTreeMap::new(),
            type_versions: BTreeMap::new(),
            working: Resources::default(),
            working_versions: BTreeMap::new(),
            nonces: BTreeMap::new(),
            pending: BTreeMap::new(),
            names: BTreeMap::new(),
            heard: BTreeSet::new(),
            sotw_only: false,
            warming_since: None,
            warned: false,
            applied: None,
            changed: BTreeSet::new(),
            complete: false,
            newest: None,
            refused: BTreeMap::new(),
        }
    }

    /// Connects, serves a stream until it breaks, backs off, and again,
    /// until the proxy stops listening.
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let result = self.session().await;
            self.status.update(|s| s.connected = false);
            if self.tx.is_closed() {
                return;
            }
            match result {
                Ok(()) => {
                    info!(address = %self.address, "control stream closed by the server; reconnecting")
                }
                Err(why) => {
                    warn!(address = %self.address, error = %why, "control stream failed; serving the last good config and reconnecting")
                }
            }
            // A stream that lived a while was healthy: start over.
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            // Full jitter in [backoff/2, backoff): replicas restarted together
            // do not reconnect in step.
            let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
            debug!(?wait, "reconnecting after");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            // Answers owed to the old stream are owed to nobody now. The
            // new stream starts from what runs: the server sends whatever
            // differs (a config refused before is tried again, once).
            self.pending.clear();
            self.refused.clear();
            self.working = self.accepted.clone();
            self.working_versions = self.accepted_versions.clone();
            self.changed.clear();
            self.complete = false;
            self.nonces.clear();
            let wanted = self.accepted.wanted();
            self.names = BTreeMap::from([
                (xds::ROUTE.to_owned(), wanted.routes),
                (xds::ENDPOINT.to_owned(), wanted.endpoints),
            ]);
            self.warming_since = None;
            self.warned = false;
            self.status.update(|s| s.waiting_for = None);
            // A state-of-the-world server that went away may come back as
            // another that has delta (a rolling upgrade): ask again. One
            // that refused delta just now is not asked again at once.
            if self.status.get().protocol == Some("sotw") {
                self.sotw_only = false;
            }
        }
    }

    async fn session(&mut self) -> Result<(), String> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.address.clone())
            .map_err(|e| format!("bad address: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {}", crate::error_chain(&e)))?;
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE);
        let mut wire = None;
        if !self.sotw_only {
            let (tx, rx) = mpsc::channel(16);
            for r in self.delta_hello() {
                let _ = tx.try_send(r);
            }
            match client
                .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(resp) => wire = Some(Wire::Delta(tx, resp.into_inner())),
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    info!(address = %self.address, "the control server has no delta xDS; using state of the world");
                    self.sotw_only = true;
                }
                Err(s) => return Err(format!("delta stream refused: {s}")),
            }
        }
        let mut wire = match wire {
            Some(w) => w,
            None => {
                let (tx, rx) = mpsc::channel(16);
                for r in self.sotw_hello() {
                    let _ = tx.try_send(r);
                }
                let resp = client
                    .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map_err(|s| format!("stream refused: {s}"))?;
                Wire::Sotw(tx, resp.into_inner())
            }
        };
        let protocol = match wire {
            Wire::Delta(..) => "delta",
            Wire::Sotw(..) => "sotw",
        };
        info!(address = %self.address, node = %self.node.id, protocol, "control stream open");
        self.status.update(|s| {
            s.connected = true;
            s.protocol = Some(protocol);
        });
        let mut answered = false;
        loop {
            let warm_deadline = self
                .warming_since
                .filter(|_| !self.warned)
                .map(|t| t + WARMING_WARN);
            let incoming = tokio::select! {
                m = next(&mut wire) => match m {
                    Ok(m) => m,
                    // A server (or a proxy before it) may refuse delta on the
                    // stream rather than the call.
                    Err(s) if s.code() == tonic::Code::Unimplemented && protocol == "delta" && !answered => {
                        info!(address = %self.address, "the control server has no delta xDS; using state of the world");
                        self.sotw_only = true;
                        return Err(format!("delta refused: {s}"));
                    }
                    Err(s) => return Err(s.to_string()),
                },
                () = sleep_until(warm_deadline) => {
                    self.warned = true;
                    let missing = self.missing();
                    warn!(waiting_for = %missing, "the control plane's config names resources it has not sent; the last good config keeps serving");
                    continue;
                }
                () = self.tx.closed() => return Ok(()),
            };
            let Some(incoming) = incoming else {
                return Ok(());
            };
            answered = true;
            self.on_response(incoming, &mut wire).await?;
        }
    }

    /// What a new stream asks for first: wildcard listeners and clusters,
    /// and the route configurations and endpoints in hand, by name.
    fn hello(&self) -> Vec<(&'static str, BTreeSet<String>)> {
        xds::TYPES
            .iter()
            .map(|t| (*t, self.names.get(*t).cloned().unwrap_or_default()))
            .filter(|(t, names)| *t == xds::CLUSTER || *t == xds::LISTENER || !names.is_empty())
            .collect()
    }

    /// A delta stream's first requests, with the version of every resource
    /// held.
    fn delta_hello(&self) -> Vec<DeltaDiscoveryRequest> {
        self.hello()
            .into_iter()
            .enumerate()
            .map(|(i, (type_url, names))| DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: type_url.to_owned(),
                resource_names_subscribe: names.into_iter().collect(),
                initial_resource_versions: self
                    .accepted_versions
                    .iter()
                    .filter(|((t, _), _)| t == type_url)
                    .map(|((_, n), v)| (n.clone(), v.clone()))
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    /// A state-of-the-world stream's first requests, with the version of
    /// each type applied.
    fn sotw_hello(&self) -> Vec<DiscoveryRequest> {
        self.hello()
            .into_iter()
            .enumerate()
            .map(|(i, (type_url, names))| DiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: type_url.to_owned(),
                resource_names: names.into_iter().collect(),
                version_info: self
                    .type_versions
                    .get(type_url)
                    .cloned()
                    .unwrap_or_default(),
                ..Default::default()
            })
            .collect()
    }

    async fn on_response(&mut self, inc: Incoming, wire: &mut Wire) -> Result<(), String> {
        let short = short(&inc.type_url).to_owned();
        debug!(type_url = %short, version = %inc.version, resources = inc.resources.len(), removed = inc.removed.len(), "response");
        self.nonces.insert(inc.type_url.clone(), inc.nonce.clone());
        if !xds::TYPES.contains(&inc.type_url.as_str()) {
            let why = format!(
                "type {:?} is not one Skiff takes ({})",
                inc.type_url,
                xds::TYPES.join(", ")
            );
            return self.nack(wire, &inc.type_url, &inc.nonce, &why).await;
        }
        // 1. Decode every resource, or refuse the response.
        let mut fresh = Resources::default();
        let mut problems = Vec::new();
        let mut versions = Vec::new();
        for (version, any) in &inc.resources {
            if any.type_url != inc.type_url {
                problems.push(format!(
                    "a {} in a response for {short}",
                    short_type(&any.type_url)
                ));
                continue;
            }
            match xds::insert(&mut fresh, any) {
                Ok(name) => versions.push((name, version.clone())),
                Err(e) => problems.push(format!("{short}: {e}")),
            }
        }
        if !problems.is_empty() {
            return self
                .nack(wire, &inc.type_url, &inc.nonce, &problems.join("\n"))
                .await;
        }
        // Clusters that were there already and keep their assignment's
        // name (a settings change) name the same endpoints as before.
        let clusters_keep_names = inc.type_url == xds::CLUSTER
            && fresh.clusters.iter().all(|(name, c)| {
                self.working
                    .clusters
                    .get(name)
                    .is_some_and(|old| xds::eds_service(name, old) == xds::eds_service(name, c))
            });
        // 2. Fold it into the working copy.
        let fresh_names: Vec<String> = versions.iter().map(|(n, _)| n.clone()).collect();
        self.fold(&inc, fresh, versions);
        self.heard.insert(inc.type_url.clone());
        self.newest = Some(inc.type_url.clone());
        self.refused.remove(&inc.type_url);
        self.pending.insert(
            inc.type_url.clone(),
            (inc.nonce.clone(), inc.version.clone()),
        );
        // 3. Follow what it names. Endpoints name nothing, and clusters
        // that keep their names name what they did: an update of either
        // that removes none leaves what is wanted, and what is missing of
        // it, as they were (no pass over every resource held).
        let endpoints_only = inc.type_url == xds::ENDPOINT;
        let names_fixed =
            (endpoints_only || clusters_keep_names) && inc.removed.is_empty() && !inc.whole;
        match (names_fixed, endpoints_only) {
            (true, true) => self.drop_unasked(&fresh_names),
            (true, false) => {}
            (false, _) => self.resubscribe(wire).await?,
        }
        // 4. Apply, if nothing is missing.
        self.settle(wire, names_fixed).await
    }

    fn fold(&mut self, inc: &Incoming, fresh: Resources, versions: Vec<(String, Option<String>)>) {
        fn fold_one<T>(
            dst: &mut BTreeMap<String, T>,
            src: BTreeMap<String, T>,
            whole: bool,
            removed: &[String],
        ) {
            if whole {
                *dst = src;
                return;
            }
            for name in removed {
                dst.remove(name);
            }
            dst.extend(src);
        }
        let (whole, removed) = (inc.whole, inc.removed.as_slice());
        let t = &inc.type_url;
        if whole {
            for name in self.working.names(t) {
                self.changed.insert((t.clone(), name));
            }
        }
        for name in removed.iter().chain(versions.iter().map(|(n, _)| n)) {
            self.changed.insert((t.clone(), name.clone()));
        }
        match inc.type_url.as_str() {
            xds::LISTENER => fold_one(&mut self.working.listeners, fresh.listeners, whole, removed),
            xds::ROUTE => fold_one(&mut self.working.routes, fresh.routes, whole, removed),
            xds::CLUSTER => fold_one(&mut self.working.clusters, fresh.clusters, whole, removed),
            _ => fold_one(&mut self.working.endpoints, fresh.endpoints, whole, removed),
        }
        if whole {
            self.working_versions.retain(|(ty, _), _| ty != t);
        }
        for name in removed {
            self.working_versions.remove(&(t.clone(), name.clone()));
        }
        for (name, version) in versions {
            match version {
                Some(v) => self.working_versions.insert((t.clone(), name), v),
                None => self.working_versions.remove(&(t.clone(), name)),
            };
        }
    }

    /// Subscribes to the route configurations and endpoints the working
    /// copy names (and drops what nothing names any more).
    async fn resubscribe(&mut self, wire: &mut Wire) -> Result<(), String> {
        // What the server's latest state names, and what the running config
        // does: after a refusal the proxy still serves the applied copy and
        // must go on hearing about what it uses.
        let mut wanted = self.working.wanted();
        let running = self.accepted.wanted();
        wanted.routes.extend(running.routes);
        wanted.endpoints.extend(running.endpoints);
        let changed = &mut self.changed;
        self.working.routes.retain(|n, _| {
            let keep = wanted.routes.contains(n);
            if !keep {
                changed.insert((xds::ROUTE.to_owned(), n.clone()));
            }
            keep
        });
        self.working.endpoints.retain(|n, _| {
            let keep = wanted.endpoints.contains(n);
            if !keep {
                changed.insert((xds::ENDPOINT.to_owned(), n.clone()));
            }
            keep
        });
        let w = &self.working;
        self.working_versions.retain(|(t, n), _| match t.as_str() {
            xds::ROUTE => w.routes.contains_key(n),
            xds::ENDPOINT => w.endpoints.contains_key(n),
            _ => true,
        });
        for (type_url, now) in [
            (xds::ROUTE, wanted.routes),
            (xds::ENDPOINT, wanted.endpoints),
        ] {
            let before = self.names.get(type_url).cloned().unwrap_or_default();
            if before == now {
                continue;
            }
            self.names.insert(type_url.to_owned(), now.clone());
            match wire {
                Wire::Sotw(tx, _) => {
                    let req = DiscoveryRequest {
                        type_url: type_url.to_owned(),
                        resource_names: now.into_iter().collect(),
                        version_info: self
                            .type_versions
                            .get(type_url)
                            .cloned()
                            .unwrap_or_default(),
                        response_nonce: self.nonces.get(type_url).cloned().unwrap_or_default(),
                        ..Default::default()
                    };
                    tx.send(req).await.map_err(|_| "stream closed".to_owned())?;
                }
                Wire::Delta(tx, _) => {
                    let req = DeltaDiscoveryRequest {
                        type_url: type_url.to_owned(),
                        resource_names_subscribe: now.difference(&before).cloned().collect(),
                        resource_names_unsubscribe: before.difference(&now).cloned().collect(),
                        ..Default::default()
                    };
                    tx.send(req).await.map_err(|_| "stream closed".to_owned())?;
                }
            }
        }
        Ok(())
    }

    /// Forgets the endpoints in `fresh` that nothing subscribed to (a
    /// server may send more than asked).
    fn drop_unasked(&mut self, fresh: &[String]) {
        let asked = self.names.get(xds::ENDPOINT);
        for name in fresh {
            if !asked.is_some_and(|a| a.contains(name)) {
                self.working.endpoints.remove(name);
                self.working_versions
                    .remove(&(xds::ENDPOINT.to_owned(), name.clone()));
            }
        }
    }

    fn missing(&self) -> xds::Wanted {
        self.working.missing(&self.own_clusters)
    }

    /// Applies the working copy if it is complete, and answers every
    /// response that went into it. `names_fixed`: the response named
    /// nothing new and removed nothing.
    async fn settle(&mut self, wire: &mut Wire, names_fixed: bool) -> Result<(), String> {
        if !(self.heard.contains(xds::LISTENER) && self.heard.contains(xds::CLUSTER)) {
            return Ok(()); // The first config needs both.
        }
        let missing = match names_fixed && self.complete {
            true => xds::Wanted::default(),
            false => self.missing(),
        };
        self.complete = missing.is_empty();
        if !missing.is_empty() {
            if self.warming_since.is_none() {
                self.warming_since = Some(Instant::now());
            }
            let text = missing.to_string();
            debug!(waiting_for = %text, "config incomplete");
            self.status.update(|s| s.waiting_for = Some(text));
            return Ok(());
        }
        if self.warming_since.take().is_some() || self.warned {
            self.warned = false;
            self.status.update(|s| s.waiting_for = None);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        // Nothing new (a resync after a reconnect, a response that repeats
        // what is held): answer it without applying the same config again.
        let same = self
            .changed
            .iter()
            .all(|(t, n)| self.working.same(&self.accepted, t, n));
        if self.applied.is_some() && same {
            self.catch_up();
            let pending = std::mem::take(&mut self.pending);
            for (type_url, (nonce, version)) in pending {
                self.ack(wire, &type_url, &nonce, &version).await?;
            }
            return Ok(());
        }
        let update = match self.cluster_update() {
            Some(update) => update,
            None => self.whole_update(&self.working),
        };
        let Some(outcome) = self.deliver(update).await else {
            return Ok(()); // The proxy stopped.
        };
        let problems = match outcome {
            Outcome::Applied => {
                self.catch_up();
                // What was refused before and runs now (the fix came in
                // another type) is ACKed late, with its own nonce: the
                // server then knows what this proxy runs.
                let mut answered = std::mem::take(&mut self.refused);
                answered.append(&mut self.pending);
                for (type_url, (nonce, version)) in answered {
                    self.ack(wire, &type_url, &nonce, &version).await?;
                }
                return Ok(());
            }
            Outcome::Rejected(problems) => problems,
        };
        // Refused. What the server sent stays the working copy (it will not
        // send it again until it changes), and the running config stays.
        // One bad resource must not hold back every other type: the newest
        // response's type alone, over what runs, may still apply.
        let message = problems.join("\n");
        warn!(problems = %message, "the control plane's config was refused; keeping the last good config");
        let mut pending = std::mem::take(&mut self.pending);
        if let Some(newest) = self.newest.clone()
            && let Some(alone) = self.overlay(&newest)
            && let Some(Outcome::Applied) = self.deliver(self.whole_update(&alone)).await
        {
            info!(
                type_url = short(&newest),
                "applied the newest update alone; the rest stays refused"
            );
            // `changed` still covers what differs: `alone` took its
            // changes from the working copy.
            self.accepted_versions = self.versions_of(&alone);
            self.accepted = alone;
            if let Some((nonce, version)) = pending.remove(&newest) {
                self.ack(wire, &newest, &nonce, &version).await?;
            }
        }
        for (type_url, (nonce, version)) in pending {
            self.nack(wire, &type_url, &nonce, &message).await?;
            self.refused.insert(type_url, (nonce, version));
        }
        Ok(())
    }

    /// Makes the accepted copy the working one, resource by changed
    /// resource.
    fn catch_up(&mut self) {
        for key in std::mem::take(&mut self.changed) {
            let (t, n) = &key;
            self.accepted.copy_from(&self.working, t, n);
            match self.working_versions.get(&key) {
                Some(v) => self.accepted_versions.insert(key.clone(), v.clone()),
                None => self.accepted_versions.remove(&key),
            };
        }
    }

    /// `res` decoded whole, beside the proxy's own file, validated: the
    /// next snapshot, or why not.
    fn whole_update(&self, res: &Resources) -> Result<Update, Vec<String>> {
        let config = match xds::decode(res) {
            Ok(dynamic) => combine(&self.base, dynamic)?,
            Err(refusals) => return Err(refusals.iter().map(ToString::to_string).collect()),
        };
        Ok(Update::Valid(Arc::new(self.next_snapshot(config))))
    }

    fn next_snapshot(&self, config: Config) -> Snapshot {
        Snapshot {
            version: self.version + 1,
            source: self.source.clone(),
            config,
        }
    }

    /// When all that changed since the last apply is clusters the applied
    /// snapshot holds (their assignments, or the clusters themselves):
    /// that snapshot with those clusters decoded again and checked on their
    /// own, which the proxy applies by doing work for those clusters alone.
    /// `None` for any other change (a listener, a route table, a cluster
    /// added or removed, a cluster's `tls`, which other parts of the config
    /// are checked against), which is decoded whole.
    fn cluster_update(&self) -> Option<Result<Update, Vec<String>>> {
        let applied = self.applied.as_ref()?;
        let mut clusters = BTreeSet::new();
        let mut assignments = BTreeSet::new();
        for (t, n) in &self.changed {
            match t.as_str() {
                xds::CLUSTER => {
                    clusters.insert(n.as_str());
                }
                xds::ENDPOINT => {
                    assignments.insert(n.as_str());
                }
                _ if self.working.same(&self.accepted, t, n) => {}
                _ => return None,
            }
        }
        if !assignments.is_empty() {
            for (name, c) in &self.working.clusters {
                if xds::eds_service(name, c).is_some_and(|s| assignments.contains(s)) {
                    clusters.insert(name);
                }
            }
        }
        if clusters.is_empty() {
            return None;
        }
        let mut decoded = Vec::with_capacity(clusters.len());
        let mut problems = Vec::new();
        for name in clusters {
            let old = applied.config.clusters.get(name)?;
            let c = self.working.clusters.get(name)?;
            if self.own_clusters.contains(name) {
                return None; // Refused whole, with its reason.
            }
            match xds::decode_cluster(c, &self.working) {
                // `tls` is checked against `identity` and the listeners.
                Ok(new) if new.tls != old.tls => return None,
                Ok(new) => {
                    problems.extend(validate_cluster(name, &new).iter().map(ToString::to_string));
                    decoded.push((name.to_owned(), new));
                }
                Err(refusals) => problems.extend(refusals.iter().map(ToString::to_string)),
            }
        }
        if !problems.is_empty() {
            return Some(Err(problems));
        }
        let names = decoded.iter().map(|(n, _)| n.clone()).collect();
        let mut config = applied.config.clone();
        config.clusters.extend(decoded);
        Some(Ok(Update::Clusters {
            over: applied.clone(),
            snapshot: Arc::new(self.next_snapshot(config)),
            clusters: names,
        }))
    }

    /// Delivers `update` (or its refusal) and waits for the proxy's answer;
    /// `None` if it has stopped.
    async fn deliver(&mut self, update: Result<Update, Vec<String>>) -> Option<Outcome> {
        let update = match update {
            Ok(u) => u,
            Err(problems) => return Some(Outcome::Rejected(problems)),
        };
        let snapshot = match &update {
            Update::Valid(s) | Update::Clusters { snapshot: s, .. } => s.clone(),
            Update::Invalid(_) => return None,
        };
        let (delivery, outcome) = Delivery::new(update);
        self.tx.send(delivery).await.ok()?;
        let outcome = outcome.await.ok()?;
        if outcome == Outcome::Applied {
            self.version += 1;
            self.applied = Some(snapshot);
            self.status.update(|s| s.applied += 1);
        }
        Some(outcome)
    }

    /// What runs, with the working copy's resources of `type_url` (and the
    /// route configurations and endpoints they name) over it; `None` when
    /// that changes nothing or is not complete.
    fn overlay(&self, type_url: &str) -> Option<Resources> {
        let mut res = self.accepted.clone();
        let w = &self.working;
        match type_url {
            xds::LISTENER => res.listeners = w.listeners.clone(),
            xds::CLUSTER => res.clusters = w.clusters.clone(),
            xds::ROUTE => res.routes.extend(w.routes.clone()),
            _ => res.endpoints.extend(w.endpoints.clone()),
        }
        let wanted = res.wanted();
        for n in &wanted.routes {
            if let (false, Some(r)) = (res.routes.contains_key(n), w.routes.get(n)) {
                res.routes.insert(n.clone(), r.clone());
            }
        }
        for n in &wanted.endpoints {
            if let (false, Some(e)) = (res.endpoints.contains_key(n), w.endpoints.get(n)) {
                res.endpoints.insert(n.clone(), e.clone());
            }
        }
        let changes = res != self.accepted && res != self.working;
        (changes && res.missing(&self.own_clusters).is_empty()).then_some(res)
    }

    /// The (delta) versions of the resources in `res`: those the working
    /// copy's versions describe, where `res` holds the same resource.
    fn versions_of(&self, res: &Resources) -> BTreeMap<(String, String), String> {
        let same = |t: &str, n: &str| match t {
            xds::LISTENER => res.listeners.get(n) == self.working.listeners.get(n),
            xds::ROUTE => res.routes.get(n) == self.working.routes.get(n),
            xds::CLUSTER => res.clusters.get(n) == self.working.clusters.get(n),
            _ => res.endpoints.get(n) == self.working.endpoints.get(n),
        };
        let mut out: BTreeMap<(String, String), String> = self
            .working_versions
            .iter()
            .filter(|((t, n), _)| same(t, n))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // What runs and was not replaced keeps the version it had.
        for (k, v) in &self.accepted_versions {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
        out
    }

    async fn ack(
        &mut self,
        wire: &mut Wire,
        type_url: &str,
        nonce: &str,
        version: &str,
    ) -> Result<(), String> {
        self.type_versions
            .insert(type_url.to_owned(), version.to_owned());
        let versions = self
            .type_versions
            .iter()
            .map(|(t, v)| (short(t).to_owned(), v.clone()))
            .collect();
        self.status.update(|s| s.versions = versions);
        self.answer(wire, type_url, nonce, version, None).await
    }

    async fn nack(
        &mut self,
        wire: &mut Wire,
        type_url: &str,
        nonce: &str,
        why: &str,
    ) -> Result<(), String> {
        warn!(type_url = short(type_url), error = %why, "NACK");
        let nack = FeedNack {
            type_url: type_url.to_owned(),
            message: why.to_owned(),
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        self.status.update(|s| s.last_nack = Some(nack));
        let kept = self
            .type_versions
            .get(type_url)
            .cloned()
            .unwrap_or_default();
        self.answer(wire, type_url, nonce, &kept, Some(why)).await
    }

    /// ACK (no error) or NACK: the version held, the nonce answered.
    async fn answer(
        &mut self,
        wire: &mut Wire,
        type_url: &str,
        nonce: &str,
        version: &str,
        error: Option<&str>,
    ) -> Result<(), String> {
        let error_detail = error.map(|m| RpcStatus {
            code: INVALID_ARGUMENT,
            message: m.to_owned(),
            details: Vec::new(),
        });
        let sent = match wire {
            Wire::Sotw(tx, _) => tx
                .send(DiscoveryRequest {
                    version_info: version.to_owned(),
                    resource_names: self
                        .names
                        .get(type_url)
                        .map(|n| n.iter().cloned().collect())
                        .unwrap_or_default(),
                    type_url: type_url.to_owned(),
                    response_nonce: nonce.to_owned(),
                    error_detail,
                    ..Default::default()
                })
                .await
                .is_ok(),
            Wire::Delta(tx, _) => tx
                .send(DeltaDiscoveryRequest {
                    type_url: type_url.to_owned(),
                    response_nonce: nonce.to_owned(),
                    error_detail,
                    ..Default::default()
                })
                .await
                .is_ok(),
        };
        match sent {
            true => Ok(()),
            false => Err("stream closed".to_owned()),
        }
    }
}

/// The next response, normalised; `None` when the server ended the stream.
async fn next(wire: &mut Wire) -> Result<Option<Incoming>, tonic::Status> {
    match wire {
        Wire::Sotw(_, rx) => Ok(rx.message().await?.map(|r| Incoming {
            whole: r.type_url == xds::LISTENER || r.type_url == xds::CLUSTER,
            type_url: r.type_url,
            nonce: r.nonce,
            version: r.version_info,
            resources: r.resources.into_iter().map(|a| (None, a)).collect(),
            removed: Vec::new(),
        })),
        Wire::Delta(_, rx) => Ok(rx.message().await?.map(|r| Incoming {
            type_url: r.type_url,
            nonce: r.nonce,
            version: r.system_version_info,
            resources: r
                .resources
                .into_iter()
                .filter_map(|res| Some((Some(res.version), res.resource?)))
                .collect(),
            removed: r.removed_resources,
            whole: false,
        })),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

fn short_type(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// The proxy's own file with the feed's resources beside it, validated as
/// one config. A name in both is refused: which one was meant cannot be told.
fn combine(base: &Config, dynamic: Config) -> Result<Config, Vec<String>> {
    let mut problems = Vec::new();
    let mut config = base.clone();
    let own = base.listeners.len();
    for l in dynamic.listeners {
        if base.listeners.iter().any(|b| b.name == l.name) {
            problems.push(format!(
                "Listener {:?}: also in the proxy's own file; a name may come from one place",
                l.name
            ));
        }
        config.listeners.push(l);
    }
    for (name, table) in dynamic.routes {
        if base.routes.contains_key(&name) {
            problems.push(format!("RouteConfiguration {name:?}: also in the proxy's own file; a name may come from one place"));
        }
        config.routes.insert(name, table);
    }
    for (name, cluster) in dynamic.clusters {
        if base.clusters.contains_key(&name) {
            problems.push(format!(
                "Cluster {name:?}: also in the proxy's own file; a name may come from one place"
            ));
        }
        config.clusters.insert(name, cluster);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let problems: Vec<String> = validate(&config)
        .into_iter()
        .map(|invalid| {
            // Say which resource, not where in the merged list.
            if let Some(rest) = invalid.path.strip_prefix("listeners[")
                && let Some((i, tail)) = rest.split_once(']')
                && let Ok(i) = i.parse::<usize>()
                && i >= own
                && let Some(l) = config.listeners.get(i)
            {
                return format!("Listener {:?}{tail}: {}", l.name, invalid.message);
            }
            invalid.to_string()
        })
        .collect();
    match problems.is_empty() {
        true => Ok(config),
        false => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;

    use super::*;

    const SERVICES: &str = r#"
listeners:
  - { name: main, address: "127.0.0.1:8080", routes: main }
routes:
  main:
    - { name: one, match: { host: one.example }, cluster: one }
    - { name: two, match: { host: two.example }, cluster: two }
clusters:
  one: { endpoints: ["127.0.0.1:1001"] }
  two: { endpoints: ["127.0.0.1:2001"] }
"#;

    /// A client whose feed holds `SERVICES`, applied.
    fn client() -> Client {
        let base = Snapshot {
            version: 1,
            source: "skiff.yaml".to_owned(),
            config: crate::load_str("control: { address: 127.0.0.1:1 }\n", "skiff.yaml").unwrap(),
        };
        let feed = base.config.control.clone().unwrap();
        let status = FeedStatus::new(feed.address.clone(), "n".to_owned());
        let mut c = Client::new(&base, feed, "n".to_owned(), mpsc::channel(1).0, status);
        let res = xds::encode(&crate::load_str(SERVICES, "services.yaml").unwrap());
        let config = combine(&c.base, xds::decode(&res).unwrap()).unwrap();
        c.applied = Some(Arc::new(c.next_snapshot(config)));
        c.version += 1;
        c.working = res.clone();
        c.accepted = res;
        c
    }

    /// Moves cluster `name`'s endpoints to `port` in the working copy.
    fn move_endpoints(c: &mut Client, name: &str, port: u32) {
        let cla = c.working.endpoints.get_mut(name).unwrap();
        for lb in cla.endpoints.iter_mut().flat_map(|l| &mut l.lb_endpoints) {
            if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &mut lb.host_identifier
                && let Some(address::Address::SocketAddress(sa)) =
                    e.address.as_mut().and_then(|a| a.address.as_mut())
            {
                sa.port_specifier = Some(socket_address::PortSpecifier::PortValue(port));
            }
        }
        c.changed
            .insert((xds::ENDPOINT.to_owned(), name.to_owned()));
    }

    #[test]
    fn an_endpoint_change_alone_is_sent_as_a_cluster_update() {
        let mut c = client();
        move_endpoints(&mut c, "two", 2002);
        let Some(Ok(Update::Clusters {
            over,
            snapshot,
            clusters,
        })) = c.cluster_update()
        else {
            panic!("not a cluster update");
        };
        assert!(Arc::ptr_eq(&over, c.applied.as_ref().unwrap()));
        assert_eq!(clusters, ["two"]);
        assert_eq!(snapshot.version, over.version + 1);
        let (old, new) = (&over.config, &snapshot.config);
        assert_eq!(new.clusters["two"].endpoints[0].address, "127.0.0.1:2002");
        // Everything else is what runs.
        let mut back = new.clone();
        back.clusters
            .insert("two".to_owned(), old.clusters["two"].clone());
        assert_eq!(&back, old);
    }

    #[test]
    fn a_cluster_settings_change_is_sent_as_a_cluster_update() {
        let mut c = client();
        move_endpoints(&mut c, "two", 2002);
        c.working.clusters.get_mut("one").unwrap().connect_timeout = Some(xds::duration(
            crate::duration::Duration(StdDuration::from_secs(2)),
        ));
        c.changed
            .insert((xds::CLUSTER.to_owned(), "one".to_owned()));
        let Some(Ok(Update::Clusters {
            over,
            snapshot,
            clusters,
        })) = c.cluster_update()
        else {
            panic!("not a cluster update");
        };
        assert_eq!(clusters, ["one", "two"]);
        let (old, new) = (&over.config, &snapshot.config);
        assert_eq!(
            new.clusters["one"].connect_timeout.get(),
            StdDuration::from_secs(2)
        );
        let mut back = new.clone();
        for name in ["one", "two"] {
            back.clusters
                .insert(name.to_owned(), old.clusters[name].clone());
        }
        assert_eq!(&back, old, "nothing else changed");
    }

    #[test]
    fn other_changes_are_decoded_whole() {
        // A cluster's `tls`: checked against `identity` and the listeners.
        let mut c = client();
        let with_tls = SERVICES.replace(
            "two: { endpoints: [\"127.0.0.1:2001\"] }",
            "two: { endpoints: [\"127.0.0.1:2001\"], tls: { server_identity: \"spiffe://td/two\" } }\nidentity: { cert: c.pem, key: k.pem, trust_bundle: ca.pem }",
        );
        let res = xds::encode(&crate::load_str(&with_tls, "tls.yaml").unwrap());
        assert!(res.clusters["two"].transport_socket.is_some());
        c.working
            .clusters
            .insert("two".to_owned(), res.clusters["two"].clone());
        c.changed
            .insert((xds::CLUSTER.to_owned(), "two".to_owned()));
        assert!(c.cluster_update().is_none());
        // A route table.
        let mut c = client();
        move_endpoints(&mut c, "two", 2002);
        c.working
            .routes
            .get_mut("main")
            .unwrap()
            .virtual_hosts
            .pop();
        c.changed.insert((xds::ROUTE.to_owned(), "main".to_owned()));
        assert!(c.cluster_update().is_none());
        // A new cluster.
        let mut c = client();
        let mut three = c.working.clusters["two"].clone();
        three.name = "three".to_owned();
        c.working.clusters.insert("three".to_owned(), three);
        c.changed
            .insert((xds::CLUSTER.to_owned(), "three".to_owned()));
        assert!(c.cluster_update().is_none());
        // Nothing changed that runs: listed, but the same.
        let mut c = client();
        c.changed.insert((xds::ROUTE.to_owned(), "main".to_owned()));
        assert!(c.cluster_update().is_none());
    }

    #[test]
    fn a_bad_endpoint_is_refused_naming_its_cluster() {
        let mut c = client();
        move_endpoints(&mut c, "one", 0);
        let Some(Err(problems)) = c.cluster_update() else {
            panic!("a port 0 endpoint was taken");
        };
        assert!(problems.iter().any(|p| p.contains("one")), "{problems:?}");
    }
}
