//! xDS → model: what a Skiff proxy applies, from `skiff control` or any
//! ADS server.
//!
//! Every decoder works on its own copy of a message and `take`s the fields
//! it honours, or knows to be harmless (stat prefixes, names used only for
//! statistics); `Refusals::rest` then refuses whatever is still set.
//!
//! Control planes still write fields Envoy has deprecated (`exact_match`,
//! `total_weight`, `append`): they are read, not refused.
#![allow(deprecated)]

use std::collections::{BTreeMap, HashMap};

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
use envoy_types::pb::google::protobuf::Any;

use super::encode::{BREAKER_DEFAULTS, HEALTH_DEFAULTS};
use super::{Refusal, Refusals, Resources, from_duration, names, unpack};
use crate::duration::Duration;
use crate::model::{self, Config};

/// The model of `res`: its listeners, route tables and clusters (the rest
/// of the `Config` at its defaults), or every reason it cannot be applied.
pub fn decode(res: &Resources) -> Result<Config, Vec<Refusal>> {
    let mut config = Config::default();
    let mut refused = Vec::new();
    // Ring hash lives on Envoy's routes and on Skiff's clusters.
    let mut hash_on: BTreeMap<String, String> = BTreeMap::new();
    for (name, l) in &res.listeners {
        let mut r = Refusals::new("Listener", name);
        if let Some(l) = listener(l.clone(), &mut r) {
            config.listeners.push(l);
        }
        refused.extend(r.found);
    }
    for (name, rc) in &res.routes {
        let mut r = Refusals::new("RouteConfiguration", name);
        let routes = route_table(rc.clone(), &mut r, &mut hash_on);
        config.routes.insert(name.clone(), routes);
        refused.extend(r.found);
    }
    for (name, c) in &res.clusters {
        let mut r = Refusals::new("Cluster", name);
        if let Some(c) = cluster(c.clone(), res, &mut r) {
            config.clusters.insert(name.clone(), c);
        }
        refused.extend(r.found);
    }
    for (cluster, header) in hash_on {
        if let Some(c) = config.clusters.get_mut(&cluster)
            && c.lb == Some(model::LbPolicy::RingHash)
        {
            c.hash_on = Some(model::HashOn { header });
        }
    }
    for (name, c) in &config.clusters {
        if c.lb == Some(model::LbPolicy::RingHash) && c.hash_on.is_none() {
            refused.push(Refusal {
                kind: "Cluster",
                resource: name.clone(),
                field: "lb_policy".to_owned(),
                why: "RING_HASH needs a route with a header hash_policy for this cluster"
                    .to_owned(),
            });
        }
    }
    match refused.is_empty() {
        true => Ok(config),
        false => Err(refused),
    }
}

/// The model of one cluster, its endpoints from `res`: what a change to a
/// cluster or its `ClusterLoadAssignment` alone re-decodes. A ring-hash
/// cluster's `hash_on` comes from the route tables, which only [`decode`]
/// reads: it is left unset here.
pub fn decode_cluster(c: &xc::Cluster, res: &Resources) -> Result<model::Cluster, Vec<Refusal>> {
    let mut r = Refusals::new("Cluster", &c.name);
    match cluster(c.clone(), res, &mut r) {
        Some(c) if r.found.is_empty() => Ok(c),
        _ => Err(r.found),
    }
}

fn address(a: Option<core::Address>, at: &str, r: &mut Refusals<'_>) -> Option<String> {
    let Some(core::Address {
        address: Some(core::address::Address::SocketAddress(mut sa)),
    }) = a
    else {
        r.refuse(at, "a socket address is required");
        return None;
    };
    let port = match sa.port_specifier.take() {
        Some(core::socket_address::PortSpecifier::PortValue(p)) if p <= 65535 => p,
        _ => {
            r.refuse(
                format!("{at}.port_value"),
                "a port from 0 to 65535 is required",
            );
            return None;
        }
    };
    let host = std::mem::take(&mut sa.address);
    // TCP is the only protocol; Envoy's default.
    if sa.protocol == core::socket_address::Protocol::Tcp as i32 {
        sa.protocol = 0;
    }
    r.rest(at, &sa);
    Some(match host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    })
}

fn duration(
    d: Option<envoy_types::pb::google::protobuf::Duration>,
    at: &str,
    r: &mut Refusals<'_>,
) -> Option<Duration> {
    match from_duration(&d?) {
        Ok(d) => Some(d),
        Err(why) => {
            r.refuse(at, why);
            None
        }
    }
}

fn any<T: prost::Message + prost::Name + Default>(
    a: &Any,
    at: &str,
    r: &mut Refusals<'_>,
) -> Option<T> {
    match unpack(a) {
        Ok(t) => Some(t),
        Err(why) => {
            r.refuse(at, why);
            None
        }
    }
}

