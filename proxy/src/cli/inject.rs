//! `skiff inject [-f FILE]` (the work is in `k8s::inject`) and `skiff
//! ready`, the classic sidecar's postStart hook.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::k8s::inject::{self, Options};

#[derive(clap::Args)]
pub(super) struct Args {
    /// The manifests (many documents); `-` or absent: standard input.
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// The Skiff image the sidecar and the init container run.
    #[arg(long, env = "SKIFF_IMAGE", default_value = "localhost/skiff:latest")]
    image: String,
    /// A regular container with a postStart hook instead of a native sidecar
    /// (Kubernetes before 1.29, or podman).
    #[arg(long)]
    classic_sidecar: bool,
    /// The ConfigMap with the proxy's `skiff.yaml` (annotation `skiff.io/config-map` wins).
    #[arg(long, default_value = "skiff-proxy")]
    config_map: String,
    /// The Secret with the workload identity: cert.pem, key.pem, ca.pem
    /// (annotation `skiff.io/identity-secret` wins).
    #[arg(long, default_value = "skiff-identity")]
    identity_secret: String,
    /// The UID the proxy runs as, which `skiff iptables` leaves alone.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
}

pub(super) fn inject(args: Args) -> ExitCode {
    let mut input = String::new();
    let read = match args.file.as_deref() {
        None => std::io::stdin().read_to_string(&mut input).map(drop),
        Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_string(&mut input).map(drop),
        Some(p) => std::fs::read_to_string(p).map(|t| input = t),
    };
    if let Err(e) = read {
        eprintln!("skiff inject: cannot read the manifests: {e}");
        return ExitCode::FAILURE;
    }
    let options = Options {
        image: args.image,
        classic_sidecar: args.classic_sidecar,
        config_map: args.config_map,
        identity_secret: args.identity_secret,
        proxy_uid: args.proxy_uid,
    };
    let (out, errors) = inject::inject(&input, &options);
    let _ = std::io::stdout().write_all(out.as_bytes());
    let name = args
        .file
        .as_ref()
        .map_or_else(|| "<stdin>".to_owned(), |p| p.display().to_string());
    for e in &errors {
        eprintln!("skiff inject: {name}: {e}; left out of the output");
    }
    match errors.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

#[derive(clap::Args)]
pub(super) struct ReadyArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: String,
    /// How long to wait, e.g. `60s`.
    #[arg(long, default_value = "60s")]
    timeout: skiff_control::duration::Duration,
}

/// Asks `/ready` every 100 ms until it answers 200, or the timeout passes.
pub(super) fn ready(args: ReadyArgs) -> ExitCode {
    let deadline = Instant::now() + args.timeout.get();
    loop {
        if answers_ready(&args.admin) {
            return ExitCode::SUCCESS;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "skiff ready: {} did not say ready within {}",
                args.admin, args.timeout
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn answers_ready(admin: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(admin) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /ready HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}
