//! The backends of `skiff demo`, at the fixed addresses its config names.
//!
//! `skiff demo` calls [`start_backends`], then runs the proxy with
//! [`CONFIG_YAML`]. The addresses below and the endpoints in
//! `examples/demo/skiff.yaml` must agree; a test checks that they do.

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::greeter::{self, Greeter};
use crate::http_service::{self, Options};

/// HTTP instance "a": always healthy.
pub const HTTP_A: &str = "127.0.0.1:9001";
/// HTTP instance "b": flaky, fails [`FLAKY_FAIL_PERCENT`] % of requests with 503.
pub const HTTP_B: &str = "127.0.0.1:9002";
/// The gRPC greeter.
pub const GREETER: &str = "127.0.0.1:9003";

/// How often instance "b" fails: often enough that a few curls show it, rarely
/// enough that the demo still mostly works without retries.
pub const FLAKY_FAIL_PERCENT: u8 = 30;

/// The demo's proxy config, embedded so `skiff demo` works from any directory
/// and from an installed binary.
pub const CONFIG_YAML: &str = include_str!("../demo/skiff.yaml");

/// Binds the three demo backends and spawns each on the current tokio runtime.
///
/// All three addresses are bound before anything is spawned, so a port that is
/// already taken fails the whole call with a message naming it, instead of
/// leaving a half-started demo. Each returned task runs until aborted.
pub async fn start_backends() -> anyhow::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let http_a = bind(HTTP_A, "HTTP instance a").await?;
    let http_b = bind(HTTP_B, "HTTP instance b").await?;
    let greeter = bind(GREETER, "gRPC greeter").await?;
    Ok(vec![
        tokio::spawn(http_service::serve(
            http_a,
            Options {
                instance: "a".to_owned(),
                fail_percent: 0,
            },
        )),
        tokio::spawn(http_service::serve(
            http_b,
            Options {
                instance: "b".to_owned(),
                fail_percent: FLAKY_FAIL_PERCENT,
            },
        )),
        tokio::spawn(greeter::serve(greeter, Greeter::new("greeter"))),
    ])
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot bind the demo {what} on {addr} (is another demo or program using it?)")
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failed test
mod tests {
    use super::*;

    /// The embedded config must route to exactly the addresses the backends use.
    #[test]
    fn config_names_the_backend_addresses() {
        for addr in [HTTP_A, HTTP_B, GREETER] {
            assert!(CONFIG_YAML.contains(addr), "skiff.yaml lacks {addr}");
        }
        assert!(CONFIG_YAML.contains("/skiff.demo.v1.Greeter/"));
    }
}
