//! The harness for Skiff's end-to-end tests.
//!
//! Every suite in `tests/` runs the real proxy in-process (through
//! [`skiff::build`], exactly what `skiff run` runs) between real clients and
//! real backends on loopback, all bound to port 0 so suites run in parallel
//! without port races. The pieces:
//!
//! * [`backend`]: fluent fake upstreams ([`Backend::http1`] … `.route(..)` …
//!   `.spawn().await`) that count connections and requests, and raw TCP
//!   servers for upstreams that misbehave below HTTP;
//! * [`handlers`]: ready-made request handlers: `inspect` (describe the
//!   request as JSON), [`Echo`] (stream the body back, hashing it), [`Gate`]
//!   (hold a request until the test opens it);
//! * [`client`]: HTTP/1.1 and h2c clients on one connection, and raw TCP
//!   helpers for requests hyper would not send;
//! * [`proxy`]: [`Proxy::start`] builds the proxy from YAML text, and
//!   [`Proxy::fed`] one that takes its config from a control plane;
//! * [`control`]: [`Control::start`] runs `skiff control` on a temporary
//!   directory the test writes to;
//! * [`config`]: [`Config`] writes the YAML of the common one-route,
//!   one-cluster shape, so a test spells out only the keys it is about;
//! * [`body`]: request bodies (fixed, chunked, large generated ones) and sha256.
//!
//! Synchronisation is always by readiness (a bound socket, a message on a
//! channel), never by sleeping; timeouts appear only as guards that turn a
//! hang into a failure.
#![forbid(unsafe_code)]
// Test support: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
pub mod body;
pub mod client;
pub mod config;
pub mod control;
pub mod handlers;
pub mod peers;
pub mod proxy;
pub mod traffic;

pub use backend::{Backend, Greeter, Listening, TcpServer};
pub use body::{BoxBody, BoxError, sha256_hex};
pub use client::{Client, Collected};
pub use config::Config;
pub use control::Control;
pub use handlers::{Echo, Gate, Seen};
pub use proxy::Proxy;

/// How long any single step may take before a test fails instead of hanging.
/// Generous: the machine running the suite may be busy.
pub const GUARD: std::time::Duration = std::time::Duration::from_secs(20);

/// Installs a tracing subscriber once per test binary, filtered by
/// `RUST_LOG` (silent by default), writing through the test harness so
/// output shows only for failing tests.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// Awaits `future`, failing the test with `what` if it takes longer than [`GUARD`].
pub async fn guard<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {GUARD:?}: {what}"),
    }
}
