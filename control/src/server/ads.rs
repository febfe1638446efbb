//! The Aggregated Discovery Service: one stream per client, state of the
//! world or delta, every resource type on it.
//!
//! Each stream is one task holding what it has sent (per type: the
//! subscription, the version and nonce of the last response, and for delta
//! the version of every resource the client holds). It wakes for two
//! things: a request from the client (a subscription, an ACK, a NACK) and a
//! new published config. Either way it compares what the client should
//! have with what it was sent, and sends the difference: a whole type for
//! state of the world, the changed and removed resources for delta.
//!
//! Responses never wait for ACKs of other types: Envoy asks for endpoints
//! before it ACKs clusters, and a server that waited would deadlock it.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::served::Served;
use super::status::{Handle, Nack, Registry, now, short};
use crate::xds;

/// A config as published to the streams: what each node is served.
#[derive(Debug, Default)]
pub struct Published {
    /// The catalog's version; 0 before the directory was first read well.
    pub version: u64,
    /// When it was published: push latency counts from here.
    pub at: Option<Instant>,
    pub shared: Arc<Served>,
    pub nodes: BTreeMap<String, Arc<Served>>,
}

impl Published {
    pub fn for_node(&self, id: &str) -> &Arc<Served> {
        self.nodes.get(id).unwrap_or(&self.shared)
    }
}

/// The service: every stream reads the same published state.
#[derive(Clone)]
pub struct Ads {
    pub published: watch::Receiver<Arc<Published>>,
    pub registry: Arc<Registry>,
}

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The most resource names a request may carry. A proxy names the route
/// configurations and clusters it uses; a request naming more is hostile,
/// and each name costs a lookup on every push.
const MAX_NAMES: usize = 10_000;

/// A response on its way out, boxed: a channel allocates its slots up
/// front, and a response or a `Status` inline is hundreds of bytes each,
/// kilobytes per stream for slots that are mostly empty.
type Queued<T> = Result<Box<T>, Box<Status>>;

/// Responses a stream may have queued before it stops reading requests:
/// a client that does not read is not sent more than this.
const QUEUE: usize = 16;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Outbound<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Outbound<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.open::<Sotw>(request))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.open::<Delta>(request))
    }
}

impl Ads {
    /// Starts the stream's task; the response is its outbound half.
    fn open<S: Session + Default>(
        &self,
        request: Request<Streaming<S::Req>>,
    ) -> Response<Outbound<S::Resp>>
    where
        Streaming<S::Req>: Send,
    {
        let peer = peer(&request);
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Queued<S::Resp>>(QUEUE);
        let handle = self.registry.open(S::NAME, peer);
        tokio::spawn(run(
            S::default(),
            inbound,
            tx,
            self.published.clone(),
            self.registry.clone(),
            handle,
        ));
        let out =
            tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |q| {
                q.map(|r| *r).map_err(|s| *s)
            });
        Response::new(Box::pin(out))
    }
}

fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// What a stream remembers of one type.
#[derive(Debug, Default)]
struct Sub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// The nonce of the last response; only a reply to it is an ACK or NACK.
    nonce: String,
    /// The version of the last response (state of the world).
    sent: Option<String>,
    /// Per resource, the version the client holds (delta).
    held: BTreeMap<String, String>,
    /// When the change that caused the last response happened.
    since: Option<Instant>,
    /// Whether the client has asked for this type on this stream.
    requested: bool,
}

/// What a stream remembers, whichever the protocol.
#[derive(Default)]
struct Conversation {
    types: BTreeMap<String, Sub>,
    /// The last nonce sent (per stream, counting up).
    nonce: u64,
    /// The node id, from the first request.
    node: Option<String>,
}

/// What both protocols share: a request's part in the conversation.
struct Heard {
    type_url: String,
    nonce: String,
    /// The version a reply says the client now holds (SotW), or the empty string.
    version: String,
    nack: Option<String>,
    node: Option<String>,
    /// How many resource names the request carries.
    names: usize,
}

