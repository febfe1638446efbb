//! A config snapshot compiled for the data path: route tables with their
//! filter stacks built in front of the clusters they send to.
//!
//! The proxy holds the current `Runtime` in an `ArcSwap`; applying a config is
//! building a new one and swapping it in. Requests in flight keep the one they
//! started with. What must outlive a snapshot does not live here: clusters
//! and endpoints (pools, balancing, ejections, probes, breaker counts, retry
//! budgets) are in `cluster.rs`'s store; a route's rate-limit bucket is
//! handed from the runtime it replaces while its `rate_limit` is unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use http::Request;
use skiff_control::Snapshot;
use skiff_control::model;
use skiff_filters::access_log::AccessLog;
use skiff_filters::authz::Policy;
use skiff_filters::rate_limit::RateLimiter;
use skiff_filters::route::{MatchError, Matcher, Split, Table};
use skiff_filters::stack::{RouteContext, RouteService, route_stack};
use skiff_filters::telemetry::Metrics;

use crate::cluster::{Cluster, Plan, Settings};
use crate::upstream::ClusterService;

/// A compiled route table, shared by the runtimes that keep it.
type RouteTable = Arc<Table<Arc<Route>>>;

/// The compiled form of one config snapshot.
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    /// When this config started serving.
    pub applied_at: std::time::SystemTime,
    tables: HashMap<String, RouteTable>,
    /// Which table serves each listener socket, by the socket's key (see
    /// `listener::Running`), filled by [`Runtime::bind_listeners`]. Read per
    /// request, so a connection follows its listener's table as configs
    /// change, through renames, and while its listener drains after removal.
    listeners: HashMap<Arc<str>, RouteTable>,
    /// The clusters this config names, by name, for `/clusters` and tcp listeners.
    pub clusters: Vec<Arc<Cluster>>,
    /// Each route's token bucket with the config it was built from, by
    /// route label: the next runtime keeps a bucket whose config it shares.
    rate_limits: HashMap<Arc<str>, (model::RateLimit, Arc<RateLimiter>)>,
    /// `telemetry.access_log`: where each request's line goes.
    pub access_log: Option<Arc<AccessLog>>,
    /// `telemetry.tracing`: where spans go.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
    /// The authorization rules the route stacks check, for routes
    /// compiled again by [`Runtime::recompile`].
    authorization: Arc<Policy>,
}

/// One route of a table, ready to serve (its `match:` is the table's).
pub struct Route {
    /// `TABLE/NAME` or `TABLE/INDEX`: the metrics label.
    pub label: Arc<str>,
    split: Split<Target>,
}

impl Route {
    /// Whether each of its clusters will have the settings its stack was
    /// built with.
    fn built_against(&self, plan: &Plan) -> bool {
        self.split.targets().all(|t| {
            plan.get(&t.cluster)
                .is_some_and(|(_, state)| Arc::ptr_eq(&state.settings, &t.settings))
        })
    }
}

