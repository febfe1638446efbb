//! The real proxy, in-process, from YAML text.
use std::net::SocketAddr;

use crate::{Client, Config};

/// A running proxy built by [`skiff::build`] on the test's runtime.
pub struct Proxy {
    bound: skiff::Bound,
    /// The version the next applied config gets.
    next_version: std::sync::atomic::AtomicU64,
}

// === impl Proxy ===

impl Proxy {
    /// Loads `yaml` (the config schema; use `127.0.0.1:0` for every
    /// address the proxy binds) and builds the proxy. When this returns,
    /// every listener and the admin server are bound and serving.
    pub async fn start(yaml: &str) -> Self {
        crate::init_tracing();
        let config = skiff_control::load_str(yaml, "test.yaml")
            .unwrap_or_else(|e| panic!("test config rejected:\n{e}\n--- config ---\n{yaml}"));
        let bound = crate::guard("skiff::build", skiff::build(config))
            .await
            .unwrap_or_else(|e| panic!("skiff::build failed: {e}\n--- config ---\n{yaml}"));
        Self {
            bound,
            next_version: std::sync::atomic::AtomicU64::new(2),
        }
    }

    /// A proxy with `control: { address: control_url, node }` and nothing
    /// else but an admin port: everything else comes over xDS. Returns at
    /// once; [`Proxy::wait_applied`] waits for configs from the feed.
    pub async fn fed(control_url: &str, node: &str) -> Self {
        Self::fed_with(control_url, node, "").await
    }

    /// [`Proxy::fed`] with `more` YAML in the proxy's own file.
    pub async fn fed_with(control_url: &str, node: &str, more: &str) -> Self {
        crate::init_tracing();
        let yaml = format!(
            "admin: {{ address: 127.0.0.1:0 }}\ncontrol: {{ address: \"{control_url}\", node: {node} }}\n{more}"
        );
        let config = skiff_control::load_str(&yaml, "test.yaml")
            .unwrap_or_else(|e| panic!("test config rejected:\n{e}\n--- config ---\n{yaml}"));
        let snapshot = skiff_control::Snapshot {
            version: 1,
            source: "test.yaml".to_owned(),
            config,
        };
        let mut bound = crate::guard("skiff::build_from", skiff::build_from(snapshot))
            .await
            .unwrap_or_else(|e| panic!("skiff::build_from failed: {e}"));
        bound.watch_feed();
        Self {
            bound,
            next_version: std::sync::atomic::AtomicU64::new(2),
        }
    }

    /// The control feed's state (a proxy made by [`Proxy::fed`]).
    pub fn feed(&self) -> std::sync::Arc<skiff_control::source::xds::FeedStatus> {
        self.bound.feed().expect("the proxy has no control feed")
    }

    /// Resolves once `n` configs from the feed have been applied.
    pub async fn wait_applied(&self, n: u64) {
        let feed = self.feed();
        crate::guard(
            &format!("{n} configs applied from the control plane"),
            feed.wait_for(|s| s.applied >= n),
        )
        .await;
    }

    /// Applies `yaml` while traffic flows, as a config source does; the
    /// proxy's reason when it refuses it. `yaml` itself must be valid.
    pub fn apply(&self, yaml: &str) -> Result<(), String> {
        let config = skiff_control::load_str(yaml, "test.yaml")
            .unwrap_or_else(|e| panic!("test config rejected:\n{e}\n--- config ---\n{yaml}"));
        let version = self
            .next_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.bound
            .apply(skiff_control::Snapshot {
                version,
                source: "test.yaml".to_owned(),
                config,
            })
            .map_err(|e| skiff_filters::error::render_chain(&e))
    }

    /// Where listener `name` is bound now, if it runs.
    pub fn try_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound.listener_addr(name)
    }

    /// A proxy with one listener `main` (protocol `listener_protocol`)
    /// routing everything (route `all`) to cluster `app` (protocol
    /// `cluster_protocol`) at `endpoint`.
    pub async fn simple(
        listener_protocol: &str,
        cluster_protocol: &str,
        endpoint: SocketAddr,
    ) -> Self {
        Config::to(endpoint)
            .listener_protocol(listener_protocol)
            .cluster_protocol(cluster_protocol)
            .route_name("all")
            .start()
            .await
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.bound
            .listener_addr(name)
            .unwrap_or_else(|| panic!("the proxy has no listener named {name:?}"))
    }

    /// The bound address of listener `main` (the one [`Config`] makes).
    pub fn main(&self) -> SocketAddr {
        self.addr("main")
    }

    /// The admin server's bound address.
    pub fn admin(&self) -> SocketAddr {
        self.bound.admin_addr()
    }

    /// The admin server's `/metrics` text, fetched now.
    pub async fn metrics(&self) -> String {
        Client::http1(self.admin())
            .await
            .get("/metrics")
            .await
            .text()
    }

    /// Starts a graceful drain (all listeners at once).
    pub fn drain(&self) {
        self.bound.drain();
    }

    /// A sidecar's shutdown, as SIGTERM and `POST /shutdown` start it:
    /// resolves once inbound is drained and outbound has gone quiet.
    pub async fn drain_inbound_first(&self) {
        self.bound.drain_inbound_first().await;
    }

    /// Waits (guarded) until the proxy finished draining.
    pub async fn wait_termination(self) {
        crate::guard("skiff wait_termination", self.bound.wait_termination())
            .await
            .unwrap_or_else(|e| panic!("wait_termination failed: {e}"));
    }
}
