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