fn listener(mut l: xl::Listener, r: &mut Refusals<'_>) -> Option<model::Listener> {
    let name = std::mem::take(&mut l.name);
    let address = address(l.address.take(), "address", r)?;
    let direction = match std::mem::take(&mut l.traffic_direction) {
        d if d == core::TrafficDirection::Inbound as i32 => model::Direction::Inbound,
        _ => model::Direction::Outbound,
    };
    // The TLS inspector is how Envoy tells TLS from plaintext; Skiff
    // always sniffs.
    l.listener_filters
        .retain(|f| f.name != names::TLS_INSPECTOR || f.config_type.is_some());
    // Harmless: statistics only.
    l.stat_prefix.clear();
    // Envoy's transparent listener: redirected connections, their original
    // destination read; the listener filters' timeout is how long it waits
    // for a client's first bytes.
    let transparent = l.use_original_dst.take().is_some_and(|b| b.value);
    let detect = l
        .listener_filters_timeout
        .take()
        .and_then(|d| duration(Some(d), "listener_filters_timeout", r));
    let chains = std::mem::take(&mut l.filter_chains);
    r.rest("", &l);
    let mut out = model::Listener {
        name,
        address,
        direction,
        protocol: model::ListenerProtocol::Auto,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(3600),
        stream_idle_timeout: Duration::from_secs(300),
        max_request_headers_kb: 60,
        max_request_headers_count: 100,
        max_connections: None,
        max_concurrent_streams: 1024,
        transparent,
        detect_timeout: detect.unwrap_or(Duration::from_millis(250)),
        tls: None,
        routes: None,
        cluster: None,
    };
    // One chain, or the permissive pair: a TLS chain matched on
    // `transport_protocol: tls` and a plaintext one, with the same filters.
    let (mtls, plain): (Vec<_>, Vec<_>) = chains
        .into_iter()
        .enumerate()
        .partition(|(_, c)| c.transport_socket.is_some());
    let chain = match (mtls.len(), plain.len()) {
        (0, 1) => plain.into_iter().next(),
        (1, 0) => {
            out.tls = Some(model::ListenerTls {
                mode: model::TlsMode::Strict,
            });
            mtls.into_iter().next()
        }
        (1, 1) => {
            out.tls = Some(model::ListenerTls {
                mode: model::TlsMode::Permissive,
            });
            let (_, p) = &plain[0];
            let (i, m) = &mtls[0];
            if p.filters != m.filters {
                r.refuse(
                    "filter_chains",
                    "a TLS and a plaintext chain must have the same filters",
                );
            }
            Some((*i, m.clone()))
        }
        _ => {
            r.refuse(
                "filter_chains",
                "one filter chain, or a TLS chain and a plaintext one, is supported",
            );
            None
        }
    }?;
    let (i, mut chain) = chain;
    let at = format!("filter_chains[{i}]");
    if let Some(ts) = chain.transport_socket.take() {
        downstream_tls(ts, &format!("{at}.transport_socket"), r);
    }
    if let Some(m) = chain.filter_chain_match.take() {
        let mut m = m;
        if out.tls.as_ref().map(|t| t.mode) == Some(model::TlsMode::Permissive)
            && m.transport_protocol == "tls"
        {
            m.transport_protocol.clear();
        }
        r.rest(&format!("{at}.filter_chain_match"), &m);
    }
    chain.name.clear();
    let filters = std::mem::take(&mut chain.filters);
    r.rest(&at, &chain);
    let [filter] = <[xl::Filter; 1]>::try_from(filters).ok().or_else(|| {
        r.refuse(
            format!("{at}.filters"),
            "exactly one network filter is supported",
        );
        None
    })?;
    let at = format!("{at}.filters[0]");
    let Some(xl::filter::ConfigType::TypedConfig(cfg)) = &filter.config_type else {
        r.refuse(&at, "a typed_config is required");
        return None;
    };
    match cfg.type_url.rsplit('/').next().unwrap_or_default() {
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
            let m: hcm::HttpConnectionManager = any(cfg, &at, r)?;
            connection_manager(m, &mut out, &format!("{at}.typed_config"), r);
        }
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => {
            let mut t: tcp::TcpProxy = any(cfg, &at, r)?;
            out.protocol = model::ListenerProtocol::Tcp;
            t.stat_prefix.clear();
            match t.cluster_specifier.take() {
                Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => out.cluster = Some(c),
                _ => r.refuse(
                    format!("{at}.typed_config.cluster"),
                    "a cluster is required",
                ),
            }
            r.rest(&format!("{at}.typed_config"), &t);
        }
        other => r.refuse(
            &at,
            format!(
                "the network filter {other:?} ({}) is not supported",
                filter.name
            ),
        ),
    }
    Some(out)
}

fn downstream_tls(ts: core::TransportSocket, at: &str, r: &mut Refusals<'_>) {
    let Some(core::transport_socket::ConfigType::TypedConfig(cfg)) = &ts.config_type else {
        r.refuse(at, "a typed_config is required");
        return;
    };
    let Some(mut ctx) = any::<tls::DownstreamTlsContext>(cfg, at, r) else {
        return;
    };
    if ctx.require_client_certificate.take().map(|b| b.value) != Some(true) {
        r.refuse(
            format!("{at}.require_client_certificate"),
            "Skiff's TLS listeners always require a client certificate (mTLS)",
        );
    }
    // Certificates and validation come from Skiff's own `identity`.
    if let Some(common) = ctx.common_tls_context.take()
        && common != tls::CommonTlsContext::default()
    {
        r.refuse(
            format!("{at}.common_tls_context"),
            "certificates and trust come from the proxy's identity, not from xDS",
        );
    }
    r.rest(&format!("{at}.typed_config"), &ctx);
}

fn connection_manager(
    mut m: hcm::HttpConnectionManager,
    out: &mut model::Listener,
    at: &str,
    r: &mut Refusals<'_>,
) {
    use hcm::http_connection_manager::{CodecType, RouteSpecifier, StripPortMode};
    m.stat_prefix.clear();
    out.protocol = match std::mem::take(&mut m.codec_type) {
        c if c == CodecType::Http1 as i32 => model::ListenerProtocol::Http1,
        c if c == CodecType::Http2 as i32 => model::ListenerProtocol::Http2,
        c if c == CodecType::Auto as i32 => model::ListenerProtocol::Auto,
        other => {
            r.refuse(
                format!("{at}.codec_type"),
                format!("codec {other} is not supported"),
            );
            model::ListenerProtocol::Auto
        }
    };
    match m.route_specifier.take() {
        Some(RouteSpecifier::Rds(rds)) => {
            let mut rds = rds;
            out.routes = Some(std::mem::take(&mut rds.route_config_name));
            if rds.config_source.take().is_none_or(|s| !is_ads(&s)) {
                r.refuse(
                    format!("{at}.rds.config_source"),
                    "route tables come over ADS only",
                );
            }
            r.rest(&format!("{at}.rds"), &rds);
        }
        Some(RouteSpecifier::RouteConfig(_)) => r.refuse(
            format!("{at}.route_config"),
            "inline route tables are not supported yet: serve the table over RDS",
        ),
        Some(_) => r.refuse(format!("{at}.route_specifier"), "only rds is supported"),
        None => r.refuse(format!("{at}.rds"), "a route table is required"),
    }
    if let Some(t) = m.request_headers_timeout.take() {
        out.header_timeout = duration(Some(t), &format!("{at}.request_headers_timeout"), r)
            .unwrap_or(out.header_timeout);
    }
    if let Some(t) = m.stream_idle_timeout.take() {
        out.stream_idle_timeout = duration(Some(t), &format!("{at}.stream_idle_timeout"), r)
            .unwrap_or(out.stream_idle_timeout);
    }
    if let Some(kb) = m.max_request_headers_kb.take() {
        out.max_request_headers_kb = kb.value;
    }
    if let Some(mut common) = m.common_http_protocol_options.take() {
        if let Some(n) = common.max_headers_count.take() {
            out.max_request_headers_count = n.value;
        }
        if let Some(t) = common.idle_timeout.take() {
            let at = format!("{at}.common_http_protocol_options.idle_timeout");
            out.idle_timeout = duration(Some(t), &at, r).unwrap_or(out.idle_timeout);
        }
        r.rest(&format!("{at}.common_http_protocol_options"), &common);
    }
    // Skiff matches hosts without their port: the same as Envoy's
    // strip_any_host_port, and harmless to say.
    if let Some(StripPortMode::StripAnyHostPort(true)) = m.strip_port_mode {
        m.strip_port_mode = None;
    }
    let filters = std::mem::take(&mut m.http_filters);
    http_filters(filters, &format!("{at}.http_filters"), r);
    r.rest(at, &m);
}

