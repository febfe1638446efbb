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
    let startup = until_ready(&mut stderr);
    let admin = startup
        .iter()
        .find_map(|v| v["fields"]["admin"].as_str().map(str::to_owned))
        .expect("the admin address is logged before ready");
    // Log fields hold values, not Rust's `Some(..)` / `None`.
    for line in &startup {
        for (field, value) in line["fields"].as_object().unwrap() {
            let text = value.as_str().unwrap_or_default();
            assert!(
                !text.starts_with("Some(") && text != "None",
                "{field} = {text}: {line}"
            );
        }
    }
    let listening = startup
        .iter()
        .find(|v| v["fields"]["message"] == "listening")
        .unwrap();
    assert_eq!(listening["fields"]["tls"], "disabled", "{listening}");
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

/// `skiff demo --listen 127.0.0.1:0 --admin 127.0.0.1:0`: the banner names
/// the ports bound, every printed address answers, and SIGTERM ends it.
#[test]
fn the_demo_runs_on_free_ports_and_prints_them() {
    let mut child = skiff()
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("Ctrl-C stops it") {
        assert!(stdout.read_line(&mut banner).unwrap() > 0, "{banner}");
    }
    let addr_after = |label: &str| {
        let at = banner.find(label).expect(label) + label.len();
        banner[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("http://")
            .to_owned()
    };
    let (proxy, admin) = (addr_after("proxy  "), addr_after("admin  "));
    assert!(
        !proxy.ends_with(":8080") && !admin.ends_with(":15000"),
        "{banner}"
    );
    // Every curl line uses the bound addresses, none a default one.
    for line in banner.lines().filter(|l| l.contains("curl")) {
        assert!(line.contains(&proxy) || line.contains(&admin), "{line}");
    }
    assert!(
        banner.contains(&format!("demo-grpc-client -- {proxy}")),
        "{banner}"
    );
    assert!(!banner.contains("grpcurl"), "{banner}");
    let hello = get(&proxy, "/hello");
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    assert!(hello.contains("x-served-by: skiff"), "{hello}");
    assert!(get(&admin, "/ready").starts_with("HTTP/1.1 200"));

    assert_eq!(terminate(&mut child), Some(0));
}

/// A taken port stops the demo at once, saying which and what to do.
#[test]
fn the_demo_on_a_taken_port_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = skiff()
        .args(["demo", "--admin", "127.0.0.1:0", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "skiff: listener demo: cannot bind {addr}: Address already in use (os error 98)\n\
         Is another demo running? Stop it (Ctrl-C in its terminal), or pick free ports: \
         skiff demo --listen 127.0.0.1:0 --admin 127.0.0.1:0\n"
    );
    assert!(stderr.ends_with(&want), "{stderr}");
}

/// `skiff demo --config FILE` runs that copy and applies edits to it live:
/// the route's response header changes without a restart.
#[test]
fn the_demo_applies_edits_to_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let demo_yaml = include_str!("../../examples/demo/skiff.yaml");
    let path = write_config(&dir, "demo.yaml", demo_yaml);
    let mut child = skiff()
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--log-format", "json", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let proxy = loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0);
        if let Some(rest) = line.trim().strip_prefix("proxy  http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert!(get(&proxy, "/").contains("x-served-by: skiff"));
    let edited = demo_yaml.replace("x-served-by: skiff", "x-served-by: edited");
    assert_ne!(edited, demo_yaml);
    std::fs::write(&path, edited).unwrap();
    // The log says when the edit is applied: version 2.
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "demo exited");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["message"] == "config applied" && v["fields"]["version"] == 2 {
            break;
        }
    }
    let applied = get(&proxy, "/").contains("x-served-by: edited");
    assert!(applied, "the edit was logged as applied but does not show");
    assert_eq!(terminate(&mut child), Some(0));
}

/// Config messages a newcomer meets first, exactly.
#[test]
fn check_says_what_is_wrong_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    // A file that does not exist: no position, just what is wrong.
    let missing = dir.path().join("nope.yaml");
    let out = skiff()
        .args(["check", "-c"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: the config file does not exist\n", missing.display())
    );
    // An empty config is valid, but warned about.
    let empty = write_config(&dir, "empty.yaml", "# nothing yet\n");
    let out = skiff().args(["check", "-c"]).arg(&empty).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}: warning: no listeners: this config accepts no traffic\n",
            empty.display()
        )
    );
    // A tab: plain words first, then the parser's.
    let tab = write_config(&dir, "tab.yaml", "runtime:\n\tworkers: 2\n");
    let out = skiff().args(["check", "-c"]).arg(&tab).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{}:2:2: not valid YAML: a tab indents this line; YAML indents with spaces only \
             (parser: tabs disallowed within this context (block indentation))\n",
            tab.display()
        )
    );
}

