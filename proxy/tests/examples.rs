#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The example scripts as a newcomer runs them, on free ports: the mTLS
//! example checks its whole tour, finds the binaries where cargo put them
//! (`CARGO_TARGET_DIR` set, as CI sets it), and stops at once, saying why,
//! when a port it needs is taken.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// The target directory the binaries under test were built into.
fn target_dir() -> PathBuf {
    let skiff = Path::new(env!("CARGO_BIN_EXE_skiff"));
    // TARGET/debug/skiff
    skiff.parent().and_then(Path::parent).unwrap().to_owned()
}

/// Free loopback ports for the script's six variables. Bound and released:
/// nothing else on this machine picks ports in this range on purpose.
fn free_ports() -> Vec<(&'static str, u16)> {
    let names = [
        "MTLS_APP_PORT",
        "MTLS_MESH_PORT",
        "MTLS_FRONTEND_ADMIN",
        "MTLS_BACKEND_ADMIN",
        "MTLS_WEB_PORT",
        "MTLS_GREETER_PORT",
    ];
    let held: Vec<_> = names
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    names
        .into_iter()
        .zip(held.iter().map(|l| l.local_addr().unwrap().port()))
        .collect()
}

async fn run_mtls_example(ports: &[(&str, u16)], certs: &Path) -> Output {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let run = tokio::process::Command::new("bash")
        .args(["examples/mtls/run.sh", "--check", "--no-build"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("MTLS_CERTS", certs)
        .envs(ports.iter().map(|(k, v)| (k, v.to_string())))
        .kill_on_drop(true)
        .output();
    // A bound for a hung script, far above its 30 s readiness limit.
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("run.sh hung")
        .unwrap()
}

#[tokio::test]
async fn the_mtls_example_checks_its_tour() {
    let certs = tempfile::tempdir().unwrap();
    let out = run_mtls_example(&free_ports(), certs.path()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("mtls example: 5 checks passed"), "{stdout}");
    assert!(certs.path().join("backend/cert.pem").exists());
}

#[tokio::test]
async fn the_mtls_example_stops_at_once_on_a_taken_port() {
    let certs = tempfile::tempdir().unwrap();
    let mut ports = free_ports();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    ports[0].1 = taken.local_addr().unwrap().port();
    let out = run_mtls_example(&ports, certs.path()).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("run.sh: frontend Skiff exited; its last lines:\n"),
        "{stderr}"
    );
    let said = format!(
        "skiff: listener outbound: cannot bind 127.0.0.1:{}: Address already in use",
        ports[0].1
    );
    assert!(stderr.contains(&said), "{stderr}");
}
