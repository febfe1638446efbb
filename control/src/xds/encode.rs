//! Model → xDS: what `skiff control` serves.
//!
//! Everything is written the way Envoy and gRPC read it: route tables over
//! RDS and endpoints over EDS (both through ADS), the router filter last,
//! locality weights set (gRPC skips localities without one).

use envoy_types::pb::envoy::config::cluster::v3 as xc;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as xe;
use envoy_types::pb::envoy::config::listener::v3 as xl;
use envoy_types::pb::envoy::config::route::v3 as xr;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as rl;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as up;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3 as ty;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use envoy_types::util::pack_any;

use super::{Resources, duration, names, u32v};
use crate::model::{self, Config};

/// The xDS resources for `config`'s listeners, route tables and clusters.
pub fn encode(config: &Config) -> Resources {
    let mut res = Resources::default();
    for l in &config.listeners {
        res.listeners.insert(l.name.clone(), listener(l));
    }
    for (table, routes) in &config.routes {
        res.routes
            .insert(table.clone(), route_table(table, routes, config));
    }
    for (name, c) in &config.clusters {
        res.clusters.insert(name.clone(), cluster(name, c));
        if c.discovery != Some(model::Discovery::OriginalDestination) {
            res.endpoints.insert(name.clone(), load_assignment(name, c));
        }
    }
    res
}

