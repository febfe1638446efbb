//! The mapping both ways: a config through xDS and back is itself, and what
//! Skiff cannot honour is refused by name.

use envoy_types::pb::envoy::config::cluster::v3 as xc;
use envoy_types::pb::envoy::config::listener::v3 as xl;
use envoy_types::pb::google::protobuf::Any;

use super::*;
use crate::model::Config;

/// Every key the mapping carries, with values other than the defaults.
const EVERYTHING: &str = r#"
identity: { cert: cert.pem, key: key.pem, trust_bundle: ca.pem }
listeners:
  - name: public
    address: 0.0.0.0:8080
    direction: inbound
    protocol: http1
    header_timeout: 3s
    max_request_headers_kb: 32
    max_request_headers_count: 50
    tls: { mode: strict }
    routes: main
  - name: mixed
    address: "[::1]:8443"
    tls: { mode: permissive }
    routes: main
  - name: outbound
    address: 0.0.0.0:15001
    transparent: true
    detect_timeout: 300ms
    routes: main
  - name: db
    address: 127.0.0.1:5432
    protocol: tcp
    cluster: db
routes:
  main:
    - name: api
      match:
        host: api.example.com
        path: { prefix: /api }
        method: POST
        headers:
          x-canary: "yes"
          x-user: { regex: "[a-z]+" }
          x-debug: { present: false }
          x-trace: { present: true }
      cluster: api
      timeout: 2s
      retry:
        attempts: 3
        on: [connect-failure, 5xx, unavailable, "503"]
        per_try_timeout: 500ms
        backoff: { base: 10ms, max: 100ms }
      rate_limit: { requests_per_second: 100, burst: 20 }
      fault:
        delay: { duration: 50ms, percent: 12.5 }
        abort: { status: 503, percent: 1 }
      headers:
        request: { set: { x-from: skiff }, remove: [x-internal] }
        response: { set: { x-served-by: api }, remove: [server] }
    - name: exact
      match: { host: "*.example.com", path: { exact: /health } }
      cluster: web
    - name: split
      match: { path: { regex: "/v[0-9]+/.*" } }
      split:
        - { cluster: web, weight: 90 }
        - { cluster: api, weight: 10 }
    - name: sticky
      match: { path: { prefix: /cart } }
      cluster: sessions
    - cluster: web
clusters:
  sessions:
    endpoints: [10.0.1.1:80, 10.0.1.2:80]
    lb: ring_hash
    hash_on: { header: x-session }
  api:
    endpoints: [10.0.0.1:80, { address: 10.0.0.2:80, weight: 3 }]
    protocol: http2
    lb: least_request
    connect_timeout: 250ms
    idle_timeout: 90s
    tls: { server_identity: spiffe://cluster.local/ns/default/sa/api }
    circuit_breaker: { max_connections: 10, max_retries: 5 }
    outlier_detection: { consecutive_failures: 3, base_ejection_time: 10s, max_ejection_percent: 50 }
    health_check: { interval: 2s, unhealthy_threshold: 2 }
    retry_budget: { ratio: 0.5, min_per_second: 5 }
  web:
    endpoints: ["[::1]:8081"]
    protocol: http1
    lb: round_robin
    health_check: { path: /ready, timeout: 2s, healthy_threshold: 2 }
  db:
    endpoints: [127.0.0.1:5433]
  passthrough:
    discovery: original_destination
"#;

fn everything() -> Config {
    crate::load_str(EVERYTHING, "everything.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// Only what xDS carries: listeners, route tables and clusters.
/// Listeners have no order in xDS: compared by name.
fn carried(c: &Config) -> (Vec<crate::model::Listener>, String, String) {
    let mut listeners = c.listeners.clone();
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    (
        listeners,
        format!("{:?}", c.routes),
        format!("{:?}", c.clusters),
    )
}

#[test]
fn a_config_through_xds_and_back_is_itself() {
    let config = everything();
    let res = encode(&config);
    let back = decode(&res).unwrap_or_else(|refused| {
        panic!(
            "{}",
            refused
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(carried(&back), carried(&config));
}

#[test]
fn a_config_with_defaults_through_xds_and_back_is_itself() {
    let config = crate::load_str(
        "listeners: [{ name: l, address: 127.0.0.1:80, routes: t }]\nroutes: { t: [{ cluster: c }] }\nclusters: { c: { endpoints: [127.0.0.1:81] } }\n",
        "small.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let back = decode(&encode(&config)).unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(carried(&back), carried(&config));
}

#[test]
fn the_same_resources_survive_the_wire() {
    let res = encode(&everything());
    let mut again = Resources::default();
    for t in TYPES {
        for (name, any) in res.of_type(t) {
            assert_eq!(insert(&mut again, &any), Ok(name));
        }
    }
    assert_eq!(again, res);
}

fn refusals(res: &Resources) -> Vec<String> {
    match decode(res) {
        Ok(_) => Vec::new(),
        Err(r) => r.iter().map(|r| r.to_string()).collect(),
    }
}

#[test]
fn a_field_skiff_cannot_honour_is_refused_by_name() {
    let mut res = encode(&everything());
    let c = res.clusters.get_mut("api").unwrap();
    c.per_connection_buffer_limit_bytes =
        Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 });
    c.dns_lookup_family = 1;
    let said = refusals(&res);
    assert_eq!(
        said,
        [
            "Cluster \"api\": per_connection_buffer_limit_bytes: not supported by Skiff",
            "Cluster \"api\": dns_lookup_family: not supported by Skiff",
        ],
        "{said:?}"
    );
}

#[test]
fn an_unknown_http_filter_is_refused() {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    let mut res = encode(&everything());
    let l = res.listeners.get_mut("public").unwrap();
    let Some(xl::filter::ConfigType::TypedConfig(any)) =
        &mut l.filter_chains[0].filters[0].config_type
    else {
        panic!("no typed config");
    };
    let mut m: hcm::HttpConnectionManager = unpack(any).unwrap();
    m.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.lua".to_owned(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua".to_owned(),
                value: Vec::new(),
            })),
            ..Default::default()
        },
    );
    *any = envoy_types::util::pack_any(m);
    let said = refusals(&res);
    assert_eq!(
        said,
        [
            "Listener \"public\": filter_chains[0].filters[0].typed_config.http_filters[0].typed_config: the HTTP filter \"envoy.extensions.filters.http.lua.v3.Lua\" (envoy.filters.http.lua) is not supported"
        ],
        "{said:?}"
    );
}