/// One protocol's side of a stream.
trait Session: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    const NAME: &'static str;

    fn heard(req: &Self::Req) -> Heard;
    fn conversation(&mut self) -> &mut Conversation;
    fn node(&mut self) -> &mut Option<String> {
        &mut self.conversation().node
    }
    fn subs(&mut self) -> &mut BTreeMap<String, Sub> {
        &mut self.conversation().types
    }
    /// Takes a request's subscription changes; whether the type's
    /// subscription changed (and so needs an answer now).
    fn subscribe(&mut self, req: Self::Req) -> bool;
    /// The response `type_url` needs, if it needs one.
    fn respond(&mut self, type_url: &str, served: &Served, force: bool) -> Option<Self::Resp>;
}

async fn run<S: Session>(
    mut session: S,
    mut inbound: Streaming<S::Req>,
    tx: mpsc::Sender<Queued<S::Resp>>,
    mut published: watch::Receiver<Arc<Published>>,
    registry: Arc<Registry>,
    handle: Handle,
) where
    Streaming<S::Req>: Send,
{
    let metrics = &registry.metrics;
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            message = inbound.message() => {
                let req = match message {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        // A request that does not decode, or the client gone:
                        // say why (if anyone still listens) and end the stream.
                        match status.code() {
                            tonic::Code::Internal | tonic::Code::InvalidArgument => {
                                warn!(node = ?session.node(), error = %status, "ADS stream ended by a bad request");
                            }
                            _ => debug!(node = ?session.node(), error = %status, "ADS stream ended"),
                        }
                        let _ = tx.send(Err(Box::new(status))).await;
                        break;
                    }
                };
                let heard = S::heard(&req);
                if session.node().is_none() {
                    // The node comes on the first request only.
                    let id = heard.node.clone().unwrap_or_default();
                    info!(node = %id, protocol = S::NAME, "client connected");
                    handle.update(|s| s.node = id.clone());
                    *session.node() = Some(id);
                }
                if !xds::TYPES.contains(&heard.type_url.as_str()) {
                    // Envoy may put secrets or runtime on the same stream:
                    // say so once, and go on serving the types there are
                    // (it waits out its fetch timeout for the rest).
                    if unknown.insert(heard.type_url.clone()) {
                        warn!(node = ?session.node(), type_url = %heard.type_url, "request for a type Skiff does not serve ({}); not answered", xds::TYPES.join(", "));
                    }
                    continue;
                }
                if heard.names > MAX_NAMES {
                    warn!(node = ?session.node(), names = heard.names, "a subscription to more names than a client needs; closing the stream");
                    let _ = tx
                        .send(Err(Box::new(Status::invalid_argument(format!(
                            "{} resource names in one request; at most {MAX_NAMES}",
                            heard.names
                        )))))
                        .await;
                    break;
                }
                let sub = session.subs().entry(heard.type_url.clone()).or_default();
                // A reply to the last response is an ACK or a NACK; in SotW,
                // only if it names the version sent: a request that changes
                // the subscription while a response is being applied carries
                // the last nonce and the version still applied.
                let reply = !heard.nonce.is_empty()
                    && heard.nonce == sub.nonce
                    && (heard.nack.is_some() || S::NAME == "delta" || sub.sent.as_deref() == Some(heard.version.as_str()));
                if reply {
                    match &heard.nack {
                        Some(message) => {
                            metrics.nacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            warn!(node = ?session.node(), type_url = short(&heard.type_url), version = %heard.version, error = %message, "client NACKed a push");
                            let nack = Nack {
                                type_url: heard.type_url.clone(),
                                version: heard.version.clone(),
                                message: message.clone(),
                                at: now(),
                            };
                            handle.update(|s| s.last_nack = Some(nack));
                        }
                        None => {
                            metrics.acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if let Some(since) = sub.since.take() {
                                metrics.acked_after(since.elapsed());
                            }
                            let acked = sub.sent.clone();
                            handle.update(|s| {
                                s.types.entry(short(&heard.type_url).to_owned()).or_default().acked = acked;
                            });
                        }
                    }
                } else if !heard.nonce.is_empty() {
                    // A reply to an older response, or a subscription change.
                    debug!(type_url = short(&heard.type_url), "not an ACK or NACK of the last response");
                }
                let changed = session.subscribe(req);
                let node = session.node().clone().unwrap_or_default();
                let current = published.borrow().clone();
                if current.version == 0 {
                    continue; // Nothing to serve yet; answered once there is.
                }
                let served = current.for_node(&node).clone();
                handle.update(|s| s.version = current.version);
                if let Some(resp) = session.respond(&heard.type_url, &served, changed) {
                    let sub = session.subs().entry(heard.type_url.clone()).or_default();
                    sub.since = Some(Instant::now());
                    record(&handle, &heard.type_url, sub);
                    metrics.pushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if tx.send(Ok(Box::new(resp))).await.is_err() {
                        break;
                    }
                }
            }
            changed = published.changed() => {
                if changed.is_err() {
                    break; // The server is stopping.
                }
                let current = published.borrow_and_update().clone();
                let node = session.node().clone().unwrap_or_default();
                let served = current.for_node(&node).clone();
                let types: Vec<String> = session.subs().keys().cloned().collect();
                // Clusters and endpoints before the listeners and routes
                // that use them, as xds::TYPES orders them.
                let ordered = xds::TYPES.iter().copied().filter(|t| types.iter().any(|u| u == t));
                let mut closed = false;
                for type_url in ordered {
                    if let Some(resp) = session.respond(type_url, &served, false) {
                        let sub = session.subs().entry(type_url.to_owned()).or_default();
                        sub.since = current.at;
                        record(&handle, type_url, sub);
                        metrics.pushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if tx.send(Ok(Box::new(resp))).await.is_err() {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    break;
                }
                handle.update(|s| s.version = current.version);
            }
        }
    }
    info!(node = ?session.node(), "client disconnected");
}

