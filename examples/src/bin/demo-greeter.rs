//! Runs the demo gRPC greeter on its own.
//!
//! `cargo run -p skiff-examples --bin demo-greeter -- --listen 127.0.0.1:9003 --instance greeter`
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use skiff_examples::greeter::{self, Greeter};
use tracing_subscriber::EnvFilter;

/// The demo gRPC service `skiff.demo.v1.Greeter` (examples/proto/greeter.proto):
/// unary, server-streaming, client-streaming and bidirectional calls.
#[derive(Debug, Parser)]
#[command(name = "demo-greeter", version)]
struct Args {
    /// Address to listen on (gRPC over h2c).
    #[arg(long, default_value = "127.0.0.1:9003")]
    listen: SocketAddr,
    /// Instance name reported in every reply.
    #[arg(long, default_value = "greeter")]
    instance: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tokio::select! {
        served = greeter::serve(listener, Greeter::new(args.instance)) => served,
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
