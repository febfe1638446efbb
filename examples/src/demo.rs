//! The backends of `skiff demo`, and how its config finds them.
//!
//! `skiff demo` calls [`start_backends`], which binds each backend on a free
//! loopback port, then loads [`CONFIG_YAML`] with the `${DEMO_...}` variables
//! ([`Backends::vars`]) set to the addresses bound. Nothing is at a fixed
//! port, so a second demo, or anything else on 9001, cannot stop this one.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::greeter::{self, Greeter};
use crate::http_service::{self, Options};

/// How often instance "b" fails: often enough that a few curls show it, rarely
/// enough that the demo still mostly works without retries.
pub const FLAKY_FAIL_PERCENT: u8 = 30;

/// The demo's proxy config, embedded so `skiff demo` works from any directory
/// and from an installed binary.
pub const CONFIG_YAML: &str = include_str!("../demo/skiff.yaml");

/// The variables the demo config takes its addresses from, with the
/// defaults it falls back to when run by hand (`skiff run -c`).
pub mod var {
    /// The proxy's listener (`--listen`); default `127.0.0.1:8080`.
    pub const LISTEN: &str = "DEMO_LISTEN";
    /// The admin server (`--admin`); default `127.0.0.1:15000`.
    pub const ADMIN: &str = "DEMO_ADMIN";
    /// HTTP instance "a"; default `127.0.0.1:9001`.
    pub const WEB_A: &str = "DEMO_WEB_A";
    /// HTTP instance "b", the flaky one; default `127.0.0.1:9002`.
    pub const WEB_B: &str = "DEMO_WEB_B";
    /// The gRPC greeter; default `127.0.0.1:9003`.
    pub const GREETER: &str = "DEMO_GREETER";
}

/// The three running backends.
pub struct Backends {
    /// HTTP instance "a": always healthy.
    pub web_a: SocketAddr,
    /// HTTP instance "b": fails [`FLAKY_FAIL_PERCENT`] % of requests with 503.
    pub web_b: SocketAddr,
    /// The gRPC greeter.
    pub greeter: SocketAddr,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Backends {
    /// The `${DEMO_...}` variables naming the backends' addresses.
    pub fn vars(&self) -> [(&'static str, String); 3] {
        [
            (var::WEB_A, self.web_a.to_string()),
            (var::WEB_B, self.web_b.to_string()),
            (var::GREETER, self.greeter.to_string()),
        ]
    }

    /// Stops all three: they stop accepting and close their connections.
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Binds the three demo backends on free loopback ports and spawns each on
/// the current tokio runtime.
pub async fn start_backends() -> anyhow::Result<Backends> {
    let web_a = bind("HTTP instance a").await?;
    let web_b = bind("HTTP instance b").await?;
    let greeter = bind("gRPC greeter").await?;
    let addrs = (
        web_a.local_addr()?,
        web_b.local_addr()?,
        greeter.local_addr()?,
    );
    let tasks = vec![
        tokio::spawn(http_service::serve(
            web_a,
            Options {
                instance: "a".to_owned(),
                fail_percent: 0,
            },
        )),
        tokio::spawn(http_service::serve(
            web_b,
            Options {
                instance: "b".to_owned(),
                fail_percent: FLAKY_FAIL_PERCENT,
            },
        )),
        tokio::spawn(greeter::serve(greeter, Greeter::new("greeter"))),
    ];
    Ok(Backends {
        web_a: addrs.0,
        web_b: addrs.1,
        greeter: addrs.2,
        tasks,
    })
}

async fn bind(what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .with_context(|| format!("cannot bind the demo {what} on a loopback port"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failed test
mod tests {
    use super::*;

    /// The embedded config takes every address from its variable.
    #[test]
    fn config_takes_every_address_from_a_variable() {
        for (name, default) in [
            (var::LISTEN, "127.0.0.1:8080"),
            (var::ADMIN, "127.0.0.1:15000"),
            (var::WEB_A, "127.0.0.1:9001"),
            (var::WEB_B, "127.0.0.1:9002"),
            (var::GREETER, "127.0.0.1:9003"),
        ] {
            let reference = format!("${{{name}:-{default}}}");
            assert!(
                CONFIG_YAML.contains(&reference),
                "skiff.yaml lacks {reference}"
            );
        }
        assert!(CONFIG_YAML.contains("/skiff.demo.v1.Greeter/"));
    }
}
