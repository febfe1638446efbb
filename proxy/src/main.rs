//! The `skiff` binary: parse arguments, load the config, build, wait for a
//! signal, drain. Everything else lives in the library so tests run it in-process.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc rather than glibc's malloc: the data path allocates and frees
/// small objects (headers, futures, buffers) on every request, across
/// threads, which is where glibc's arenas are slowest. Measured in
/// docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use skiff_control::Snapshot;
use tracing::info;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff, a sidecar proxy for service meshes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a YAML config.
    Run {
        /// The config file.
        #[arg(short, long, env = "SKIFF_CONFIG")]
        config: PathBuf,
        /// A tracing filter: error, warn, info, debug, trace, or `skiff=debug,...`.
        #[arg(long, default_value = "info", env = "SKIFF_LOG")]
        log_level: String,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a config without running it.
    Check {
        #[arg(short, long, env = "SKIFF_CONFIG")]
        config: PathBuf,
    },
    /// Start demo backends and a proxy in front of them.
    Demo {
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// A mesh CA and SPIFFE workload certificates (PEM files for `identity:`).
    #[command(subcommand)]
    Certs(Certs),
}

#[derive(Subcommand)]
enum Certs {
    /// Create a mesh CA: DIR/ca.pem and DIR/ca-key.pem.
    Ca {
        #[arg(long)]
        out: PathBuf,
        /// How long the CA is valid.
        #[arg(long, default_value = "8760h")]
        validity: skiff_control::model::Duration,
    },
    /// Issue a workload certificate: DIR/cert.pem, DIR/key.pem and the trust bundle DIR/ca.pem.
    Issue {
        /// The directory holding the CA (ca.pem, ca-key.pem).
        #[arg(long)]
        ca: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web.
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid; short, since rotation is cheap.
        #[arg(long, default_value = "24h")]
        validity: skiff_control::model::Duration,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            log_level,
            log_format,
        } => {
            init_logs(&log_level, log_format);
            run(&config)
        }
        Command::Certs(c) => certs(c),
        Command::Demo { log_level } => {
            init_logs(&log_level, LogFormat::Text);
            demo()
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match skiff_control::load_file(path) {
        Ok(c) => {
            let routes: usize = c.routes.values().map(Vec::len).sum();
            println!(
                "{}: valid: {} listener(s), {} route table(s) with {} route(s), {} cluster(s)",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                routes,
                c.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn certs(command: Certs) -> ExitCode {
    use skiff::certs::{Ca, Validity, write_workload};
    let result = match command {
        Certs::Ca { out, validity } => Ca::generate(Validity::from_now(validity.get()))
            .and_then(|ca| ca.write(&out))
            .map(|()| {
                format!(
                    "wrote {0}/ca.pem and {0}/ca-key.pem (valid {validity})",
                    out.display()
                )
            }),
        Certs::Issue {
            ca,
            id,
            out,
            validity,
        } => Ca::load(&ca)
            .and_then(|ca| {
                let workload = ca.issue(&id, Validity::from_now(validity.get()))?;
                write_workload(&out, &workload, &ca)
            })
            .map(|()| {
                format!(
                    "wrote {0}/cert.pem, {0}/key.pem and {0}/ca.pem for {id} (valid {validity})",
                    out.display()
                )
            }),
    };
    match result {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("skiff certs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match skiff_control::load_file(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("skiff: not starting: {} has errors", path.display());
            return ExitCode::FAILURE;
        }
    };
    let snapshot = Snapshot {
        version: 1,
        source: path.display().to_string(),
        config,
    };
    let result = runtime(snapshot.config.runtime.workers).and_then(|rt| {
        rt.block_on(async move {
            // Handlers first: a SIGTERM that arrives as soon as we look
            // ready must drain, not kill the process.
            let shutdown = shutdown_signal()?;
            info!(
                source = %snapshot.source,
                config = %redacted(&snapshot.config),
                "effective config"
            );
            let mut bound = skiff::build_from(snapshot).await?;
            bound.watch_file(
                path.to_path_buf(),
                skiff_control::source::file::POLL_INTERVAL,
            );
            info!("ready; watching the config file for changes");
            shutdown.await;
            info!("draining");
            bound.drain();
            bound.wait_termination().await?;
            Ok(())
        })
    });
    exit(result)
}

fn demo() -> ExitCode {
    exit(runtime(2).and_then(|rt| {
        rt.block_on(async {
            let shutdown = shutdown_signal()?;
            skiff::demo::run(shutdown).await
        })
    }))
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

fn init_logs(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour_logs()).init(),
        // JSON is read by programs: never any escape sequence.
        LogFormat::Json => builder.with_ansi(false).json().init(),
    }
}

/// Colour only for a person at a terminal: not under Kubernetes or podman
/// (`kubectl logs`), not into a file or pipe, and never when `NO_COLOR` is
/// set to anything (no-color.org).
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// The effective config as one JSON line for the log, with header values
/// that routes set replaced: after `${VAR}` expansion they may hold tokens,
/// and logs travel further than the admin port's loopback-only `/config`.
fn redacted(config: &skiff_control::Config) -> String {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    if let Some(tables) = v.get_mut("routes").and_then(|r| r.as_object_mut()) {
        for route in tables
            .values_mut()
            .filter_map(|t| t.as_array_mut())
            .flatten()
        {
            for side in ["request", "response"] {
                if let Some(set) = route
                    .pointer_mut(&format!("/headers/{side}/set"))
                    .and_then(|s| s.as_object_mut())
                {
                    for value in set.values_mut() {
                        *value = serde_json::Value::from("<redacted>");
                    }
                }
            }
        }
    }
    v.to_string()
}