pub(crate) fn is_ads(s: &core::ConfigSource) -> bool {
    matches!(
        s.config_source_specifier,
        Some(core::config_source::ConfigSourceSpecifier::Ads(_))
    )
}

/// The HTTP filters: the router last; fault and local rate limit with no
/// listener-wide settings (Skiff configures them per route).
fn http_filters(filters: Vec<hcm::HttpFilter>, at: &str, r: &mut Refusals<'_>) {
    let last = filters.len().saturating_sub(1);
    if filters.is_empty() {
        r.refuse(at, "the router filter is required");
    }
    for (i, mut f) in filters.into_iter().enumerate() {
        let at = format!("{at}[{i}]");
        let name = std::mem::take(&mut f.name);
        let Some(hcm::http_filter::ConfigType::TypedConfig(cfg)) = f.config_type.take() else {
            r.refuse(&at, format!("{name}: a typed_config is required"));
            continue;
        };
        r.rest(&at, &f);
        let kind = cfg
            .type_url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let at = format!("{at}.typed_config");
        match kind.as_str() {
            "envoy.extensions.filters.http.router.v3.Router" => {
                if i != last {
                    r.refuse(&at, "the router must be the last filter");
                }
                if let Some(router) = any::<Router>(&cfg, &at, r) {
                    r.rest(&at, &router);
                }
            }
            "envoy.extensions.filters.http.fault.v3.HTTPFault" => {
                if let Some(f) = any::<fault::HttpFault>(&cfg, &at, r) {
                    r.rest(&at, &f);
                }
            }
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
                if let Some(mut l) = any::<rl::LocalRateLimit>(&cfg, &at, r) {
                    l.stat_prefix.clear();
                    r.rest(&at, &l);
                }
            }
            other => r.refuse(
                &at,
                format!("the HTTP filter {other:?} ({name}) is not supported"),
            ),
        }
    }
}

fn route_table(
    mut rc: xr::RouteConfiguration,
    r: &mut Refusals<'_>,
    hash_on: &mut BTreeMap<String, String>,
) -> Vec<model::Route> {
    rc.name.clear();
    let vhosts = std::mem::take(&mut rc.virtual_hosts);
    r.rest("", &rc);
    // Envoy picks the most specific domain first: exact names, then
    // suffix wildcards (longest first), then `*`. Skiff takes routes in
    // order, so the specific hosts' routes come first.
    let mut entries: Vec<(u8, usize, String, usize)> = Vec::new();
    for (v, vh) in vhosts.iter().enumerate() {
        for d in &vh.domains {
            let rank = match d.as_str() {
                "*" => 2,
                d if d.starts_with('*') => 1,
                _ => 0,
            };
            entries.push((rank, usize::MAX - d.len(), d.clone(), v));
        }
    }
    entries.sort();
    let decoded: Vec<Vec<model::Route>> = vhosts
        .into_iter()
        .enumerate()
        .map(|(v, vh)| virtual_host(vh, &format!("virtual_hosts[{v}]"), r, hash_on))
        .collect();
    // Envoy takes the routes of the most specific virtual host only; Skiff
    // takes the first route of the whole table that matches. So each
    // virtual host's routes, in order, go in with its domain as their host,
    // the most specific domains first: a request skips the routes of
    // domains its host does not match, and meets its own virtual host's
    // routes before any other's it matches.
    //
    // A virtual host that ends with all the routes of the next wider one
    // that covers its domain (the longest wildcard, else `*`) leaves them
    // off: a request falling through its own routes meets that one's
    // next, exactly as if they were repeated. That is how `encode` writes
    // a table (each host's virtual host holds every route a request for it
    // could match), so a table of 10,000 hosts and a catch-all comes back
    // as 10,001 routes, not 20,000, and a file's table comes back as
    // itself.
    let by_domain: HashMap<&str, usize> = entries
        .iter()
        .filter(|e| e.0 > 0)
        .map(|e| (e.2.as_str(), e.3))
        .collect();
    let wider = |domain: &str| -> Option<usize> {
        if domain == "*" {
            return None;
        }
        domain
            .char_indices()
            .filter(|&(_, c)| c == '.')
            .map(|(i, _)| format!("*{}", &domain[i..]))
            .filter(|w| w != domain)
            .find_map(|w| by_domain.get(w.as_str()).copied())
            .or_else(|| by_domain.get("*").copied())
    };
    let mut out: Vec<model::Route> = Vec::new();
    // Compared whole only within a bucket of the same name, cluster and
    // host: a table of 10,000 virtual hosts is not 10,000² comparisons.
    let mut taken: HashMap<OwnedRouteKey, Vec<usize>> = HashMap::new();
    for (_, _, domain, v) in &entries {
        let routes = &decoded[*v];
        let mut keep = routes.len();
        if let Some(next) = wider(domain).map(|w| &decoded[w])
            && !next.is_empty()
            && routes.ends_with(next)
        {
            keep -= next.len();
        }
        for route in &routes[..keep] {
            let mut route = route.clone();
            route.matches.host = (domain != "*").then(|| domain.clone());
            let key = (
                route.matches.host.clone(),
                route.name.clone(),
                route.cluster.clone(),
            );
            let bucket = taken.entry(key).or_default();
            if !bucket.iter().any(|&i| out[i] == route) {
                bucket.push(out.len());
                out.push(route);
            }
        }
    }
    out
}

