//! A config snapshot compiled for the data path: route tables with their
//! filter stacks built, clusters with their connection pools.
//!
//! The proxy holds the current `Runtime` in an `ArcSwap`; applying a config is
//! building a new one and swapping it in. Requests in flight keep the one they
//! started with.

use std::collections::HashMap;
use std::sync::Arc;

use http::Request;
use skiff_control::Snapshot;
use skiff_filters::authz::Policy;
use skiff_filters::route::{MatchError, Matcher, Split};
use skiff_filters::stack::{ClusterPolicy, RouteContext, RouteService, route_stack};
use skiff_filters::telemetry::Metrics;

use tokio::task::AbortHandle;

use crate::health::{self, Probe};
use crate::upstream::{Cluster, ClusterService};

/// The compiled form of one config snapshot.
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    tables: HashMap<String, Vec<Route>>,
    pub clusters: Vec<Arc<Cluster>>,
    /// Health-check tasks of this runtime's clusters, stopped when it is replaced.
    probes: Vec<AbortHandle>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for p in &self.probes {
            p.abort();
        }
    }
}

/// One route of a table, ready to serve.
pub struct Route {
    /// `TABLE/NAME` or `TABLE/INDEX`: the metrics label.
    pub label: Arc<str>,
    matcher: Matcher,
    split: Split<Target>,
}

/// A cluster behind a route, with the route's filters in front of it.
pub struct Target {
    pub cluster: Arc<str>,
    pub service: RouteService,
}

/// Why a validated config still could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("routes.{table}[{index}].match: {source}")]
    Match {
        table: String,
        index: usize,
        source: MatchError,
    },
    #[error("routes.{table}[{index}].headers: {source}")]
    Header {
        table: String,
        index: usize,
        source: skiff_filters::headers::InvalidHeader,
    },
    #[error("routes.{table}[{index}]: unknown cluster {cluster:?}")]
    UnknownCluster {
        table: String,
        index: usize,
        cluster: String,
    },
    #[error("routes.{table}[{index}]: needs `cluster` or a `split` with a positive weight")]
    NoTarget { table: String, index: usize },
    #[error(
        "`{key}` changed: it is bound at start, so this config needs a restart (nothing of it was applied)"
    )]
    NeedsRestart { key: &'static str },
}

impl Runtime {
    /// `previous` is the runtime being replaced: endpoints that stay keep
    /// their balancing and ejection state. `identity` is this workload's mTLS
    /// identity, for clusters with `tls` (it outlives runtimes: rotation
    /// swaps its material, not the runtime).
    pub fn compile(
        snapshot: Arc<Snapshot>,
        metrics: &Arc<Metrics>,
        previous: Option<&Runtime>,
        identity: Option<&Arc<crate::tls::Identity>>,
    ) -> Result<Self, CompileError> {
        let config = &snapshot.config;
        let authorization = Arc::new(Policy::from_config(&config.authorization));
        let clusters: HashMap<&str, Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|(name, c)| {
                let old = previous.and_then(|p| p.cluster(name));
                let stats_for = |addr: &str| {
                    old.and_then(|o| o.endpoints.iter().find(|e| e.address == addr))
                        .map(|e| e.stats.clone())
                };
                (
                    name.as_str(),
                    Arc::new(Cluster::from_config(name, c, metrics, stats_for, identity)),
                )
            })
            .collect();
        let policies: HashMap<&str, ClusterPolicy> = clusters
            .iter()
            .map(|(name, c)| (*name, c.policy.clone()))
            .collect();
        let mut tables = HashMap::with_capacity(config.routes.len());
        for (table, routes) in &config.routes {
            let compiled = routes
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    compile_route(
                        table,
                        index,
                        r,
                        &clusters,
                        &policies,
                        metrics,
                        &authorization,
                    )
                })
                .collect::<Result<_, _>>()?;
            tables.insert(table.clone(), compiled);
        }
        let mut clusters: Vec<_> = clusters.into_values().collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        let probes = clusters
            .iter()
            .filter_map(|c| {
                let hc = config.clusters.get(&*c.name)?.health_check.as_ref()?;
                Some(health::spawn(c, Probe::from_config(hc, c.protocol())))
            })
            .flatten()
            .collect();
        Ok(Self {
            snapshot,
            tables,
            clusters,
            probes,
        })
    }

    /// The first route of `table` that matches, and the cluster it picks.
    pub fn route<B>(&self, table: &str, req: &Request<B>) -> Option<(&Route, &Target)> {
        let route = self
            .tables
            .get(table)?
            .iter()
            .find(|r| r.matcher.matches(req))?;
        Some((route, route.split.pick()))
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| &*c.name == name)
    }
}

fn compile_route(
    table: &str,
    index: usize,
    r: &skiff_control::model::Route,
    clusters: &HashMap<&str, Arc<Cluster>>,
    policies: &HashMap<&str, ClusterPolicy>,
    metrics: &Arc<Metrics>,
    authorization: &Arc<Policy>,
) -> Result<Route, CompileError> {
    let label: Arc<str> = match &r.name {
        Some(name) => Arc::from(format!("{table}/{name}")),
        None => Arc::from(format!("{table}/{index}")),
    };
    let ctx = RouteContext {
        label: label.clone(),
        metrics: metrics.clone(),
        authorization: authorization.clone(),
        rate_limit: RouteContext::rate_limit(r, &label, metrics),
    };
    let matcher = Matcher::from_config(&r.matches).map_err(|source| CompileError::Match {
        table: table.to_owned(),
        index,
        source,
    })?;
    let wanted: Vec<(&str, u32)> = match (&r.cluster, &r.split) {
        (Some(c), _) => vec![(c.as_str(), 1)],
        (None, Some(split)) => split
            .iter()
            .map(|w| (w.cluster.as_str(), w.weight))
            .collect(),
        (None, None) => Vec::new(),
    };
    let mut targets = Vec::with_capacity(wanted.len());
    for (name, weight) in wanted {
        let unknown = || CompileError::UnknownCluster {
            table: table.to_owned(),
            index,
            cluster: name.to_owned(),
        };
        let cluster = clusters.get(name).ok_or_else(unknown)?;
        let policy = policies.get(name).ok_or_else(unknown)?;
        let service =
            route_stack(r, &ctx, policy, ClusterService(cluster.clone())).map_err(|source| {
                CompileError::Header {
                    table: table.to_owned(),
                    index,
                    source,
                }
            })?;
        targets.push((
            Target {
                cluster: cluster.name.clone(),
                service,
            },
            weight,
        ));
    }
    let split = Split::new(targets).ok_or_else(|| CompileError::NoTarget {
        table: table.to_owned(),
        index,
    })?;
    Ok(Route {
        label,
        matcher,
        split,
    })
}
