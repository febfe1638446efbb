#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `docs/reference/` is generated from the code it documents, and this test
//! fails when the two drift apart: the command line from the clap parser,
//! every config key from the model's JSON Schema (types, defaults, doc
//! comments) with an example from `docs/reference/every-key.yaml`, the
//! admin endpoints from `admin::ENDPOINTS`, every metric from a live
//! registry, every `skiff-error` from `Reason::ALL`.
//!
//! After changing any of those: `SKIFF_BLESS=1 cargo test -p skiff --test reference`
//! rewrites the pages; review the diff and commit it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use skiff_filters::error::Reason;
use skiff_filters::telemetry::{Metrics, Recorder};

const HOW: &str = "<!-- Generated from the code by proxy/tests/reference.rs; do not edit.\n     After changing the code: SKIFF_BLESS=1 cargo test -p skiff --test reference -->\n";

fn reference_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reference"))
}

/// Compares each generated page with the committed one, or writes it.
#[test]
fn the_reference_matches_the_code() {
    let bless = std::env::var_os("SKIFF_BLESS").is_some();
    let schema = skiff_control::json_schema();
    let pages = [
        ("cli.md", cli()),
        ("config.md", config(&schema)),
        ("admin.md", admin()),
        ("metrics.md", metrics()),
        ("errors.md", errors()),
        (
            "skiff.schema.json",
            serde_json::to_string_pretty(&schema).unwrap() + "\n",
        ),
    ];
    let mut stale = Vec::new();
    for (name, text) in pages {
        let path = reference_dir().join(name);
        if bless {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "docs/reference/{stale:?} no longer match the code: run \
         `SKIFF_BLESS=1 cargo test -p skiff --test reference` and commit the result"
    );
}

/// every-key.yaml is a real config: it parses, and the only problems
/// validation finds are the keys not supported yet.
#[test]
fn every_key_yaml_is_a_config() {
    let path = reference_dir().join("every-key.yaml");
    let errors = skiff_control::load_file(&path).expect_err("it uses keys not supported yet");
    let lines: Vec<String> = errors.0.iter().map(|e| e.message.clone()).collect();
    assert_eq!(
        lines,
        [
            "clusters.canary.discovery: not supported yet",
            "clusters.canary.dns: not supported yet",
        ]
    );
}

// === the command line ===

fn cli() -> String {
    let mut out = format!(
        "# Command line\n\n{HOW}\nEvery subcommand and flag of `skiff`, as `--help` prints it. \
         Flags with `[env: NAME]` fall back to that environment variable.\n"
    );
    let mut root = skiff::cli::command();
    root.build();
    fn walk(cmd: &mut clap::Command, path: &str, out: &mut String) {
        let help: Vec<String> = cmd
            .render_long_help()
            .to_string()
            .lines()
            .map(|l| l.trim_end().to_owned())
            .collect();
        let help = help.join("\n");
        let _ = write!(out, "\n## `{path}`\n\n```text\n{}\n```\n", help.trim_end());
        for sub in cmd.get_subcommands_mut() {
            if sub.get_name() == "help" {
                continue;
            }
            let path = format!("{path} {}", sub.get_name());
            walk(sub, &path, out);
        }
    }
    walk(&mut root, "skiff", &mut out);
    out
}

// === the config file ===

/// The config reference: one section per type, each key with its type,
/// default, an example and its doc comment.
fn config(schema: &Value) -> String {
    let defs = schema["$defs"].as_object().unwrap();
    let examples = examples(schema);
    let mut out = format!(
        "# Config file\n\n{HOW}\nEvery key of the YAML config, by the type that holds it, \
         starting from the top of the file. Values may use `${{VAR}}`, `${{VAR:-default}}` and \
         `${{VAR:?message}}` (see [configuration.md](../configuration.md)). Examples come from \
         [every-key.yaml](every-key.yaml); editors can complete and check keys with \
         [skiff.schema.json](skiff.schema.json).\n"
    );
    section(
        &mut out,
        schema,
        "Config",
        "the file itself",
        schema,
        &examples,
    );
    // Every other type in the order first met from the top, so a reader
    // walks down the file.
    let mut order: Vec<String> = Vec::new();
    collect_refs(schema, schema, &mut order);
    assert_eq!(order.len(), defs.len(), "unreachable types: {order:?}");
    for name in &order {
        section(
            &mut out,
            schema,
            name,
            &used_at(schema, name),
            &defs[name],
            &examples,
        );
    }
    out
}

/// The types a node refers to, in the order a reader meets them: its keys
/// as the section lists them, then lists, maps and alternatives.
fn collect_refs(root: &Value, node: &Value, order: &mut Vec<String>) {
    let Some(map) = node.as_object() else { return };
    if let Some(r) = map.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/").to_owned();
        if !order.contains(&name) {
            order.push(name.clone());
            // Depth first: a type's own types follow it.
            collect_refs(root, &root["$defs"][&name], order);
        }
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for key in keys_in_order(node) {
            collect_refs(root, &props[key], order);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = map.get(key) {
            collect_refs(root, inner, order);
        }
    }
    for key in ["anyOf", "oneOf"] {
        for alt in map.get(key).and_then(Value::as_array).into_iter().flatten() {
            collect_refs(root, alt, order);
        }
    }
}

/// An object's keys as its table lists them: required ones first, then
/// the rest, each group alphabetically.
fn keys_in_order(node: &Value) -> Vec<&str> {
    let required: Vec<&str> = node["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut keys: Vec<&str> = node["properties"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_by_key(|k| (!required.contains(k), *k));
    keys
}

/// Whether a key's value is a block of keys (or a list or map of them),
/// whose own section shows examples key by key.
fn is_block(root: &Value, node: &Value) -> bool {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        return root["$defs"][r.trim_start_matches("#/$defs/")]
            .get("properties")
            .is_some();
    }
    let inner = ["items", "additionalProperties"]
        .iter()
        .filter_map(|k| node.get(*k))
        .chain(
            node.get("anyOf")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
    inner.into_iter().any(|n| is_block(root, n))
}

/// Where in a file a type appears: its YAML paths, e.g. `listeners[].tls`.
fn used_at(schema: &Value, name: &str) -> String {
    let mut paths = Vec::new();
    find_paths(schema, schema, "", name, &mut paths, 0);
    paths.sort();
    paths.dedup();
    paths
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn find_paths(root: &Value, node: &Value, at: &str, name: &str, out: &mut Vec<String>, depth: u8) {
    if depth > 12 {
        return;
    }
    let map = match node.as_object() {
        Some(m) => m,
        None => return,
    };
    if let Some(r) = map.get("$ref").and_then(Value::as_str) {
        let target = r.trim_start_matches("#/$defs/");
        if target == name {
            out.push(at.to_owned());
        }
        find_paths(root, &root["$defs"][target], at, name, out, depth + 1);
    }
    for key in ["anyOf", "oneOf"] {
        for alt in map.get(key).and_then(Value::as_array).into_iter().flatten() {
            find_paths(root, alt, at, name, out, depth + 1);
        }
    }
    if let Some(items) = map.get("items") {
        find_paths(root, items, &format!("{at}[]"), name, out, depth + 1);
    }
    if let Some(values) = map.get("additionalProperties").filter(|v| v.is_object()) {
        find_paths(root, values, &format!("{at}.NAME"), name, out, depth + 1);
    }
    for (key, prop) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        find_paths(root, prop, &path, name, out, depth + 1);
    }
}

/// One type's section: a table of keys, or the values an enum takes, or
/// the shapes a value may have.
fn section(
    out: &mut String,
    root: &Value,
    name: &str,
    used_at: &str,
    node: &Value,
    examples: &BTreeMap<String, BTreeMap<String, Value>>,
) {
    let _ = write!(out, "\n## {name}\n\n");
    if name != "Config" {
        let _ = writeln!(out, "Used at {used_at}.\n");
    }
    if let Some(text) = node.get("description").and_then(Value::as_str) {
        let _ = writeln!(out, "{}\n", one_line(text));
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = node["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str("| key | type | default | example | description |\n|---|---|---|---|---|\n");
        for key in keys_in_order(node) {
            let prop = &props[key];
            let default = if required.contains(&key) {
                "required".to_owned()
            } else {
                prop.get("default").map_or("—".to_owned(), yaml)
            };
            let example = examples
                .get(name)
                .and_then(|e| e.get(key))
                .unwrap_or_else(|| panic!("every-key.yaml has no example of {name}.{key}"));
            let example = match is_block(root, prop) {
                true => "below".to_owned(),
                false => cell(&yaml(example)),
            };
            let description = prop
                .get("description")
                .and_then(Value::as_str)
                .map(one_line)
                .unwrap_or_else(|| panic!("{name}.{key} has no doc comment"));
            let _ = writeln!(
                out,
                "| `{key}` | {} | {} | {} | {} |",
                type_of(prop),
                cell(&default),
                example,
                description.replace('|', "\\|")
            );
        }
        return;
    }
    // An enum: its values, each with its doc comment.
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let listed: Vec<String> = values.iter().map(|v| format!("`{}`", yaml(v))).collect();
        let _ = writeln!(out, "One of {}.", listed.join(", "));
        return;
    }
    for alt in node
        .get("oneOf")
        .or_else(|| node.get("anyOf"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let shape = match alt.get("const") {
            Some(c) => format!("`{}`", yaml(c)),
            None => shape_of(alt),
        };
        let text = alt
            .get("description")
            .and_then(Value::as_str)
            .map(|d| format!(": {}", one_line(d)))
            .unwrap_or_default();
        let _ = writeln!(out, "- {shape}{text}");
    }
    if node.get("type").and_then(Value::as_str) == Some("string") && node.get("pattern").is_some() {
        let _ = writeln!(
            out,
            "A string matching `{}`.",
            node["pattern"].as_str().unwrap()
        );
    }
}

/// The type column: scalars by name, other types as links to their section.
fn type_of(node: &Value) -> String {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if let Some(alts) = node.get("anyOf").and_then(Value::as_array) {
        let real: Vec<&Value> = alts.iter().filter(|a| a["type"] != "null").collect();
        if real.len() == 1 {
            return type_of(real[0]);
        }
    }
    match &node["type"] {
        Value::String(t) if t == "array" => format!("list of {}", type_of(&node["items"])),
        Value::String(t) if t == "object" => match node.get("additionalProperties") {
            Some(v) if v.is_object() => format!("map of name to {}", type_of(v)),
            _ => "map".to_owned(),
        },
        Value::String(t) => t.clone(),
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_owned(),
        _ => "any".to_owned(),
    }
}

/// An alternative shape of a value, as YAML: `{ prefix: string }`.
fn shape_of(node: &Value) -> String {
    match node.get("properties").and_then(Value::as_object) {
        Some(props) => {
            let keys: Vec<String> = props
                .iter()
                .map(|(k, v)| format!("{k}: {}", type_of(v)))
                .collect();
            format!("`{{ {} }}`", keys.join(", "))
        }
        None => type_of(node),
    }
}

/// Walks every-key.yaml along the schema: for each type, the first value
/// met for each of its keys.
fn examples(schema: &Value) -> BTreeMap<String, BTreeMap<String, Value>> {
    let text = std::fs::read_to_string(reference_dir().join("every-key.yaml")).unwrap();
    let value: Value = serde_saphyr::from_str(&text).expect("every-key.yaml is YAML");
    let mut out = BTreeMap::new();
    walk_example(schema, schema, "Config", &value, &mut out);
    out
}

fn walk_example(
    root: &Value,
    node: &Value,
    name: &str,
    value: &Value,
    out: &mut BTreeMap<String, BTreeMap<String, Value>>,
) {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let target = r.trim_start_matches("#/$defs/");
        return walk_example(root, &root["$defs"][target], target, value, out);
    }
    // The alternatives (`Option`'s null, an endpoint's string or map, a
    // path match's one key) that this value is one of.
    let fits = |alt: &Value| match (value, alt.get("properties").and_then(Value::as_object)) {
        (Value::Object(map), Some(props)) => map.keys().all(|k| props.contains_key(k)),
        (Value::Object(_), None) => alt.get("$ref").is_some() || alt["type"] == "object",
        (_, props) => props.is_none() && alt["type"] != "null",
    };
    for key in ["anyOf", "oneOf"] {
        for alt in node
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if fits(alt) {
                walk_example(root, alt, name, value, out);
            }
        }
    }
    match value {
        Value::Array(items) => {
            if let Some(item) = node.get("items") {
                items
                    .iter()
                    .for_each(|v| walk_example(root, item, name, v, out));
            }
        }
        Value::Object(map) => {
            if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
                map.values()
                    .for_each(|v| walk_example(root, values, name, v, out));
            }
            let Some(props) = node.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (key, v) in map {
                let Some(prop) = props.get(key) else {
                    panic!("every-key.yaml: {name} has no key {key}");
                };
                out.entry(name.to_owned())
                    .or_default()
                    .entry(key.clone())
                    .or_insert_with(|| v.clone());
                walk_example(root, prop, name, v, out);
            }
        }
        _ => {}
    }
}