/// What routes are bucketed by before being compared whole: host, name, cluster.
type OwnedRouteKey = (Option<String>, Option<String>, Option<String>);

fn virtual_host(
    mut vh: xr::VirtualHost,
    at: &str,
    r: &mut Refusals<'_>,
    hash_on: &mut BTreeMap<String, String>,
) -> Vec<model::Route> {
    vh.name.clear();
    vh.domains.clear();
    let routes = std::mem::take(&mut vh.routes);
    r.rest(at, &vh);
    routes
        .into_iter()
        .enumerate()
        .map(|(i, route)| self::route(route, &format!("{at}.routes[{i}]"), r, hash_on))
        .collect()
}

fn string_matcher(
    m: matcher::StringMatcher,
    at: &str,
    r: &mut Refusals<'_>,
) -> Option<model::HeaderMatch> {
    use matcher::string_matcher::MatchPattern;
    if m.ignore_case {
        r.refuse(
            format!("{at}.ignore_case"),
            "case-insensitive matches are not supported",
        );
    }
    match m.match_pattern {
        Some(MatchPattern::Exact(v)) => Some(model::HeaderMatch::Exact(v)),
        Some(MatchPattern::SafeRegex(re)) => Some(model::HeaderMatch::Regex(re.regex)),
        Some(MatchPattern::Prefix(p)) => Some(model::HeaderMatch::Regex(format!(
            "{}.*",
            regex::escape(&p)
        ))),
        Some(MatchPattern::Suffix(s)) => Some(model::HeaderMatch::Regex(format!(
            ".*{}",
            regex::escape(&s)
        ))),
        Some(MatchPattern::Contains(c)) => Some(model::HeaderMatch::Regex(format!(
            ".*{}.*",
            regex::escape(&c)
        ))),
        _ => {
            r.refuse(at, "this string match is not supported");
            None
        }
    }
}

fn route(
    mut x: xr::Route,
    at: &str,
    r: &mut Refusals<'_>,
    hash_on: &mut BTreeMap<String, String>,
) -> model::Route {
    use xr::route_match::PathSpecifier;
    let mut out = model::Route {
        name: Some(std::mem::take(&mut x.name)).filter(|n| !n.is_empty()),
        matches: model::RouteMatch::default(),
        cluster: None,
        split: None,
        timeout: None,
        retry: None,
        rate_limit: None,
        fault: None,
        headers: model::HeaderRules::default(),
    };
    let mut m = x.r#match.take().unwrap_or_default();
    out.matches.path = match m.path_specifier.take() {
        Some(PathSpecifier::Prefix(p)) if p == "/" || p.is_empty() => None,
        Some(PathSpecifier::Prefix(p)) => Some(model::PathMatch::Prefix(p)),
        Some(PathSpecifier::Path(p)) => Some(model::PathMatch::Exact(p)),
        Some(PathSpecifier::SafeRegex(re)) => Some(model::PathMatch::Regex(re.regex)),
        _ => {
            r.refuse(
                format!("{at}.match"),
                "a prefix, path or safe_regex match is required",
            );
            None
        }
    };
    if m.case_sensitive.take().is_some_and(|b| !b.value) {
        r.refuse(
            format!("{at}.match.case_sensitive"),
            "case-insensitive paths are not supported",
        );
    }
    for (i, mut h) in std::mem::take(&mut m.headers).into_iter().enumerate() {
        use xr::header_matcher::HeaderMatchSpecifier as S;
        let hat = format!("{at}.match.headers[{i}]");
        let name = std::mem::take(&mut h.name);
        let invert = std::mem::take(&mut h.invert_match);
        // The old one-field spellings are string matches.
        let pattern = |p: matcher::string_matcher::MatchPattern| matcher::StringMatcher {
            match_pattern: Some(p),
            ..Default::default()
        };
        use matcher::string_matcher::MatchPattern as P;
        let cond = match h.header_match_specifier.take() {
            Some(S::PresentMatch(p)) => Some(model::HeaderMatch::Present(p != invert)),
            Some(S::StringMatch(sm)) => string_matcher(sm, &hat, r),
            Some(S::ExactMatch(v)) => string_matcher(pattern(P::Exact(v)), &hat, r),
            Some(S::SafeRegexMatch(re)) => string_matcher(pattern(P::SafeRegex(re)), &hat, r),
            Some(S::PrefixMatch(v)) => string_matcher(pattern(P::Prefix(v)), &hat, r),
            Some(S::SuffixMatch(v)) => string_matcher(pattern(P::Suffix(v)), &hat, r),
            Some(S::ContainsMatch(v)) => string_matcher(pattern(P::Contains(v)), &hat, r),
            _ => {
                r.refuse(&hat, "this header match is not supported");
                None
            }
        };
        if invert && !matches!(cond, Some(model::HeaderMatch::Present(_))) {
            r.refuse(
                format!("{hat}.invert_match"),
                "only a presence match can be inverted",
            );
        }
        r.rest(&hat, &h);
        match (name.as_str(), cond) {
            (":method", Some(model::HeaderMatch::Exact(v))) => out.matches.method = Some(v),
            (":method", _) => r.refuse(&hat, ":method matches only an exact value"),
            (":authority", Some(model::HeaderMatch::Exact(v))) => out.matches.host = Some(v),
            (_, Some(c)) => {
                out.matches.headers.insert(name.to_ascii_lowercase(), c);
            }
            (_, None) => {}
        }
    }
    r.rest(&format!("{at}.match"), &m);

    match x.action.take() {
        Some(xr::route::Action::Route(a)) => {
            route_action(a, &mut out, &format!("{at}.route"), r, hash_on)
        }
        _ => r.refuse(
            format!("{at}.action"),
            "only route (forward to a cluster) is supported",
        ),
    }
    let edits = |add: Vec<core::HeaderValueOption>,
                 remove: Vec<String>,
                 hat: &str,
                 r: &mut Refusals<'_>| {
        let mut ops = model::HeaderOps::default();
        for (i, mut h) in add.into_iter().enumerate() {
            let Some(mut hv) = h.header.take() else {
                continue;
            };
            let overwrite =
                core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
            if h.append_action != overwrite && h.append.take().is_none_or(|a| a.value) {
                r.refuse(
                    format!("{hat}[{i}].append_action"),
                    "Skiff sets headers (OVERWRITE_IF_EXISTS_OR_ADD); appending is not supported",
                );
            }
            h.append_action = 0;
            ops.set.insert(
                std::mem::take(&mut hv.key).to_ascii_lowercase(),
                std::mem::take(&mut hv.value),
            );
            r.rest(&format!("{hat}[{i}].header"), &hv);
            r.rest(&format!("{hat}[{i}]"), &h);
        }
        ops.remove = remove;
        ops
    };
    out.headers.request = edits(
        std::mem::take(&mut x.request_headers_to_add),
        std::mem::take(&mut x.request_headers_to_remove),
        &format!("{at}.request_headers_to_add"),
        r,
    );
    out.headers.response = edits(
        std::mem::take(&mut x.response_headers_to_add),
        std::mem::take(&mut x.response_headers_to_remove),
        &format!("{at}.response_headers_to_add"),
        r,
    );
    for (name, cfg) in std::mem::take(&mut x.typed_per_filter_config) {
        let fat = format!("{at}.typed_per_filter_config[{name}]");
        match name.as_str() {
            names::LOCAL_RATE_LIMIT => {
                out.rate_limit = any(&cfg, &fat, r).and_then(|l| rate_limit(l, &fat, r))
            }
            names::FAULT => out.fault = any(&cfg, &fat, r).and_then(|f| http_fault(f, &fat, r)),
            _ => r.refuse(&fat, "per-route config for this filter is not supported"),
        }
    }
    r.rest(at, &x);
    out
}