/// What a proxyless gRPC client (gRFC A27) gets when it asks for the
/// listener `name` (its target, `xds:///NAME`): an `api_listener` whose
/// connection manager takes the route configuration of the same name, made
/// of every route, across tables in name order, whose `host` matches
/// `name`. `None` when no route does. gRPC has no local rate limit and its
/// fault filter is optional, so the routes keep only what gRPC honours:
/// matching, clusters and weights, retries (gRPC ignores `timeout`).
pub fn api_listener(name: &str, config: &Config) -> Option<(xl::Listener, xr::RouteConfiguration)> {
    let routes: Vec<xr::Route> = config
        .routes
        .values()
        .flatten()
        .filter(|r| {
            r.matches
                .host
                .as_deref()
                .is_some_and(|h| host_matches(h, name))
        })
        .map(|r| xr::Route {
            typed_per_filter_config: Default::default(),
            ..route(r, config)
        })
        .collect();
    if routes.is_empty() {
        return None;
    }
    let manager = hcm::HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: name.to_owned(),
            },
        )),
        http_filters: vec![http_filter(names::ROUTER, pack_any(Router::default()))],
        ..Default::default()
    };
    let listener = xl::Listener {
        name: name.to_owned(),
        api_listener: Some(xl::ApiListener {
            api_listener: Some(pack_any(manager)),
        }),
        ..Default::default()
    };
    let table = xr::RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![xr::VirtualHost {
            name: name.to_owned(),
            domains: vec![name.to_owned()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    Some((listener, table))
}

/// Whether a route's `host` (exact, or `*.suffix`) matches a gRPC target
/// (which may carry a port).
fn host_matches(pattern: &str, target: &str) -> bool {
    let host = match target.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => target,
    };
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// A config source that says "over the same ADS stream", as v3.
pub(crate) fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// `host:port` (or `[v6]:port`) as a socket address; a name that does not
/// parse keeps its text as the address (a DNS name).
pub(crate) fn address(text: &str) -> core::Address {
    let (host, port) = match text.parse::<std::net::SocketAddr>() {
        Ok(sa) => (sa.ip().to_string(), u32::from(sa.port())),
        Err(_) => match text.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(0)),
            None => (text.to_owned(), 0),
        },
    };
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: host,
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn typed(name: &str, any: Any) -> xl::Filter {
    xl::Filter {
        name: name.to_owned(),
        config_type: Some(xl::filter::ConfigType::TypedConfig(any)),
    }
}

fn http_filter(name: &str, any: Any) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.to_owned(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

/// The HTTP filters of every listener: rate limit, then fault (Skiff's
/// order), each configured per route, and the router last.
pub(crate) fn http_filters() -> Vec<hcm::HttpFilter> {
    vec![
        http_filter(
            names::LOCAL_RATE_LIMIT,
            pack_any(rl::LocalRateLimit {
                stat_prefix: "skiff".to_owned(),
                ..Default::default()
            }),
        ),
        http_filter(names::FAULT, pack_any(fault::HttpFault::default())),
        http_filter(names::ROUTER, pack_any(Router::default())),
    ]
}

fn listener(l: &model::Listener) -> xl::Listener {
    let filter = match (&l.protocol, &l.cluster) {
        (model::ListenerProtocol::Tcp, cluster) => typed(
            names::TCP_PROXY,
            pack_any(tcp::TcpProxy {
                stat_prefix: l.name.clone(),
                cluster_specifier: cluster
                    .clone()
                    .map(tcp::tcp_proxy::ClusterSpecifier::Cluster),
                ..Default::default()
            }),
        ),
        _ => typed(names::HCM, pack_any(connection_manager(l))),
    };
    let mtls = |transport_protocol: &str| xl::FilterChain {
        filter_chain_match: (!transport_protocol.is_empty()).then(|| xl::FilterChainMatch {
            transport_protocol: transport_protocol.to_owned(),
            ..Default::default()
        }),
        filters: vec![filter.clone()],
        transport_socket: Some(core::TransportSocket {
            name: names::TLS.to_owned(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack_any(
                tls::DownstreamTlsContext {
                    require_client_certificate: Some(BoolValue { value: true }),
                    ..Default::default()
                },
            ))),
        }),
        ..Default::default()
    };
    let plain = xl::FilterChain {
        filters: vec![filter.clone()],
        ..Default::default()
    };
    let (filter_chains, listener_filters) = match l.tls.as_ref().map(|t| t.mode) {
        Some(model::TlsMode::Strict) => (vec![mtls("")], Vec::new()),
        // Permissive: TLS when the client speaks it, plaintext otherwise,
        // told apart by the TLS inspector as Envoy does.
        Some(model::TlsMode::Permissive) => (
            vec![mtls("tls"), plain],
            vec![xl::ListenerFilter {
                name: names::TLS_INSPECTOR.to_owned(),
                ..Default::default()
            }],
        ),
        _ => (vec![plain], Vec::new()),
    };
    xl::Listener {
        name: l.name.clone(),
        address: Some(address(&l.address)),
        traffic_direction: match l.direction {
            model::Direction::Inbound => core::TrafficDirection::Inbound as i32,
            model::Direction::Outbound => core::TrafficDirection::Outbound as i32,
        },
        filter_chains,
        listener_filters,
        use_original_dst: l.transparent.then_some(BoolValue { value: true }),
        listener_filters_timeout: l.transparent.then(|| duration(l.detect_timeout)),
        ..Default::default()
    }
}

fn connection_manager(l: &model::Listener) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        stat_prefix: l.name.clone(),
        codec_type: match l.protocol {
            model::ListenerProtocol::Http1 => hcm::http_connection_manager::CodecType::Http1,
            model::ListenerProtocol::Http2 => hcm::http_connection_manager::CodecType::Http2,
            _ => hcm::http_connection_manager::CodecType::Auto,
        } as i32,
        route_specifier: l.routes.as_ref().map(|table| {
            hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(ads()),
                route_config_name: table.clone(),
            })
        }),
        http_filters: http_filters(),
        request_headers_timeout: Some(duration(l.header_timeout)),
        stream_idle_timeout: Some(duration(l.stream_idle_timeout)),
        max_request_headers_kb: u32v(l.max_request_headers_kb),
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            max_headers_count: u32v(l.max_request_headers_count),
            idle_timeout: Some(duration(l.idle_timeout)),
            ..Default::default()
        }),
        // Skiff matches hosts without their port.
        strip_port_mode: Some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(true)),
        ..Default::default()
    }
}