/// Every flag of every subcommand says what it is for.
#[test]
fn every_flag_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" && id != "version" && arg.get_help().is_none() {
                missing.push(format!("{path} --{id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {}", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&skiff::cli::command(), "skiff", &mut missing);
    assert!(missing.is_empty(), "no help text: {missing:?}");
    let out = skiff().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--log-format <LOG_FORMAT>"), "{help}");
    assert!(help.contains("for log collectors"), "{help}");
}

/// The field `key` of the startup log line whose message is `message`.
fn logged(startup: &[serde_json::Value], message: &str, key: &str) -> String {
    startup
        .iter()
        .find(|v| v["fields"]["message"] == message)
        .and_then(|v| v["fields"][key].as_str().map(str::to_owned))
        .unwrap()
}

/// `METHOD TARGET` on the admin port at `admin`, body empty; the whole answer.
fn admin_request(admin: &str, method: &str, target: &str) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// SIGTERM, as Kubernetes and Ctrl-C stop Skiff; the exit code.
fn terminate(child: &mut std::process::Child) -> Option<i32> {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait().unwrap().code()
}

/// `POST /logging?level=debug` turns debug lines on while Skiff runs: a
/// request's debug line appears after it, not before.
#[test]
fn the_log_level_changes_at_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "ok.yaml", MINIMAL);
    let (mut child, mut stderr) = run_json(&path);
    let startup = until_ready(&mut stderr);
    let (admin, listener) = (
        logged(&startup, "admin listening", "admin"),
        logged(&startup, "listening", "addr"),
    );
    let post = |query: &str| admin_request(&admin, "POST", &format!("/logging{query}"));
    assert!(post("").starts_with("HTTP/1.1 400"));
    assert!(post("?level=skiff%3Dnope%3D").starts_with("HTTP/1.1 400"));
    let set = post("?level=skiff%3Ddebug");
    assert!(set.starts_with("HTTP/1.1 200"), "{set}");
    assert!(set.ends_with("log level: skiff=debug\n"), "{set}");
    get(&listener, "/after");
    // The debug line of that request, after the change's own info line.
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no debug line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["level"] == "DEBUG" && v["fields"]["path"] == "/after" {
            break;
        }
    }
    assert_eq!(terminate(&mut child), Some(0));
}

/// `POST /shutdown` (a Job whose app has finished) stops `skiff run` as
/// SIGTERM does: exit 0. Not from another host, and not by GET.
#[test]
fn post_shutdown_ends_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "ok.yaml", MINIMAL);
    let (mut child, mut stderr) = run_json(&path);
    let startup = until_ready(&mut stderr);
    let admin = logged(&startup, "admin listening", "admin");
    let ask = |method: &str| admin_request(&admin, method, "/shutdown");
    assert!(ask("GET").starts_with("HTTP/1.1 405"));
    assert!(ask("POST").starts_with("HTTP/1.1 200"));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The app's probes as `skiff inject` rewrites them: the admin port's
/// `/app-health/CONTAINER/KIND` asks the app on loopback with the original
/// port and path (from `SKIFF_APP_PROBES`), and says 200 for the app's 2xx
/// or 3xx, 503 otherwise; a probe it was not told of is 404.
#[test]
fn the_apps_probes_are_answered_through_the_admin_port() {
    // The app: /healthz is fine, /sick is not.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = app.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in app.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let status = if head.starts_with("GET /healthz ") {
                "204 No Content"
            } else {
                "500 Oops"
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "ok.yaml", MINIMAL);
    let probes = format!(
        r#"{{"/app-health/app/readiness": {{"port": {port}, "path": "/healthz"}}, "/app-health/app/liveness": {{"port": {port}, "path": "/sick"}}}}"#
    );
    let mut child = skiff()
        .args(["run", "--log-format", "json", "-c"])
        .arg(&path)
        .env("SKIFF_APP_PROBES", probes)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let startup = until_ready(&mut stderr);
    let admin = logged(&startup, "admin listening", "admin");
    let status = |path: &str| {
        let answer = admin_request(&admin, "GET", path);
        answer
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(status("/app-health/app/readiness"), "200");
    assert_eq!(status("/app-health/app/liveness"), "503");
    assert_eq!(status("/app-health/other/readiness"), "404");
    assert_eq!(terminate(&mut child), Some(0));
}