fn record(handle: &Handle, type_url: &str, sub: &Sub) {
    let sent = sub.sent.clone().unwrap_or_default();
    let names: Vec<String> = match sub.wildcard {
        true => Vec::new(),
        false => sub.names.iter().cloned().collect(),
    };
    handle.update(|s| {
        let t = s.types.entry(short(type_url).to_owned()).or_default();
        t.sent = Some(sent);
        t.names = names;
    });
}

/// The resources of `type_url` a subscription selects, by name.
fn selected(sub: &Sub, type_url: &str, served: &Served) -> BTreeMap<String, super::served::Item> {
    if sub.wildcard {
        let mut all = served
            .all(type_url)
            .map(|t| t.items.clone())
            .unwrap_or_default();
        // A wildcard subscriber may name more (a gRPC target beside them).
        for name in &sub.names {
            if !all.contains_key(name)
                && let Some(item) = served.get(type_url, name)
            {
                all.insert(name.clone(), item);
            }
        }
        all
    } else {
        sub.names
            .iter()
            .filter_map(|n| Some((n.clone(), served.get(type_url, n)?)))
            .collect()
    }
}

// === state of the world ===

#[derive(Default)]
struct Sotw(Conversation);

impl Session for Sotw {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const NAME: &'static str = "sotw";

    fn conversation(&mut self) -> &mut Conversation {
        &mut self.0
    }

    fn heard(req: &DiscoveryRequest) -> Heard {
        Heard {
            type_url: req.type_url.clone(),
            nonce: req.response_nonce.clone(),
            version: req.version_info.clone(),
            nack: req.error_detail.as_ref().map(rpc_message),
            node: req.node.as_ref().map(|n| n.id.clone()),
            names: req.resource_names.len(),
        }
    }

    fn subscribe(&mut self, req: DiscoveryRequest) -> bool {
        let sub = self.0.types.entry(req.type_url).or_default();
        let first = !std::mem::replace(&mut sub.requested, true);
        let star = req.resource_names.iter().any(|n| n == "*");
        // An empty first request is a wildcard (the legacy form); an empty
        // later one keeps a wildcard a wildcard, and unsubscribes names.
        let wildcard = star || (req.resource_names.is_empty() && (first || sub.wildcard));
        let names: BTreeSet<String> = req
            .resource_names
            .into_iter()
            .filter(|n| n != "*")
            .collect();
        let changed = first || wildcard != sub.wildcard || names != sub.names;
        sub.wildcard = wildcard;
        sub.names = names;
        changed
    }

