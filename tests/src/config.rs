//! YAML for the config shape most suites share, built instead of retyped.
//!
//! ```text
//! admin: { address: 127.0.0.1:0 }
//! runtime: { drain_timeout: .. }        # only with .drain_timeout(..)
//! listeners:
//!   - { name: main, address: 127.0.0.1:0, protocol: .., routes: main }
//! routes:
//!   main:
//!     - name: ..                          # only with .route_name(..)
//!       cluster: app
//!       <.route(..) keys>
//! clusters:
//!   app:
//!     protocol: ..                        # only with .cluster_protocol(..)
//!     endpoints: [..]
//!     <.cluster(..) keys>
//! ```
//!
//! Only what a test is about appears in it, as YAML:
//! `Config::to(addr).route("timeout: 200ms").start().await`. Configs of
//! another shape (several routes or clusters, TLS, the matching table) stay
//! written out in their suites, where that YAML is what the test shows.
use std::net::SocketAddr;

use crate::Proxy;

/// One listener `main` → route table `main` with one route → cluster `app`.
#[derive(Debug, Clone)]
pub struct Config {
    endpoints: Vec<SocketAddr>,
    listener_protocol: Option<String>,
    listener: Vec<String>,
    cluster_protocol: Option<String>,
    drain_timeout: Option<String>,
    route_name: Option<String>,
    route: Vec<String>,
    cluster: Vec<String>,
}

// === impl Config ===

impl Config {
    /// Everything to cluster `app` with the one endpoint `endpoint`.
    pub fn to(endpoint: SocketAddr) -> Self {
        Self::over(&[endpoint])
    }

    /// Everything to cluster `app` with `endpoints`, in this order.
    pub fn over(endpoints: &[SocketAddr]) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            listener_protocol: None,
            listener: Vec::new(),
            cluster_protocol: None,
            drain_timeout: None,
            route_name: None,
            route: Vec::new(),
            cluster: Vec::new(),
        }
    }

    /// Listener `main`'s `protocol` (`auto`, `http1`, `http2`, `tcp`).
    pub fn listener_protocol(mut self, protocol: &str) -> Self {
        self.listener_protocol = Some(protocol.to_owned());
        self
    }

    /// Adds flow-style keys to listener `main`, e.g. `"max_request_headers_kb: 8"`.
    pub fn listener(mut self, keys: &str) -> Self {
        self.listener.push(keys.to_owned());
        self
    }

    /// Cluster `app`'s `protocol` (`auto`, `http1`, `http2`).
    pub fn cluster_protocol(mut self, protocol: &str) -> Self {
        self.cluster_protocol = Some(protocol.to_owned());
        self
    }

    /// `runtime.drain_timeout`, e.g. `300ms`.
    pub fn drain_timeout(mut self, timeout: &str) -> Self {
        self.drain_timeout = Some(timeout.to_owned());
        self
    }

    /// Names the route (otherwise it is `main/0` in metrics).
    pub fn route_name(mut self, name: &str) -> Self {
        self.route_name = Some(name.to_owned());
        self
    }

    /// Adds YAML keys to the route, e.g. `"timeout: 200ms"`. Nested blocks
    /// may span lines; the text's common indentation is removed first.
    pub fn route(mut self, yaml: &str) -> Self {
        self.route.push(yaml.to_owned());
        self
    }

    /// Adds YAML keys to cluster `app`, e.g. `"lb: ewma"` (as [`Config::route`]).
    pub fn cluster(mut self, yaml: &str) -> Self {
        self.cluster.push(yaml.to_owned());
        self
    }

    /// The config as YAML text.
    pub fn yaml(&self) -> String {
        let mut out = String::from("admin: { address: 127.0.0.1:0 }\n");
        if let Some(timeout) = &self.drain_timeout {
            out.push_str(&format!("runtime: {{ drain_timeout: {timeout} }}\n"));
        }
        let protocol = self
            .listener_protocol
            .as_ref()
            .map_or(String::new(), |p| format!("protocol: {p}, "));
        let extra: String = self.listener.iter().map(|k| format!("{k}, ")).collect();
        out.push_str(&format!(
            "listeners:\n  - {{ name: main, address: 127.0.0.1:0, {protocol}{extra}routes: main }}\n"
        ));
        out.push_str("routes:\n  main:\n");
        match &self.route_name {
            Some(name) => out.push_str(&format!("    - name: {name}\n      cluster: app\n")),
            None => out.push_str("    - cluster: app\n"),
        }
        for keys in &self.route {
            out.push_str(&indent(keys, 6));
        }
        out.push_str("clusters:\n  app:\n");
        if let Some(protocol) = &self.cluster_protocol {
            out.push_str(&format!("    protocol: {protocol}\n"));
        }
        let endpoints: Vec<String> = self.endpoints.iter().map(ToString::to_string).collect();
        out.push_str(&format!("    endpoints: [{}]\n", endpoints.join(", ")));
        for keys in &self.cluster {
            out.push_str(&indent(keys, 4));
        }
        out
    }

    /// Starts the proxy from this config (see [`Proxy::start`]).
    pub async fn start(&self) -> Proxy {
        Proxy::start(&self.yaml()).await
    }
}