fn route_action(
    mut a: xr::RouteAction,
    out: &mut model::Route,
    at: &str,
    r: &mut Refusals<'_>,
    hash_on: &mut BTreeMap<String, String>,
) {
    use xr::route_action::ClusterSpecifier;
    match a.cluster_specifier.take() {
        Some(ClusterSpecifier::Cluster(c)) => out.cluster = Some(c),
        Some(ClusterSpecifier::WeightedClusters(mut w)) => {
            let mut split = Vec::new();
            for (i, mut cw) in std::mem::take(&mut w.clusters).into_iter().enumerate() {
                split.push(model::WeightedCluster {
                    cluster: std::mem::take(&mut cw.name),
                    weight: cw.weight.take().map_or(0, |v| v.value),
                });
                r.rest(&format!("{at}.weighted_clusters.clusters[{i}]"), &cw);
            }
            // Envoy's deprecated total_weight must equal the sum anyway.
            w.total_weight = None;
            r.rest(&format!("{at}.weighted_clusters"), &w);
            out.split = Some(split);
        }
        _ => r.refuse(
            format!("{at}.cluster"),
            "a cluster or weighted_clusters is required",
        ),
    }
    // Envoy's default route timeout is 15 s; 0 turns it off.
    out.timeout = match a.timeout.take() {
        None => Some(Duration::from_secs(15)),
        Some(t) => duration(Some(t), &format!("{at}.timeout"), r).filter(|d| !d.get().is_zero()),
    };
    if let Some(mut p) = a.retry_policy.take() {
        let rat = format!("{at}.retry_policy");
        let mut on: Vec<String> = Vec::new();
        for cond in std::mem::take(&mut p.retry_on)
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            match cond {
                "retriable-status-codes" => {}
                "connect-failure" | "reset" | "5xx" | "gateway-error" | "retriable-4xx"
                | "unavailable" | "cancelled" | "deadline-exceeded" | "resource-exhausted"
                | "internal" => on.push(cond.to_owned()),
                other => r.refuse(
                    format!("{rat}.retry_on"),
                    format!("{other:?} is not a condition Skiff retries on"),
                ),
            }
        }
        on.extend(
            std::mem::take(&mut p.retriable_status_codes)
                .iter()
                .map(u32::to_string),
        );
        let backoff = p.retry_back_off.take().map(|mut b| {
            let base = duration(
                b.base_interval.take(),
                &format!("{rat}.retry_back_off.base_interval"),
                r,
            )
            .unwrap_or(Duration::from_millis(25));
            let max = duration(
                b.max_interval.take(),
                &format!("{rat}.retry_back_off.max_interval"),
                r,
            )
            .unwrap_or(Duration(base.get() * 10));
            model::Backoff { base, max }
        });
        out.retry = Some(model::Retry {
            // Envoy's default is one retry.
            attempts: p.num_retries.take().map_or(1, |n| n.value),
            on,
            per_try_timeout: duration(
                p.per_try_timeout.take(),
                &format!("{rat}.per_try_timeout"),
                r,
            ),
            backoff,
        });
        r.rest(&rat, &p);
    }
    for (i, mut h) in std::mem::take(&mut a.hash_policy).into_iter().enumerate() {
        use xr::route_action::hash_policy::PolicySpecifier;
        match h.policy_specifier.take() {
            Some(PolicySpecifier::Header(hd)) if hd.regex_rewrite.is_none() => {
                let targets: Vec<String> = match (&out.cluster, &out.split) {
                    (_, Some(s)) => s.iter().map(|w| w.cluster.clone()).collect(),
                    (Some(c), None) => vec![c.clone()],
                    _ => Vec::new(),
                };
                for t in targets {
                    hash_on
                        .entry(t)
                        .or_insert_with(|| hd.header_name.to_ascii_lowercase());
                }
            }
            _ => r.refuse(
                format!("{at}.hash_policy[{i}]"),
                "only a header hash policy is supported",
            ),
        }
        h.terminal = false;
        r.rest(&format!("{at}.hash_policy[{i}]"), &h);
    }
    r.rest(at, &a);
}

