//! Watches the config file of `skiff run -c FILE` and publishes each change.
//!
//! Filesystem notifications (`notify`: inotify on Linux) on the file's
//! *directory*, not the file: editors save by writing a new file and
//! renaming it over the old one, and Kubernetes updates a ConfigMap volume
//! by swapping its `..data` symlink, and a watch on the old file would see
//! neither. Any event in the directory makes the watcher read the file again;
//! bytes that did not change, or that parse to the running config (a
//! comment, reformatting), publish nothing. Events are let settle for
//! [`SETTLE`] so a file written in several pieces is read once, whole.
//!
//! A slow poll backs the notifications up, for filesystems that send none
//! (some network and FUSE mounts); where no watch can be set up at all, the
//! poll is all there is, and the log says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{Delivery, Outcome, Update};
use crate::{Snapshot, Vars, load_str_with};

/// How often `skiff run` reads its config file even without a notification.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// How long events must stop before the file is read.
pub const SETTLE: Duration = Duration::from_millis(25);

/// Watches `path`, starting from the applied `current` (version and
/// config), and delivers an update for every real change, with `${VAR}`
/// taken from `vars`. Waits for each update's outcome before reading again:
/// the baseline is the last config applied, so a rejected change fixed back
/// to the running config publishes nothing. Ends when the receiver is dropped.
pub fn watch(
    path: PathBuf,
    current: &Snapshot,
    poll: Duration,
    vars: Vars,
) -> (mpsc::Receiver<Delivery>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1);
    let mut version = current.version;
    // The running config, shared with the proxy once a change is applied.
    let mut applied: Arc<Snapshot> = Arc::new(current.clone());
    let source = path.display().to_string();
    let task = tokio::spawn(async move {
        let (events, _watcher) = notifications(&path);
        let mut events = events;
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Not read before the loop: an edit between the first load and this
        // task would be taken as the baseline and missed. The first tick
        // reads the file, and a text that parses to the applied config
        // publishes nothing.
        let mut last_text: Option<String> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = events.recv() => settle(&mut events).await,
            }
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
            let (update, new) = match load_str_with(&text, &source, &vars) {
                Ok(new) if new == applied.config => continue,
                Ok(new) => {
                    version += 1;
                    let snapshot = Arc::new(Snapshot {
                        version,
                        source: source.clone(),
                        config: new,
                    });
                    (Update::Valid(snapshot.clone()), Some(snapshot))
                }
                Err(errors) => (Update::Invalid(errors), None),
            };
            let (delivery, outcome) = Delivery::new(update);
            if tx.send(delivery).await.is_err() {
                return;
            }
            match (outcome.await, new) {
                (Ok(Outcome::Applied), Some(new)) => applied = new,
                (Ok(_), _) => {}
                // The proxy is gone.
                (Err(_), _) => return,
            }
        }
    });
    (rx, task)
}

/// Notifications for anything in `path`'s directory.
fn notifications(path: &Path) -> (mpsc::Receiver<()>, Option<notify::RecommendedWatcher>) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    notifications_in(dir, RecursiveMode::NonRecursive)
}

/// Notifications for anything in `dir`, as a channel that holds at most
/// one pending wake-up. The watcher must be kept alive. Also what `skiff
/// control` watches its directory with (recursively: per-node subdirectories).
pub(crate) fn notifications_in(
    dir: PathBuf,
    mode: RecursiveMode,
) -> (mpsc::Receiver<()>, Option<notify::RecommendedWatcher>) {
    let (tx, rx) = mpsc::channel(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Opening and reading a file is an event too (inotify's IN_OPEN and
        // IN_CLOSE_NOWRITE): our own reads must not wake us, or every read
        // would cause the next one, forever.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            // Full means a wake-up is already pending: one read covers both.
            let _ = tx.try_send(());
        }
    })
    .and_then(|mut w| w.watch(&dir, mode).map(|()| w));
    match watcher {
        Ok(w) => (rx, Some(w)),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "no filesystem notifications for the config; reading it every poll interval instead");
            (rx, None)
        }
    }
}

