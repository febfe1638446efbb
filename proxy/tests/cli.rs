#![allow(clippy::unwrap_used)]
//! The `skiff` binary as an operator runs it: `check` output and exit codes,
//! `run` serving until SIGTERM and then exiting 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn skiff() -> Command {
    Command::new(env!("CARGO_BIN_EXE_skiff"))
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_examples() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    for file in [
        "demo/skiff.yaml",
        "configs/minimal.yaml",
        "configs/routing.yaml",
        "configs/tcp.yaml",
    ] {
        let out = skiff()
            .args(["check", "-c", &format!("{root}/{file}")])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(stdout.contains("valid"), "{stdout}");
    }
}

#[test]
fn check_reports_every_problem_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "bad.yaml",
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\n    routes: nope\nroutes:\n  app:\n    - cluster: missing\nclusters:\n  app:\n    endpoints: [127.0.0.1:9000]\n",
    );
    let out = skiff().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let file = path.display().to_string();
    assert!(lines[0].starts_with(&format!("{file}:4:")), "{}", lines[0]);
    assert!(lines[0].contains("nope"), "{}", lines[0]);
    assert!(lines[1].starts_with(&format!("{file}:7:")), "{}", lines[1]);
    assert!(lines[1].contains("missing"), "{}", lines[1]);
}

#[test]
fn check_falls_back_to_skiff_config_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "ok.yaml", MINIMAL);
    let out = skiff()
        .arg("check")
        .env("SKIFF_CONFIG", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn run_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "bad.yaml", "listeners: [ { name: x } ]\n");
    let out = skiff().args(["run", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:1:"), "{stderr}");
}

const MINIMAL: &str = "admin: { address: 127.0.0.1:0 }\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    routes: app\nroutes:\n  app:\n    - cluster: app\nclusters:\n  app:\n    endpoints: [127.0.0.1:9]\n";

/// `skiff run` logs where the admin server listens; readiness comes from there.
#[test]
fn run_serves_until_sigterm_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "ok.yaml", MINIMAL);
    let (mut child, mut stderr) = run_json(&path);
    // The log says where the admin server listens, and then, once every
    // listener is bound and `/ready` is up, "ready": the readiness signal.
    let admin = until_ready(&mut stderr)
        .iter()
        .find_map(|v| v["fields"]["admin"].as_str().map(str::to_owned))
        .expect("the admin address is logged before ready");
    assert!(get(&admin, "/ready").starts_with("HTTP/1.1 200"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("drain"), "{rest}");
}

/// `skiff run --log-format json -c PATH`, its log piped for the test to read.
fn run_json(path: &std::path::Path) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    let mut child = skiff()
        .args(["run", "--log-format", "json", "-c"])
        .arg(path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    (child, stderr)
}

/// Reads JSON log lines up to the readiness line ("ready": every listener
/// bound, `/ready` up) and returns them, parsed.
fn until_ready(stderr: &mut impl BufRead) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "skiff exited early"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let ready = v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ready"));
        lines.push(v);
        if ready {
            return lines;
        }
    }
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Logs read by programs (`kubectl logs`, podman, a file, a pipe) carry no
/// colour codes: in the default text format and in JSON, what a spawned
/// proxy writes to a pipe holds no ESC byte. Each line: the format flags.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "ok.yaml", MINIMAL);
    for format in [
        &[][..],
        &["--log-format", "text"],
        &["--log-format", "json"],
    ] {
        let mut child = skiff()
            .arg("run")
            .args(format)
            .arg("-c")
            .arg(&path)
            // Whatever the caller's environment says about colour.
            .env_remove("NO_COLOR")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let mut line = String::new();
        // Up to the readiness line, which every format writes.
        while !line.contains("ready") {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "{format:?}: skiff exited early: {seen}"
            );
            seen.push_str(&line);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        seen.push_str(&rest);
        assert_eq!(child.wait().unwrap().code(), Some(0), "{format:?}");
        assert!(
            !seen.contains('\u{1b}'),
            "{format:?}: colour codes in {seen:?}"
        );
        assert!(
            seen.contains("INFO") || seen.contains("\"INFO\""),
            "{format:?}: {seen}"
        );
    }
}

/// A port already taken stops `skiff run` at once, and the cause is said
/// once: `listener public: cannot bind ADDR: Address already in use (os
/// error 98)`, not the OS error twice.
#[test]
fn a_taken_port_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = MINIMAL.replace(
        "address: 127.0.0.1:0\n    routes",
        &format!("address: {addr}\n    routes"),
    );
    let path = write_config(&dir, "taken.yaml", &config);
    let out = skiff().args(["run", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("skiff: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.starts_with(&format!("skiff: listener public: cannot bind {addr}: ")),
        "{line}"
    );
    assert_eq!(line.matches("in use").count(), 1, "{line}");
}

/// An answer Skiff makes itself is not silent: a request to an endpoint
/// where nothing listens gets 503 `connect-failed`, and the log has one
/// `warn` line with the reason, listener, route, cluster, the request id
/// and the cause (which names the address the caller was not told).
#[test]
fn a_proxy_made_answer_is_logged_at_warn() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "ok.yaml", MINIMAL);
    let (mut child, mut stderr) = run_json(&path);
    let listener = until_ready(&mut stderr)
        .iter()
        .find(|v| v["fields"]["listener"] == "public" && v["fields"]["message"] == "listening")
        .and_then(|v| v["fields"]["addr"].as_str().map(str::to_owned));
    let mut line = String::new();
    let listener = listener.expect("the listener's address is logged");
    let mut s = TcpStream::connect(&listener).unwrap();
    write!(
        s,
        "GET /x HTTP/1.1\r\nhost: app\r\nx-request-id: req-42\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).unwrap();
    assert!(rsp.starts_with("HTTP/1.1 503"), "{rsp}");
    assert!(
        !rsp.contains("127.0.0.1:9"),
        "the caller is told no address: {rsp}"
    );
    let warned = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no warn line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["level"] == "WARN" && v["fields"]["message"] == "proxy answered" {
            break v;
        }
    };
    let f = &warned["fields"];
    assert_eq!(f["skiff_error"], "connect-failed", "{warned}");
    assert_eq!(f["listener"], "public", "{warned}");
    assert_eq!(f["route"], "app/0", "{warned}");
    assert_eq!(f["cluster"], "app", "{warned}");
    assert_eq!(f["request_id"], "req-42", "{warned}");
    assert!(
        f["error"].as_str().unwrap().contains("127.0.0.1:9"),
        "{warned}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