/// `text` without its blank lines and common indentation, every line
/// indented by `by` spaces: so keys can be written in a test as they read.
fn indent(text: &str, by: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let common = lines
        .iter()
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(by);
    lines
        .iter()
        .map(|l| format!("{pad}{}\n", l[common..].trim_end()))
        .collect()
}

/// Listener `main` → table `main`: route `grpc` (the demo greeter's
/// methods) to cluster `greeter` over HTTP/2, route `web` (`/web...`) to
/// cluster `web`; `top` is added at the top level (e.g. `telemetry: ...`).
pub fn grpc_and_web(web: SocketAddr, greeter: SocketAddr, top: &str) -> String {
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
{top}
listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
    - name: grpc
      match: {{ path: {{ prefix: /skiff.demo.v1.Greeter/ }} }}
      cluster: greeter
    - name: web
      match: {{ path: {{ prefix: /web }} }}
      cluster: web
clusters:
  web:
    endpoints: [{web}]
  greeter:
    protocol: http2
    endpoints: [{greeter}]
"
    )
}

/// The `i`th config of the zero-loss tests (live reconfiguration and the
/// control feed): each differs from the one
/// before in one of the ways configs change in a mesh.
pub fn change(i: usize, a: SocketAddr, b: SocketAddr, g: SocketAddr) -> String {
    let (web, extra_route, side, policy) = match i % 5 {
        // Endpoints: a alone, then a and b, then b alone.
        0 => (format!("[{a}]"), false, false, ""),
        1 => (format!("[{a}, {b}]"), true, false, ""),
        2 => (
            format!("[{{ address: \"{b}\", weight: 3 }}, {a}]"),
            true,
            false,
            "    circuit_breaker: { max_requests: 500 }",
        ),
        3 => (
            format!("[{b}]"),
            false,
            true,
            "    circuit_breaker: { max_requests: 900 }\n    retry_budget: { ratio: 0.5 }",
        ),
        _ => (format!("[{a}, {b}]"), false, false, "    lb: least_request"),
    };
    let weights = if i.is_multiple_of(2) {
        (90, 10)
    } else {
        (10, 90)
    };
    let side = if side {
        "\n  - { name: side, address: 127.0.0.1:0, routes: main }"
    } else {
        ""
    };
    let extra = if extra_route {
        "    - match: { path: { prefix: /extra } }\n      cluster: web\n"
    } else {
        ""
    };
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}{side}
routes:
  main:
    - match: {{ path: {{ prefix: /skiff.demo.v1.Greeter/ }} }}
      cluster: greeter
{extra}    - split:
        - {{ cluster: web, weight: {} }}
        - {{ cluster: also, weight: {} }}
      retry: {{ attempts: 2, on: [connect-failure, reset] }}
clusters:
  greeter:
    protocol: http2
    endpoints: [{g}]
  web:
    endpoints: {web}
{policy}
  also:
    endpoints: [{a}]
",
        weights.0, weights.1
    )
}