/// A value as it is written in YAML, on one line.
fn yaml(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(yaml).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) if map.is_empty() => "{}".to_owned(),
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}: {}", yaml(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => other.to_string(),
    }
}

fn cell(text: &str) -> String {
    match text {
        "—" | "required" => text.to_owned(),
        _ => format!("`{}`", text.replace('|', "\\|")),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// === the admin endpoints ===

fn admin() -> String {
    let mut out = format!(
        "# Admin endpoints\n\n{HOW}\nThe admin server listens on `admin.address` \
         (`127.0.0.1:15000` unless the config says otherwise) and answers `GET` and `HEAD`; \
         other methods get 405, other paths 404 with this list.\n\n\
         | path | answers |\n|---|---|\n"
    );
    for (path, what) in skiff::admin::ENDPOINTS {
        let _ = writeln!(out, "| `{path}` | {what} |");
    }
    out
}

// === metrics ===

/// What each label means, for every label any family has. A new label
/// without a line here fails the test.
const LABELS: [(&str, &str); 13] = [
    (
        "direction",
        "`inbound` or `outbound`: the listener's `direction`",
    ),
    ("listener", "the listener's `name`"),
    (
        "route",
        "`TABLE/NAME` of the route that took the request (`TABLE/INDEX` without a name); empty before routing",
    ),
    (
        "cluster",
        "the cluster the route sent to; empty before routing",
    ),
    ("code", "the HTTP status sent to the client"),
    (
        "grpc_status",
        "the gRPC status sent to a gRPC client (from the trailers or a trailers-only answer); empty for other requests",
    ),
    (
        "peer_identity",
        "the caller's SPIFFE ID on an mTLS listener; empty otherwise",
    ),
    (
        "result",
        "`tls_handshakes`: `ok` or why it failed (`no_client_cert`, `bad_cert`, `plaintext`, `error`, ...); `config_updates`: `applied` or `rejected`",
    ),
    (
        "source",
        "what kind of source offered a config: `file` (`skiff run -c`), `in-process` (the library API)",
    ),
    (
        "reason",
        "why a request or connection was refused before routing: `head-too-large`, `malformed`, `wrong-protocol`, `unknown-coding`, `bad-host`, `header-timeout`, `max-connections` (the listener's limit: closed as accepted), `overloaded` (past a budget of `overload:`: answered 503)",
    ),
    ("path", "the access log's `path`, from the config"),
    ("le", "histogram bucket: upper bound in seconds"),
    ("quantile", "summary quantile"),
];

fn metrics() -> String {
    // One sample in every family, so the exposition shows its labels.
    let m = Metrics::new();
    let name: Arc<str> = Arc::from("x");
    drop(Recorder::new(
        m.clone(),
        "inbound",
        name.clone(),
        std::time::Instant::now(),
    ));
    drop(m.connection_opened(&name));
    m.retries(&name, &name).inc();
    m.breaker_rejections(&name).inc();
    m.ejections(&name).inc();
    m.rate_limited(&name).inc();
    m.tls_handshake(&name, "ok");
    m.config_update("file", "applied");
    m.refused(&name, "malformed");
    m.panicked(&name);
    m.access_log_dropped("/dev/stdout").inc();
    let text = m.encode();

    // name -> (type, help, labels), in exposition order.
    let mut families: Vec<(String, String, String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            families.push((name.to_owned(), String::new(), help.to_owned(), Vec::new()));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (_, kind) = rest.split_once(' ').unwrap();
            families.last_mut().unwrap().1 = kind.to_owned();
        } else if let Some((series, _)) = line.split_once('{') {
            let family = families.last_mut().unwrap();
            assert!(series.starts_with(&family.0), "{series} outside its family");
            let labels = line[series.len() + 1..].split('}').next().unwrap();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let label = pair.split('=').next().unwrap().to_owned();
                if !family.3.contains(&label) {
                    family.3.push(label);
                }
            }
        }
    }
    let mut out = format!(
        "# Metrics\n\n{HOW}\nEvery metric on the admin server's `/metrics`, in the \
         Prometheus text format by default (`promtool check metrics` accepts it) and in \
         OpenMetrics when the scraper's `Accept` asks for it. Histograms are exposed as \
         `_bucket`, `_sum` and `_count`; `skiff_request_duration_seconds` has buckets from \
         0.5 ms to 30 s.\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n"
    );
    for (name, kind, help, labels) in &families {
        let shown = match kind.as_str() {
            "counter" if !name.ends_with("_total") => format!("{name}_total"),
            _ => name.clone(),
        };
        let labels: Vec<String> = labels.iter().map(|l| format!("`{l}`")).collect();
        let _ = writeln!(
            out,
            "| `{shown}` | {kind} | {} | {help} |",
            labels.join(", ")
        );
    }
    out.push_str("\n## Labels\n\n| label | value |\n|---|---|\n");
    let used: Vec<&String> = families.iter().flat_map(|f| &f.3).collect();
    for label in &used {
        assert!(
            LABELS.iter().any(|(l, _)| l == label),
            "label {label} has no line in LABELS"
        );
    }
    for (label, meaning) in LABELS.iter().filter(|(l, _)| used.iter().any(|u| u == l)) {
        let _ = writeln!(out, "| `{label}` | {meaning} |");
    }
    out
}

