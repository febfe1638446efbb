//! Loader and validator tests: every check with its exact position.

use super::*;
use crate::model::{HeaderMatch, PathMatch};

/// The test environment: no test touches the process environment.
fn env(name: &str) -> Option<String> {
    match name {
        "APP_PORT" => Some("9000".to_owned()),
        "LISTEN" => Some("127.0.0.1:8080".to_owned()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_with_env(text, "skiff.yaml", env)
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const FULL: &str = r#"# Every supported key.
admin: { address: "127.0.0.1:15000" }
runtime: { workers: 4, drain_timeout: 5s }
listeners:
  - name: public
    address: 0.0.0.0:8080
    direction: inbound
    protocol: auto
    header_timeout: 2s
    transparent: false
    routes: app
  - name: db
    address: 127.0.0.1:5432
    protocol: tcp
    cluster: db
  - { name: test1, address: "127.0.0.1:0", routes: app, protocol: http1 }
  - { name: test2, address: "[::1]:0", routes: app, protocol: http2 }
routes:
  app:
    - name: reviews
      match:
        host: reviews.default.svc
        path: { prefix: /api }
        method: GET
        headers: { x-canary: "1", x-user: { regex: "^a.*" }, x-debug: { present: true } }
      split:
        - { cluster: web, weight: 90 }
        - { cluster: app, weight: 10 }
      timeout: 2s
      headers:
        request: { set: { x-env: prod }, remove: [x-debug] }
        response: { set: {}, remove: [] }
    - match: { host: "*.example.com", path: { regex: "/v[0-9]+/.*" } }
      cluster: app
    - cluster: web
clusters:
  app:
    endpoints: [127.0.0.1:9000, { address: "[::1]:9001", weight: 2 }]
    protocol: http1
    lb: round_robin
    connect_timeout: 250ms
  web:
    endpoints: [web.default.svc:80]
  db:
    endpoints: [10.0.0.5:5432]
"#;

#[test]
fn a_full_config_loads() {
    let c = load(FULL).unwrap();
    assert_eq!(c.admin.address, "127.0.0.1:15000");
    assert_eq!(c.runtime.workers, 4);
    assert_eq!(
        c.runtime.drain_timeout.get(),
        std::time::Duration::from_secs(5)
    );
    assert_eq!(c.listeners.len(), 4);
    assert_eq!(c.listeners[1].cluster.as_deref(), Some("db"));
    let r = &c.routes["app"][0];
    assert_eq!(r.name.as_deref(), Some("reviews"));
    assert_eq!(r.matches.path, Some(PathMatch::Prefix("/api".to_owned())));
    assert_eq!(
        r.matches.headers["x-canary"],
        HeaderMatch::Exact("1".to_owned())
    );
    assert_eq!(r.matches.headers["x-debug"], HeaderMatch::Present(true));
    assert_eq!(r.split.as_ref().unwrap().len(), 2);
    assert_eq!(r.timeout.unwrap().get(), std::time::Duration::from_secs(2));
    assert_eq!(r.headers.request.set["x-env"], "prod");
    let app = &c.clusters["app"];
    assert_eq!(app.endpoints[1].address, "[::1]:9001");
    assert_eq!(app.endpoints[1].weight, 2);
    assert_eq!(app.endpoints[0].weight, 1);
    assert_eq!(
        app.connect_timeout.get(),
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        c.clusters["web"].connect_timeout.get(),
        std::time::Duration::from_secs(1)
    );
}

#[test]
fn filter_chain_keys_load() {
    let text = "\
listeners: [ { name: out, address: 127.0.0.1:15001, routes: mesh } ]
routes:
  mesh:
    - cluster: reviews
      timeout: 2s
      retry:
        attempts: 2
        on: [connect-failure, reset, 5xx, gateway-error, retriable-4xx, \"503\", unavailable, cancelled, deadline-exceeded, resource-exhausted]
        per_try_timeout: 500ms
        backoff: { base: 25ms, max: 250ms }
      rate_limit: { requests_per_second: 100, burst: 200 }
      fault: { delay: { duration: 100ms, percent: 10 }, abort: { status: 503, percent: 0.5, grpc_status: 14 } }
clusters:
  reviews:
    endpoints: [10.0.0.1:9080]
    circuit_breaker: { max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3 }
    retry_budget: { ratio: 0.2, min_per_second: 10 }
";
    let c = load(text).unwrap();
    let r = &c.routes["mesh"][0];
    let retry = r.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 2);
    assert_eq!(retry.on.len(), 10);
    assert_eq!(r.rate_limit.as_ref().unwrap().burst, Some(200));
    assert_eq!(
        r.fault.as_ref().unwrap().abort.as_ref().unwrap().percent,
        0.5
    );
    let cluster = &c.clusters["reviews"];
    assert_eq!(
        cluster.circuit_breaker.as_ref().unwrap().max_retries,
        Some(3)
    );
    assert_eq!(cluster.retry_budget.as_ref().unwrap().ratio, 0.2);
}

#[test]
fn an_mtls_config_loads() {
    let text = "\
identity: { cert: /id/cert.pem, key: /id/key.pem, trust_bundle: /id/ca.pem }
listeners:
  - { name: in, address: 127.0.0.1:15006, direction: inbound, routes: local, tls: { mode: strict } }
  - { name: mixed, address: 127.0.0.1:15007, routes: local, tls: { mode: permissive } }
  - { name: out, address: 127.0.0.1:15001, routes: mesh, tls: { mode: disabled } }
routes:
  local: [ { cluster: local } ]
  mesh: [ { cluster: reviews } ]
clusters:
  local: { endpoints: [127.0.0.1:9000] }
  reviews:
    endpoints: [10.0.0.1:15006]
    tls: { server_identity: spiffe://cluster.local/ns/default/sa/reviews }
authorization:
  - allow: { identities: [spiffe://cluster.local/ns/default/sa/frontend], paths: [/api/*], methods: [GET] }
  - allow: { identities: [\"spiffe://cluster.local/ns/ops/*\", \"*\"], paths: [/healthz, \"*\"] }
  - allow: {}
";
    let c = load(text).unwrap();
    assert_eq!(c.identity.unwrap().trust_bundle, "/id/ca.pem");
    assert_eq!(
        c.clusters["reviews"].tls.as_ref().unwrap().server_identity,
        "spiffe://cluster.local/ns/default/sa/reviews"
    );
    assert_eq!(c.authorization.len(), 3);
}

#[test]
fn the_smallest_config_gets_defaults() {
    let c = load(SMALL).unwrap();
    assert_eq!(c.admin.address, "127.0.0.1:15000");
    assert_eq!(c.runtime.workers, 2);
    assert_eq!(
        c.listeners[0].header_timeout.get(),
        std::time::Duration::from_secs(10)
    );
}

/// The smallest useful config. Cases below edit it; its lines are:
/// 1 `listeners:` · 2 `- name` · 3 `address` · 4 `routes` · 5 `routes:` ·
/// 6 `app:` · 7 `- cluster: app` · 8 `clusters:` · 9 `app:` · 10 `endpoints`.
const SMALL: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
    routes: app
routes:
  app:
    - cluster: app
clusters:
  app:
    endpoints: [127.0.0.1:9000]
";

/// Cases as (name, config, [(line, column, message fragment)]): each config
/// must fail with exactly these problems, in this order.
type Case = (&'static str, String, Vec<(usize, usize, &'static str)>);

fn small_with(find: &str, replace: &str) -> String {
    assert!(SMALL.contains(find), "{find:?}");
    SMALL.replacen(find, replace, 1)
}

fn small_plus(extra: &str) -> String {
    format!("{SMALL}{extra}")
}

fn cases() -> Vec<Case> {
    vec![
        // --- parsing ---
        (
            "syntax",
            small_with("endpoints: [127.0.0.1:9000]", "endpoints: [127.0.0.1:9000"),
            vec![(10, 16, "unclosed bracket")],
        ),
        (
            "unclosed quote",
            "admin: { address: \"127.0.0.1:1 }\n".to_owned(),
            vec![(1, 19, "unclosed quote")],
        ),
        (
            "duplicate key",
            small_plus("runtime: {workers: 2}\nruntime: {workers: 3}\n"),
            vec![(12, 1, "duplicate mapping key: runtime")],
        ),
        (
            "wrong shape",
            small_plus("admin: [127.0.0.1:1]\n"),
            vec![(11, 8, "admin: ")],
        ),
        (
            "missing field after an unknown key",
            small_with("name: public", "nme: public"),
            vec![
                (2, 5, "listeners[0].nme: unknown key `nme`"),
                (2, 5, "listeners[0]: missing field `name`"),
            ],
        ),
        (
            "unknown top-level key",
            small_plus("listners: []\n"),
            vec![(
                11,
                1,
                "listners: unknown key `listners`, expected one of admin",
            )],
        ),
        (
            "unknown nested key",
            small_with("routes: app", "routes: app\n    tlz: {}"),
            vec![(5, 5, "listeners[0].tlz: unknown key `tlz`")],
        ),
        (
            "unknown key in flow map",
            small_with(
                "[127.0.0.1:9000]",
                "[{ adress: x, address: 127.0.0.1:9000 }]",
            ),
            vec![(
                10,
                17,
                "clusters.app.endpoints[0]: an endpoint is `host:port` or `{ address: host:port, weight: N }`",
            )],
        ),
        (
            "bad enum",
            small_with("routes: app", "routes: app\n    protocol: tcpp"),
            vec![(
                5,
                15,
                "listeners[0].protocol: unknown value `tcpp`, expected one of auto, http1, http2, tcp",
            )],
        ),
        (
            "bad duration",
            small_plus("runtime: { drain_timeout: 5 seconds }\n"),
            vec![(
                11,
                27,
                "runtime.drain_timeout: invalid duration \"5 seconds\"",
            )],
        ),
        (
            "bad number",
            small_plus("runtime:\n  workers: many\n"),
            vec![(12, 12, "runtime.workers: ")],
        ),
        // --- admin and runtime ---
        (
            "admin address",
            small_plus("admin: { address: localhost:15000 }\n"),
            vec![(
                11,
                19,
                "admin.address: \"localhost:15000\" is not a socket address",
            )],
        ),
        (
            "workers 0",
            small_plus("runtime: { workers: 0 }\n"),
            vec![(11, 21, "runtime.workers: 0 is out of range")],
        ),
        (
            "workers 1025",
            small_plus("runtime: { workers: 1025 }\n"),
            vec![(11, 21, "runtime.workers: 1025 is out of range")],
        ),
        (
            "overload max_connections 0",
            small_plus("overload: { max_connections: 0 }\n"),
            vec![(
                11,
                30,
                "overload.max_connections: 0 is not between 1 and 10000000",
            )],
        ),
        (
            "overload max_memory_mib 0",
            small_plus("overload: { max_memory_mib: 0 }\n"),
            vec![(11, 29, "overload.max_memory_mib: 0: a memory budget")],
        ),
        // --- listeners ---
        (
            "listener address",
            small_with("127.0.0.1:8080", "127.0.0.1"),
            vec![(
                3,
                14,
                "listeners[0].address: \"127.0.0.1\" is not a socket address",
            )],
        ),
        (
            "listener name empty",
            small_with("name: public", "name: \"\""),
            vec![(
                2,
                11,
                "listeners[0].name: a listener needs a non-empty name",
            )],
        ),
        (
            "listener duplicate",
            small_plus("").replacen(
                "listeners:\n",
                "listeners:\n  - { name: public, address: 127.0.0.1:8081, routes: app }\n",
                1,
            ),
            vec![(
                3,
                11,
                "listeners[1].name: duplicate listener name \"public\" (also listeners[0])",
            )],
        ),
        (
            "listener same address",
            small_plus("").replacen(
                "listeners:\n",
                "listeners:\n  - { name: other, address: 127.0.0.1:8080, routes: app }\n",
                1,
            ),
            vec![(
                4,
                14,
                "listeners[1].address: \"127.0.0.1:8080\" is already the address of listeners[0]",
            )],
        ),
        (
            "port 0 twice is fine, the rest is not",
            small_with(
                "127.0.0.1:8080\n    routes: app",
                "127.0.0.1:0\n    routes: ap\n  - { name: b, address: \"127.0.0.1:0\", routes: app }",
            ),
            vec![(
                4,
                13,
                "listeners[0].routes: unknown route table \"ap\" (known: app)",
            )],
        ),
        (
            "http listener without routes",
            small_with("    routes: app\n", ""),
            vec![(
                2,
                5,
                "listeners[0]: a listener with protocol auto needs `routes: TABLE`",
            )],
        ),
        (
            "http listener with cluster",
            small_with("routes: app\n", "routes: app\n    cluster: app\n"),
            vec![(
                5,
                5,
                "listeners[0].cluster: only a tcp or transparent listener names a cluster",
            )],
        ),
        (
            "tcp listener with routes",
            small_with("routes: app\n", "routes: app\n    protocol: tcp\n"),
            vec![
                (2, 5, "listeners[0]: a tcp listener needs `cluster: NAME`"),
                (
                    4,
                    5,
                    "listeners[0].routes: a tcp listener relays to a `cluster`",
                ),
            ],
        ),
        (
            "tcp listener to unknown cluster",
            small_with("routes: app\n", "protocol: tcp\n    cluster: db\n"),
            vec![(
                5,
                14,
                "listeners[0].cluster: unknown cluster \"db\" (known: app)",
            )],
        ),
        (
            "listener tls without identity",
            small_with("routes: app\n", "routes: app\n    tls: { mode: strict }\n"),
            vec![(5, 5, "listeners[0].tls: mode strict needs `identity:`")],
        ),
        (
            "listener transparent detect_timeout",
            small_with(
                "routes: app\n",
                "routes: app\n    transparent: true\n    detect_timeout: 0s\n",
            ),
            vec![(6, 21, "listeners[0].detect_timeout: timeout 0s")],
        ),
        // --- routes ---
        (
            "route unknown cluster",
            small_with("- cluster: app", "- cluster: ap"),
            vec![(
                7,
                16,
                "routes.app[0].cluster: unknown cluster \"ap\" (known: app)",
            )],
        ),
        (
            "route cluster and split",
            small_with(
                "- cluster: app",
                "- cluster: app\n      split: [{ cluster: app, weight: 1 }]",
            ),
            vec![(
                8,
                7,
                "routes.app[0].split: a route has `cluster` or `split`, not both",
            )],
        ),
        (
            "route neither",
            small_with("- cluster: app", "- name: x"),
            vec![(
                7,
                7,
                "routes.app[0]: a route needs `cluster: NAME` or `split: [...]`",
            )],
        ),
        (
            "split empty",
            small_with("- cluster: app", "- split: []"),
            vec![(
                7,
                14,
                "routes.app[0].split: a split needs at least one cluster",
            )],
        ),
        (
            "split bad entries",
            small_with(
                "- cluster: app",
                "- split: [{ cluster: app, weight: 0 }, { cluster: nope, weight: 1 }]",
            ),
            vec![
                (7, 39, "routes.app[0].split[0].weight: weight 0"),
                (
                    7,
                    55,
                    "routes.app[0].split[1].cluster: unknown cluster \"nope\" (known: app)",
                ),
            ],
        ),
        (
            "path regex",
            small_with(
                "- cluster: app",
                "- cluster: app\n      match: { path: { regex: \"/a(\" } }",
            ),
            vec![(
                8,
                31,
                "routes.app[0].match.path.regex: invalid regex \"/a(\"",
            )],
        ),
        (
            "header regex",
            small_with(
                "- cluster: app",
                "- cluster: app\n      match: { headers: { x-a: { regex: \"[\" } } }",
            ),
            vec![(
                8,
                41,
                "routes.app[0].match.headers.x-a.regex: invalid regex \"[\"",
            )],
        ),
        (
            "host",
            small_with(
                "- cluster: app",
                "- cluster: app\n      match: { host: \"http://a.b\" }",
            ),
            vec![(
                8,
                22,
                "routes.app[0].match.host: \"http://a.b\" is not a host name",
            )],
        ),
        (
            "host with port",
            small_with(
                "- cluster: app",
                "- cluster: app\n      match: { host: \"a.b:80\" }",
            ),
            vec![(8, 22, "routes.app[0].match.host: \"a.b:80\"")],
        ),
        (
            "host wildcard in the middle",
            small_with(
                "- cluster: app",
                "- cluster: app\n      match: { host: \"a.*.b\" }",
            ),
            vec![(8, 22, "routes.app[0].match.host: \"a.*.b\"")],
        ),
        (
            "method",
            small_with(
                "- cluster: app",
                "- cluster: app\n      match: { method: \"GE T\" }",
            ),
            vec![(
                8,
                24,
                "routes.app[0].match.method: \"GE T\" is not an HTTP method",
            )],
        ),
        (
            "match header name",
            small_with(
                "- cluster: app",
                "- cluster: app\n      match: { headers: { \"x a\": \"1\" } }",
            ),
            vec![(
                8,
                27,
                "routes.app[0].match.headers.x a: \"x a\" is not a valid header name",
            )],
        ),
        (
            "set header name and value",
            small_with(
                "- cluster: app",
                "- cluster: app\n      headers:\n        request: { set: { \"x(y\": ok, x-z: \"caf\u{e9}\" } }",
            ),
            vec![
                (
                    9,
                    27,
                    "routes.app[0].headers.request.set.x(y: \"x(y\" is not a valid header name",
                ),
                (
                    9,
                    43,
                    "routes.app[0].headers.request.set.x-z: \"caf\u{e9}\" is not a valid header value",
                ),
            ],
        ),
        (
            "remove header name",
            small_with(
                "- cluster: app",
                "- cluster: app\n      headers: { response: { remove: [ok, \"no:\"] } }",
            ),
            vec![(
                8,
                43,
                "routes.app[0].headers.response.remove[1]: \"no:\" is not a valid header name",
            )],
        ),
        (
            "route timeout 0",
            small_with("- cluster: app", "- cluster: app\n      timeout: 0ms"),
            vec![(8, 16, "routes.app[0].timeout: timeout 0s")],
        ),
        (
            "route names unique",
            small_with(
                "- cluster: app",
                "- { name: a, cluster: app }\n    - { name: a, cluster: app }",
            ),
            vec![(
                8,
                15,
                "routes.app[1].name: duplicate route name \"a\" (also routes.app[0])",
            )],
        ),
        (
            "route retry values",
            small_with(
                "- cluster: app",
                "- cluster: app\n      retry: { attempts: 11, on: [5xx, \"600\", unavailable, nope], per_try_timeout: 0s, backoff: { base: 100ms, max: 10ms } }",
            ),
            vec![
                (
                    8,
                    26,
                    "routes.app[0].retry.attempts: 11: at most 10 retries",
                ),
                (
                    8,
                    40,
                    "routes.app[0].retry.on[1]: unknown retry condition \"600\"",
                ),
                (
                    8,
                    60,
                    "routes.app[0].retry.on[3]: unknown retry condition \"nope\"",
                ),
                (8, 84, "routes.app[0].retry.per_try_timeout: timeout 0s"),
                (
                    8,
                    117,
                    "routes.app[0].retry.backoff.max: 10ms is below base 100ms",
                ),
            ],
        ),
        (
            "route retry without conditions",
            small_with(
                "- cluster: app",
                "- cluster: app\n      retry: { attempts: 2 }",
            ),
            vec![(8, 7, "routes.app[0].retry: a retry needs `on: [...]`")],
        ),
        (
            "route rate_limit zeros",
            small_with(
                "- cluster: app",
                "- cluster: app\n      rate_limit: { requests_per_second: 0, burst: 0 }",
            ),
            vec![
                (
                    8,
                    42,
                    "routes.app[0].rate_limit.requests_per_second: 0: at least 1",
                ),
                (
                    8,
                    52,
                    "routes.app[0].rate_limit.burst: 0: a burst is at least 1",
                ),
            ],
        ),
        (
            "route fault values",
            small_with(
                "- cluster: app",
                "- cluster: app\n      fault: { delay: { duration: 0s, percent: 101 }, abort: { status: 99, percent: -1, grpc_status: 17 } }",
            ),
            vec![
                (
                    8,
                    35,
                    "routes.app[0].fault.delay.duration: 0s: a delay is above zero",
                ),
                (
                    8,
                    48,
                    "routes.app[0].fault.delay.percent: 101: a percentage from 0 to 100",
                ),
                (
                    8,
                    72,
                    "routes.app[0].fault.abort.status: 99: an HTTP status from 200 to 599",
                ),
                (
                    8,
                    85,
                    "routes.app[0].fault.abort.percent: -1: a percentage from 0 to 100",
                ),
                (
                    8,
                    102,
                    "routes.app[0].fault.abort.grpc_status: 17: a gRPC status code from 0 to 16",
                ),
            ],
        ),
        (
            "route empty fault",
            small_with("- cluster: app", "- cluster: app\n      fault: {}"),
            vec![(
                8,
                7,
                "routes.app[0].fault: a fault needs `delay: {...}` or `abort: {...}`",
            )],
        ),
        // --- clusters ---
        (
            "no endpoints",
            small_with("endpoints: [127.0.0.1:9000]", "endpoints: []"),
            vec![(
                9,
                3,
                "clusters.app: a cluster needs `endpoints: [host:port, ...]`",
            )],
        ),
        (
            "endpoint without port",
            small_with("[127.0.0.1:9000]", "[127.0.0.1]"),
            vec![(
                10,
                17,
                "clusters.app.endpoints[0]: \"127.0.0.1\" is not an endpoint address",
            )],
        ),
        (
            "endpoint port 0",
            small_with("[127.0.0.1:9000]", "[127.0.0.1:0]"),
            vec![(10, 17, "the port must be a number from 1 to 65535")],
        ),
        (
            "endpoint port too big",
            small_with("[127.0.0.1:9000]", "[a.b:65536]"),
            vec![(10, 17, "the port must be a number from 1 to 65535")],
        ),
        (
            "endpoint bad host",
            small_with("[127.0.0.1:9000]", "[\"a b:80\", \"::1:80\"]"),
            vec![
                (10, 17, "clusters.app.endpoints[0]: \"a b:80\""),
                (10, 27, "clusters.app.endpoints[1]: \"::1:80\""),
            ],
        ),
        (
            "weights over their caps",
            small_with(
                "endpoints: [127.0.0.1:9000]",
                "endpoints: [{ address: \"127.0.0.1:9000\", weight: 40000000 }]",
            ),
            vec![(
                10,
                54,
                "clusters.app.endpoints[0].weight: weight 40000000 is over 10000",
            )],
        ),
        (
            "split weight over its cap",
            small_with(
                "- cluster: app",
                "- split: [{ cluster: app, weight: 4294967295 }, { cluster: app, weight: 2 }]",
            ),
            vec![(
                7,
                39,
                "routes.app[0].split[0].weight: weight 4294967295 is over 1000000",
            )],
        ),
        (
            "listener max_connections 0",
            small_with(
                "routes: app\nroutes:",
                "routes: app\n    max_connections: 0\nroutes:",
            ),
            vec![(5, 22, "listeners[0].max_connections: 0: a listener takes")],
        ),
        (
            "listener max_concurrent_streams 0",
            small_with(
                "routes: app\nroutes:",
                "routes: app\n    max_concurrent_streams: 0\nroutes:",
            ),
            vec![(
                5,
                29,
                "listeners[0].max_concurrent_streams: 0 is not between 1 and 2147483647",
            )],
        ),
        (
            "header_timeout 0s",
            small_with(
                "routes: app\nroutes:",
                "routes: app\n    header_timeout: 0s\nroutes:",
            ),
            vec![(
                5,
                21,
                "listeners[0].header_timeout: timeout 0s: a timeout is above zero",
            )],
        ),
        (
            "endpoint long form",
            small_with("[127.0.0.1:9000]", "[{ address: \"-x:80\", weight: 0 }]"),
            vec![
                (10, 28, "clusters.app.endpoints[0].address: \"-x:80\""),
                (10, 45, "clusters.app.endpoints[0].weight: weight 0"),
            ],
        ),
        (
            "connect_timeout 0",
            small_plus("    connect_timeout: 0s\n"),
            vec![(11, 22, "clusters.app.connect_timeout: timeout 0s")],
        ),
        (
            "ring_hash without hash_on",
            small_plus("    lb: ring_hash\n"),
            vec![(
                11,
                9,
                "clusters.app.lb: ring_hash needs `hash_on: { header: NAME }`",
            )],
        ),
        (
            "hash_on without ring_hash",
            small_plus("    lb: ewma\n    hash_on: { header: x-user }\n"),
            vec![(
                12,
                5,
                "clusters.app.hash_on: hash_on applies to `lb: ring_hash` only",
            )],
        ),
        (
            "hash_on bad header",
            small_plus("    lb: ring_hash\n    hash_on: { header: \"x user\" }\n"),
            vec![(
                12,
                24,
                "clusters.app.hash_on.header: \"x user\" is not a valid header name",
            )],
        ),
        (
            "outlier percent over 100",
            small_plus("    outlier_detection: { max_ejection_percent: 150 }\n"),
            vec![(
                11,
                48,
                "clusters.app.outlier_detection.max_ejection_percent: 150: 0 to 100",
            )],
        ),
        (
            "outlier zero failures",
            small_plus("    outlier_detection: { consecutive_failures: 0 }\n"),
            vec![(
                11,
                48,
                "clusters.app.outlier_detection.consecutive_failures: 0: at least 1",
            )],
        ),
        (
            "health check path",
            small_plus("    health_check: { path: healthz, interval: 0s }\n"),
            vec![
                (
                    11,
                    27,
                    "clusters.app.health_check.path: \"healthz\": a path starts with /",
                ),
                (
                    11,
                    46,
                    "clusters.app.health_check.interval: 0s: a time above zero",
                ),
            ],
        ),
        // One case per refused key, so each can go when its feature lands.
        (
            "cluster discovery and dns refused",
            small_plus(concat!("    discovery: dns\n", "    dns: a.b:80\n")),
            vec![
                (11, 5, "clusters.app.discovery: not supported yet"),
                (12, 5, "clusters.app.dns: not supported yet"),
            ],
        ),
        // --- mTLS and authorization ---
        (
            "cluster tls without identity",
            small_plus("    tls: { server_identity: spiffe://a/b }\n"),
            vec![(11, 5, "clusters.app.tls: needs `identity:`")],
        ),
        (
            "cluster tls server_identity not a SPIFFE ID",
            small_plus(concat!(
                "    tls: { server_identity: \"https://a/b\" }\n",
                "identity: { cert: c, key: k, trust_bundle: t }\n",
            )),
            vec![(
                11,
                29,
                "clusters.app.tls.server_identity: \"https://a/b\" is not a SPIFFE ID",
            )],
        ),
        (
            "cluster tls server_identity with an upper-case trust domain",
            small_plus(concat!(
                "    tls: { server_identity: \"spiffe://Cluster.local/x\" }\n",
                "identity: { cert: c, key: k, trust_bundle: t }\n",
            )),
            vec![(11, 29, "the trust domain is lowercase")],
        ),
        (
            "identity with an empty path",
            small_plus("identity: { cert: \"\", key: k, trust_bundle: t }\n"),
            vec![(11, 19, "identity.cert: needs the path of a PEM file")],
        ),
        (
            "tcp listener to a cluster with tls",
            small_with("routes: app\n", "protocol: tcp\n    cluster: app\n")
                + "    tls: { server_identity: spiffe://a/b }\n"
                + "identity: { cert: c, key: k, trust_bundle: t }\n",
            vec![(
                5,
                14,
                "listeners[0].cluster: cluster \"app\" originates mTLS",
            )],
        ),
        (
            "authorization patterns",
            small_plus(concat!(
                "authorization:\n",
                "  - allow: { identities: [\"spiffe://a/b\", \"web\"], paths: [/a/*, api, \"/a*b\"], methods: [GET, get] }\n",
            )),
            vec![
                (
                    12,
                    43,
                    "authorization[0].allow.identities[1]: \"web\" is not an identity pattern",
                ),
                (
                    12,
                    65,
                    "authorization[0].allow.paths[1]: \"api\" is not a path pattern",
                ),
                (
                    12,
                    70,
                    "authorization[0].allow.paths[2]: \"/a*b\" is not a path pattern",
                ),
                (
                    12,
                    94,
                    "authorization[0].allow.methods[1]: \"get\" is not an HTTP method",
                ),
            ],
        ),
        (
            "cluster circuit_breaker zeros",
            small_plus(
                "    circuit_breaker: { max_connections: 0, max_requests: 0, max_retries: 0 }\n",
            ),
            vec![
                (
                    11,
                    41,
                    "clusters.app.circuit_breaker.max_connections: 0: at least 1",
                ),
                (
                    11,
                    58,
                    "clusters.app.circuit_breaker.max_requests: 0: at least 1",
                ),
            ],
        ),
        (
            "cluster retry_budget values",
            small_plus("    retry_budget: { ratio: -0.5, min_per_second: 4294967295 }\n"),
            vec![
                (
                    11,
                    28,
                    "clusters.app.retry_budget.ratio: -0.5: a ratio of retries to requests from 0 to 1000",
                ),
                (
                    11,
                    50,
                    "clusters.app.retry_budget.min_per_second: 4294967295: below 2147483647",
                ),
            ],
        ),
        // --- refused top-level keys ---
        (
            "telemetry",
            small_plus(
                "telemetry: { access_log: { format: text, path: \"\" }, tracing: { otlp_endpoint: x, sample_ratio: 2 } }\n",
            ),
            vec![
                (
                    11,
                    36,
                    "telemetry.access_log.format: \"text\": the access log is written as `json` only",
                ),
                (11, 48, "telemetry.access_log.path: an empty path"),
                (
                    11,
                    80,
                    "telemetry.tracing.otlp_endpoint: \"x\": an OTLP/gRPC endpoint is `http://host:port`",
                ),
                (
                    11,
                    97,
                    "telemetry.tracing.sample_ratio: 2 is not a ratio from 0 to 1",
                ),
            ],
        ),
        (
            "control",
            small_plus("control: { address: \"https://x:1\", node: \" \" }\n"),
            vec![
                (
                    11,
                    21,
                    "control.address: \"https://x:1\": the control feed is plaintext gRPC",
                ),
                (11, 42, "control.node: an empty node id"),
            ],
        ),
        // --- ${VAR} ---
        (
            "unset variable",
            small_with("127.0.0.1:9000", "127.0.0.1:${NO_SUCH_PORT}"),
            vec![(10, 27, "environment variable NO_SUCH_PORT is not set")],
        ),
        (
            "positions after an expansion are the written ones",
            small_with("127.0.0.1:9000]", "${LISTEN}, \"127.0.0.1:\"]"),
            vec![(10, 28, "clusters.app.endpoints[1]: \"127.0.0.1:\"")],
        ),
    ]
}

#[test]
fn every_check_reports_its_position_and_message() {
    let mut failures = Vec::new();
    for (name, text, want) in cases() {
        let got = match load(&text) {
            Ok(_) => {
                failures.push(format!("{name}: loaded, expected errors"));
                continue;
            }
            Err(e) => e.0,
        };
        let matches = got.len() == want.len()
            && got.iter().zip(&want).all(|(g, (line, col, frag))| {
                g.file == "skiff.yaml"
                    && (g.line, g.column) == (*line, *col)
                    && g.message.contains(frag)
            });
        if !matches {
            failures.push(format!(
                "{name}:\n  want {want:?}\n  got  {:?}",
                got.iter().map(ToString::to_string).collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
    routes: nope
    tls: { mode: strict }
routes:
  app:
    - cluster: ap
      timeout: 0s
clusters:
  app:
    endpoints: [127.0.0.1]
    lb: ring_hash
";
    let got = errors(text);
    assert_eq!(
        got,
        [
            "skiff.yaml:4:13: listeners[0].routes: unknown route table \"nope\" (known: app)",
            "skiff.yaml:5:5: listeners[0].tls: mode strict needs `identity:` (cert, key, trust_bundle), the certificate this workload presents",
            "skiff.yaml:8:16: routes.app[0].cluster: unknown cluster \"ap\" (known: app)",
            "skiff.yaml:9:16: routes.app[0].timeout: timeout 0s: a timeout is above zero",
            "skiff.yaml:12:17: clusters.app.endpoints[0]: \"127.0.0.1\" is not an endpoint address: expected host:port, like 10.0.0.1:9080 or app.default.svc:80",
            "skiff.yaml:13:9: clusters.app.lb: ring_hash needs `hash_on: { header: NAME }` to know what to hash",
        ]
    );
}

#[test]
fn every_unknown_key_is_reported_at_once() {
    let text = "\
listeners:
  - name: public
    adress: 127.0.0.1:8080
    address: 127.0.0.1:8080
    routes: app
routes:
  app:
    - { clustr: app, cluster: app }
clusters:
  app:
    endpoints: [127.0.0.1:9000]
    conect_timeout: 1s
runtime:
  wrkers: 4
";
    let got = errors(text);
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(got[0].starts_with("skiff.yaml:3:5: listeners[0].adress: unknown key `adress`, expected one of name, address"), "{}", got[0]);
    assert!(
        got[1].starts_with("skiff.yaml:8:9: routes.app[0].clustr: unknown key `clustr`"),
        "{}",
        got[1]
    );
    assert!(
        got[2].starts_with(
            "skiff.yaml:12:5: clusters.app.conect_timeout: unknown key `conect_timeout`"
        ),
        "{}",
        got[2]
    );
    assert!(
        got[3].starts_with("skiff.yaml:14:3: runtime.wrkers: unknown key `wrkers`"),
        "{}",
        got[3]
    );
}

#[test]
fn unknown_keys_and_validation_problems_together() {
    let text = small_with("- cluster: app", "- cluster: ap\n      tiemout: 1s");
    let got = errors(&text);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got[0].starts_with("skiff.yaml:7:16: routes.app[0].cluster: unknown cluster"),
        "{}",
        got[0]
    );
    assert!(
        got[1].starts_with("skiff.yaml:8:7: routes.app[0].tiemout: unknown key"),
        "{}",
        got[1]
    );
}

#[test]
fn variables_are_expanded() {
    let text = small_with("127.0.0.1:9000", "127.0.0.1:${APP_PORT}").replace(
        "address: 127.0.0.1:8080",
        "address: \"${LISTEN}\" # ${NOT_IN_COMMENTS}",
    );
    let c = load(&text).unwrap();
    assert_eq!(c.clusters["app"].endpoints[0].address, "127.0.0.1:9000");
    assert_eq!(c.listeners[0].address, "127.0.0.1:8080");

    let text = small_with("name: public", "name: pub$$lic");
    assert_eq!(load(&text).unwrap().listeners[0].name, "pub$lic");
}

#[test]
fn load_str_reads_the_process_environment() {
    // PATH is set in any environment the tests run in; its value is not a
    // socket address, which shows it was substituted.
    let text = small_with("address: 127.0.0.1:8080", "address: \"${PATH}\"");
    let got = load_str(&text, "f.yaml").unwrap_err();
    assert_eq!(got.0.len(), 1);
    assert!(
        got.0[0].message.starts_with("listeners[0].address: \""),
        "{}",
        got.0[0]
    );
    assert!(!got.0[0].message.contains("${PATH}"));
}

#[test]
fn errors_display_one_per_line() {
    let e = ConfigErrors(vec![
        ConfigError {
            file: "a.yaml".into(),
            line: 1,
            column: 2,
            message: "x".into(),
        },
        ConfigError {
            file: "a.yaml".into(),
            line: 3,
            column: 4,
            message: "y".into(),
        },
    ]);
    assert_eq!(e.to_string(), "a.yaml:1:2: x\na.yaml:3:4: y");
}

#[test]
fn empty_files_anchors_and_merge_keys_load() {
    for text in ["", "# nothing yet\n"] {
        assert!(load(text).unwrap().listeners.is_empty());
    }
    let text = "\
clusters:
  a: &base { endpoints: [127.0.0.1:1], connect_timeout: 2s }
  b: *base
  c:
    <<: *base
    lb: round_robin
";
    let c = load(text).unwrap();
    assert_eq!(c.clusters["b"], c.clusters["a"]);
    assert_eq!(
        c.clusters["c"].connect_timeout.get(),
        std::time::Duration::from_secs(2)
    );
}

#[test]
fn never_panics_on_truncated_or_mangled_input() {
    // Every prefix of a full config, and every line of it with a stray
    // character inserted: errors or success, but never a panic.
    let text = FULL
        .replace("0.0.0.0:8080", "${LISTEN}")
        .replace("# Every", "# é ${UNSET} Every");
    for (i, _) in text.char_indices() {
        let _ = load(&text[..i]);
    }
    let lines: Vec<&str> = text.lines().collect();
    for i in 0..lines.len() {
        for stray in ["x", ":", "{", "- ", "\t", "é", "$"] {
            let mut mangled = lines.clone();
            let line = format!("{stray}{}", mangled[i]);
            mangled[i] = &line;
            let _ = load(&mangled.join("\n"));
        }
    }
}

#[test]
fn a_wrong_type_does_not_hide_the_other_problems() {
    let text = "\
listeners:
  - name: a
    address: 1
    routes: x
    max_request_headers_kb: abc
    header_timeout: zz
runtime: { workers: many }
clusters:
  app:
    endpoints: 5
    lb: banana
";
    assert_eq!(
        errors(text),
        [
            "skiff.yaml:3:14: listeners[0].address: \"1\" is not a socket address: expected IP:port, like 127.0.0.1:8080 or [::1]:8080",
            "skiff.yaml:4:13: listeners[0].routes: unknown route table \"x\" (no route tables are defined)",
            "skiff.yaml:5:29: listeners[0].max_request_headers_kb: \"abc\" is not a whole number",
            "skiff.yaml:6:21: listeners[0].header_timeout: invalid duration \"zz\": expected a number and a unit (ms, s, m, h), like `250ms` or `2s`",
            "skiff.yaml:7:21: runtime.workers: \"many\" is not a whole number",
            "skiff.yaml:10:16: clusters.app.endpoints: expected a list: `[a, b]`, or one `- item` per line",
            "skiff.yaml:11:9: clusters.app.lb: unknown value `banana`, expected one of ewma, least_request, round_robin, ring_hash",
        ]
    );
}

#[test]
fn yaml_syntax_errors_are_said_in_plain_words() {
    let cases = [
        (
            "runtime:\n\tworkers: 2\n",
            "skiff.yaml:2:2: not valid YAML: a tab indents this line; YAML indents with spaces only (parser: tabs disallowed within this context (block indentation))",
        ),
        (
            "runtime:\n  workers: 2\n drain_timeout: 1s\n",
            "skiff.yaml:3:2: not valid YAML: this line is indented differently from the lines around it (parser: while parsing a block mapping, did not find expected key)",
        ),
        (
            "a: b: c\n",
            "skiff.yaml:1:5: not valid YAML: a `: ` inside a value; quote the value (\"a: b\") or fix the indentation (parser: mapping values are not allowed in this context)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(errors(text), [want], "{text:?}");
    }
}

#[test]
fn a_missing_file_has_no_position() {
    let e = load_file(Path::new("/nonexistent/skiff.yaml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/skiff.yaml: the config file does not exist"
    );
}

#[test]
fn an_empty_config_warns() {
    for text in ["", "# nothing yet\n", "clusters: {}\n"] {
        assert_eq!(
            load(text).unwrap().warnings(),
            ["no listeners: this config accepts no traffic"]
        );
    }
    assert!(load(SMALL).unwrap().warnings().is_empty());
}
