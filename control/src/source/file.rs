//! Watches the config file of `skiff run -c FILE` and publishes each change.
//!
//! Polling, not inotify: it works the same on every filesystem, including the
//! symlink swaps Kubernetes uses to update mounted ConfigMaps (an inotify
//! watch on the old target would miss those), and one small read per second
//! costs nothing. A change is the file's bytes changing; a change that parses
//! to the same config (a comment, reformatting) publishes nothing.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::Update;
use crate::{Config, Snapshot, Vars, load_str_with};

/// How often `skiff run` looks at its config file.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Polls `path` every `interval`, starting from the applied `current`
/// (version and config), and sends an `Update` for every real change, with
/// `${VAR}` taken from `vars` as at the first load. Ends when the receiver
/// is dropped.
pub fn watch(
    path: PathBuf,
    current: &Snapshot,
    interval: Duration,
    vars: Vars,
) -> (mpsc::Receiver<Update>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
    let mut version = current.version;
    let mut config: Config = current.config.clone();
    let source = path.display().to_string();
    // Not read here: an edit between the first load and this call would be
    // taken as the baseline and missed. The first poll reads the file, and a
    // text that parses to the applied config publishes nothing.
    let mut last_text: Option<String> = None;
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => t,
                Err(e) => {
                    // Mid-rename, or gone for a moment: keep what we have.
                    debug!(file = %source, error = %e, "config file unreadable; keeping the current config");
                    continue;
                }
            };
            if last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            last_text = Some(text.clone());
            let update = match load_str_with(&text, &source, &vars) {
                Ok(new) if new == config => continue,
                Ok(new) => {
                    version += 1;
                    config = new.clone();
                    Update::Valid(Box::new(Snapshot {
                        version,
                        source: source.clone(),
                        config: new,
                    }))
                }
                Err(errors) => Update::Invalid(errors),
            };
            if tx.send(update).await.is_err() {
                return;
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    const ONE: &str = "listeners: [ { name: l, address: 127.0.0.1:0, routes: r } ]\nroutes: { r: [ { cluster: c } ] }\nclusters: { c: { endpoints: [127.0.0.1:1] } }\n";

    #[tokio::test(start_paused = true)]
    async fn publishes_real_changes_only() {
        let dir = std::env::temp_dir().join(format!("skiff-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("skiff.yaml");
        std::fs::write(&path, ONE).unwrap();
        let first = Snapshot {
            version: 1,
            source: path.display().to_string(),
            config: load_str(ONE, "x").unwrap(),
        };
        let (mut rx, task) = watch(
            path.clone(),
            &first,
            Duration::from_millis(100),
            Vars::process(),
        );

        // A comment changes the bytes, not the config: nothing published.
        std::fs::write(&path, format!("# comment\n{ONE}")).unwrap();
        // A real change: published as version 2.
        let two = ONE.replace("127.0.0.1:1", "127.0.0.1:2");
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::write(&path, &two).unwrap();
        match rx.recv().await.unwrap() {
            Update::Valid(s) => {
                assert_eq!(s.version, 2);
                assert_eq!(s.config.clusters["c"].endpoints[0].address, "127.0.0.1:2");
            }
            Update::Invalid(e) => panic!("{e}"),
        }
        // A broken change: refused with its position, version unchanged.
        std::fs::write(&path, "listeners: [ { name: l } ]\n").unwrap();
        match rx.recv().await.unwrap() {
            Update::Invalid(e) => assert!(e.to_string().contains("skiff.yaml:1:"), "{e}"),
            Update::Valid(s) => panic!("accepted {s:?}"),
        }
        // Fixed again: the next version is 3.
        std::fs::write(&path, ONE).unwrap();
        match rx.recv().await.unwrap() {
            Update::Valid(s) => assert_eq!(s.version, 3),
            Update::Invalid(e) => panic!("{e}"),
        }
        task.abort();
        std::fs::remove_dir_all(&dir).ok();
    }
}
