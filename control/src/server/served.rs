//! What one config looks like on the wire: its xDS resources, each with a
//! version, and a version per type.
//!
//! Versions are hashes of content, not counters: two replicas of `skiff
//! control` reading the same ConfigMap give every resource the same
//! version, so a client that moves from one to the other resyncs without
//! being sent what it already has, and a restart does not look like a
//! change.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::model::Config;
use crate::xds;

/// One resource as served: its version and its packed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub version: String,
    pub any: Any,
}

/// The resources of one type, by name, and the type's version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeSet {
    pub version: String,
    pub items: BTreeMap<String, Item>,
}

/// Everything one node is served.
#[derive(Debug, Default)]
pub struct Served {
    /// In the order of [`xds::TYPES`].
    types: [TypeSet; 4],
    /// The config, for listeners and route configurations made on request
    /// for proxyless gRPC targets.
    config: Config,
    /// Those made so far, by type index and name (`None`: no route's host
    /// matches): every stream asking for a target asks again on every push.
    made: std::sync::Mutex<std::collections::HashMap<(usize, String), Option<Item>>>,
}

/// The most gRPC targets remembered per config; past it, they are made
/// again on each request (a client naming endless targets gets no memory).
const MADE_MAX: usize = 10_000;

impl Served {
    pub fn new(config: &Config) -> Arc<Self> {
        let res = xds::encode(config);
        let types = xds::TYPES.map(|t| {
            let items: BTreeMap<String, Item> = res
                .of_type(t)
                .into_iter()
                .map(|(name, any)| {
                    let version = version(&any);
                    (name, Item { version, any })
                })
                .collect();
            let parts: Vec<&[u8]> = items
                .iter()
                .flat_map(|(n, i)| [n.as_bytes(), i.version.as_bytes()])
                .collect();
            TypeSet {
                version: hash(&parts),
                items,
            }
        });
        Arc::new(Self {
            types,
            config: config.clone(),
            made: Default::default(),
        })
    }

    /// Every resource of `type_url` a wildcard subscriber gets.
    pub fn all(&self, type_url: &str) -> Option<&TypeSet> {
        Some(&self.types[index(type_url)?])
    }

    /// The resource `name` of `type_url`, if there is one: a named
    /// listener or route configuration not in the config is looked for
    /// among the routes' hosts, for a proxyless gRPC client.
    pub fn get(&self, type_url: &str, name: &str) -> Option<Item> {
        let i = index(type_url)?;
        if let Some(item) = self.types[i].items.get(name) {
            return Some(item.clone());
        }
        if type_url != xds::LISTENER && type_url != xds::ROUTE {
            return None;
        }
        let key = (i, name.to_owned());
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = made.get(&key) {
            return found.clone();
        }
        let item = xds::api_listener(name, &self.config).map(|(listener, table)| {
            let any = match type_url {
                xds::LISTENER => envoy_types::util::pack_any(listener),
                _ => envoy_types::util::pack_any(table),
            };
            Item {
                version: version(&any),
                any,
            }
        });
        if made.len() < MADE_MAX {
            made.insert(key, item.clone());
        }
        item
    }
}

/// A resource's version: the hash of its encoding, with the one kind of
/// map Skiff writes (a route's `typed_per_filter_config`, a protobuf map
/// that prost keeps in a `HashMap`, encoded in a per-process random order)
/// taken in name order, so equal resources have equal versions everywhere.
fn version(any: &Any) -> String {
    if any.type_url != xds::ROUTE {
        return hash(&[&any.encode_to_vec()]);
    }
    let Ok(mut table) = RouteConfiguration::decode(any.value.as_slice()) else {
        return hash(&[&any.encode_to_vec()]);
    };
    let mut maps: Vec<Vec<u8>> = Vec::new();
    for (i, vhost) in table.virtual_hosts.iter_mut().enumerate() {
        for (j, route) in vhost.routes.iter_mut().enumerate() {
            maps.push(format!("{i}/{j}").into_bytes());
            let sorted: BTreeMap<String, Any> = std::mem::take(&mut route.typed_per_filter_config)
                .into_iter()
                .collect();
            for (name, config) in sorted {
                maps.push(name.into_bytes());
                maps.push(config.encode_to_vec());
            }
        }
    }
    let body = table.encode_to_vec();
    let mut parts: Vec<&[u8]> = vec![&body];
    parts.extend(maps.iter().map(Vec::as_slice));
    hash(&parts)
}

fn index(type_url: &str) -> Option<usize> {
    xds::TYPES.iter().position(|t| *t == type_url)
}

/// [`hash`] of one byte string: a version made of other versions.
pub fn digest(bytes: &[u8]) -> String {
    hash(&[bytes])
}

/// A short content hash (hex, 64 bits of SHA-256): enough to tell versions
/// apart, short enough to read in `/status`.
fn hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
