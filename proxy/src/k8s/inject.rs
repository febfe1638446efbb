//! `skiff inject`: adds the Skiff sidecar to every pod template in a stream
//! of Kubernetes manifests, and leaves everything else as it came.
//!
//! Each document is read on its own. One that holds no pod template (a
//! Service, a ConfigMap) is printed exactly as written, comments and all.
//! One that does (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
//! CronJob) is printed re-serialised (keys in order, comments lost) with:
//!
//! * `skiff-init`, the first init container: `skiff iptables` with only
//!   NET_ADMIN and NET_RAW, as root, everything else dropped;
//! * `skiff-proxy`, a native sidecar (an init container with
//!   `restartPolicy: Always` and a startup probe on `/ready`, so the app
//!   starts only once the proxy is ready), or with `--classic-sidecar` the
//!   first container, with a `postStart` hook (`skiff ready`) that holds the
//!   app until the proxy is ready;
//! * the proxy's config from a ConfigMap, its identity from a Secret,
//!   resources, UID 1337, and the pod's annotations applied (ports and
//!   networks to leave alone, resources, the image).
//!
//! Injecting twice is injecting once: what a previous run added is taken
//! out first. A document that does not parse is reported with its number
//! and line, and not printed; the others still are.

use serde_json::{Map, Value, json};

/// The annotations a pod may carry.
pub mod annotations {
    /// `disabled`: leave this pod alone.
    pub const INJECT: &str = "skiff.io/inject";
    /// Set on what was injected; its value is the image used.
    pub const STATUS: &str = "skiff.io/status";
    pub const INBOUND_PORTS: &str = "skiff.io/inbound-ports";
    pub const EXCLUDE_INBOUND_PORTS: &str = "skiff.io/exclude-inbound-ports";
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "skiff.io/exclude-outbound-ports";
    pub const EXCLUDE_OUTBOUND_CIDRS: &str = "skiff.io/exclude-outbound-cidrs";
    pub const PROXY_CPU: &str = "skiff.io/proxy-cpu";
    pub const PROXY_MEMORY: &str = "skiff.io/proxy-memory";
    pub const PROXY_CPU_LIMIT: &str = "skiff.io/proxy-cpu-limit";
    pub const PROXY_MEMORY_LIMIT: &str = "skiff.io/proxy-memory-limit";
    pub const CONFIG: &str = "skiff.io/config-map";
    pub const IDENTITY: &str = "skiff.io/identity-secret";
}

pub const PROXY: &str = "skiff-proxy";
pub const INIT: &str = "skiff-init";
const CONFIG_VOLUME: &str = "skiff-config";
const IDENTITY_VOLUME: &str = "skiff-identity";

/// What `skiff inject` is told.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    pub classic_sidecar: bool,
    /// The ConfigMap holding `skiff.yaml` (annotation `skiff.io/config-map` wins).
    pub config_map: String,
    /// The Secret holding `cert.pem`, `key.pem`, `ca.pem` (annotation wins).
    pub identity_secret: String,
    pub proxy_uid: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            image: "localhost/skiff:latest".to_owned(),
            classic_sidecar: false,
            config_map: "skiff-proxy".to_owned(),
            identity_secret: "skiff-identity".to_owned(),
            proxy_uid: 1337,
        }
    }
}

/// A document that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocError {
    /// 1-based, in the input.
    pub document: usize,
    /// 1-based line in the input; 0 when unknown.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for DocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "document {} (line {}): {}",
            self.document, self.line, self.message
        )
    }
}

/// Injects every pod template in `input`; the output, and the documents
/// that could not be read (left out of the output).
pub fn inject(input: &str, options: &Options) -> (String, Vec<DocError>) {
    let mut out = String::new();
    let mut errors = Vec::new();
    for (n, (first_line, text)) in documents(input).into_iter().enumerate() {
        let document = n + 1;
        let value: Value = match serde_saphyr::from_str::<Option<Value>>(text) {
            Ok(Some(v)) => v,
            // Comments or nothing: kept as they are.
            Ok(None) => {
                push_doc(&mut out, text);
                continue;
            }
            Err(e) => {
                let (at, column) = e.location().map_or((1, 0), |l| {
                    (
                        usize::try_from(l.line()).unwrap_or(1),
                        usize::try_from(l.column()).unwrap_or(0),
                    )
                });
                let line = first_line + at.saturating_sub(1);
                // serde-saphyr says "error: line L column C: why"; the
                // position is given as the input's, so only the why stays.
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                let why = first
                    .strip_prefix("error: ")
                    .unwrap_or(first)
                    .split_once(": ")
                    .filter(|(at, _)| at.starts_with("line "))
                    .map_or(first, |(_, why)| why);
                errors.push(DocError {
                    document,
                    line,
                    message: match column {
                        0 => why.to_owned(),
                        c => format!("column {c}: {why}"),
                    },
                });
                continue;
            }
        };
        let mut value = value;
        match inject_one(&mut value, options) {
            Ok(true) => match serde_saphyr::to_string(&value) {
                Ok(yaml) => push_doc(&mut out, &yaml),
                Err(e) => errors.push(DocError {
                    document,
                    line: first_line,
                    message: format!("cannot write it back: {e}"),
                }),
            },
            Ok(false) => push_doc(&mut out, text),
            Err(message) => errors.push(DocError {
                document,
                line: first_line,
                message,
            }),
        }
    }
    (out, errors)
}