#[test]
fn dns_and_original_destination_clusters_are_refused_for_now() {
    let mut res = encode(&everything());
    let c = res.clusters.get_mut("web").unwrap();
    c.cluster_discovery_type = Some(xc::cluster::ClusterDiscoveryType::Type(
        xc::cluster::DiscoveryType::StrictDns as i32,
    ));
    c.eds_cluster_config = None;
    let said = refusals(&res);
    assert_eq!(
        said,
        ["Cluster \"web\": type: DNS clusters are not supported yet (cluster discovery: dns)"],
        "{said:?}"
    );
}

#[test]
fn malformed_bytes_are_an_error_not_a_panic() {
    let mut res = Resources::default();
    let garbage = Any {
        type_url: CLUSTER.to_owned(),
        value: vec![0xff, 0xff, 0xff, 0xff],
    };
    let err = insert(&mut res, &garbage).unwrap_err();
    assert!(
        err.starts_with("malformed envoy.config.cluster.v3.Cluster"),
        "{err}"
    );
    let unknown = Any {
        type_url: "type.googleapis.com/envoy.config.foo.v3.Foo".to_owned(),
        value: Vec::new(),
    };
    assert!(
        insert(&mut res, &unknown)
            .unwrap_err()
            .contains("unknown resource type")
    );
}

#[test]
fn leftover_names_the_fields_still_set() {
    let mut c = xc::Cluster::default();
    assert!(leftover(&c).is_empty());
    c.ignore_health_on_host_removal = true;
    c.name = "x".to_owned();
    assert_eq!(leftover(&c), ["name", "ignore_health_on_host_removal"]);
}

#[test]
fn a_grpc_target_gets_an_api_listener_of_the_routes_for_its_host() {
    let config = crate::load_str(
        r#"
routes:
  a:
    - match: { host: greeter, path: { prefix: /skiff.demo.v1.Greeter/ } }
      cluster: g
      rate_limit: { requests_per_second: 5 }
    - cluster: web
  b:
    - match: { host: "*.example.com" }
      cluster: web
clusters:
  g: { protocol: http2, endpoints: [127.0.0.1:1] }
  web: { endpoints: [127.0.0.1:2] }
"#,
        "grpc.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (listener, table) = api_listener("greeter", &config).unwrap_or_else(|| panic!("none"));
    assert_eq!(listener.name, "greeter");
    let api = listener.api_listener.and_then(|a| a.api_listener);
    let hcm: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
        unpack(&api.unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [names::ROUTER], "gRPC gets the router alone");
    assert_eq!(table.name, "greeter");
    assert_eq!(table.virtual_hosts.len(), 1);
    let vh = &table.virtual_hosts[0];
    assert_eq!(vh.domains, ["greeter"]);
    assert_eq!(
        vh.routes.len(),
        1,
        "only the route whose host is the target"
    );
    assert!(
        vh.routes[0].typed_per_filter_config.is_empty(),
        "gRPC has no local rate limit"
    );
    // A wildcard host matches a target under it, with or without a port.
    assert!(api_listener("api.example.com:443", &config).is_some());
    assert!(api_listener("example.com", &config).is_none());
    assert!(api_listener("nothing", &config).is_none());
}