// === skiff-error ===

/// When each reason is the answer. A new reason fails to compile here
/// until it is described.
fn when(reason: Reason) -> &'static str {
    match reason {
        Reason::NoRoute => "No route of the listener's table matches the request.",
        Reason::ConnectFailed => {
            "No connection to an endpoint could be made (refused, unreachable, `connect_timeout`, TLS or identity check failed), retries included."
        }
        Reason::NoHealthyEndpoints => "Every endpoint of the cluster is unhealthy or ejected.",
        Reason::CircuitOpen => "A `circuit_breaker` threshold of the cluster is reached.",
        Reason::UpstreamReset => {
            "The upstream closed or reset the connection or stream before a complete answer."
        }
        Reason::Timeout => {
            "The route's `timeout` (or the last try's `per_try_timeout`) passed; a response body still streaming is cut."
        }
        Reason::RateLimited => "The route's `rate_limit` bucket is empty.",
        Reason::Forbidden => {
            "No `authorization` rule admits the caller's identity, path and method."
        }
        Reason::BadRequest => {
            "The request cannot be forwarded: no `Host`, a body that broke off, bytes that are not HTTP."
        }
        Reason::HeadTooLarge => {
            "The request head is over the listener's `max_request_headers_kb` or `max_request_headers_count`."
        }
        Reason::UnknownCoding => {
            "A `Transfer-Encoding` Skiff does not know, so it cannot tell where the body ends."
        }
        Reason::Overloaded => {
            "The process is past a budget of `overload:`: more downstream connections than `max_connections` (every request on the connection past it), or resident memory at 95% of `max_memory_mib` (new requests, until it is under 90%)."
        }
        Reason::FaultInjected { .. } => "The route's `fault.abort` fired.",
    }
}

fn errors() -> String {
    let mut out = format!(
        "# `skiff-error`: answers Skiff makes itself\n\n{HOW}\nWhen Skiff answers a request \
         itself, the answer carries `skiff-error: REASON` and `x-request-id` (the request's id, \
         also in every log line about it). HTTP callers get the status below and a one-line \
         body, `TEXT (request id ID)`; gRPC callers (`content-type: application/grpc`) get a \
         trailers-only answer: HTTP 200, `grpc-status` and `grpc-message: TEXT`. The full \
         cause, with addresses, goes to the log at `warn`, never to the caller.\n\n\
         | skiff-error | HTTP | gRPC status | text | when |\n|---|---|---|---|---|\n"
    );
    for reason in Reason::ALL {
        let (http, grpc) = match reason {
            Reason::FaultInjected { .. } => (
                "`fault.abort.status`".to_owned(),
                "`fault.abort.grpc_status`, else mapped from the HTTP status".to_owned(),
            ),
            _ => (
                reason.http_status().as_u16().to_string(),
                reason.grpc_status().to_string(),
            ),
        };
        let _ = writeln!(
            out,
            "| `{reason}` | {http} | {grpc} | {} | {} |",
            reason.text(),
            when(reason)
        );
    }
    out
}