/// A route table as virtual hosts. Skiff takes the first route whose host
/// (if it names one) matches; Envoy picks a virtual host by domain first.
/// So each host named in the table gets a virtual host holding, in order,
/// every route a request for it could match: its own, those of wildcards
/// that cover it (`*.example.com` covers `api.example.com` and
/// `*.b.example.com`), and those that name no host; a `*` virtual host
/// holds the routes that name no host.
pub(crate) fn route_table(
    table: &str,
    routes: &[model::Route],
    config: &Config,
) -> xr::RouteConfiguration {
    let mut hosts: Vec<&str> = Vec::new();
    for r in routes {
        if let Some(h) = r.matches.host.as_deref()
            && !hosts.contains(&h)
        {
            hosts.push(h);
        }
    }
    let mut virtual_hosts: Vec<xr::VirtualHost> = hosts
        .iter()
        .map(|&h| xr::VirtualHost {
            name: h.to_owned(),
            domains: vec![h.to_owned()],
            routes: routes
                .iter()
                .filter(|r| r.matches.host.as_deref().is_none_or(|rh| covers(rh, h)))
                .map(|r| route(r, config))
                .collect(),
            ..Default::default()
        })
        .collect();
    let any: Vec<xr::Route> = routes
        .iter()
        .filter(|r| r.matches.host.is_none())
        .map(|r| route(r, config))
        .collect();
    if !any.is_empty() || virtual_hosts.is_empty() {
        virtual_hosts.push(xr::VirtualHost {
            name: "*".to_owned(),
            domains: vec!["*".to_owned()],
            routes: any,
            ..Default::default()
        });
    }
    xr::RouteConfiguration {
        name: table.to_owned(),
        virtual_hosts,
        ..Default::default()
    }
}

/// Whether every host that route host `host` admits, route host `pattern`
/// admits too: the same host, or a wildcard whose suffix it ends with.
fn covers(pattern: &str, host: &str) -> bool {
    pattern.eq_ignore_ascii_case(host)
        || pattern.strip_prefix('*').is_some_and(|suffix| {
            host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        })
}

fn string_exact(v: &str) -> matcher::StringMatcher {
    matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(v.to_owned())),
        ..Default::default()
    }
}

pub(crate) fn regex(re: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: re.to_owned(),
        ..Default::default()
    }
}

fn header_matcher(name: &str, m: &model::HeaderMatch) -> xr::HeaderMatcher {
    use xr::header_matcher::HeaderMatchSpecifier as S;
    let (spec, invert) = match m {
        model::HeaderMatch::Exact(v) => (S::StringMatch(string_exact(v)), false),
        model::HeaderMatch::Regex(re) => (
            S::StringMatch(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(regex(re))),
                ..Default::default()
            }),
            false,
        ),
        model::HeaderMatch::Present(p) => (S::PresentMatch(true), !p),
    };
    xr::HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(spec),
        invert_match: invert,
        ..Default::default()
    }
}

fn percent(p: f64) -> ty::FractionalPercent {
    // Millionths: Skiff's percent has up to four decimals.
    ty::FractionalPercent {
        numerator: (p * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32,
        denominator: ty::fractional_percent::DenominatorType::Million as i32,
    }
}

fn header_edits(ops: &model::HeaderOps) -> (Vec<core::HeaderValueOption>, Vec<String>) {
    let set = ops
        .set
        .iter()
        .map(|(k, v)| core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                as i32,
            ..Default::default()
        })
        .collect();
    (set, ops.remove.clone())
}