fn fraction(p: Option<ty::FractionalPercent>) -> f64 {
    use ty::fractional_percent::DenominatorType as D;
    let Some(p) = p else { return 100.0 };
    let per = match D::try_from(p.denominator) {
        Ok(D::Hundred) => 100.0,
        Ok(D::TenThousand) => 10_000.0,
        _ => 1_000_000.0,
    };
    (f64::from(p.numerator) * 100.0 / per).min(100.0)
}

fn rate_limit(
    mut l: rl::LocalRateLimit,
    at: &str,
    r: &mut Refusals<'_>,
) -> Option<model::RateLimit> {
    let all = |p: Option<core::RuntimeFractionalPercent>| {
        p.and_then(|p| p.default_value).map(|d| fraction(Some(d))) == Some(100.0)
    };
    if !all(l.filter_enabled.take()) || !all(l.filter_enforced.take()) {
        r.refuse(
            at,
            "filter_enabled and filter_enforced must be 100%: Skiff limits every request",
        );
    }
    l.stat_prefix.clear();
    let Some(mut b) = l.token_bucket.take() else {
        r.refuse(format!("{at}.token_bucket"), "a token bucket is required");
        return None;
    };
    let per_fill = b.tokens_per_fill.take().map_or(1, |v| v.value);
    let interval = duration(
        b.fill_interval.take(),
        &format!("{at}.token_bucket.fill_interval"),
        r,
    )?;
    let per_ms = u128::from(per_fill) * 1000;
    let ms = interval.get().as_millis().max(1);
    if per_ms % ms != 0 {
        r.refuse(
            format!("{at}.token_bucket"),
            "the fill rate must be a whole number of requests per second",
        );
        return None;
    }
    let rps = u32::try_from(per_ms / ms).unwrap_or(u32::MAX);
    let burst = b.max_tokens;
    b.max_tokens = 0;
    r.rest(&format!("{at}.token_bucket"), &b);
    r.rest(at, &l);
    Some(model::RateLimit {
        requests_per_second: rps,
        burst: (burst != rps).then_some(burst),
    })
}

fn http_fault(mut f: fault::HttpFault, at: &str, r: &mut Refusals<'_>) -> Option<model::Fault> {
    let delay = f.delay.take().and_then(|mut d| {
        let percent = fraction(d.percentage.take());
        match d.fault_delay_secifier.take() {
            Some(common_fault::fault_delay::FaultDelaySecifier::FixedDelay(t)) => {
                r.rest(&format!("{at}.delay"), &d);
                Some(model::FaultDelay {
                    duration: duration(Some(t), &format!("{at}.delay.fixed_delay"), r)?,
                    percent,
                })
            }
            _ => {
                r.refuse(format!("{at}.delay"), "only a fixed delay is supported");
                None
            }
        }
    });
    let abort = f.abort.take().and_then(|mut a| {
        use fault::fault_abort::ErrorType;
        let percent = fraction(a.percentage.take());
        let (status, grpc_status) = match a.error_type.take() {
            Some(ErrorType::HttpStatus(s)) if (200..600).contains(&s) => (s as u16, None),
            // gRPC callers get the status in trailers on an HTTP 200.
            Some(ErrorType::GrpcStatus(g)) => (200, Some(g)),
            _ => {
                r.refuse(
                    format!("{at}.abort"),
                    "an http_status (200 to 599) or grpc_status is required",
                );
                return None;
            }
        };
        r.rest(&format!("{at}.abort"), &a);
        Some(model::FaultAbort {
            status,
            percent,
            grpc_status,
        })
    });
    r.rest(at, &f);
    (delay.is_some() || abort.is_some()).then_some(model::Fault { delay, abort })
}

