//! Two pods as two network namespaces joined by a veth pair, each with the
//! rules of `skiff iptables` and a Skiff running as UID 1337 beside an app.
//! App A calls app B by B's IP with no proxy settings, and the request goes
//! A → Skiff A (outbound, transparent) → mTLS → Skiff B (inbound) → app B,
//! shown by both proxies' metrics and by B seeing A's SPIFFE identity in
//! `x-forwarded-client-cert`. Non-HTTP TCP (client-first and server-first)
//! passes through both sidecars, and a destination outside the mesh is
//! reached through the passthrough cluster.
//!
//! Needs root (namespaces, iptables), `ip`, `iptables`, `setpriv`, `curl`
//! and `python3`: what `.ci/run` installs and runs as. Elsewhere it says it
//! cannot run and passes without checking anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
/// How long any one step may take.
const STEP: Duration = Duration::from_secs(30);

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted (with what runs in it) when dropped.
struct Ns(String);

impl Ns {
    fn exec(&self, cmd: &[&str]) -> String {
        run(&[&["ip", "netns", "exec", &self.0], cmd].concat())
    }

    fn spawn(&self, cmd: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Proc::new(child)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process whose output lines are read as they come; killed when
/// dropped.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn new(mut child: Child) -> Self {
        let (tx, lines) = mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Self { child, lines }
    }