    fn respond(
        &mut self,
        type_url: &str,
        served: &Served,
        force: bool,
    ) -> Option<DiscoveryResponse> {
        let sub = self.0.types.get_mut(type_url)?;
        let items = selected(sub, type_url, served);
        let version = match sub.wildcard && sub.names.is_empty() {
            true => served
                .all(type_url)
                .map(|t| t.version.clone())
                .unwrap_or_default(),
            false => {
                let joined: String = items
                    .iter()
                    .map(|(n, i)| format!("{n}={};", i.version))
                    .collect();
                super::served::digest(joined.as_bytes())
            }
        };
        if !force && sub.sent.as_deref() == Some(version.as_str()) && !sub.nonce.is_empty() {
            return None;
        }
        self.0.nonce += 1;
        sub.nonce = self.0.nonce.to_string();
        sub.sent = Some(version.clone());
        Some(DiscoveryResponse {
            version_info: version,
            resources: items.into_values().map(|i| i.any).collect(),
            type_url: type_url.to_owned(),
            nonce: sub.nonce.clone(),
            ..Default::default()
        })
    }
}

fn rpc_message(status: &RpcStatus) -> String {
    match status.message.as_str() {
        "" => format!("code {}", status.code),
        m => m.to_owned(),
    }
}

// === delta ===

#[derive(Default)]
struct Delta(Conversation);

impl Session for Delta {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn conversation(&mut self) -> &mut Conversation {
        &mut self.0
    }

    fn heard(req: &DeltaDiscoveryRequest) -> Heard {
        Heard {
            type_url: req.type_url.clone(),
            nonce: req.response_nonce.clone(),
            version: String::new(),
            nack: req.error_detail.as_ref().map(rpc_message),
            node: req.node.as_ref().map(|n| n.id.clone()),
            names: req.resource_names_subscribe.len() + req.resource_names_unsubscribe.len(),
        }
    }

    fn subscribe(&mut self, req: DeltaDiscoveryRequest) -> bool {
        let sub = self.0.types.entry(req.type_url).or_default();
        let first = !std::mem::replace(&mut sub.requested, true);
        let before = (sub.wildcard, sub.names.clone());
        if first {
            // What the client kept from an earlier stream (another replica):
            // not sent again unless it changed.
            sub.held = req.initial_resource_versions.into_iter().collect();
            if req.resource_names_subscribe.is_empty() {
                sub.wildcard = true; // The legacy wildcard.
            }
        }
        for name in req.resource_names_subscribe {
            match name.as_str() {
                "*" => sub.wildcard = true,
                _ => {
                    sub.names.insert(name);
                }
            }
        }
        for name in req.resource_names_unsubscribe {
            match name.as_str() {
                "*" => sub.wildcard = false,
                _ => {
                    sub.names.remove(&name);
                    sub.held.remove(&name);
                }
            }
        }
        first || before != (sub.wildcard, sub.names.clone())
    }

    fn respond(
        &mut self,
        type_url: &str,
        served: &Served,
        force: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let sub = self.0.types.get_mut(type_url)?;
        let items = selected(sub, type_url, served);
        let resources: Vec<Resource> = items
            .iter()
            .filter(|(n, i)| sub.held.get(*n) != Some(&i.version))
            .map(|(n, i)| Resource {
                name: n.clone(),
                version: i.version.clone(),
                resource: Some(i.any.clone()),
                ..Default::default()
            })
            .collect();
        let mut removed: Vec<String> = sub
            .held
            .keys()
            .filter(|n| !items.contains_key(*n))
            .cloned()
            .collect();
        // A name asked for that does not exist is said to be removed, once
        // per subscription change: a client waiting for it hears so at once
        // instead of waiting out its fetch timeout.
        if force {
            removed.extend(
                sub.names
                    .iter()
                    .filter(|n| !items.contains_key(*n) && !sub.held.contains_key(*n))
                    .cloned(),
            );
        }
        // A new subscription is answered even when there is nothing to
        // send, so a client waiting for a name that does not exist hears so.
        if resources.is_empty() && removed.is_empty() && !force && !sub.nonce.is_empty() {
            return None;
        }
        sub.held = items.into_iter().map(|(n, i)| (n, i.version)).collect();
        self.0.nonce += 1;
        sub.nonce = self.0.nonce.to_string();
        let version = served
            .all(type_url)
            .map(|t| t.version.clone())
            .unwrap_or_default();
        sub.sent = Some(version.clone());
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce: sub.nonce.clone(),
            ..Default::default()
        })
    }
}