fn cluster(mut c: xc::Cluster, res: &Resources, r: &mut Refusals<'_>) -> Option<model::Cluster> {
    use xc::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    let name = std::mem::take(&mut c.name);
    let mut out = model::Cluster {
        endpoints: Vec::new(),
        discovery: None,
        original_destination: None,
        dns: None,
        protocol: model::ClusterProtocol::Auto,
        lb: None,
        hash_on: None,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(3600),
        tls: None,
        circuit_breaker: Some(model::CircuitBreaker {
            max_connections: None,
            max_pending_requests: None,
            max_requests: None,
            max_retries: None,
        }),
        outlier_detection: None,
        health_check: None,
        retry_budget: None,
    };
    let kind = match c.cluster_discovery_type.take() {
        None => DiscoveryType::Static as i32,
        Some(ClusterDiscoveryType::Type(t)) => t,
        Some(_) => {
            r.refuse("cluster_type", "custom cluster types are not supported");
            return None;
        }
    };
    let inline = c.load_assignment.take();
    match DiscoveryType::try_from(kind) {
        Ok(DiscoveryType::Eds) => {
            let mut eds = c.eds_cluster_config.take().unwrap_or_default();
            if eds.eds_config.take().is_none_or(|s| !is_ads(&s)) {
                r.refuse(
                    "eds_cluster_config.eds_config",
                    "endpoints come over ADS only",
                );
            }
            let service = std::mem::take(&mut eds.service_name);
            r.rest("eds_cluster_config", &eds);
            let key = if service.is_empty() {
                name.clone()
            } else {
                service
            };
            if let Some(cla) = res.endpoints.get(&key) {
                out.endpoints = endpoints(cla.clone(), &key, r);
            }
        }
        Ok(DiscoveryType::Static) => match inline {
            Some(cla) => out.endpoints = endpoints(cla, &name, r),
            None => r.refuse("load_assignment", "a STATIC cluster needs its endpoints"),
        },
        Ok(DiscoveryType::StrictDns | DiscoveryType::LogicalDns) => {
            r.refuse(
                "type",
                "DNS clusters are not supported yet (cluster discovery: dns)",
            );
        }
        Ok(DiscoveryType::OriginalDst) => {
            out.discovery = Some(model::Discovery::OriginalDestination);
            // CLUSTER_PROVIDED is the only policy an ORIGINAL_DST cluster
            // may name, and what Skiff does.
            if c.lb_policy == LbPolicy::ClusterProvided as i32 {
                c.lb_policy = LbPolicy::RoundRobin as i32;
            }
        }
        Err(_) => r.refuse("type", format!("unknown cluster type {kind}")),
    }
    if let Some(t) = c.connect_timeout.take() {
        out.connect_timeout =
            duration(Some(t), "connect_timeout", r).unwrap_or(out.connect_timeout);
    }
    // The policy: an explicit load_balancing_policy, else lb_policy, where
    // ROUND_ROBIN (the proto default, so also "none named") is Skiff's
    // peak-EWMA.
    let lb = std::mem::take(&mut c.lb_policy);
    out.lb = match LbPolicy::try_from(lb) {
        Ok(LbPolicy::RoundRobin) => None,
        Ok(LbPolicy::LeastRequest) => Some(model::LbPolicy::LeastRequest),
        Ok(LbPolicy::RingHash) => Some(model::LbPolicy::RingHash),
        _ => {
            r.refuse("lb_policy", format!("policy {lb} is not supported"));
            None
        }
    };
    if let Some(mut p) = c.load_balancing_policy.take() {
        let names: Vec<String> = p
            .policies
            .drain(..)
            .filter_map(|p| p.typed_extension_config)
            .filter_map(|t| t.typed_config)
            .map(|a| a.type_url.rsplit('/').next().unwrap_or_default().to_owned())
            .collect();
        out.lb = match names.first().map(String::as_str) {
            Some("envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin") => {
                Some(model::LbPolicy::RoundRobin)
            }
            Some("envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest") => {
                Some(model::LbPolicy::LeastRequest)
            }
            Some("envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash") => {
                Some(model::LbPolicy::RingHash)
            }
            other => {
                r.refuse(
                    "load_balancing_policy",
                    format!("{other:?} is not a policy Skiff has"),
                );
                out.lb
            }
        };
    }
    if let Some(mut cb) = c.circuit_breakers.take() {
        let mut thresholds = std::mem::take(&mut cb.thresholds);
        r.rest("circuit_breakers", &cb);
        if thresholds.len() > 1 {
            r.refuse(
                "circuit_breakers.thresholds",
                "one threshold (priority DEFAULT) is supported",
            );
        }
        if let Some(mut t) = thresholds.pop() {
            let get = |v: Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
                v.map(|v| v.value).filter(|&v| v != default)
            };
            let limits = [
                t.max_connections.take(),
                t.max_pending_requests.take(),
                t.max_requests.take(),
                t.max_retries.take(),
            ];
            let unlimited = limits
                .iter()
                .all(|v| v.as_ref().is_some_and(|v| v.value == u32::MAX));
            let [a, b, cc, d] = limits;
            out.circuit_breaker = (!unlimited).then(|| model::CircuitBreaker {
                max_connections: get(a, BREAKER_DEFAULTS[0]),
                max_pending_requests: get(b, BREAKER_DEFAULTS[1]),
                max_requests: get(cc, BREAKER_DEFAULTS[2]),
                max_retries: get(d, BREAKER_DEFAULTS[3]),
            });
            if let Some(mut rb) = t.retry_budget.take() {
                out.retry_budget = Some(model::RetryBudget {
                    ratio: rb.budget_percent.take().map_or(20.0, |p| p.value) / 100.0,
                    min_per_second: rb.min_retry_concurrency.take().map(|v| v.value),
                });
                r.rest("circuit_breakers.thresholds[0].retry_budget", &rb);
            }
            r.rest("circuit_breakers.thresholds[0]", &t);
        }
    }
    if let Some(mut o) = c.outlier_detection.take() {
        out.outlier_detection = Some(model::OutlierDetection {
            consecutive_failures: o.consecutive_5xx.take().map(|v| v.value),
            base_ejection_time: duration(
                o.base_ejection_time.take(),
                "outlier_detection.base_ejection_time",
                r,
            ),
            max_ejection_percent: o.max_ejection_percent.take().map(|v| v.value),
        });
        r.rest("outlier_detection", &o);
    }
    let mut checks = std::mem::take(&mut c.health_checks);
    if checks.len() > 1 {
        r.refuse("health_checks", "one health check is supported");
    }
    if let Some(h) = checks.pop() {
        out.health_check = health_check(h, r);
    }
    let mut opts = std::mem::take(&mut c.typed_extension_protocol_options);
    if let Some(a) = opts.remove(names::HTTP_OPTIONS) {
        let at = format!("typed_extension_protocol_options[{}]", names::HTTP_OPTIONS);
        if let Some(p) = any::<up::HttpProtocolOptions>(&a, &at, r) {
            upstream_options(p, &at, r, &mut out);
        }
    }
    for key in opts.keys() {
        r.refuse(
            format!("typed_extension_protocol_options[{key}]"),
            "not supported by Skiff",
        );
    }
    // Envoy's older spelling of "HTTP/2 to this cluster".
    if c.http2_protocol_options.take().is_some() {
        out.protocol = model::ClusterProtocol::Http2;
    }
    if let Some(ts) = c.transport_socket.take() {
        out.tls = upstream_tls(ts, r);
    }
    r.rest("", &c);
    Some(out)
}

/// A cluster's `HttpProtocolOptions`: the protocol spoken upstream, and the
/// pool's idle timeout.
fn upstream_options(
    mut p: up::HttpProtocolOptions,
    at: &str,
    r: &mut Refusals<'_>,
    out: &mut model::Cluster,
) {
    if let Some(mut common) = p.common_http_protocol_options.take() {
        if let Some(t) = common.idle_timeout.take() {
            let at = format!("{at}.common_http_protocol_options.idle_timeout");
            out.idle_timeout = duration(Some(t), &at, r).unwrap_or(out.idle_timeout);
        }
        r.rest(&format!("{at}.common_http_protocol_options"), &common);
    }
    use up::http_protocol_options::UpstreamProtocolOptions as U;
    use up::http_protocol_options::explicit_http_config::ProtocolConfig as P;
    let protocol = match p.upstream_protocol_options.take() {
        Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(P::Http2ProtocolOptions(_)) => model::ClusterProtocol::Http2,
            Some(P::HttpProtocolOptions(_)) => model::ClusterProtocol::Http1,
            _ => {
                r.refuse(
                    format!("{at}.explicit_http_config"),
                    "HTTP/1 or HTTP/2 is supported",
                );
                model::ClusterProtocol::Auto
            }
        },
        Some(U::UseDownstreamProtocolConfig(_)) | None => model::ClusterProtocol::Auto,
        Some(_) => {
            r.refuse(
                format!("{at}.auto_config"),
                "auto_config (ALPN) is not supported: use use_downstream_protocol_config",
            );
            model::ClusterProtocol::Auto
        }
    };
    r.rest(at, &p);
    out.protocol = protocol;
}

