//! Skiff's config model and Envoy's xDS v3 resources, both ways.
//!
//! `encode` turns the listeners, route tables and clusters of a [`Config`]
//! into `Listener`, `RouteConfiguration`, `Cluster` and
//! `ClusterLoadAssignment` resources (what `skiff control` serves);
//! `decode` turns such resources, whoever wrote them, back into the model
//! (what a Skiff proxy applies). docs/xds.md is the field-by-field table.
//!
//! Decoding never ignores what it does not understand. Each decoder takes
//! the fields it honours (or knows to be harmless) out of the message it was
//! given; whatever is still set afterwards is a field Skiff cannot honour,
//! and the resource is refused with a [`Refusal`] naming it. A field added
//! to Envoy's protos tomorrow is refused the same way, with no change here.
//!
//! [`Config`]: crate::model::Config

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::{decode, decode_cluster};
pub use encode::{api_listener, encode};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The resource types of a complete config, in the order a client should
/// ask for them (clusters warm before the listeners that use them).
pub const TYPES: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// The well-known names of the filters Skiff writes and reads.
pub mod names {
    pub const HCM: &str = "envoy.filters.network.http_connection_manager";
    pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
    pub const ROUTER: &str = "envoy.filters.http.router";
    pub const FAULT: &str = "envoy.filters.http.fault";
    pub const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
    pub const TLS: &str = "envoy.transport_sockets.tls";
    pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
    pub const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
}

/// One snapshot of xDS resources, each type by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    pub clusters: BTreeMap<String, Cluster>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
}

impl Resources {
    /// The resources of type `type_url` as `Any`s, by name.
    pub fn of_type(&self, type_url: &str) -> Vec<(String, Any)> {
        fn pack<T: Message + Name + Clone>(m: &BTreeMap<String, T>) -> Vec<(String, Any)> {
            m.iter()
                .map(|(name, r)| (name.clone(), envoy_types::util::pack_any(r.clone())))
                .collect()
        }
        match type_url {
            LISTENER => pack(&self.listeners),
            ROUTE => pack(&self.routes),
            CLUSTER => pack(&self.clusters),
            ENDPOINT => pack(&self.endpoints),
            _ => Vec::new(),
        }
    }
}

/// One resource type's map, whichever type: what the generic helpers
/// below work through.
trait Slot {
    fn same(&self, other: &Self, name: &str) -> bool;
    fn copy(&mut self, from: &Self, name: &str);
}

impl<T: Clone + PartialEq> Slot for BTreeMap<String, T> {
    fn same(&self, other: &Self, name: &str) -> bool {
        self.get(name) == other.get(name)
    }

    fn copy(&mut self, from: &Self, name: &str) {
        match from.get(name) {
            Some(r) => {
                self.insert(name.to_owned(), r.clone());
            }
            None => {
                self.remove(name);
            }
        }
    }
}

impl Resources {
    /// Whether `self` and `other` hold the same resource `name` of
    /// `type_url` (or neither holds one).
    pub fn same(&self, other: &Resources, type_url: &str, name: &str) -> bool {
        match type_url {
            LISTENER => self.listeners.same(&other.listeners, name),
            ROUTE => self.routes.same(&other.routes, name),
            CLUSTER => self.clusters.same(&other.clusters, name),
            _ => self.endpoints.same(&other.endpoints, name),
        }
    }

    /// Makes resource `name` of `type_url` what `from` holds: a copy of
    /// it, or gone where `from` has none. A change moves from one copy to
    /// another in time proportional to what changed.
    pub fn copy_from(&mut self, from: &Resources, type_url: &str, name: &str) {
        match type_url {
            LISTENER => self.listeners.copy(&from.listeners, name),
            ROUTE => self.routes.copy(&from.routes, name),
            CLUSTER => self.clusters.copy(&from.clusters, name),
            _ => self.endpoints.copy(&from.endpoints, name),
        }
    }

    /// The names of every resource of `type_url` held.
    pub fn names(&self, type_url: &str) -> Vec<String> {
        match type_url {
            LISTENER => self.listeners.keys().cloned().collect(),
            ROUTE => self.routes.keys().cloned().collect(),
            CLUSTER => self.clusters.keys().cloned().collect(),
            _ => self.endpoints.keys().cloned().collect(),
        }
    }
}