fn push_doc(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push_str("---\n");
    }
    out.push_str(text.trim_start_matches('\n'));
    if !out.ends_with('\n') {
        out.push('\n');
    }
}

/// The documents of a YAML stream, split at `---` lines, each with the
/// 1-based line it starts on.
fn documents(input: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in input.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            if offset > start || !docs.is_empty() {
                docs.push((start_line, &input[start..offset]));
            }
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    let rest = &input[start..];
    if !rest.trim().is_empty() || docs.is_empty() {
        docs.push((start_line, rest));
    }
    docs.retain(|(_, d)| !d.trim().is_empty());
    docs
}

/// Where a kind keeps its pod template: (metadata, spec) paths.
fn template_of(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// Injects one document; whether it changed.
fn inject_one(doc: &mut Value, options: &Options) -> Result<bool, String> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(path) = template_of(&kind) else {
        return Ok(false);
    };
    let mut template = &mut *doc;
    for key in path {
        template = template
            .get_mut(*key)
            .ok_or_else(|| format!("{kind}: no {} to inject into", path.join(".")))?;
    }
    let template = template
        .as_object_mut()
        .ok_or_else(|| format!("{kind}: the pod template is not a mapping"))?;
    let metadata = template
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("metadata is not a mapping")?;
    let notes = metadata
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let note = |k: &str| notes.get(k).and_then(Value::as_str).map(str::to_owned);
    if note(annotations::INJECT).as_deref() == Some("disabled") {
        return Ok(false);
    }
    let image = options.image.clone();
    metadata
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("metadata.annotations is not a mapping")?
        .insert(annotations::STATUS.to_owned(), Value::from(image.clone()));
    let spec = template
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{kind}: the pod template has no spec"))?;
    // A pod on the node's network: skiff-init would rewrite the node's nat
    // table. Left alone, as Istio does.
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(false);
    }

    // The app's probes an earlier run rewrote, before its sidecar goes.
    let mut probes = earlier_probes(spec);
    // What an earlier run added goes first: injecting twice is once.
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(items)) = spec.get_mut(list) {
            items.retain(|c| {
                let name = c.get("name").and_then(Value::as_str);
                name != Some(PROXY) && name != Some(INIT)
            });
        }
    }
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        volumes.retain(|v| {
            let name = v.get("name").and_then(Value::as_str);
            name != Some(CONFIG_VOLUME) && name != Some(IDENTITY_VOLUME)
        });
    }

    let config_map = note(annotations::CONFIG).unwrap_or_else(|| options.config_map.clone());
    let secret = note(annotations::IDENTITY).unwrap_or_else(|| options.identity_secret.clone());
    let mut init_args = vec![
        "iptables".to_owned(),
        "--proxy-uid".to_owned(),
        options.proxy_uid.to_string(),
    ];
    for (annotation, flag) in [
        (annotations::INBOUND_PORTS, "--inbound-ports"),
        (
            annotations::EXCLUDE_INBOUND_PORTS,
            "--exclude-inbound-ports",
        ),
        (
            annotations::EXCLUDE_OUTBOUND_PORTS,
            "--exclude-outbound-ports",
        ),
        (
            annotations::EXCLUDE_OUTBOUND_CIDRS,
            "--exclude-outbound-cidrs",
        ),
    ] {
        if let Some(v) = note(annotation) {
            init_args.push(flag.to_owned());
            init_args.push(v.replace(' ', ""));
        }
    }
    let init = json!({
        "name": INIT,
        "image": image,
        "args": init_args,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
        },
        "resources": {
            "requests": { "cpu": "10m", "memory": "16Mi" },
            "limits": { "cpu": "100m", "memory": "64Mi" },
        },
    });
    let mut proxy = json!({
        "name": PROXY,
        "image": image,
        "args": ["run", "-c", "/etc/skiff/skiff.yaml"],
        "env": [
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
            { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
            { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
        ],
        "ports": [{ "name": "skiff-admin", "containerPort": 15000, "protocol": "TCP" }],
        "securityContext": {
            "runAsUser": options.proxy_uid,
            "runAsGroup": options.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
        "resources": {
            "requests": {
                "cpu": note(annotations::PROXY_CPU).unwrap_or_else(|| "50m".to_owned()),
                "memory": note(annotations::PROXY_MEMORY).unwrap_or_else(|| "32Mi".to_owned()),
            },
            "limits": {
                "cpu": note(annotations::PROXY_CPU_LIMIT).unwrap_or_else(|| "1".to_owned()),
                "memory": note(annotations::PROXY_MEMORY_LIMIT).unwrap_or_else(|| "256Mi".to_owned()),
            },
        },
        "readinessProbe": { "httpGet": { "path": "/ready", "port": 15000 }, "periodSeconds": 2 },
        "livenessProbe": { "httpGet": { "path": "/live", "port": 15000 }, "periodSeconds": 10 },
        "volumeMounts": [
            { "name": CONFIG_VOLUME, "mountPath": "/etc/skiff", "readOnly": true },
            { "name": IDENTITY_VOLUME, "mountPath": "/var/run/skiff/identity", "readOnly": true },
        ],
    });
    // The app's HTTP probes go through the admin port (never captured), so
    // an inbound listener in strict mTLS does not fail the kubelet's
    // plaintext probes; the sidecar asks the app on loopback.
    if let Some(Value::Array(containers)) = spec.get_mut("containers") {
        for c in containers.iter_mut() {
            rewrite_probes(c, &mut probes);
        }
    }
    let p = proxy
        .as_object_mut()
        .ok_or("internal: the proxy is a mapping")?;
    if !probes.is_empty()
        && let Some(Value::Array(env)) = p.get_mut("env")
    {
        env.push(json!({ "name": APP_PROBES_ENV, "value": Value::Object(probes).to_string() }));
    }
    if options.classic_sidecar {
        // No native sidecars (Kubernetes before 1.29): the first container,
        // and the kubelet starts the next only once this hook returns.
        p.insert(
            "lifecycle".to_owned(),
            json!({ "postStart": { "exec": { "command": ["/skiff", "ready", "--timeout", "60s"] } } }),
        );
    } else {
        p.insert("restartPolicy".to_owned(), Value::from("Always"));
        p.insert(
            "startupProbe".to_owned(),
            json!({ "httpGet": { "path": "/ready", "port": 15000 }, "periodSeconds": 1, "failureThreshold": 120 }),
        );
    }

    let inits = array(spec, "initContainers")?;
    inits.insert(0, init);
    if !options.classic_sidecar {
        inits.insert(1, proxy.clone());
    }
    if options.classic_sidecar {
        array(spec, "containers")?.insert(0, proxy);
    }
    let volumes = array(spec, "volumes")?;
    volumes.push(json!({ "name": CONFIG_VOLUME, "configMap": { "name": config_map } }));
    volumes.push(json!({
        "name": IDENTITY_VOLUME,
        "secret": { "secretName": secret, "optional": false },
    }));
    Ok(true)
}

/// Where rewritten probes point: the admin port.
const ADMIN_PORT: u16 = 15000;
/// What the sidecar reads the app's original probes from.
const APP_PROBES_ENV: &str = "SKIFF_APP_PROBES";

/// The originals an earlier run recorded on its sidecar, if any.
fn earlier_probes(spec: &Map<String, Value>) -> Map<String, Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|l| spec.get(*l)?.as_array())
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some(PROXY))
        .filter_map(|c| c.get("env")?.as_array())
        .flatten()
        .filter(|e| e.get("name").and_then(Value::as_str) == Some(APP_PROBES_ENV))
        .filter_map(|e| serde_json::from_str::<Map<String, Value>>(e.get("value")?.as_str()?).ok())
        .next()
        .unwrap_or_default()
}

