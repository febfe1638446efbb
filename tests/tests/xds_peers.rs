//! Interoperability of the control feed with real peers: Envoy configured
//! only by `skiff control`, a proxyless grpcio client configured only by
//! `skiff control`, and a Skiff proxy configured by an ADS server that is
//! not Skiff's (written here, from Envoy's protos, the way Envoy control
//! planes write resources).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3 as xc;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as xe;
use envoy_types::pb::envoy::config::listener::v3 as xl;
use envoy_types::pb::envoy::config::route::v3 as xr;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use envoy_types::util::pack_any;
use integration_tests::peers::{Envoy, GrpcClient, curl_backend, require_grpcio};
use integration_tests::{Backend, Client, Control, Greeter, Proxy, guard};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use integration_tests::control::ALL_TYPES as ALL;

fn web(endpoint: SocketAddr) -> String {
    format!(
        "listeners:
  - {{ name: main, address: 127.0.0.1:0, routes: main }}
routes:
  main:
    - cluster: web
      timeout: 5s
      retry: {{ attempts: 2, on: [connect-failure] }}
clusters:
  web:
    lb: round_robin
    circuit_breaker: {{ max_requests: 100 }}
    outlier_detection: {{ consecutive_failures: 5 }}
    endpoints: [{endpoint}]
"
    )
}