/// Why a resource (or one field of it) cannot be applied: what an xDS NACK's
/// `error_detail` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `Listener`, `RouteConfiguration`, `Cluster` or `ClusterLoadAssignment`.
    pub kind: &'static str,
    /// The resource's name.
    pub resource: String,
    /// The field's path inside the resource, e.g. `virtual_hosts[0].routes[2].route.hash_policy`.
    pub field: String,
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.kind, self.resource)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.why)
    }
}

/// The fields still set in `msg`: compared with `T::default()` through the
/// `Debug` output prost derives, which lists every field in declaration
/// order, so no descriptor table is needed to name them.
pub(crate) fn leftover<T: std::fmt::Debug + Default + PartialEq>(msg: &T) -> Vec<String> {
    if *msg == T::default() {
        return Vec::new();
    }
    fn fields(text: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in text.lines().skip(1) {
            let top = line.strip_prefix("    ").filter(|l| !l.starts_with(' '));
            match top.and_then(|l| l.split_once(": ")) {
                Some((name, rest)) => out.push((name.to_owned(), rest.to_owned())),
                None => {
                    if let Some(last) = out.last_mut() {
                        last.1.push_str(line);
                    }
                }
            }
        }
        out
    }
    let set = fields(&format!("{msg:#?}"));
    let unset = fields(&format!("{:#?}", T::default()));
    set.into_iter()
        .zip(unset)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect()
}

/// Collects the refusals of one resource.
pub(crate) struct Refusals<'a> {
    kind: &'static str,
    resource: &'a str,
    pub(crate) found: Vec<Refusal>,
}

impl<'a> Refusals<'a> {
    pub(crate) fn new(kind: &'static str, resource: &'a str) -> Self {
        Self {
            kind,
            resource,
            found: Vec::new(),
        }
    }

    pub(crate) fn refuse(&mut self, field: impl Into<String>, why: impl Into<String>) {
        self.found.push(Refusal {
            kind: self.kind,
            resource: self.resource.to_owned(),
            field: field.into(),
            why: why.into(),
        });
    }

    /// Refuses every field still set in `msg`, under `at`.
    pub(crate) fn rest<T: std::fmt::Debug + Default + PartialEq>(&mut self, at: &str, msg: &T) {
        for field in leftover(msg) {
            let path = if at.is_empty() {
                field
            } else {
                format!("{at}.{field}")
            };
            self.refuse(path, "not supported by Skiff");
        }
    }
}

/// Unpacks an `Any` of type `T`, or says why not.
pub(crate) fn unpack<T: Message + Name + Default>(any: &Any) -> Result<T, String> {
    if any.type_url != T::type_url() {
        return Err(format!(
            "expected {}, got {}",
            T::full_name(),
            any.type_url.rsplit('/').next().unwrap_or_default()
        ));
    }
    T::decode(any.value.as_slice()).map_err(|e| format!("malformed {}: {e}", T::full_name()))
}

/// Decodes a resource of `type_url` from its `Any` into `res`; returns its name.
pub fn insert(res: &mut Resources, any: &Any) -> Result<String, String> {
    fn put<T: Message + Name + Default>(
        map: &mut BTreeMap<String, T>,
        any: &Any,
        name: impl Fn(&T) -> String,
    ) -> Result<String, String> {
        let r: T = unpack(any)?;
        let n = name(&r);
        if n.is_empty() {
            return Err(format!("a {} without a name", T::NAME));
        }
        map.insert(n.clone(), r);
        Ok(n)
    }
    match any.type_url.as_str() {
        LISTENER => put(&mut res.listeners, any, |l: &Listener| l.name.clone()),
        ROUTE => put(&mut res.routes, any, |r: &RouteConfiguration| {
            r.name.clone()
        }),
        CLUSTER => put(&mut res.clusters, any, |c: &Cluster| c.name.clone()),
        ENDPOINT => put(&mut res.endpoints, any, |e: &ClusterLoadAssignment| {
            e.cluster_name.clone()
        }),
        other => Err(format!("unknown resource type {other:?}")),
    }
}

pub(crate) fn duration(
    d: crate::duration::Duration,
) -> envoy_types::pb::google::protobuf::Duration {
    let d = d.get();
    envoy_types::pb::google::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf `Duration` as the model's, or why not (negative, out of range).
pub(crate) fn from_duration(
    d: &envoy_types::pb::google::protobuf::Duration,
) -> Result<crate::duration::Duration, String> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(format!(
            "{}s {}ns is not a valid duration",
            d.seconds, d.nanos
        ));
    }
    Ok(crate::duration::Duration(std::time::Duration::new(
        d.seconds as u64,
        d.nanos as u32,
    )))
}