/// Points a container's plain-HTTP `httpGet` probes at the admin port's
/// `/app-health/CONTAINER/KIND`, recording the original port and path.
/// Already rewritten ones (a second run) are left as they are.
fn rewrite_probes(container: &mut Value, probes: &mut Map<String, Value>) {
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let ports: Vec<(String, u64)> = container
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.get("name")?.as_str()?.to_owned(),
                p.get("containerPort")?.as_u64()?,
            ))
        })
        .collect();
    for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(get) = container.get_mut(kind).and_then(|p| p.get_mut("httpGet")) else {
            continue;
        };
        let scheme = get.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
        let port = match get.get("port") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s
                .parse()
                .ok()
                .or_else(|| ports.iter().find(|(n, _)| n == s).map(|(_, p)| *p)),
            _ => None,
        };
        let path = get
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned();
        if scheme != "HTTP"
            || port == Some(u64::from(ADMIN_PORT))
            || get.get("httpHeaders").is_some()
        {
            continue; // HTTPS, already ours, or headers the sidecar would not send.
        }
        let Some(port) = port else { continue };
        let short = kind.trim_end_matches("Probe");
        let at = format!("/app-health/{name}/{short}");
        probes.insert(at.clone(), json!({ "port": port, "path": path }));
        if let Some(get) = get.as_object_mut() {
            get.insert("port".to_owned(), Value::from(ADMIN_PORT));
            get.insert("path".to_owned(), Value::from(at));
            get.remove("host");
        }
    }
}

fn array<'a>(spec: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, String> {
    spec.entry(key)
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| format!("spec.{key} is not a list"))
}
