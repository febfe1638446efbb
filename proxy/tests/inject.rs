//! `skiff inject` on real manifests: golden outputs (`proxy/tests/inject/`,
//! `SKIFF_BLESS=1` to rewrite them), injecting twice is injecting once, a
//! document that does not parse is reported and left out, and every output
//! is a valid Kubernetes object for 1.29 and 1.33 (`kubernetes-validate
//! --strict`, a real validator with the API's own schemas).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::io::Write as _;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

/// Runs `skiff inject ARGS` with `input` on stdin: (stdout, stderr, success).
fn inject(input: &str, args: &[&str]) -> (String, String, bool) {
    let mut child = Command::new(SKIFF)
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

/// (input file, flags, golden file)
const CASES: [(&str, &[&str], &str); 2] = [
    ("app.yaml", &[], "app.native.golden.yaml"),
    (
        "app.yaml",
        &["--classic-sidecar", "--image", "registry.local/skiff:1.0"],
        "app.classic.golden.yaml",
    ),
];

#[test]
fn outputs_match_their_golden_files_and_injecting_twice_is_once() {
    let bless = std::env::var_os("SKIFF_BLESS").is_some();
    let mut stale = Vec::new();
    for (input, flags, golden) in CASES {
        let text = std::fs::read_to_string(dir().join(input)).unwrap();
        let (once, err, ok) = inject(&text, flags);
        assert!(ok, "{input}: {err}");
        let path = dir().join(golden);
        if bless {
            std::fs::write(&path, &once).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(once.as_str()) {
            stale.push(golden);
        }
        let (twice, err, ok) = inject(&once, flags);
        assert!(ok, "{golden} again: {err}");
        assert_eq!(twice, once, "{golden}: injecting twice differs from once");
        // What is not a pod template comes out exactly as it went in.
        assert!(once.starts_with("# The demo app\n"), "{once}");
        assert!(once.contains("  name: web   # keep me\n"), "{once}");
        assert!(
            once.contains("  annotations: { skiff.io/inject: disabled }\n"),
            "{once}"
        );
    }
    assert!(
        stale.is_empty(),
        "{stale:?} no longer match: run `SKIFF_BLESS=1 cargo test -p skiff --test inject` and review the diff"
    );
}

#[test]
fn the_sidecar_is_what_the_pod_asked_for() {
    let text = std::fs::read_to_string(dir().join("app.yaml")).unwrap();
    let (out, _, _) = inject(&text, &[]);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).unwrap();
    let db = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let spec = &db["spec"]["template"]["spec"];
    let inits = spec["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "skiff-init");
    assert_eq!(
        inits[0]["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    let args: Vec<&str> = inits[0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--exclude-inbound-ports", "5432"]),
        "{args:?}"
    );
    let proxy = &inits[1];
    assert_eq!(proxy["name"], "skiff-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["resources"]["requests"]["cpu"], "100m");
    assert_eq!(proxy["resources"]["limits"]["memory"], "128Mi");
    let secret = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "skiff-identity")
        .unwrap();
    assert_eq!(secret["secret"]["secretName"], "db-identity");
    // The app's own containers are untouched.
    assert_eq!(
        spec["containers"],
        serde_json::json!([{ "name": "db", "image": "db:1" }])
    );

    // The app's HTTP probe goes through the admin port; the original is
    // handed to the sidecar. A TCP probe stays as it is.
    let web = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let spec = &web["spec"]["template"]["spec"];
    let app = &spec["containers"][0];
    assert_eq!(
        app["readinessProbe"]["httpGet"],
        serde_json::json!({ "path": "/app-health/web/readiness", "port": 15000 })
    );
    assert_eq!(app["livenessProbe"]["tcpSocket"]["port"], 8080);
    let env = spec["initContainers"][1]["env"].as_array().unwrap();
    let probes = env
        .iter()
        .find(|e| e["name"] == "SKIFF_APP_PROBES")
        .unwrap();
    let probes: serde_json::Value =
        serde_json::from_str(probes["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        probes,
        serde_json::json!({ "/app-health/web/readiness": { "port": 8080, "path": "/healthz" } })
    );

    let (classic, _, _) = inject(&text, &["--classic-sidecar"]);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&classic).unwrap();
    let web = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let containers = web["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers[0]["name"], "skiff-proxy", "the first container");
    assert_eq!(
        containers[0]["lifecycle"]["postStart"]["exec"]["command"],
        serde_json::json!(["/skiff", "ready", "--timeout", "60s"])
    );
    assert!(containers[0].get("restartPolicy").is_none());
}

#[test]
fn a_document_that_does_not_parse_is_named_and_left_out() {
    let text = "kind: ConfigMap\nmetadata: { name: a }\n---\nkind: Pod\nmetadata: { name: broken\n---\nkind: ConfigMap\nmetadata: { name: c }\n";
    let (out, err, ok) = inject(text, &[]);
    assert!(!ok);
    assert!(
        err.contains("document 2 (line 5): column 11: unclosed bracket"),
        "{err}"
    );
    assert!(
        out.contains("name: a }") && out.contains("name: c }"),
        "{out}"
    );
    assert!(!out.contains("broken"), "{out}");
}

/// Every golden output is a valid object of Kubernetes 1.29 and 1.33.
#[test]
fn the_outputs_are_valid_kubernetes() {
    for (_, _, golden) in CASES {
        let path = dir().join(golden);
        for version in ["1.29.0", "1.33.0"] {
            let out = Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", version])
                .arg(&path)
                .output()
                .expect("kubernetes-validate runs (pip install kubernetes-validate; .ci/run does)");
            assert!(
                out.status.success(),
                "{golden} is not valid for Kubernetes {version}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// The demo's injected manifests are what `skiff inject` makes of its app
/// manifests today.
#[test]
fn the_demo_is_injected_by_the_current_skiff() {
    let app = std::fs::read_to_string(deploy().join("demo/app.yaml")).unwrap();
    let (injected, err, ok) = inject(&app, &[]);
    assert!(ok, "{err}");
    let path = deploy().join("demo/app.injected.yaml");
    if std::env::var_os("SKIFF_BLESS").is_some() {
        std::fs::write(&path, &injected).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        injected,
        "deploy/k8s/demo/app.injected.yaml is stale: `skiff inject -f deploy/k8s/demo/app.yaml > deploy/k8s/demo/app.injected.yaml`"
    );
}

/// `kubectl kustomize deploy/k8s` renders offline, and everything it
/// renders is valid for Kubernetes 1.29 and 1.33.
#[test]
fn the_manifests_render_and_are_valid_kubernetes() {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy())
        .output()
        .expect("kubectl runs (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    for kind in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "ConfigMap",
    ] {
        assert!(rendered.contains(&format!("kind: {kind}\n")), "no {kind}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    for version in ["1.29.0", "1.33.0"] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .expect("kubernetes-validate runs");
        assert!(
            out.status.success(),
            "deploy/k8s is not valid for {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The configs inside the ConfigMaps load: the sidecar's (with the
/// `POD_NAME` the pod gives it) and the control plane's directory.
#[test]
fn the_configs_in_the_manifests_load() {
    let text = std::fs::read_to_string(deploy().join("demo/proxy-config.yaml")).unwrap();
    let cm: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let yaml = cm["data"]["skiff.yaml"].as_str().unwrap();
    let vars = skiff_control::Vars::process()
        .with("POD_NAME", "demo-client-1")
        .with("POD_IP", "10.0.0.7");
    if let Err(e) = skiff_control::load_str_with(yaml, "skiff-proxy/skiff.yaml", &vars) {
        panic!("{e}");
    }
    let text = std::fs::read_to_string(deploy().join("control-plane/mesh.yaml")).unwrap();
    let cm: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in cm["data"].as_object().unwrap() {
        std::fs::write(dir.path().join(name), body.as_str().unwrap()).unwrap();
    }
    if let Err(e) =
        skiff_control::server::catalog::read(dir.path(), &skiff_control::Vars::process())
    {
        panic!("{e}");
    }
}
