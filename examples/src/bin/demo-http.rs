//! Runs the demo HTTP JSON service on its own.
//!
//! `cargo run -p skiff-examples --bin demo-http -- --listen 127.0.0.1:9001 --instance a --fail-percent 0`
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use skiff_examples::http_service::{self, Options};
use tracing_subscriber::EnvFilter;

/// The demo HTTP service: describes each request as JSON, echoes `POST /echo`,
/// answers `/status/NNN`, and can fail a share of requests on purpose.
#[derive(Debug, Parser)]
#[command(name = "demo-http", version)]
struct Args {
    /// Address to listen on (HTTP/1.1 and h2c on the same port).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Instance name reported in every reply, to tell backends apart.
    #[arg(long, default_value = "a")]
    instance: String,
    /// Percentage of requests (not /healthz) answered with 503, 0..=100.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    fail_percent: u8,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let opts = Options {
        instance: args.instance,
        fail_percent: args.fail_percent,
    };
    tokio::select! {
        served = http_service::serve(listener, opts) => served,
        signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C"),
    }
}

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
