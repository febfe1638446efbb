//! Log output for `run` and `demo`: level, format, colour.

use clap::ValueEnum;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; coloured only at a terminal.
    Text,
    /// One JSON object per line, for log collectors; never coloured.
    Json,
}

#[derive(clap::Args)]
pub(super) struct LogArgs {
    /// A tracing filter: error, warn, info, debug, trace, or `skiff=debug,hyper=info`.
    #[arg(
        long,
        default_value = "info",
        env = "SKIFF_LOG",
        hide_env_values = true
    )]
    log_level: String,
    /// `text` for people, `json` for log collectors (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SKIFF_LOG_FORMAT", hide_env_values = true)]
    log_format: LogFormat,
}

impl LogArgs {
    /// Sets up logging, and installs the hook `POST /logging` uses to
    /// change the filter while the process runs.
    pub(super) fn init(&self) {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_new(&self.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        // The two formats are two types; each hands over its own handle.
        macro_rules! start {
            ($builder:expr) => {{
                let builder = $builder.with_filter_reloading();
                let handle = builder.reload_handle();
                builder.init();
                crate::logging::install(move |level| {
                    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                    handle.reload(filter).map_err(|e| e.to_string())
                });
            }};
        }
        match self.log_format {
            LogFormat::Text => start!(builder.with_ansi(colour_logs())),
            // JSON is read by programs: never any escape sequence.
            LogFormat::Json => start!(builder.with_ansi(false).json()),
        }
    }
}

/// Colour only for a person at a terminal: not under Kubernetes or podman
/// (`kubectl logs`), not into a file or pipe, and never when `NO_COLOR` is
/// set to anything (no-color.org).
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