pub(crate) fn u32v(v: u32) -> Option<envoy_types::pb::google::protobuf::UInt32Value> {
    Some(envoy_types::pb::google::protobuf::UInt32Value { value: v })
}

/// What a set of resources names but does not hold yet: the route
/// configurations its listeners take by RDS, the endpoints its EDS
/// clusters wait for, and the clusters its routes and TCP listeners send
/// to. A client subscribes to the first two by name, and applies nothing
/// until all three are empty (a cluster is warm before a listener that
/// needs it goes live). Resources that do not decode name nothing: their
/// refusal is reported when the set is decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub routes: std::collections::BTreeSet<String>,
    pub endpoints: std::collections::BTreeSet<String>,
    /// Route tables and TCP listeners name these; none are subscribed to
    /// by name (clusters come by wildcard).
    pub clusters: std::collections::BTreeSet<String>,
}

impl Resources {
    /// The names of every route configuration and every EDS cluster's
    /// endpoints these resources need.
    pub fn wanted(&self) -> Wanted {
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        };
        use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
            TcpProxy, tcp_proxy::ClusterSpecifier as TcpTarget,
        };
        let mut w = Wanted::default();
        for l in self.listeners.values() {
            let api = l
                .api_listener
                .as_ref()
                .and_then(|a| a.api_listener.as_ref());
            let filters = l
                .filter_chains
                .iter()
                .chain(l.default_filter_chain.iter())
                .flat_map(|c| &c.filters)
                .filter_map(|f| match &f.config_type {
                    Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) => Some(any),
                    _ => None,
                });
            for any in filters.chain(api) {
                if let Ok(hcm) = unpack::<HttpConnectionManager>(any) {
                    if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                        w.routes.insert(rds.route_config_name);
                    }
                } else if let Ok(tcp) = unpack::<TcpProxy>(any)
                    && let Some(TcpTarget::Cluster(c)) = tcp.cluster_specifier
                {
                    w.clusters.insert(c);
                }
            }
        }
        for (name, c) in &self.clusters {
            if let Some(service) = eds_service(name, c) {
                w.endpoints.insert(service.to_owned());
            }
        }
        for r in self.routes.values() {
            for action in r
                .virtual_hosts
                .iter()
                .flat_map(|v| &v.routes)
                .filter_map(|r| match &r.action {
                    Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(a)) => {
                        Some(a)
                    }
                    _ => None,
                })
            {
                use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
                match &action.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => {
                        w.clusters.insert(c.clone());
                    }
                    Some(ClusterSpecifier::WeightedClusters(wc)) => {
                        w.clusters
                            .extend(wc.clusters.iter().map(|c| c.name.clone()));
                    }
                    _ => {}
                }
            }
        }
        w
    }

    /// What `wanted()` names that these resources (and `also`, clusters
    /// defined elsewhere, such as a proxy's own file) do not hold.
    pub fn missing(&self, also: &std::collections::BTreeSet<String>) -> Wanted {
        let w = self.wanted();
        Wanted {
            routes: w
                .routes
                .into_iter()
                .filter(|n| !self.routes.contains_key(n))
                .collect(),
            endpoints: w
                .endpoints
                .into_iter()
                .filter(|n| !self.endpoints.contains_key(n))
                .collect(),
            clusters: w
                .clusters
                .into_iter()
                .filter(|n| !self.clusters.contains_key(n) && !also.contains(n))
                .collect(),
        }
    }
}

/// The `ClusterLoadAssignment` an EDS cluster called `name` takes its
/// endpoints from: its `service_name`, else its own name. `None` for a
/// cluster of another type.
pub fn eds_service<'a>(name: &'a str, c: &'a Cluster) -> Option<&'a str> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    if c.cluster_discovery_type != Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)) {
        return None;
    }
    let service = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.as_str());
    Some(service.filter(|s| !s.is_empty()).unwrap_or(name))
}

impl Wanted {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.endpoints.is_empty() && self.clusters.is_empty()
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        let list = |s: &std::collections::BTreeSet<String>| {
            s.iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.routes.is_empty() {
            parts.push(format!("route configurations {}", list(&self.routes)));
        }
        if !self.clusters.is_empty() {
            parts.push(format!("clusters {}", list(&self.clusters)));
        }
        if !self.endpoints.is_empty() {
            parts.push(format!("endpoints of {}", list(&self.endpoints)));
        }
        write!(f, "{}", parts.join("; "))
    }
}