/// A cluster behind a route, with the route's filters in front of it.
pub struct Target {
    pub cluster: Arc<str>,
    /// The cluster settings the stack was built with (its breaker and
    /// retry budget): while the cluster keeps them, a new config with the
    /// same route keeps this target.
    settings: Arc<Settings>,
    pub service: RouteService,
    /// Its metric handles, resolved on its first request.
    pub meters: Arc<skiff_filters::telemetry::Meters>,
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
    #[error(transparent)]
    Tracing(#[from] crate::trace::TraceError),
    #[error("telemetry.access_log.path: cannot open {path}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
}

impl Runtime {
    /// Compiles `snapshot` against the clusters `plan` holds (built by
    /// `cluster::Clusters::plan` for this snapshot, not yet committed).
    /// `previous` is the runtime being replaced: a route whose config and
    /// clusters' settings are unchanged is kept whole (its filter stack,
    /// rate-limit bucket and metric handles), so a reload does work for
    /// what changed; a changed route whose `rate_limit` is unchanged keeps
    /// its bucket.
    pub fn compile(
        snapshot: Arc<Snapshot>,
        metrics: &Arc<Metrics>,
        plan: &Plan,
        previous: Option<&Runtime>,
        access_log: Option<Arc<AccessLog>>,
        tracing: Option<Arc<crate::trace::Tracing>>,
    ) -> Result<Self, CompileError> {
        let config = &snapshot.config;
        let authorization = Arc::new(Policy::from_config(&config.authorization));
        let mut tables = HashMap::with_capacity(config.routes.len());
        let mut rate_limits = HashMap::new();
        // Routes are kept only while the authorization rules their stacks
        // check are the same.
        let keep_from =
            previous.filter(|p| p.snapshot.config.authorization == config.authorization);
        for (table, routes) in &config.routes {
            let old = keep_from
                .and_then(|p| Some((p.tables.get(table)?, p.snapshot.config.routes.get(table)?)));
            let old_at: HashMap<&str, usize> = old
                .map(|(t, _)| t.iter().enumerate().map(|(i, r)| (&*r.label, i)).collect())
                .unwrap_or_default();
            let compiled = routes
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    let label: Arc<str> = match &r.name {
                        Some(name) => Arc::from(format!("{table}/{name}")),
                        None => Arc::from(format!("{table}/{index}")),
                    };
                    if let Some((t, configs)) = old
                        && let Some(&at) = old_at.get(&*label)
                        && configs.get(at) == Some(r)
                        && let Some((matcher, route)) = t.get(at)
                        && route.built_against(plan)
                    {
                        if let Some(kept) = keep_from.and_then(|p| p.rate_limits.get(&label)) {
                            rate_limits.insert(label, kept.clone());
                        }
                        return Ok((matcher.clone(), route.clone()));
                    }
                    let rate_limit = r.rate_limit.as_ref().map(|cfg| {
                        let kept = previous
                            .and_then(|p| p.rate_limits.get(&label))
                            .filter(|(was, _)| was == cfg)
                            .map(|(_, bucket)| bucket.clone());
                        let bucket = kept
                            .unwrap_or_else(|| RateLimiter::new(cfg, metrics.rate_limited(&label)));
                        rate_limits.insert(label.clone(), (cfg.clone(), bucket.clone()));
                        bucket
                    });
                    let ctx = RouteContext {
                        label,
                        metrics: metrics.clone(),
                        authorization: authorization.clone(),
                        rate_limit,
                    };
                    compile_route(table, index, r, plan, ctx)
                        .map(|(matcher, route)| (matcher, Arc::new(route)))
                })
                .collect::<Result<_, _>>()?;
            tables.insert(table.clone(), Arc::new(Table::new(compiled)));
        }
        let mut clusters: Vec<_> = plan.clusters.values().cloned().collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        let listeners = HashMap::new();
        Ok(Self {
            snapshot,
            applied_at: std::time::SystemTime::now(),
            tables,
            listeners,
            clusters,
            rate_limits,
            access_log,
            tracing,
            authorization,
        })
    }

    /// This runtime serving `snapshot`, which differs from its own in the
    /// clusters `changed` alone (settings or endpoints; none added or
    /// removed), planned by `Clusters::plan_only`: only the routes that
    /// send to one of them are compiled again, against `plan`; every other
    /// route, each table's conditions and index, and the listeners' bindings
    /// are shared. A pass over the routes, whatever their number.
    pub fn recompile(
        &self,
        snapshot: Arc<Snapshot>,
        metrics: &Arc<Metrics>,
        plan: &Plan,
        changed: &[&str],
    ) -> Result<Self, CompileError> {
        let uses_changed = |r: &Route| r.split.targets().any(|t| changed.contains(&&*t.cluster));
        let mut tables = HashMap::with_capacity(self.tables.len());
        let mut swapped: Vec<(RouteTable, RouteTable)> = Vec::new();
        for (name, table) in &self.tables {
            if !table.iter().any(|r| uses_changed(r)) {
                tables.insert(name.clone(), table.clone());
                continue;
            }
            let configs = snapshot
                .config
                .routes
                .get(name)
                .map_or(&[][..], Vec::as_slice);
            let compiled = table.with_targets(|index, route| {
                if !uses_changed(route) {
                    return Ok(None);
                }
                let r = configs.get(index).ok_or_else(|| CompileError::NoTarget {
                    table: name.clone(),
                    index,
                })?;
                let ctx = RouteContext {
                    label: route.label.clone(),
                    metrics: metrics.clone(),
                    authorization: self.authorization.clone(),
                    rate_limit: self.rate_limits.get(&route.label).map(|(_, b)| b.clone()),
                };
                compile_route(name, index, r, plan, ctx).map(|(_, route)| Some(Arc::new(route)))
            })?;
            let compiled = Arc::new(compiled);
            swapped.push((table.clone(), compiled.clone()));
            tables.insert(name.clone(), compiled);
        }
        // Each socket follows its table to the new one; draining sockets too.
        let listeners = self
            .listeners
            .iter()
            .map(|(key, table)| {
                let now = swapped
                    .iter()
                    .find(|(was, _)| Arc::ptr_eq(was, table))
                    .map_or_else(|| table.clone(), |(_, new)| new.clone());
                (key.clone(), now)
            })
            .collect();
        Ok(Self {
            snapshot,
            applied_at: std::time::SystemTime::now(),
            tables,
            listeners,
            clusters: self.clusters.clone(),
            rate_limits: self.rate_limits.clone(),
            access_log: self.access_log.clone(),
            tracing: self.tracing.clone(),
            authorization: self.authorization.clone(),
        })
    }

    /// This runtime serving `snapshot`, which differs from its own in
    /// cluster endpoints alone (swapped in the clusters themselves): the
    /// tables, clusters and everything else are shared, not compiled again.
    pub fn with_snapshot(&self, snapshot: Arc<Snapshot>) -> Self {
        Self {
            snapshot,
            applied_at: std::time::SystemTime::now(),
            tables: self.tables.clone(),
            listeners: self.listeners.clone(),
            clusters: self.clusters.clone(),
            rate_limits: self.rate_limits.clone(),
            access_log: self.access_log.clone(),
            tracing: self.tracing.clone(),
            authorization: self.authorization.clone(),
        }
    }

    /// The first route that matches in the table of the listener socket
    /// `key`, and the cluster it picks.
    pub fn route<B>(&self, key: &str, req: &Request<B>) -> Option<(&Route, &Target)> {
        let route = self.listeners.get(key)?.route(req)?;
        Some((route, route.split.pick()))
    }

    /// Points each listener socket at its table: `bound` pairs a socket's
    /// key with the listener (by name) it serves in this config; `draining`
    /// are sockets of removed listeners, whose connections keep the table
    /// they had in `previous` until they finish.
    pub fn bind_listeners(
        &mut self,
        bound: &[(Arc<str>, String)],
        draining: &[Arc<str>],
        previous: Option<&Runtime>,
    ) {
        let config = &self.snapshot.config;
        for (key, name) in bound {
            let table = config
                .listeners
                .iter()
                .find(|l| &l.name == name)
                .and_then(|l| l.routes.as_ref())
                .and_then(|t| self.tables.get(t));
            if let Some(table) = table.cloned() {
                self.listeners.insert(key.clone(), table);
            }
        }
        for key in draining {
            if let Some(table) = previous.and_then(|p| p.listeners.get(key)) {
                self.listeners.insert(key.clone(), table.clone());
            }
        }
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        // Sorted by name in `compile`.
        let at = self
            .clusters
            .binary_search_by(|c| (*c.name).cmp(name))
            .ok()?;
        self.clusters.get(at)
    }
}

fn compile_route(
    table: &str,
    index: usize,
    r: &skiff_control::model::Route,
    plan: &Plan,
    ctx: RouteContext,
) -> Result<(Matcher, Route), CompileError> {
    let label = ctx.label.clone();
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
        let (cluster, state) = plan.get(name).ok_or_else(unknown)?;
        let policy = &state.settings.policy;
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
                settings: state.settings.clone(),
                service,
                meters: Arc::default(),
            },
            weight,
        ));
    }
    let split = Split::new(targets).ok_or_else(|| CompileError::NoTarget {
        table: table.to_owned(),
        index,
    })?;
    Ok((matcher, Route { label, split }))
}
