//! The command line: one file per subcommand. `main.rs` only calls
//! [`main`]; the parser lives in the library so that the reference in
//! `docs/reference/cli.md` is generated from it and cannot drift.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod certs;
mod check;
mod control;
mod demo;
mod inject;
mod iptables;
mod logs;
mod run;

pub use logs::LogFormat;

/// Skiff, a sidecar proxy for service meshes.
#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff, a sidecar proxy for service meshes"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a YAML config, reloading it when the file changes.
    Run {
        /// The config file.
        #[arg(short, long, env = "SKIFF_CONFIG", hide_env_values = true)]
        config: PathBuf,
        #[command(flatten)]
        logs: logs::LogArgs,
    },
    /// Validate a config without running it: every problem with FILE:LINE:COL, exit 1 if any.
    Check {
        /// The config file.
        #[arg(short, long, env = "SKIFF_CONFIG", hide_env_values = true)]
        config: PathBuf,
    },
    /// Start demo backends and a proxy in front of them, and print what to try.
    Demo(demo::Args),
    /// The control plane: serve the YAML in DIR over xDS v3 (ADS) to Skiff, Envoy and proxyless gRPC.
    Control(control::Args),
    /// Add the Skiff sidecar to every pod template in Kubernetes manifests (file or stdin).
    Inject(inject::Args),
    /// Wait until the proxy's `/ready` answers 200 (the classic sidecar's postStart hook).
    Ready(inject::ReadyArgs),
    /// Install (or print, or remove) the nat rules that send a pod's TCP through Skiff.
    Iptables(iptables::Args),
    /// A mesh CA and SPIFFE workload certificates (PEM files for `identity:`).
    #[command(subcommand)]
    Certs(certs::Certs),
}

/// The parser, for generating the reference.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Parses the arguments and runs the subcommand.
pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => check::check(&config),
        Command::Run { config, logs } => {
            logs.init();
            crate::panics::log_panics();
            run::run(&config)
        }
        Command::Certs(c) => certs::certs(c),
        Command::Control(args) => control::control(args),
        Command::Iptables(args) => iptables::iptables(args),
        Command::Inject(args) => inject::inject(args),
        Command::Ready(args) => inject::ready(args),
        Command::Demo(args) => demo::demo(args),
    }
}

/// One worker means a current-thread runtime: everything runs on the main
/// thread, with none of the work-stealing scheduler's cross-thread
/// bookkeeping, which is what a one-core sidecar wants (nginx's model).
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    Ok(builder.enable_all().build()?)
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes) or SIGINT (Ctrl-C). The handlers are installed when
/// this is called, not when the returned future is first polled, so call it
/// before announcing readiness.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
