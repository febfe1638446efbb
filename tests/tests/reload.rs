//! `skiff run -c FILE` applies valid changes of FILE while traffic flows and
//! keeps the last good config when a change is invalid. What a change keeps
//! (connections, ejections, breaker counts, listeners) is in `live.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use integration_tests::{Backend, Client, Config, guard};

/// Polls until `check` holds (the watcher runs on its own clock).
async fn until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    guard(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

async fn served_by(addr: SocketAddr) -> String {
    let rsp = Client::http1(addr).await.get("/").await;
    rsp.header("x-backend").unwrap_or("").to_owned()
}

async fn metrics(admin: SocketAddr) -> String {
    Client::http1(admin).await.get("/metrics").await.text()
}

/// What `skiff run -c PATH` runs: the proxy built from PATH, watching it
/// (reading it every `poll` too, besides notifications).
async fn run_watching(path: &Path, poll: Duration) -> skiff::Bound {
    let snapshot = skiff_control::Snapshot {
        version: 1,
        source: path.display().to_string(),
        config: skiff_control::load_file(path).unwrap(),
    };
    let mut bound = skiff::build_from(snapshot).await.unwrap();
    bound.watch_file(path.to_path_buf(), poll, skiff_control::Vars::process());
    bound
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and ConfigMap updates do, so the watcher
    // never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_changes_apply_live_and_invalid_ones_are_refused() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skiff.yaml");
    write(&path, &Config::to(a.addr()).yaml());

    let bound = run_watching(&path, Duration::from_millis(20)).await;
    let main = bound.listener_addr("main").unwrap();
    let admin = bound.admin_addr();
    assert_eq!(served_by(main).await, "a");

    // A valid change: new requests go to b, without a restart.
    write(&path, &Config::to(b.addr()).yaml());
    until("the new cluster endpoint to serve", || async {
        served_by(main).await == "b"
    })
    .await;
    let cfg = Client::http1(admin).await.get("/config").await.json();
    assert_eq!(cfg["version"], 2);
    assert_eq!(cfg["source"], path.display().to_string());

    // An invalid change: refused, counted, and b keeps serving.
    write(&path, "listeners: [ { name: main } ]\n");
    until("the refusal to be counted", || async {
        metrics(admin)
            .await
            .contains("skiff_config_updates_total{source=\"file\",result=\"rejected\"} 1")
    })
    .await;
    assert_eq!(served_by(main).await, "b");
    let m = metrics(admin).await;
    assert!(
        m.contains("skiff_config_updates_total{source=\"file\",result=\"applied\"} 1"),
        "{m}"
    );
    let cfg = Client::http1(admin).await.get("/config").await.json();
    assert_eq!(cfg["version"], 2, "the last good config stays");
    // The rejection is on /config, with its problems and their positions.
    let rejection = &cfg["last_rejection"];
    assert_eq!(rejection["source"], path.display().to_string(), "{cfg}");
    let first = rejection["problems"][0].as_str().unwrap();
    assert!(
        first.starts_with(&format!("{}:1:", path.display())),
        "{rejection}"
    );
    assert!(cfg["applied_at"].as_u64().unwrap() > 0, "{cfg}");

    // Fixed again: applied as the next version.
    write(&path, &Config::to(a.addr()).yaml());
    until("the fixed config to serve", || async {
        served_by(main).await == "a"
    })
    .await;
    let cfg = Client::http1(admin).await.get("/config").await.json();
    assert_eq!(cfg["version"], 3);

    // A listener's route table renamed along with the table: applied in
    // place, the listener keeps its socket and address.
    let renamed = Config::to(b.addr())
        .yaml()
        .replace("routes: main", "routes: web")
        .replace("  main:", "  web:");
    assert!(
        renamed.contains("routes: web") && renamed.contains("  web:"),
        "{renamed}"
    );
    write(&path, &renamed);
    until("the renamed table to serve", || async {
        served_by(main).await == "b"
    })
    .await;
    assert_eq!(bound.listener_addr("main"), Some(main));

    bound.drain();
    bound.wait_termination().await.unwrap();
}

/// A Kubernetes ConfigMap volume: the file is a symlink through `..data`,
/// and an update swaps `..data` to a new directory in one rename. The
/// proxy picks it up from the notification alone (no poll: an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_applied() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let volume = |version: &str, text: &str| {
        std::fs::create_dir(dir.path().join(version)).unwrap();
        std::fs::write(dir.path().join(version).join("skiff.yaml"), text).unwrap();
        std::os::unix::fs::symlink(version, dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    };
    volume("..2026_12_02_1", &Config::to(a.addr()).yaml());
    std::os::unix::fs::symlink("..data/skiff.yaml", dir.path().join("skiff.yaml")).unwrap();
    let path = dir.path().join("skiff.yaml");
    let bound = run_watching(&path, Duration::from_secs(3600)).await;
    let main = bound.listener_addr("main").unwrap();
    assert_eq!(served_by(main).await, "a");

    volume("..2026_12_02_2", &Config::to(b.addr()).yaml());
    until("the swapped ConfigMap to serve", || async {
        served_by(main).await == "b"
    })
    .await;
    bound.drain();
    bound.wait_termination().await.unwrap();
}
