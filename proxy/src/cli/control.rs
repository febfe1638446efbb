//! `skiff control --dir DIR`: the control plane (skiff_control::server),
//! run until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use skiff_control::server::{self, Options};
use tracing::info;

#[derive(clap::Args)]
pub(super) struct Args {
    /// The directory of YAML to serve (`listeners`, `routes`, `clusters`), merged by name
    /// across files; a subdirectory named after a node id holds resources for that node alone.
    #[arg(long, env = "SKIFF_CONTROL_DIR", hide_env_values = true)]
    dir: PathBuf,
    /// Where clients connect for the xDS v3 aggregated discovery service (gRPC, plaintext).
    #[arg(long, default_value = "0.0.0.0:15010")]
    listen: String,
    /// The admin port: `/ready`, `/status` and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:15011")]
    admin: String,
    #[command(flatten)]
    logs: super::logs::LogArgs,
}

pub(super) fn control(args: Args) -> ExitCode {
    args.logs.init();
    if !args.dir.is_dir() {
        eprintln!(
            "skiff: not starting: {} is not a directory",
            args.dir.display()
        );
        return ExitCode::FAILURE;
    }
    let options = Options {
        dir: args.dir,
        listen: args.listen,
        admin: args.admin,
        poll: server::POLL_INTERVAL,
        vars: skiff_control::Vars::process(),
    };
    let result = super::runtime(2).and_then(|rt| {
        rt.block_on(async move {
            let shutdown = super::shutdown_signal()?;
            let running = server::start(options).await?;
            shutdown.await;
            info!("stopping");
            running.stop().await;
            Ok(())
        })
    });
    super::exit(result)
}