fn upstream_tls(ts: core::TransportSocket, r: &mut Refusals<'_>) -> Option<model::ClusterTls> {
    let at = "transport_socket";
    let Some(core::transport_socket::ConfigType::TypedConfig(cfg)) = &ts.config_type else {
        r.refuse(at, "a typed_config is required");
        return None;
    };
    let mut ctx: tls::UpstreamTlsContext = any(cfg, at, r)?;
    let mut common = ctx.common_tls_context.take().unwrap_or_default();
    let identity = match common.validation_context_type.take() {
        Some(tls::common_tls_context::ValidationContextType::ValidationContext(mut v)) => {
            let sans = std::mem::take(&mut v.match_typed_subject_alt_names);
            r.rest(&format!("{at}.validation_context"), &v);
            let uris: Vec<String> = sans
                .into_iter()
                .filter(|s| s.san_type == tls::subject_alt_name_matcher::SanType::Uri as i32)
                .filter_map(|s| match s.matcher?.match_pattern? {
                    matcher::string_matcher::MatchPattern::Exact(e) => Some(e),
                    _ => None,
                })
                .collect();
            match uris.as_slice() {
                [one] if one.starts_with("spiffe://") => Some(one.clone()),
                _ => {
                    r.refuse(
                        format!("{at}.validation_context.match_typed_subject_alt_names"),
                        "exactly one exact URI SAN (a SPIFFE ID) is required",
                    );
                    None
                }
            }
        }
        _ => {
            r.refuse(
                format!("{at}.validation_context"),
                "a validation_context with the server's SPIFFE ID is required",
            );
            None
        }
    };
    if common != tls::CommonTlsContext::default() {
        r.refuse(
            format!("{at}.common_tls_context"),
            "certificates and trust come from the proxy's identity, not from xDS",
        );
    }
    // SNI is harmless: Skiff verifies the SPIFFE ID, not the name.
    ctx.sni.clear();
    r.rest(at, &ctx);
    Some(model::ClusterTls {
        server_identity: identity?,
    })
}

fn health_check(mut h: core::HealthCheck, r: &mut Refusals<'_>) -> Option<model::HealthCheck> {
    use core::health_check::HealthChecker;
    let at = "health_checks[0]";
    let (path, interval, timeout, unhealthy, healthy) = HEALTH_DEFAULTS;
    let ms = Duration::from_millis;
    let path = match h.health_checker.take() {
        Some(HealthChecker::HttpHealthCheck(mut hc)) => {
            let p = std::mem::take(&mut hc.path);
            r.rest(&format!("{at}.http_health_check"), &hc);
            Some(p).filter(|p| p != path)
        }
        Some(HealthChecker::GrpcHealthCheck(g)) => {
            r.rest(&format!("{at}.grpc_health_check"), &g);
            None
        }
        _ => {
            r.refuse(at, "an http_health_check or grpc_health_check is required");
            return None;
        }
    };
    let out = model::HealthCheck {
        path,
        interval: duration(h.interval.take(), &format!("{at}.interval"), r)
            .filter(|d| *d != ms(interval)),
        timeout: duration(h.timeout.take(), &format!("{at}.timeout"), r)
            .filter(|d| *d != ms(timeout)),
        unhealthy_threshold: h
            .unhealthy_threshold
            .take()
            .map(|v| v.value)
            .filter(|&v| v != unhealthy),
        healthy_threshold: h
            .healthy_threshold
            .take()
            .map(|v| v.value)
            .filter(|&v| v != healthy),
    };
    r.rest(at, &h);
    Some(out)
}

fn endpoints(
    mut cla: xe::ClusterLoadAssignment,
    name: &str,
    r: &mut Refusals<'_>,
) -> Vec<model::Endpoint> {
    let mut out = Vec::new();
    let mut er = Refusals::new("ClusterLoadAssignment", name);
    cla.cluster_name.clear();
    for (i, mut loc) in std::mem::take(&mut cla.endpoints).into_iter().enumerate() {
        let at = format!("endpoints[{i}]");
        if loc.priority != 0 {
            er.refuse(
                format!("{at}.priority"),
                "priorities other than 0 are not supported",
            );
        }
        loc.priority = 0;
        // Locality and its weight: Skiff balances endpoints, not localities.
        loc.locality = None;
        loc.load_balancing_weight = None;
        for (j, mut lb) in std::mem::take(&mut loc.lb_endpoints)
            .into_iter()
            .enumerate()
        {
            let at = format!("{at}.lb_endpoints[{j}]");
            let health = std::mem::take(&mut lb.health_status);
            let weight = lb.load_balancing_weight.take().map_or(1, |w| w.value);
            let Some(xe::lb_endpoint::HostIdentifier::Endpoint(mut e)) = lb.host_identifier.take()
            else {
                er.refuse(&at, "an endpoint is required");
                continue;
            };
            let addr = address(e.address.take(), &format!("{at}.endpoint.address"), &mut er);
            e.hostname.clear();
            er.rest(&format!("{at}.endpoint"), &e);
            lb.metadata = None;
            er.rest(&at, &lb);
            // Envoy sends traffic to UNKNOWN and HEALTHY (and DEGRADED)
            // endpoints; the others are left out.
            let usable = matches!(
                core::HealthStatus::try_from(health),
                Ok(core::HealthStatus::Unknown
                    | core::HealthStatus::Healthy
                    | core::HealthStatus::Degraded)
            );
            if let (Some(address), true) = (addr, usable) {
                out.push(model::Endpoint { address, weight });
            }
        }
        er.rest(&at, &loc);
    }
    // Overload policy and endpoint-level policies are about Envoy's load
    // reporting; refused when set, since they change what traffic goes where.
    er.rest("", &cla);
    r.found.extend(er.found);
    out
}
