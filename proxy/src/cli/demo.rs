//! `skiff demo`: the demo backends and a proxy in front of them, in one
//! process, then what to try.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use skiff_control::Vars;
use skiff_examples::demo::{self, Backends, var};

use crate::app::{self, BuildError};

/// Where the embedded demo config claims to come from (for messages and `/config`).
const SOURCE: &str = "examples/demo/skiff.yaml (built in)";

#[derive(clap::Args)]
pub(super) struct Args {
    /// Where the proxy listens; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the admin server listens; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Run this copy of examples/demo/skiff.yaml instead of the built-in
    /// one, and apply edits to it live, as `skiff run` does.
    #[arg(short, long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    logs: super::logs::LogArgs,
}

pub(super) fn demo(args: Args) -> ExitCode {
    args.logs.init();
    super::exit(super::runtime(2).and_then(|rt| {
        rt.block_on(async {
            let shutdown = super::shutdown_signal()?;
            run(args, shutdown).await
        })
    }))
}

/// Runs the demo until `shutdown` resolves, then drains.
async fn run(args: Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let backends = demo::start_backends().await?;
    let mut vars = Vars::process()
        .with(var::LISTEN, args.listen.to_string())
        .with(var::ADMIN, args.admin.to_string());
    for (name, addr) in backends.vars() {
        vars = vars.with(name, addr);
    }
    let (config, source) = match &args.config {
        Some(path) => (
            skiff_control::load_file_with(path, &vars)?,
            path.display().to_string(),
        ),
        None => (
            skiff_control::load_str_with(demo::CONFIG_YAML, SOURCE, &vars)?,
            SOURCE.to_owned(),
        ),
    };
    let built = app::build_from(skiff_control::Snapshot {
        version: 1,
        source,
        config,
    })
    .await;
    let mut bound = match built {
        Ok(bound) => bound,
        Err(e @ BuildError::Bind { .. }) => {
            backends.stop();
            anyhow::bail!(
                "{:#}\nIs another demo running? Stop it (Ctrl-C in its terminal), or pick \
                 free ports: skiff demo --listen 127.0.0.1:0 --admin 127.0.0.1:0",
                anyhow::Error::from(e)
            );
        }
        Err(e) => {
            backends.stop();
            return Err(e.into());
        }
    };
    if let Some(path) = args.config {
        bound.watch_file(path, skiff_control::source::file::POLL_INTERVAL, vars);
    }
    let proxy = bound
        .listener_addr("demo")
        .context("the demo config has no listener named demo")?;
    println!("{}", banner(proxy, bound.admin_addr(), &backends));
    shutdown.await;
    bound.drain();
    bound.wait_termination().await?;
    backends.stop();
    Ok(())
}

/// What the demo prints once it is up: every line uses the addresses bound.
fn banner(proxy: SocketAddr, admin: SocketAddr, b: &Backends) -> String {
    format!(
        "\
Skiff demo is running.
  proxy  http://{proxy}   (listener \"demo\", HTTP/1.1 and h2c)
  admin  http://{admin}   (open it in a browser: the live page)
  backends: web a {a}, web b {b} (flaky: fails ~{pct}%), gRPC greeter {g}

Try:
  curl -i http://{proxy}/hello                      # JSON from instance a or b; x-served-by: skiff
  curl -s --http2-prior-knowledge http://{proxy}/   # the same over h2c
  curl -s -X POST --data-binary 'echo me' http://{proxy}/echo
  cargo run -q -p skiff-examples --bin demo-grpc-client -- {proxy} --name you   # gRPC through Skiff
  curl -s http://{admin}/metrics | grep skiff_requests_total
  curl -s http://{admin}/clusters
  curl -s http://{admin}/config

Ctrl-C stops it (and frees the ports for the next step).",
        a = b.web_a,
        b = b.web_b,
        g = b.greeter,
        pct = demo::FLAKY_FAIL_PERCENT,
    )
}