/// Envoy, whose bootstrap names only the ADS cluster, takes listeners,
/// routes, clusters and endpoints from `skiff control`; curl's request
/// through it reaches the backend the directory names, and a change in
/// the directory moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_is_configured_by_skiff_control() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let control = Control::start(&[("mesh.yaml", &web(a.addr()))]).await;
    let envoy = Envoy::start(control.xds, "envoy-1");
    control.wait_acked("envoy-1", 1, &ALL).await;
    let status = control.status();
    assert_eq!(
        status["nodes"][0]["last_nack"],
        serde_json::Value::Null,
        "{status:#}"
    );
    // Envoy ACKs on its main thread and hands the config to its worker
    // just after; it offers no signal for that, so these two waits ask
    // again (every 20 ms, under the guard) until the worker has it.
    let port = guard("Envoy's listener `main`", async {
        loop {
            if let Some(addr) = envoy.listener("main").await {
                return addr;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let url = format!("http://{port}/hello");
    assert_eq!(curl_backend(&url).await, (200, Some("a".to_owned())));

    control.write("mesh.yaml", &web(b.addr()));
    control.wait_version(2).await;
    control.wait_acked("envoy-1", 2, &ALL).await;
    guard("Envoy's worker to route to b", async {
        while curl_backend(&url).await != (200, Some("b".to_owned())) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(envoy.pid().is_some());
}

/// A proxyless grpcio client on `xds:///greeter` gets its listener (an
/// `api_listener` built from the routes whose host is `greeter`), route
/// configuration, cluster and endpoints from `skiff control`; its calls
/// succeed, and an endpoint change in the directory moves its next calls,
/// with none failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxyless_grpc_client_is_configured_by_skiff_control() {
    require_grpcio();
    let b1 = Greeter::spawn("b1").await;
    let b2 = Greeter::spawn("b2").await;
    let greeter = |at: SocketAddr| {
        format!(
            "routes:
  grpc:
    - match: {{ host: greeter, path: {{ prefix: /skiff.demo.v1.Greeter/ }} }}
      cluster: greeter
      retry: {{ attempts: 2, on: [unavailable] }}
clusters:
  greeter:
    protocol: http2
    endpoints: [{at}]
"
        )
    };
    let control = Control::start(&[("grpc.yaml", &greeter(b1.addr()))]).await;
    let mut client = GrpcClient::start(
        control.xds,
        "grpc-1",
        "greeter",
        &[
            "--calls",
            "2000",
            "--interval",
            "0.01",
            "--until-instance",
            "b2",
        ],
    );
    // The first call, through everything gRPC learned from skiff control.
    let header = guard("the client to start", client.line()).await.unwrap();
    assert!(header.starts_with("# grpcio"), "{header}");
    let first = guard("the first call", client.line()).await.unwrap();
    assert!(first.contains("status=OK instance=b1"), "{first}");

    control.write("grpc.yaml", &greeter(b2.addr()));
    let (rest, ok) = guard("calls to move to b2", client.finish()).await;
    let summary = rest.last().cloned().unwrap_or_default();
    assert!(ok, "{rest:#?}");
    assert!(summary.contains("failed=0"), "{summary}");
    assert!(summary.contains("b2:1"), "{summary}");
    // gRPC ACKed everything it was sent: not one NACK.
    let registry = control.registry();
    assert_eq!(
        registry
            .metrics
            .nacks
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(
        registry
            .metrics
            .acks
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    );
}

// === a control plane that is not Skiff's ===

/// A state-of-the-world ADS server written from Envoy's protos, as Envoy
/// control planes write resources; no delta (a Skiff proxy falls back).
/// Every request it hears goes to `heard` for the test to read.
#[derive(Clone)]
struct Other {
    /// The version to serve; the resources are `resources(version)`.
    version: watch::Receiver<Served>,
    heard: mpsc::UnboundedSender<DiscoveryRequest>,
    /// Raw responses a test sends down every stream, as they are.
    inject: tokio::sync::broadcast::Sender<DiscoveryResponse>,
}

/// A version and its resources, by type URL.
type Served = (u64, Arc<BTreeMap<String, Vec<Any>>>);

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Other {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let mut version = self.version.clone();
        let heard = self.heard.clone();
        let mut inject = self.inject.subscribe();
        tokio::spawn(async move {
            let mut subscribed: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut nonce = 0u64;
            let respond = |type_url: &str,
                           v: u64,
                           all: &BTreeMap<String, Vec<Any>>,
                           names: &[String],
                           nonce: u64| {
                let resources = all
                    .get(type_url)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|a| names.is_empty() || names.iter().any(|n| name_of(a) == *n))
                    .collect();
                DiscoveryResponse {
                    version_info: v.to_string(),
                    resources,
                    type_url: type_url.to_owned(),
                    nonce: nonce.to_string(),
                    ..Default::default()
                }
            };
            loop {
                tokio::select! {
                    req = inbound.message() => {
                        let Ok(Some(req)) = req else { return };
                        let _ = heard.send(req.clone());
                        let before = subscribed.insert(req.type_url.clone(), req.resource_names.clone());
                        let new = req.response_nonce.is_empty() || before.as_ref() != Some(&req.resource_names);
                        if new && req.error_detail.is_none() {
                            let (v, all) = version.borrow().clone();
                            nonce += 1;
                            if tx.send(Ok(respond(&req.type_url, v, &all, &req.resource_names, nonce))).await.is_err() {
                                return;
                            }
                        }
                    }
                    raw = inject.recv() => {
                        let Ok(raw) = raw else { return };
                        if tx.send(Ok(raw)).await.is_err() {
                            return;
                        }
                    }
                    changed = version.changed() => {
                        if changed.is_err() { return; }
                        let (v, all) = version.borrow_and_update().clone();
                        for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
                            if let Some(names) = subscribed.get(t) {
                                nonce += 1;
                                if tx.send(Ok(respond(t, v, &all, names, nonce))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "this server speaks state of the world only",
        ))
    }
}

/// Serves [`Other`] on `127.0.0.1:0`: its address, what it hears, and
/// where to inject raw responses.
async fn serve_other(
    version: watch::Receiver<Served>,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<DiscoveryRequest>,
    tokio::sync::broadcast::Sender<DiscoveryResponse>,
) {
    let (heard_tx, heard) = mpsc::unbounded_channel();
    let (inject, _) = tokio::sync::broadcast::channel(64);
    let server = Other {
        version,
        heard: heard_tx,
        inject: inject.clone(),
    };
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(server))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(socket)),
    );
    (addr, heard, inject)
}

/// The next NACK heard: its type, version and message.
async fn next_nack(
    heard: &mut mpsc::UnboundedReceiver<DiscoveryRequest>,
) -> (String, String, String) {
    guard("a NACK", async {
        loop {
            let req = heard.recv().await.unwrap();
            if let Some(e) = req.error_detail {
                return (req.type_url, req.version_info, e.message);
            }
        }
    })
    .await
}

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

fn name_of(any: &Any) -> String {
    use prost::Message;
    match any.type_url.as_str() {
        ROUTE => {
            xr::RouteConfiguration::decode(any.value.as_slice())
                .unwrap()
                .name
        }
        ENDPOINT => {
            xe::ClusterLoadAssignment::decode(any.value.as_slice())
                .unwrap()
                .cluster_name
        }
        LISTENER => xl::Listener::decode(any.value.as_slice()).unwrap().name,
        _ => xc::Cluster::decode(any.value.as_slice()).unwrap().name,
    }
}

/// Route configuration `local_route`: one virtual host `vhost` for every
/// domain, sending every path to `cluster`.
fn local_route(vhost: &str, cluster: &str) -> xr::RouteConfiguration {
    xr::RouteConfiguration {
        name: "local_route".to_owned(),
        virtual_hosts: vec![xr::VirtualHost {
            name: vhost.to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![xr::Route {
                r#match: Some(xr::RouteMatch {
                    path_specifier: Some(xr::route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(xr::route::Action::Route(xr::RouteAction {
                    cluster_specifier: Some(xr::route_action::ClusterSpecifier::Cluster(
                        cluster.to_owned(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            protocol: core::socket_address::Protocol::Tcp as i32,
            address: ip.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

/// The resources: listener `listener_0` on an ephemeral port with an HTTP
/// connection manager taking route configuration `local_route` over ADS;
/// one virtual host `*` sending everything to cluster `service`, an EDS
/// cluster whose endpoints are `endpoint`. `filter` is an HTTP filter put
/// before the router (`None`: the router alone).
fn resources(endpoint: SocketAddr, filter: Option<&str>) -> BTreeMap<String, Vec<Any>> {
    let mut http_filters = Vec::new();
    if let Some(name) = filter {
        http_filters.push(hcm::HttpFilter {
            name: name.to_owned(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(
                envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors::default(),
            ))),
            ..Default::default()
        });
    }
    http_filters.push(hcm::HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let manager = hcm::HttpConnectionManager {
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        stat_prefix: "http".to_owned(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: "local_route".to_owned(),
            },
        )),
        http_filters,
        ..Default::default()
    };
    let listener = xl::Listener {
        name: "listener_0".to_owned(),
        address: Some(socket("127.0.0.1", 0)),
        filter_chains: vec![xl::FilterChain {
            filters: vec![xl::Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(xl::filter::ConfigType::TypedConfig(pack_any(manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let route = local_route("local_service", "service");
    let cluster = xc::Cluster {
        name: "service".to_owned(),
        connect_timeout: Some(PbDuration {
            seconds: 5,
            nanos: 0,
        }),
        cluster_discovery_type: Some(xc::cluster::ClusterDiscoveryType::Type(
            xc::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(xc::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            ..Default::default()
        }),
        lb_policy: xc::cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    let endpoints = xe::ClusterLoadAssignment {
        cluster_name: "service".to_owned(),
        endpoints: vec![xe::LocalityLbEndpoints {
            lb_endpoints: vec![xe::LbEndpoint {
                host_identifier: Some(xe::lb_endpoint::HostIdentifier::Endpoint(xe::Endpoint {
                    address: Some(socket(&endpoint.ip().to_string(), endpoint.port())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    BTreeMap::from([
        (LISTENER.to_owned(), vec![pack_any(listener)]),
        (ROUTE.to_owned(), vec![pack_any(route)]),
        (CLUSTER.to_owned(), vec![pack_any(cluster)]),
        (ENDPOINT.to_owned(), vec![pack_any(endpoints)]),
    ])
}

/// A Skiff proxy takes its config from an ADS server that is not `skiff
/// control` (state of the world only: the proxy falls back from delta),
/// ACKs it, NACKs a listener with an HTTP filter Skiff does not have,
/// naming it, while the old config serves, and ACKs the next good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_takes_resources_from_another_control_plane() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let (set, version) = watch::channel((1, Arc::new(resources(a.addr(), None))));
    let (addr, mut heard, _inject) = serve_other(version).await;

    let proxy = Proxy::fed(&format!("http://{addr}"), "p1").await;
    proxy.wait_applied(1).await;
    let feed = proxy.feed().get();
    assert_eq!(feed.protocol, Some("sotw"));
    let listener = proxy.try_addr("listener_0").expect("listener_0 is running");
    let rsp = Client::http1(listener).await.get("/").await;
    assert_eq!(rsp.header("x-backend"), Some("a"));
    // Each type was ACKed with version 1.
    let acks = Mutex::new(BTreeMap::new());
    guard("ACKs of version 1", async {
        while acks.lock().unwrap().len() < 4 {
            let req: DiscoveryRequest = heard.recv().await.unwrap();
            if !req.response_nonce.is_empty()
                && req.error_detail.is_none()
                && req.version_info == "1"
            {
                acks.lock().unwrap().insert(req.type_url, ());
            }
        }
    })
    .await;

    // Version 2: a CORS filter Skiff does not have. NACKed, naming it.
    set.send_replace((
        2,
        Arc::new(resources(a.addr(), Some("envoy.filters.http.cors"))),
    ));
    let nack = next_nack(&mut heard).await;
    assert_eq!(nack.0, LISTENER);
    assert_eq!(nack.1, "1", "a NACK carries the version still applied");
    assert!(nack.2.contains("listener_0"), "{}", nack.2);
    assert!(nack.2.contains("envoy.filters.http.cors"), "{}", nack.2);
    let rsp = Client::http1(listener).await.get("/").await;
    assert_eq!(rsp.header("x-backend"), Some("a"), "the old config serves");

    // Version 3: good again, and the endpoint moved.
    set.send_replace((3, Arc::new(resources(b.addr(), None))));
    proxy.wait_applied(2).await;
    let rsp = Client::http1(listener).await.get("/").await;
    assert_eq!(rsp.header("x-backend"), Some("b"));
}

/// A control plane that misbehaves never gets a half-applied config in,
/// and never stops the proxy serving: a response of a type Skiff does not
/// take, a resource whose bytes do not decode, a resource of another type
/// than its response, each NACKed saying so; a route configuration naming
/// a cluster that never comes waits (shown in `/config`) while the old
/// config serves; the same response, same nonce, sent fifty times, is
/// answered fifty times and applies nothing. Then a good config is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_control_plane_never_gets_a_half_config_in() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let (set, version) = watch::channel((1, Arc::new(resources(a.addr(), None))));
    let (addr, mut heard, inject) = serve_other(version).await;
    let proxy = Proxy::fed(&format!("http://{addr}"), "p1").await;
    proxy.wait_applied(1).await;
    let listener = proxy.try_addr("listener_0").unwrap();
    let serves_a = || async {
        let rsp = Client::http1(listener).await.get("/").await;
        assert_eq!(rsp.header("x-backend"), Some("a"), "the old config serves");
    };
    let raw = |type_url: &str, resources: Vec<Any>, nonce: &str| DiscoveryResponse {
        version_info: "evil".to_owned(),
        resources,
        type_url: type_url.to_owned(),
        nonce: nonce.to_owned(),
        ..Default::default()
    };

    // A type Skiff does not take.
    let bogus = "type.googleapis.com/envoy.config.bogus.v3.Thing";
    inject.send(raw(bogus, vec![], "x1")).unwrap();
    let (t, _, why) = next_nack(&mut heard).await;
    assert_eq!(t, bogus);
    assert!(why.contains("not one Skiff takes"), "{why}");

    // Bytes that are not a Listener.
    let garbage = Any {
        type_url: LISTENER.to_owned(),
        value: vec![0xff, 0xff, 0xff, 0x01],
    };
    inject.send(raw(LISTENER, vec![garbage], "x2")).unwrap();
    let (t, v, why) = next_nack(&mut heard).await;
    assert_eq!((t.as_str(), v.as_str()), (LISTENER, "1"));
    assert!(why.contains("malformed"), "{why}");

    // A Cluster in a response for listeners.
    let cluster = resources(a.addr(), None)[CLUSTER][0].clone();
    inject.send(raw(LISTENER, vec![cluster], "x3")).unwrap();
    let (_, _, why) = next_nack(&mut heard).await;
    assert!(why.contains("Cluster in a response for Listener"), "{why}");
    serves_a().await;

    // The same response, with the same nonce, again and again: each is
    // answered (an ACK: it changes nothing), none applies anything.
    let endpoints = resources(a.addr(), None)[ENDPOINT].clone();
    for _ in 0..50 {
        inject
            .send(raw(ENDPOINT, endpoints.clone(), "same"))
            .unwrap();
    }
    guard("fifty answers", async {
        let mut answered = 0;
        while answered < 50 {
            let req = heard.recv().await.unwrap();
            if req.response_nonce == "same" {
                assert!(req.error_detail.is_none(), "{req:?}");
                answered += 1;
            }
        }
    })
    .await;
    assert_eq!(proxy.feed().get().applied, 1);
    serves_a().await;

    // A route configuration sending to a cluster that never comes.
    let ghost = local_route("v", "ghost");
    inject
        .send(raw(ROUTE, vec![pack_any(ghost)], "x4"))
        .unwrap();
    let feed = proxy.feed();
    guard(
        "the proxy to say what it waits for",
        feed.wait_for(|s| {
            s.waiting_for
                .as_deref()
                .is_some_and(|w| w.contains("ghost"))
        }),
    )
    .await;
    let config = Client::http1(proxy.admin())
        .await
        .get("/config")
        .await
        .json();
    let waiting = config["control"]["waiting_for"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(waiting.contains("clusters \"ghost\""), "{config:#}");
    serves_a().await;

    // A good config replaces all of it.
    set.send_replace((2, Arc::new(resources(b.addr(), None))));
    proxy.wait_applied(2).await;
    let rsp = Client::http1(listener).await.get("/").await;
    assert_eq!(rsp.header("x-backend"), Some("b"));
    assert_eq!(proxy.feed().get().waiting_for, None);
}

/// `resources(endpoint, None)`'s endpoints, as one response.
fn assignment(endpoint: SocketAddr, nonce: &str) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: nonce.to_owned(),
        resources: resources(endpoint, None)[ENDPOINT].clone(),
        type_url: ENDPOINT.to_owned(),
        nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// The answer to the response with `nonce`: its error message, if a NACK.
async fn answer_to(
    heard: &mut mpsc::UnboundedReceiver<DiscoveryRequest>,
    nonce: &str,
) -> Option<String> {
    guard(&format!("the answer to {nonce}"), async {
        loop {
            let req = heard.recv().await.unwrap();
            if req.response_nonce == nonce {
                return req.error_detail.map(|e| e.message);
            }
        }
    })
    .await
}

/// An update of one cluster's endpoints alone, applied by swapping that
/// cluster's endpoint set (the proxy's fast path for control-feed endpoint
/// updates): each move serves from the new endpoint at once, `/config`
/// and `/clusters` show it, the request's connection and route go on, an
/// endpoint that does not decode is NACKed while the last good one serves,
/// and a change of the cluster's settings after the moves is applied as a
/// change of that cluster alone (planned again, its routes compiled again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_update_moves_one_cluster_and_nothing_else() {
    let a = Backend::named("a").spawn().await;
    let b = Backend::named("b").spawn().await;
    let (set, version) = watch::channel((1, Arc::new(resources(a.addr(), None))));
    let (addr, mut heard, inject) = serve_other(version).await;
    let proxy = Proxy::fed(&format!("http://{addr}"), "p1").await;
    proxy.wait_applied(1).await;
    let listener = proxy.try_addr("listener_0").unwrap();
    let mut client = Client::http1(listener).await;
    assert_eq!(client.get("/").await.header("x-backend"), Some("a"));

    // Back and forth, on one client connection.
    for (n, to, name) in [(2, &b, "b"), (3, &a, "a"), (4, &b, "b")] {
        let nonce = format!("move-{n}");
        inject.send(assignment(to.addr(), &nonce)).unwrap();
        assert_eq!(answer_to(&mut heard, &nonce).await, None, "ACKed");
        proxy.wait_applied(n).await;
        let rsp = client.get("/").await;
        assert_eq!(rsp.header("x-backend"), Some(name));
    }
    let mut admin = Client::http1(proxy.admin()).await;
    let config = admin.get("/config").await.json();
    assert_eq!(
        config["config"]["clusters"]["service"]["endpoints"][0]["address"],
        b.addr().to_string(),
        "{config:#}"
    );
    let clusters = admin.get("/clusters").await.text();
    assert!(clusters.contains(&b.addr().to_string()), "{clusters}");
    assert!(!clusters.contains(&a.addr().to_string()), "{clusters}");

    // An endpoint without a port: NACKed, naming the assignment.
    let mut bad = assignment(a.addr(), "bad");
    let mut cla: xe::ClusterLoadAssignment =
        prost::Message::decode(bad.resources[0].value.as_slice()).unwrap();
    if let Some(xe::lb_endpoint::HostIdentifier::Endpoint(e)) =
        &mut cla.endpoints[0].lb_endpoints[0].host_identifier
        && let Some(core::address::Address::SocketAddress(sa)) =
            e.address.as_mut().and_then(|a| a.address.as_mut())
    {
        sa.port_specifier = None;
    }
    bad.resources = vec![pack_any(cla)];
    inject.send(bad).unwrap();
    let why = answer_to(&mut heard, "bad").await.expect("a NACK");
    assert!(why.contains("service"), "{why}");
    assert_eq!(client.get("/").await.header("x-backend"), Some("b"));

    // Version 2 from the server: the cluster's settings change (round
    // robin to least request) and its endpoint is `a` again. The cluster
    // comes first and is applied as a cluster change (with the last good
    // endpoint, `b`), then the endpoints alone.
    let mut least = resources(a.addr(), None);
    let mut cluster: xc::Cluster =
        prost::Message::decode(least[CLUSTER][0].value.as_slice()).unwrap();
    cluster.lb_policy = xc::cluster::LbPolicy::LeastRequest as i32;
    least.insert(CLUSTER.to_owned(), vec![pack_any(cluster)]);
    set.send_replace((2, Arc::new(least)));
    proxy.wait_applied(6).await;
    let config = admin.get("/config").await.json();
    let service = &config["config"]["clusters"]["service"];
    assert_eq!(service["lb"], "least_request", "{config:#}");
    assert_eq!(service["endpoints"][0]["address"], a.addr().to_string());
    assert_eq!(client.get("/").await.header("x-backend"), Some("a"));
    assert_eq!(proxy.feed().get().applied, 6, "nothing more to apply");

    // Version 3: the settings alone change back (least request to
    // ROUND_ROBIN, the proto's default, which is Skiff's default balancer),
    // nothing refused in between: a change of that one cluster, planned
    // again with its route compiled again, on the same connection.
    let mut round = resources(a.addr(), None);
    let mut cluster: xc::Cluster =
        prost::Message::decode(round[CLUSTER][0].value.as_slice()).unwrap();
    cluster.lb_policy = xc::cluster::LbPolicy::RoundRobin as i32;
    round.insert(CLUSTER.to_owned(), vec![pack_any(cluster)]);
    set.send_replace((3, Arc::new(round)));
    proxy.wait_applied(7).await;
    let config = admin.get("/config").await.json();
    let service = &config["config"]["clusters"]["service"];
    assert!(service["lb"].is_null(), "{config:#}");
    assert_eq!(service["endpoints"][0]["address"], a.addr().to_string());
    let clusters = admin.get("/clusters").await.text();
    assert!(clusters.contains(&a.addr().to_string()), "{clusters}");
    assert_eq!(client.get("/").await.header("x-backend"), Some("a"));
}