/// Waits until no event has arrived for [`SETTLE`].
pub(crate) async fn settle(events: &mut mpsc::Receiver<()>) {
    while let Ok(Some(())) = tokio::time::timeout(SETTLE, events.recv()).await {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    const ONE: &str = "listeners: [ { name: l, address: 127.0.0.1:0, routes: r } ]\nroutes: { r: [ { cluster: c } ] }\nclusters: { c: { endpoints: [127.0.0.1:1] } }\n";

    fn endpoint(update: &Update) -> &str {
        match update {
            Update::Valid(s) => &s.config.clusters["c"].endpoints[0].address,
            Update::Invalid(e) => panic!("{e}"),
            Update::Clusters { .. } => panic!("a file sends whole configs"),
        }
    }

    /// Without any poll (an hour), notifications alone carry every kind of
    /// save: in place, a new file renamed over the old, and a ConfigMap's
    /// `..data` symlink swap. Each delivery waits for its outcome.
    #[tokio::test]
    async fn notifications_carry_every_kind_of_save() {
        let dir = tempfile::tempdir().unwrap();
        // A ConfigMap volume: skiff.yaml -> ..data/skiff.yaml, ..data -> ..v1
        std::fs::create_dir(dir.path().join("..v1")).unwrap();
        std::fs::write(dir.path().join("..v1/skiff.yaml"), ONE).unwrap();
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/skiff.yaml", dir.path().join("skiff.yaml")).unwrap();
        let path = dir.path().join("skiff.yaml");
        let first = Snapshot {
            version: 1,
            source: path.display().to_string(),
            config: load_str(ONE, "x").unwrap(),
        };
        let hour = Duration::from_secs(3600);
        let (mut rx, task) = watch(path.clone(), &first, hour, Vars::process());
        // The first tick reads the unchanged file: nothing is delivered.

        // 1. A ConfigMap update: a new timestamped dir, `..data_tmp`
        //    renamed over `..data`.
        std::fs::create_dir(dir.path().join("..v2")).unwrap();
        let two = ONE.replace("127.0.0.1:1", "127.0.0.1:2");
        std::fs::write(dir.path().join("..v2/skiff.yaml"), &two).unwrap();
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        let d = rx.recv().await.unwrap();
        assert_eq!(endpoint(&d.update), "127.0.0.1:2");
        d.reply.send(Outcome::Applied);

        // 2. An editor's save: write a new file, rename it into place
        //    (replacing the symlink, as vim's `backupcopy=no` does).
        let three = ONE.replace("127.0.0.1:1", "127.0.0.1:3");
        std::fs::write(dir.path().join(".skiff.yaml.swp"), &three).unwrap();
        std::fs::rename(dir.path().join(".skiff.yaml.swp"), &path).unwrap();
        let d = rx.recv().await.unwrap();
        assert_eq!(endpoint(&d.update), "127.0.0.1:3");
        // Rejected by the proxy (say, a port in use): the baseline stays 2.
        d.reply.send(Outcome::Rejected(vec!["no".into()]));

        // 3. An in-place write back to 2: the running config, so nothing is
        //    delivered; then a real change in place.
        std::fs::write(&path, &two).unwrap();
        let four = ONE.replace("127.0.0.1:1", "127.0.0.1:4");
        std::fs::write(&path, &four).unwrap();
        let d = rx.recv().await.unwrap();
        assert_eq!(endpoint(&d.update), "127.0.0.1:4");
        match &d.update {
            Update::Valid(s) => assert_eq!(s.version, 4, "versions count every attempt"),
            Update::Invalid(e) => panic!("{e}"),
            Update::Clusters { .. } => panic!("a file sends whole configs"),
        }
        d.reply.send(Outcome::Applied);

        // 4. A broken change: delivered as invalid, with its position.
        std::fs::write(&path, "listeners: [ { name: l } ]\n").unwrap();
        let d = rx.recv().await.unwrap();
        match d.update {
            Update::Invalid(e) => assert!(e.to_string().contains("skiff.yaml:1:"), "{e}"),
            Update::Valid(s) | Update::Clusters { snapshot: s, .. } => panic!("accepted {s:?}"),
        }
        task.abort();
    }
}