fn route(r: &model::Route, config: &Config) -> xr::Route {
    use xr::route_match::PathSpecifier;
    let path_specifier = Some(match &r.matches.path {
        Some(model::PathMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
        Some(model::PathMatch::Prefix(p)) => PathSpecifier::Prefix(p.clone()),
        Some(model::PathMatch::Regex(re)) => PathSpecifier::SafeRegex(regex(re)),
        None => PathSpecifier::Prefix("/".to_owned()),
    });
    let mut headers: Vec<xr::HeaderMatcher> = Vec::new();
    if let Some(m) = &r.matches.method {
        headers.push(header_matcher(
            ":method",
            &model::HeaderMatch::Exact(m.clone()),
        ));
    }
    for (name, m) in &r.matches.headers {
        headers.push(header_matcher(name, m));
    }
    let cluster_specifier = match (&r.cluster, &r.split) {
        (_, Some(split)) => Some(xr::route_action::ClusterSpecifier::WeightedClusters(
            xr::WeightedCluster {
                clusters: split
                    .iter()
                    .map(|w| xr::weighted_cluster::ClusterWeight {
                        name: w.cluster.clone(),
                        weight: u32v(w.weight),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )),
        (Some(c), None) => Some(xr::route_action::ClusterSpecifier::Cluster(c.clone())),
        (None, None) => None,
    };
    // Skiff hashes per cluster (`hash_on`); Envoy per route.
    let targets: Vec<&str> = match (&r.cluster, &r.split) {
        (_, Some(split)) => split.iter().map(|w| w.cluster.as_str()).collect(),
        (Some(c), None) => vec![c.as_str()],
        _ => Vec::new(),
    };
    let hash_policy = targets
        .iter()
        .filter_map(|c| config.clusters.get(*c)?.hash_on.as_ref())
        .take(1)
        .map(|h| xr::route_action::HashPolicy {
            policy_specifier: Some(xr::route_action::hash_policy::PolicySpecifier::Header(
                xr::route_action::hash_policy::Header {
                    header_name: h.header.clone(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .collect();
    let retry_policy = r.retry.as_ref().map(|retry| {
        let (codes, on): (Vec<&String>, Vec<&String>) = retry
            .on
            .iter()
            .partition(|o| o.bytes().all(|b| b.is_ascii_digit()));
        let mut retry_on: Vec<&str> = on.iter().map(|s| s.as_str()).collect();
        if !codes.is_empty() {
            retry_on.push("retriable-status-codes");
        }
        xr::RetryPolicy {
            retry_on: retry_on.join(","),
            num_retries: u32v(retry.attempts),
            per_try_timeout: retry.per_try_timeout.map(duration),
            retry_back_off: retry
                .backoff
                .as_ref()
                .map(|b| xr::retry_policy::RetryBackOff {
                    base_interval: Some(duration(b.base)),
                    max_interval: Some(duration(b.max)),
                }),
            retriable_status_codes: codes.iter().filter_map(|c| c.parse().ok()).collect(),
            ..Default::default()
        }
    });
    let mut per_filter: std::collections::HashMap<String, Any> = Default::default();
    if let Some(limit) = &r.rate_limit {
        per_filter.insert(
            names::LOCAL_RATE_LIMIT.to_owned(),
            pack_any(rate_limit(limit)),
        );
    }
    if let Some(f) = &r.fault {
        per_filter.insert(names::FAULT.to_owned(), pack_any(http_fault(f)));
    }
    let (request_headers_to_add, request_headers_to_remove) = header_edits(&r.headers.request);
    let (response_headers_to_add, response_headers_to_remove) = header_edits(&r.headers.response);
    xr::Route {
        name: r.name.clone().unwrap_or_default(),
        r#match: Some(xr::RouteMatch {
            path_specifier,
            headers,
            ..Default::default()
        }),
        action: Some(xr::route::Action::Route(xr::RouteAction {
            cluster_specifier,
            timeout: Some(r.timeout.map(duration).unwrap_or_default()),
            retry_policy,
            hash_policy,
            ..Default::default()
        })),
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        typed_per_filter_config: per_filter,
        ..Default::default()
    }
}

/// A route's rate limit as Envoy's local rate limit: a bucket of `burst`
/// tokens refilled by `requests_per_second` every second, enabled and
/// enforced for every request (Envoy's default is 0% of them).
pub(crate) fn rate_limit(limit: &model::RateLimit) -> rl::LocalRateLimit {
    let all = Some(core::RuntimeFractionalPercent {
        default_value: Some(ty::FractionalPercent {
            numerator: 100,
            denominator: ty::fractional_percent::DenominatorType::Hundred as i32,
        }),
        ..Default::default()
    });
    rl::LocalRateLimit {
        stat_prefix: "skiff".to_owned(),
        token_bucket: Some(ty::TokenBucket {
            max_tokens: limit.burst.unwrap_or(limit.requests_per_second),
            tokens_per_fill: u32v(limit.requests_per_second),
            fill_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
        }),
        filter_enabled: all.clone(),
        filter_enforced: all,
        ..Default::default()
    }
}

fn http_fault(f: &model::Fault) -> fault::HttpFault {
    fault::HttpFault {
        delay: f.delay.as_ref().map(|d| common_fault::FaultDelay {
            percentage: Some(percent(d.percent)),
            fault_delay_secifier: Some(common_fault::fault_delay::FaultDelaySecifier::FixedDelay(
                duration(d.duration),
            )),
        }),
        abort: f.abort.as_ref().map(|a| fault::FaultAbort {
            percentage: Some(percent(a.percent)),
            error_type: Some(match a.grpc_status {
                Some(g) => fault::fault_abort::ErrorType::GrpcStatus(g),
                None => fault::fault_abort::ErrorType::HttpStatus(u32::from(a.status)),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Envoy's defaults for a threshold Skiff leaves unset under a present
/// `circuit_breaker` (the same numbers Skiff applies).
pub(crate) const BREAKER_DEFAULTS: [u32; 4] = [1024, 1024, 1024, 3];

fn cluster(name: &str, c: &model::Cluster) -> xc::Cluster {
    use xc::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    let lb_policy = match c.lb {
        Some(model::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Some(model::LbPolicy::RingHash) => LbPolicy::RingHash,
        _ => LbPolicy::RoundRobin,
    } as i32;
    // Round robin said explicitly, so that a cluster naming no policy (the
    // proto default, ROUND_ROBIN) can mean Skiff's peak-EWMA.
    let load_balancing_policy = (c.lb == Some(model::LbPolicy::RoundRobin)).then(|| {
        xc::LoadBalancingPolicy {
            policies: vec![xc::load_balancing_policy::Policy {
                typed_extension_config: Some(core::TypedExtensionConfig {
                    name: "envoy.load_balancing_policies.round_robin".to_owned(),
                    typed_config: Some(pack_any(
                        envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin::default(),
                    )),
                }),
            }],
        }
    });
    // Skiff without `circuit_breaker` sets no limits; Envoy without
    // `circuit_breakers` applies its defaults. Said out loud both ways.
    let b = c.circuit_breaker.as_ref();
    let limit = |v: Option<Option<u32>>, default: u32| match v {
        None => u32v(u32::MAX),
        Some(v) => u32v(v.unwrap_or(default)),
    };
    let threshold = xc::circuit_breakers::Thresholds {
        max_connections: limit(b.map(|b| b.max_connections), BREAKER_DEFAULTS[0]),
        max_pending_requests: limit(b.map(|b| b.max_pending_requests), BREAKER_DEFAULTS[1]),
        max_requests: limit(b.map(|b| b.max_requests), BREAKER_DEFAULTS[2]),
        max_retries: limit(b.map(|b| b.max_retries), BREAKER_DEFAULTS[3]),
        retry_budget: c.retry_budget.as_ref().map(|rb| {
            xc::circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(ty::Percent {
                    value: rb.ratio * 100.0,
                }),
                min_retry_concurrency: rb.min_per_second.and_then(u32v),
                ..Default::default()
            }
        }),
        ..Default::default()
    };
    let protocol = match c.protocol {
        model::ClusterProtocol::Auto => {
            up::http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                up::http_protocol_options::UseDownstreamHttpConfig {
                    http_protocol_options: Some(core::Http1ProtocolOptions::default()),
                    http2_protocol_options: Some(core::Http2ProtocolOptions::default()),
                    ..Default::default()
                },
            )
        }
        model::ClusterProtocol::Http1 => explicit(
            up::http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                core::Http1ProtocolOptions::default(),
            ),
        ),
        model::ClusterProtocol::Http2 => explicit(
            up::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                core::Http2ProtocolOptions::default(),
            ),
        ),
    };
    let mut typed_extension_protocol_options = std::collections::HashMap::new();
    typed_extension_protocol_options.insert(
        names::HTTP_OPTIONS.to_owned(),
        pack_any(up::HttpProtocolOptions {
            upstream_protocol_options: Some(protocol),
            common_http_protocol_options: Some(core::HttpProtocolOptions {
                idle_timeout: Some(duration(c.idle_timeout)),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    // The passthrough cluster: each connection's original destination is
    // its endpoint, which Envoy's ORIGINAL_DST picks (CLUSTER_PROVIDED).
    let passthrough = c.discovery == Some(model::Discovery::OriginalDestination);
    let (kind, eds, lb_policy, load_balancing_policy) = match passthrough {
        true => (
            DiscoveryType::OriginalDst,
            None,
            LbPolicy::ClusterProvided as i32,
            None,
        ),
        false => (
            DiscoveryType::Eds,
            Some(xc::cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            lb_policy,
            load_balancing_policy,
        ),
    };
    xc::Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        eds_cluster_config: eds,
        connect_timeout: Some(duration(c.connect_timeout)),
        lb_policy,
        load_balancing_policy,
        circuit_breakers: Some(xc::CircuitBreakers {
            thresholds: vec![threshold],
            ..Default::default()
        }),
        outlier_detection: c.outlier_detection.as_ref().map(|o| xc::OutlierDetection {
            consecutive_5xx: o.consecutive_failures.and_then(u32v),
            base_ejection_time: o.base_ejection_time.map(duration),
            max_ejection_percent: o.max_ejection_percent.and_then(u32v),
            ..Default::default()
        }),
        health_checks: c
            .health_check
            .as_ref()
            .map(|h| health_check(h, c.protocol))
            .into_iter()
            .collect(),
        typed_extension_protocol_options,
        transport_socket: c.tls.as_ref().map(|t| core::TransportSocket {
            name: names::TLS.to_owned(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack_any(
                tls::UpstreamTlsContext {
                    common_tls_context: Some(tls::CommonTlsContext {
                        validation_context_type: Some(
                            tls::common_tls_context::ValidationContextType::ValidationContext(
                                tls::CertificateValidationContext {
                                    match_typed_subject_alt_names: vec![
                                        tls::SubjectAltNameMatcher {
                                            san_type: tls::subject_alt_name_matcher::SanType::Uri
                                                as i32,
                                            matcher: Some(string_exact(&t.server_identity)),
                                            ..Default::default()
                                        },
                                    ],
                                    ..Default::default()
                                },
                            ),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))),
        }),
        ..Default::default()
    }
}

fn explicit(
    config: up::http_protocol_options::explicit_http_config::ProtocolConfig,
) -> up::http_protocol_options::UpstreamProtocolOptions {
    up::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
        up::http_protocol_options::ExplicitHttpConfig {
            protocol_config: Some(config),
        },
    )
}

/// Skiff's health-check defaults, which xDS makes explicit.
pub(crate) const HEALTH_DEFAULTS: (&str, u64, u64, u32, u32) = ("/healthz", 5000, 1000, 3, 1);

fn health_check(h: &model::HealthCheck, protocol: model::ClusterProtocol) -> core::HealthCheck {
    let (path, interval, timeout, unhealthy, healthy) = HEALTH_DEFAULTS;
    let ms = crate::duration::Duration::from_millis;
    core::HealthCheck {
        interval: Some(duration(h.interval.unwrap_or(ms(interval)))),
        timeout: Some(duration(h.timeout.unwrap_or(ms(timeout)))),
        unhealthy_threshold: u32v(h.unhealthy_threshold.unwrap_or(unhealthy)),
        healthy_threshold: u32v(h.healthy_threshold.unwrap_or(healthy)),
        health_checker: Some(match protocol {
            // Skiff probes HTTP/2 clusters with the gRPC health protocol.
            model::ClusterProtocol::Http2 => core::health_check::HealthChecker::GrpcHealthCheck(
                core::health_check::GrpcHealthCheck::default(),
            ),
            _ => core::health_check::HealthChecker::HttpHealthCheck(
                core::health_check::HttpHealthCheck {
                    path: h.path.clone().unwrap_or_else(|| path.to_owned()),
                    ..Default::default()
                },
            ),
        }),
        ..Default::default()
    }
}

fn load_assignment(name: &str, c: &model::Cluster) -> xe::ClusterLoadAssignment {
    let lb_endpoints = c
        .endpoints
        .iter()
        .map(|e| xe::LbEndpoint {
            host_identifier: Some(xe::lb_endpoint::HostIdentifier::Endpoint(xe::Endpoint {
                address: Some(address(&e.address)),
                ..Default::default()
            })),
            load_balancing_weight: u32v(e.weight),
            ..Default::default()
        })
        .collect();
    xe::ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![xe::LocalityLbEndpoints {
            lb_endpoints,
            // gRPC refuses endpoints with no locality, and skips a locality
            // that has no weight.
            locality: Some(core::Locality::default()),
            load_balancing_weight: u32v(1),
            ..Default::default()
        }],
        ..Default::default()
    }
}
