//! `skiff control`, in-process, serving a temporary directory.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use skiff_control::server::status::Registry;
use skiff_control::server::{self, Options, Running};

/// The four resource types by their short names, as `/status` keys them.
pub const ALL_TYPES: [&str; 4] = [
    "Cluster",
    "ClusterLoadAssignment",
    "Listener",
    "RouteConfiguration",
];

/// A control plane on `127.0.0.1:0` serving the files a test writes.
pub struct Control {
    running: Option<Running>,
    dir: tempfile::TempDir,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
}

impl Control {
    /// Writes `files` (path in the directory, YAML) and starts serving them.
    pub async fn start(files: &[(&str, &str)]) -> Self {
        crate::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            write(dir.path().join(name), text);
        }
        let running = start_on(dir.path().to_path_buf(), "127.0.0.1:0").await;
        let status = running.registry.status();
        assert_eq!(
            status["catalog"]["version"], 1,
            "the test's directory does not validate: {status:#}"
        );
        Self {
            xds: running.xds,
            admin: running.admin,
            running: Some(running),
            dir,
        }
    }

    /// `http://ADDR` for a proxy's `control.address`.
    pub fn url(&self) -> String {
        format!("http://{}", self.xds)
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.running.as_ref().unwrap().registry.clone()
    }

    /// Writes (or replaces) one file as editors and ConfigMaps do: whole,
    /// renamed into place, so the server never reads half of it.
    pub fn write(&self, name: &str, text: &str) {
        write(self.dir.path().join(name), text);
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join(name)).unwrap();
    }

    /// Resolves once the directory's version is `version` (1 is the first
    /// read), or its read failed with `errors` when `version` is 0.
    pub async fn wait_version(&self, version: u64) {
        let registry = self.registry();
        crate::guard(
            &format!("directory version {version}"),
            registry.wait_for(|s| s["catalog"]["version"] == version),
        )
        .await;
    }

    /// Resolves once `node` has caught up with directory `version` and
    /// ACKed what it was sent of each type in `types`.
    pub async fn wait_acked(&self, node: &str, version: u64, types: &[&str]) {
        let registry = self.registry();
        crate::guard(
            &format!("{node} to ACK {types:?} of version {version}"),
            registry.wait_for(|s| acked(s, node, version, types)),
        )
        .await;
    }

    /// `/status`, as JSON.
    pub fn status(&self) -> Value {
        self.registry().status()
    }

    /// Stops serving (streams end, clients reconnect) and starts again on
    /// the same port, as a restarted or replacement replica would.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.resume().await;
    }

    /// Stops serving; [`Control::resume`] starts again on the same port.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    pub async fn resume(&mut self) {
        let running = start_on(self.dir.path().to_path_buf(), &self.xds.to_string()).await;
        self.admin = running.admin;
        self.running = Some(running);
    }
}

/// Whether `node`'s stream has caught up with directory `version` and
/// ACKed, for each of `types`, the version it was last sent.
pub fn acked(status: &Value, node: &str, version: u64, types: &[&str]) -> bool {
    let Some(nodes) = status["nodes"].as_array() else {
        return false;
    };
    nodes
        .iter()
        .filter(|n| n["node"] == node && n["version"] == version)
        .any(|n| {
            types.iter().all(|t| {
                let t = &n["types"][*t];
                !t["sent"].is_null() && t["sent"] == t["acked"]
            })
        })
}

async fn start_on(dir: PathBuf, listen: &str) -> Running {
    let options = Options {
        dir,
        listen: listen.to_owned(),
        admin: "127.0.0.1:0".to_owned(),
        // Notifications carry every change; no poll to race with.
        poll: Duration::from_secs(3600),
        vars: skiff_control::Vars::process(),
    };
    crate::guard("skiff control to start", server::start(options))
        .await
        .unwrap()
}

fn write(path: PathBuf, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}