    /// Waits for a line containing `what` (its readiness signal).
    fn wait_for(&self, what: &str) {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(STEP) {
                Ok(line) if line.contains(what) => return,
                Ok(line) => seen.push(line),
                Err(e) => panic!("no {what:?} ({e}); it said:\n{}", seen.join("\n")),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pod's Skiff config: outbound capture on 15001 (port 8080 is the mesh
/// service, reached with mTLS to `peer`; anything else passes through),
/// inbound capture on 15006 (mTLS or plaintext, to the app on loopback).
fn config(dir: &Path, me: &str, peer: &str) -> String {
    let id = dir.join(me);
    format!(
        "admin: {{ address: 127.0.0.1:15000 }}
identity:
  cert: {id}/cert.pem
  key: {id}/key.pem
  trust_bundle: {id}/ca.pem
listeners:
  - name: outbound
    address: 0.0.0.0:15001
    direction: outbound
    transparent: true
    routes: out
  - name: inbound
    address: 0.0.0.0:15006
    direction: inbound
    transparent: true
    tls: {{ mode: permissive }}
    routes: in
    cluster: local-app
routes:
  out:
    - match: {{ port: 8080 }}
      cluster: mesh
    - cluster: passthrough
  in:
    - cluster: local-app
clusters:
  mesh:
    discovery: original_destination
    tls: {{ server_identity: spiffe://mesh.test/ns/default/sa/{peer} }}
  passthrough:
    discovery: original_destination
  local-app:
    discovery: original_destination
    original_destination: {{ host: 127.0.0.1 }}
",
        id = id.display()
    )
}

fn metric_line<'a>(metrics: &'a str, parts: &[&str]) -> Option<&'a str> {
    metrics
        .lines()
        .find(|l| l.starts_with("skiff_requests_total{") && parts.iter().all(|p| l.contains(p)))
}

#[test]
fn two_pods_talk_through_their_sidecars() {
    if !root() {
        eprintln!("netns test skipped: it needs root (network namespaces, iptables)");
        return;
    }
    let tag = std::process::id() % 250;
    let (ip_a, ip_b) = (format!("10.231.{tag}.1"), format!("10.231.{tag}.2"));
    let a = Ns(format!("skiff-a-{}", std::process::id()));
    let b = Ns(format!("skiff-b-{}", std::process::id()));
    for ns in [&a, &b] {
        run(&["ip", "netns", "add", &ns.0]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
    }
    let (veth_a, veth_b) = (format!("ska{tag}"), format!("skb{tag}"));
    run(&[
        "ip", "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
    ]);
    run(&["ip", "link", "set", &veth_a, "netns", &a.0]);
    run(&["ip", "link", "set", &veth_b, "netns", &b.0]);
    a.exec(&["ip", "addr", "add", &format!("{ip_a}/24"), "dev", &veth_a]);
    b.exec(&["ip", "addr", "add", &format!("{ip_b}/24"), "dev", &veth_b]);
    a.exec(&["ip", "link", "set", &veth_a, "up"]);
    b.exec(&["ip", "link", "set", &veth_b, "up"]);

    // Identities, configs and the binary where UID 1337 can read them.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let skiff: PathBuf = d.join("skiff");
    std::fs::copy(SKIFF, &skiff).unwrap();
    let skiff = skiff.to_str().unwrap().to_owned();
    run(&[
        &skiff,
        "certs",
        "ca",
        "--out",
        d.join("ca").to_str().unwrap(),
    ]);
    for me in ["a", "b"] {
        run(&[
            &skiff,
            "certs",
            "issue",
            "--ca",
            d.join("ca").to_str().unwrap(),
            "--id",
            &format!("spiffe://mesh.test/ns/default/sa/{me}"),
            "--out",
            d.join(me).to_str().unwrap(),
        ]);
    }
    std::fs::write(d.join("a.yaml"), config(d, "a", "b")).unwrap();
    std::fs::write(d.join("b.yaml"), config(d, "b", "a")).unwrap();
    run(&["chmod", "-R", "a+rX", d.to_str().unwrap()]);

    // The init containers: B leaves port 7070 uncaptured (an app outside
    // the mesh that happens to live there).
    a.exec(&[&skiff, "iptables"]);
    b.exec(&[&skiff, "iptables", "--exclude-inbound-ports", "7070"]);
    let rules = a.exec(&["iptables-save", "-t", "nat"]);
    assert!(
        rules.contains("-A SKIFF_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
        "{rules}"
    );

    // The apps (as root, so their own connections are captured) and the
    // sidecars (as 1337).
    let apps = peer("netns_apps.py");
    let mut procs = Vec::new();
    for (ns, args) in [
        (&b, vec!["http", "app-b", "8080"]),
        (&b, vec!["http", "outside", "7070"]),
        (&b, vec!["echo", "9000"]),
        (&b, vec!["greet", "9001"]),
    ] {
        let p = ns.spawn(&[&["python3", apps.to_str().unwrap()], args.as_slice()].concat());
        p.wait_for("ready");
        procs.push(p);
    }
    for (ns, me) in [(&a, "a"), (&b, "b")] {
        let config = d.join(format!("{me}.yaml"));
        let p = ns.spawn(&[
            "setpriv",
            "--reuid",
            "1337",
            "--regid",
            "1337",
            "--clear-groups",
            &skiff,
            "run",
            "-c",
            config.to_str().unwrap(),
        ]);
        p.wait_for("ready;");
        procs.push(p);
    }

    // HTTP, by B's IP, no proxy settings: through both sidecars with mTLS.
    let body = a.exec(&[
        "curl",
        "-sS",
        "-m",
        "10",
        &format!("http://{ip_b}:8080/hello"),
    ]);
    let seen: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(seen["app"], "app-b", "{seen:#}");
    assert_eq!(
        seen["headers"]["x-forwarded-client-cert"], "URI=spiffe://mesh.test/ns/default/sa/a",
        "B sees A's identity: {seen:#}"
    );
    let metrics_a = a.exec(&["curl", "-sS", "-m", "5", "127.0.0.1:15000/metrics"]);
    let metrics_b = b.exec(&["curl", "-sS", "-m", "5", "127.0.0.1:15000/metrics"]);
    assert!(
        metric_line(
            &metrics_a,
            &["listener=\"outbound\"", "cluster=\"mesh\"", "code=\"200\""]
        )
        .is_some(),
        "{metrics_a}"
    );
    assert!(
        metric_line(
            &metrics_b,
            &[
                "listener=\"inbound\"",
                "cluster=\"local-app\"",
                "code=\"200\""
            ]
        )
        .is_some(),
        "{metrics_b}"
    );
    assert!(
        metrics_b.contains("skiff_tls_handshakes_total{listener=\"inbound\",result=\"ok\"}"),
        "{metrics_b}"
    );

    // Plain TCP, client first and server first, through both sidecars.
    let client = |port: u16, send: &str| {
        let code = format!(
            "import socket; s=socket.create_connection(('{ip_b}', {port}), timeout=10); \
             s.sendall({send:?}.encode()) if {send:?} else None; \
             print(s.recv(100).decode(), end='')"
        );
        a.exec(&["python3", "-c", &code])
    };
    assert_eq!(client(9000, "ping\n"), "ping\n");
    assert_eq!(client(9001, ""), "hello from the server\n");

    // Outside the mesh: passthrough from A, B's sidecar not in the way.
    let body = a.exec(&[
        "curl",
        "-sS",
        "-m",
        "10",
        &format!("http://{ip_b}:7070/out"),
    ]);
    assert!(body.contains("\"app\": \"outside\""), "{body}");
    assert!(!body.contains("x-forwarded-client-cert"), "{body}");
    let metrics_a = a.exec(&["curl", "-sS", "-m", "5", "127.0.0.1:15000/metrics"]);
    assert!(
        metric_line(
            &metrics_a,
            &[
                "listener=\"outbound\"",
                "cluster=\"passthrough\"",
                "code=\"200\""
            ]
        )
        .is_some(),
        "{metrics_a}"
    );

    // And the rules come out as they went in.
    a.exec(&[&skiff, "iptables", "--clean"]);
    assert!(!a.exec(&["iptables-save", "-t", "nat"]).contains("SKIFF"));
    drop(procs);
}

fn peer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/peers")
        .join(name)
}
