//! The real proxy, in-process, from YAML text.
use std::net::SocketAddr;

/// A running proxy built by [`skiff::build`] on the test's runtime.
pub struct Proxy {
    bound: skiff::Bound,
}

// === impl Proxy ===

impl Proxy {
    /// Loads `yaml` (the SPEC.md schema; use `127.0.0.1:0` for every
    /// address the proxy binds) and builds the proxy. When this returns,
    /// every listener and the admin server are bound and serving.
    pub async fn start(yaml: &str) -> Self {
        crate::init_tracing();
        let config = skiff_control::load_str(yaml, "test.yaml")
            .unwrap_or_else(|e| panic!("test config rejected:\n{e}\n--- config ---\n{yaml}"));
        let bound = crate::guard("skiff::build", skiff::build(config))
            .await
            .unwrap_or_else(|e| panic!("skiff::build failed: {e}\n--- config ---\n{yaml}"));
        Self { bound }
    }

    /// A proxy with one listener `main` (protocol `listener_protocol`)
    /// routing everything to cluster `app` (protocol `cluster_protocol`) at
    /// `endpoint`.
    pub async fn simple(
        listener_protocol: &str,
        cluster_protocol: &str,
        endpoint: SocketAddr,
    ) -> Self {
        Self::start(&simple_config(
            listener_protocol,
            cluster_protocol,
            endpoint,
        ))
        .await
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.bound
            .listener_addr(name)
            .unwrap_or_else(|| panic!("the proxy has no listener named {name:?}"))
    }

    /// The bound address of listener `main` (the one [`simple_config`] makes).
    pub fn main(&self) -> SocketAddr {
        self.addr("main")
    }

    /// The admin server's bound address.
    pub fn admin(&self) -> SocketAddr {
        self.bound.admin_addr()
    }

    /// Starts a graceful drain, as SIGTERM does.
    pub fn drain(&self) {
        self.bound.drain();
    }

    /// Waits (guarded) until the proxy finished draining.
    pub async fn wait_termination(self) {
        crate::guard("skiff wait_termination", self.bound.wait_termination())
            .await
            .unwrap_or_else(|e| panic!("wait_termination failed: {e}"));
    }
}

/// YAML for [`Proxy::simple`]: admin and listener `main` on port 0, route
/// table `main` with one route named `all` to cluster `app`.
pub fn simple_config(
    listener_protocol: &str,
    cluster_protocol: &str,
    endpoint: SocketAddr,
) -> String {
    format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: main
    address: 127.0.0.1:0
    protocol: {listener_protocol}
    routes: main
routes:
  main:
    - name: all
      cluster: app
clusters:
  app:
    protocol: {cluster_protocol}
    endpoints: [{endpoint}]
"#
    )
}
