//! `skiff run -c FILE`: load, build, serve until SIGTERM/SIGINT, drain.

use std::path::Path;
use std::process::ExitCode;

use skiff_control::Snapshot;
use tracing::{info, warn};

pub(super) fn run(path: &Path) -> ExitCode {
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
    let result = super::runtime(snapshot.config.runtime.workers).and_then(|rt| {
        rt.block_on(async move {
            // Handlers first: a SIGTERM that arrives as soon as we look
            // ready must drain, not kill the process.
            let shutdown = super::shutdown_signal()?;
            reopen_logs_on_sighup()?;
            info!(
                source = %snapshot.source,
                config = %redacted(&snapshot.config),
                "effective config"
            );
            for warning in snapshot.config.warnings() {
                warn!(source = %snapshot.source, "{warning}");
            }
            let feed = snapshot.config.control.clone();
            let mut bound = crate::build_from(snapshot).await?;
            match feed {
                // The file holds the proxy's own part, read once; the rest
                // comes and changes over the feed.
                Some(feed) => {
                    bound.watch_feed();
                    info!(address = %feed.address, "listening; taking config from the control plane");
                }
                None => {
                    bound.watch_file(
                        path.to_path_buf(),
                        skiff_control::source::file::POLL_INTERVAL,
                        skiff_control::Vars::process(),
                    );
                    info!("ready; watching the config file for changes");
                }
            }
            tokio::select! {
                () = shutdown => info!("signal: shutting down"),
                () = bound.shutdown_requested() => info!("POST /shutdown: shutting down"),
            }
            bound.drain_inbound_first().await;
            info!("draining");
            bound.drain();
            bound.wait_termination().await?;
            Ok(())
        })
    });
    super::exit(result)
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

/// SIGHUP reopens the access log's file: what logrotate's `postrotate`
/// sends after moving it away.
#[cfg(unix)]
fn reopen_logs_on_sighup() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP: reopening the access log");
            skiff_filters::access_log::request_reopen();
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reopen_logs_on_sighup() -> anyhow::Result<()> {
    Ok(())
}
