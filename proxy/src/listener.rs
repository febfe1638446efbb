//! Listeners: the accept loops, and the set of them a config asks for.
//!
//! A listener's socket lives as long as configs keep its address; what it
//! does with each connection ([`ListenerState`]: protocol, limits, TLS,
//! the tcp relay's cluster) is swapped in place when its config changes,
//! so a listener whose routes or settings change never refuses a
//! connection. Which route table serves it is read from the runtime per
//! request, so connections opened before a change follow the new table.
//!
//! [`Listeners::plan`] binds every new socket and builds every new state
//! before anything running changes: a listener that cannot bind (address in
//! use, permission) rejects the whole config, with the reason, and the
//! running one stays. [`ListenerPlan::commit`] then starts the new accept
//! loops, swaps states, and drains the listeners that went (or moved to
//! another address) in their own [`Scope`]: they stop accepting at once,
//! their connections finish, and whatever is left is cut after the drain
//! timeout, while every other listener keeps serving.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use skiff_control::model::{Listener, ListenerProtocol, TlsMode};
use skiff_filters::telemetry::{ConnectionGuard, Metrics};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::app::{BuildError, Shared};
use crate::overload::{Overload, Ticket};
use crate::panics;
use crate::protocol::{self, Servers};
use crate::server::{self, Handler, ListenerCtx};
use crate::shutdown::{Scope, Watch};
use crate::tls::{Accepted, Identity, Inbound};
use crate::upstream::{self, Io};
use skiff_filters::route::Destination;

/// What a listener does with an accepted connection.
pub enum Serve {
    Http {
        servers: Arc<Servers>,
        handler: Handler,
    },
    /// A plain TCP relay to the named cluster.
    Tcp {
        cluster: String,
        shared: Arc<Shared>,
    },
}

/// Everything a listener's config decides about a new connection, swapped
/// whole when that config changes.
pub struct ListenerState {
    pub name: Arc<str>,
    pub serve: Serve,
    pub tls: Option<Arc<Inbound>>,
    /// `transparent: true`: each connection's destination is read and its
    /// protocol detected (see [`transparent`]).
    pub transparent: Option<Transparent>,
    /// `max_connections`: past it, a new connection is closed as accepted.
    pub max_connections: Option<usize>,
    /// The process's budgets (`overload:`): past them, requests get 503.
    pub overload: Arc<Overload>,
}

/// How a transparent listener treats a connection.
pub struct Transparent {
    /// How long to wait for the client's first bytes before relaying as
    /// TCP (the server speaks first).
    detect_timeout: Duration,
    /// How long the rest of an HTTP start may take (`header_timeout`).
    header_timeout: Duration,
    /// `cluster`: where opaque TCP goes; absent, straight to the original
    /// destination.
    cluster: Option<String>,
    shared: Arc<Shared>,
}

impl ListenerState {
    /// The state `l` asks for. Fails only when `l` wants TLS that cannot be
    /// set up (no identity, a bad one).
    pub fn build(
        l: &Listener,
        key: &Arc<str>,
        shared: &Arc<Shared>,
        identity: Option<&Arc<Identity>>,
    ) -> Result<Self, BuildError> {
        let name: Arc<str> = Arc::from(l.name.as_str());
        let transparent = l.transparent.then(|| Transparent {
            detect_timeout: l.detect_timeout.get(),
            header_timeout: l.header_timeout.get(),
            cluster: l.cluster.clone(),
            shared: shared.clone(),
        });
        let serve = match l.protocol {
            ListenerProtocol::Tcp => Serve::Tcp {
                cluster: l.cluster.clone().unwrap_or_default(),
                shared: shared.clone(),
            },
            p => Serve::Http {
                servers: Arc::new(protocol::servers(
                    p,
                    l,
                    panics::Executor(Arc::new(panics::Context {
                        listener: name.clone(),
                        metrics: shared.metrics.clone(),
                    })),
                )),
                handler: Handler {
                    shared: shared.clone(),
                    listener: Arc::new(ListenerCtx {
                        name: name.clone(),
                        key: key.clone(),
                        direction: l.direction,
                        header_timeout: l.header_timeout.get(),
                        limits: protocol::HeadLimits::of(l),
                        idle_timeout: l.idle_timeout.get(),
                        stream_idle_timeout: l.stream_idle_timeout.get(),
                    }),
                    peer: None,
                    xfcc: None,
                    dst: None,
                    hold: None,
                    go_away: None,
                },
            },
        };
        let tls = inbound_tls(l, &name, identity, &shared.metrics)?;
        Ok(Self {
            name,
            serve,
            tls,
            transparent,
            max_connections: l.max_connections.map(|n| n as usize),
            overload: shared.overload.clone(),
        })
    }
}

/// The listener's TLS termination, when `tls.mode` is strict or permissive.
fn inbound_tls(
    l: &Listener,
    name: &Arc<str>,
    identity: Option<&Arc<Identity>>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<Inbound>>, BuildError> {
    let mode = l.tls.as_ref().map_or(TlsMode::Disabled, |t| t.mode);
    if mode == TlsMode::Disabled {
        return Ok(None);
    }
    let Some(identity) = identity else {
        return Err(BuildError::NoIdentity {
            listener: l.name.clone(),
            mode,
        });
    };
    let inbound = Inbound::new(
        identity,
        mode,
        protocol::alpn(l.protocol),
        name.clone(),
        metrics.clone(),
        l.header_timeout.get(),
    )
    .map_err(|source| BuildError::Tls {
        listener: l.name.clone(),
        source,
    })?;
    Ok(Some(Arc::new(inbound)))
}

/// Binds `addr` now, with `SO_REUSEADDR` (as tokio's own bind does, so a
/// port with connections in TIME_WAIT can be bound again at once).
pub fn bind(what: &str, addr: &str) -> Result<TcpListener, BuildError> {
    let fail = |source| BuildError::Bind {
        what: what.to_owned(),
        addr: addr.to_owned(),
        source,
    };
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|e| fail(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(parsed),
        socket2::Type::STREAM,
        None,
    )
    .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&parsed.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

/// One running listener.
struct Running {
    /// Unique for the process and kept for the socket's whole life, renames
    /// included: the runtime finds the socket's route table by it.
    key: Arc<str>,
    config: Listener,
    addr: SocketAddr,
    state: Arc<ArcSwap<ListenerState>>,
    scope: Scope,
}

/// The running listeners.
#[derive(Default)]
pub struct Listeners {
    running: Mutex<Vec<Running>>,
    /// Keys of removed listeners whose connections are still draining.
    draining: Arc<Mutex<Vec<Arc<str>>>>,
}

/// A key no socket has had.
fn fresh_key(name: &str) -> Arc<str> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Arc::from(format!("{name}#{n}"))
}

/// A config's listeners, bound and built beside the running ones.
pub struct ListenerPlan {
    /// Listeners kept (by position in `running`) with their new state and config.
    swaps: Vec<(usize, Listener, ListenerState)>,
    /// New sockets, with their key, config and state.
    added: Vec<(Arc<str>, Listener, TcpListener, SocketAddr, ListenerState)>,
    /// Running listeners to drain (by position in `running`).
    gone: Vec<usize>,
}

/// Which socket serves each wanted listener; see [`Listeners::bind_keys`].
pub struct Binding {
    /// Each wanted listener's socket key, with the listener's name.
    pub bound: Vec<(Arc<str>, String)>,
    /// Keys of sockets whose connections drain: removed before and still
    /// draining, or removed now.
    pub draining: Vec<Arc<str>>,
    /// For each wanted listener, the running one it keeps, by position.
    matched: Vec<Option<usize>>,
    /// Running listeners that go, by position.
    gone: Vec<usize>,
}

impl Listeners {
    /// Which socket each listener of `wanted` will have: a running one (the
    /// same name and address, or failing that the same address: a rename)
    /// or a new one, each with its key; and the keys of sockets whose
    /// connections will be draining. Made before the runtime is compiled, so
    /// its tables can be bound to the sockets. Nothing runs differently
    /// until [`Listeners::plan`] and its commit; applies are serialized, so
    /// the running set does not change in between.
    pub fn bind_keys(&self, wanted: &[Listener]) -> Binding {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = vec![false; running.len()];
        // Addresses compare as socket addresses: `[::1]:80` and
        // `[0:0:0:0:0:0:0:1]:80` are one socket. Port 0 means "any free
        // port": never the same address as another.
        let same_address =
            |a: &str, b: &str| match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            };
        let mut keep = |l: &Listener, same_name: bool| {
            let i = running.iter().enumerate().position(|(i, r)| {
                // The configured address, or the one bound (a port 0
                // listener given its port explicitly keeps its socket).
                let here = same_address(&r.config.address, &l.address)
                    || l.address.parse::<SocketAddr>().is_ok_and(|a| a == r.addr);
                !kept[i] && here && (!same_name || r.config.name == l.name)
            })?;
            kept[i] = true;
            Some(i)
        };
        let mut matched: Vec<Option<usize>> = wanted.iter().map(|l| keep(l, true)).collect();
        for (l, m) in wanted.iter().zip(matched.iter_mut()) {
            if m.is_none() && !l.address.ends_with(":0") {
                *m = keep(l, false);
            }
        }
        let bound = wanted
            .iter()
            .zip(&matched)
            .map(|(l, m)| {
                let key = match m {
                    Some(i) => running[*i].key.clone(),
                    None => fresh_key(&l.name),
                };
                (key, l.name.clone())
            })
            .collect();
        let gone: Vec<usize> = (0..running.len()).filter(|i| !kept[*i]).collect();
        let mut draining = self
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        draining.extend(gone.iter().map(|&i| running[i].key.clone()));
        Binding {
            bound,
            draining,
            matched,
            gone,
        }
    }

    /// Binds what `wanted` adds and builds every state, as `binding` says,
    /// changing nothing that runs.
    pub fn plan(
        &self,
        wanted: &[Listener],
        binding: &Binding,
        shared: &Arc<Shared>,
        identity: Option<&Arc<Identity>>,
    ) -> Result<ListenerPlan, BuildError> {
        let mut plan = ListenerPlan {
            swaps: Vec::new(),
            added: Vec::new(),
            gone: binding.gone.clone(),
        };
        for ((l, m), (key, _)) in wanted.iter().zip(&binding.matched).zip(&binding.bound) {
            let state = ListenerState::build(l, key, shared, identity)?;
            match m {
                Some(i) => plan.swaps.push((*i, l.clone(), state)),
                None => {
                    let socket = bind(&format!("listener {}", l.name), &l.address)?;
                    let addr = socket.local_addr().map_err(|source| BuildError::Bind {
                        what: "local address".to_owned(),
                        addr: l.address.clone(),
                        source,
                    })?;
                    plan.added
                        .push((key.clone(), l.clone(), socket, addr, state));
                }
            }
        }
        Ok(plan)
    }

    /// Makes `plan` the running listeners. `base` is a watch on the
    /// process's drain; `drain_timeout` bounds how long a removed
    /// listener's connections may take.
    pub fn commit(
        &self,
        plan: ListenerPlan,
        metrics: &Arc<Metrics>,
        base: &Watch,
        drain_timeout: Duration,
    ) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for (i, config, state) in plan.swaps {
            let r = &mut running[i];
            if r.config != config {
                info!(listener = %config.name, addr = %r.addr, "listener changed in place");
            }
            r.state.store(Arc::new(state));
            r.config = config;
        }
        let mut gone: Vec<usize> = plan.gone;
        gone.sort_unstable_by(|a, b| b.cmp(a));
        for i in gone {
            let r = running.remove(i);
            info!(listener = %r.config.name, addr = %r.addr, "listener removed: draining its connections");
            r.scope.drain();
            let draining = self.draining.clone();
            draining
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r.key.clone());
            tokio::spawn(async move {
                tokio::time::sleep(drain_timeout).await;
                r.scope.terminate();
                // Its connections are cut: no runtime need keep its table.
                let mut keys = draining.lock().unwrap_or_else(|p| p.into_inner());
                keys.retain(|k| !Arc::ptr_eq(k, &r.key));
            });
        }
        for (key, config, socket, addr, state) in plan.added {
            info!(listener = %config.name, %addr, protocol = %config.protocol, tls = %config.tls.as_ref().map(|t| t.mode).unwrap_or_default(), "listening");
            let scope = Scope::new();
            let state = Arc::new(ArcSwap::from_pointee(state));
            tokio::spawn(run(
                socket,
                state.clone(),
                metrics.clone(),
                scope.watch(base),
            ));
            running.push(Running {
                key,
                config,
                addr,
                state,
                scope,
            });
        }
    }

    /// Forgets every listener (their accept loops have already stopped with
    /// the drain): what keeps `Shared` alive through their handlers.
    pub fn clear(&self) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Starts draining the running listeners of `direction` (they stop
    /// accepting; their connections are asked to finish) while the others
    /// keep serving; their names.
    pub fn drain_direction(&self, direction: skiff_control::model::Direction) -> Vec<String> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .iter()
            .filter(|r| r.config.direction == direction)
            .map(|r| {
                r.scope.drain();
                r.config.name.clone()
            })
            .collect()
    }

    /// The names of the running listeners of `direction`.
    pub fn names(&self, direction: skiff_control::model::Direction) -> Vec<String> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .iter()
            .filter(|r| r.config.direction == direction)
            .map(|r| r.config.name.clone())
            .collect()
    }

    /// Where the listener called `name` is bound.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .iter()
            .find(|r| r.config.name == name)
            .map(|r| r.addr)
    }
}

/// Accepts until the drain (the process's or this listener's) starts;
/// dropping the socket then makes new connects fail fast, so clients and
/// load balancers move elsewhere. Each connection is served with the
/// listener's state as it is when the connection arrives.
///
/// With `tls`, each connection's handshake (or permissive sniff) runs in its
/// own task, so a slow or hostile client never holds up the accept loop.
///
/// The loop keeps every connection's task (`connections`), and after it
/// stops accepting, waits for them: what is still open when the drain
/// timeout passes is aborted here, all at once. Connections themselves
/// then race nothing against the drain timeout per request.
pub async fn run(
    listener: TcpListener,
    state: Arc<ArcSwap<ListenerState>>,
    metrics: Arc<Metrics>,
    mut drain: Watch,
) {
    // Connections open on this socket, whatever the listener is called now.
    let open = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            // Ended tasks are reaped as they end: a task's memory is only
            // given back once it is joined.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: keep serving what we have.
                    warn!(listener = %state.load().name, error = %e, "accept failed");
                    // Out of file descriptors and the like: retrying at once
                    // would spin a core until it clears.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.draining() => break,
        };
        let current = state.load_full();
        debug!(listener = %current.name, %peer, "accepted");
        let guard = metrics.connection_opened(&current.name);
        let socket = SocketSlot::take(&open);
        // Past the listener's own limit: closed as accepted (Envoy's
        // per-listener limit does the same); the client may try another.
        if let Some(max) = current.max_connections
            && socket.open > max
        {
            metrics.refused(&current.name, "max-connections");
            debug!(listener = %current.name, %peer, max, "listener at max_connections: closed");
            continue;
        }
        let hold = Arc::new(Hold {
            ticket: current.overload.connection(),
            _socket: socket,
            _guard: guard,
        });
        // Small writes (headers, gRPC frames) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let watch = drain.clone();
        let cx = panics::Context {
            listener: current.name.clone(),
            metrics: metrics.clone(),
        };
        if current.transparent.is_some() {
            let task = transparent(stream, current, watch, hold.clone());
            spawn_contained(&mut connections, cx, peer, hold, task);
            continue;
        }
        match (&current.serve, current.tls.clone()) {
            (Serve::Http { servers, handler }, None) => {
                let (servers, mut handler) = (servers.clone(), handler.clone());
                handler.hold(&hold);
                let task = server::serve_connection(stream, servers, handler, watch);
                spawn_contained(&mut connections, cx, peer, hold, task);
            }
            (Serve::Http { servers, handler }, Some(tls)) => {
                let (servers, mut handler) = (servers.clone(), handler.clone());
                handler.hold(&hold);
                spawn_contained(&mut connections, cx, peer, hold, async move {
                    if let Some(Accepted { io, peer }) = tls.accept(stream).await {
                        handler.set_peer(peer);
                        server::serve_connection(io, servers, handler, watch).await;
                    }
                });
            }
            // A byte relay has no way to say "overloaded": closed.
            (Serve::Tcp { .. }, _) if hold.shed() => {
                metrics.refused(&current.name, "overloaded");
                debug!(listener = %current.name, %peer, "overloaded: TCP connection closed");
            }
            (Serve::Tcp { cluster, shared }, tls) => {
                let (cluster, shared) = (cluster.clone(), shared.clone());
                spawn_contained(&mut connections, cx, peer, hold, async move {
                    match tls {
                        None => relay(stream, &cluster, &shared, watch).await,
                        Some(tls) => {
                            if let Some(accepted) = tls.accept(stream).await {
                                relay(accepted.io, &cluster, &shared, watch).await;
                            }
                        }
                    }
                });
            }
        }
    }
    // Closed now, so that new connects fail fast while the open ones finish.
    drop(listener);
    debug!(listener = %state.load().name, "stopped accepting");
    while !connections.is_empty() {
        tokio::select! {
            _ = connections.join_next() => {}
            () = drain.terminated() => {
                debug!(
                    listener = %state.load().name,
                    open = connections.len(),
                    "drain timeout: connections cut"
                );
                connections.shutdown().await;
            }
        }
    }
}

/// One accepted connection's place in what is counted and limited: the
/// overload budget, its socket's `max_connections`, and
/// `skiff_connections_active`. Given back, in that order, when the last
/// holder lets go: the connection's task, or a tunnel (a WebSocket, say)
/// that outlives the HTTP exchange that opened it.
#[derive(Debug)]
pub struct Hold {
    ticket: Ticket,
    /// Held for what its drop gives back, as is `_guard`.
    _socket: SocketSlot,
    _guard: ConnectionGuard,
}

impl Hold {
    /// The connection came past `overload.max_connections`.
    pub fn shed(&self) -> bool {
        self.ticket.shed()
    }
}

/// A connection's place in its socket's count of open connections.
#[derive(Debug)]
struct SocketSlot {
    count: Arc<AtomicUsize>,
    /// Connections open on the socket when this one came, itself included.
    open: usize,
}

impl SocketSlot {
    fn take(count: &Arc<AtomicUsize>) -> Self {
        let open = count.fetch_add(1, Ordering::Relaxed) + 1;
        Self {
            count: count.clone(),
            open,
        }
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one connection's task, [`panics::contained`], in the listener's
/// set; `hold` is given back when the task ends, panicked, aborted or not
/// (unless a tunnel still holds it).
fn spawn_contained(
    connections: &mut JoinSet<()>,
    cx: panics::Context,
    peer: SocketAddr,
    hold: Arc<Hold>,
    task: impl Future<Output = ()> + Send + 'static,
) {
    connections.spawn(panics::contained(cx, Some(peer), hold, task));
}

/// Relays a TCP connection to the cluster's next endpoint. A raw byte stream
/// has no graceful close, so on drain it keeps going until the drain timeout.
async fn relay<I: Io>(stream: I, name: &str, shared: &Shared, drain: Watch) {
    relay_to(stream, Some(name), None, shared, drain).await;
}

/// Relays to cluster `name` (a passthrough cluster sends to `dst`), or with
/// no cluster straight to `dst`.
async fn relay_to<I: Io>(
    mut stream: I,
    name: Option<&str>,
    dst: Option<SocketAddr>,
    shared: &Shared,
    mut drain: Watch,
) {
    let up = match name {
        Some(name) => {
            let cluster = shared.runtime.load().cluster(name).cloned();
            let Some(cluster) = cluster else {
                warn!(cluster = name, "tcp relay's cluster is gone");
                return;
            };
            let dst = dst.map(Destination);
            upstream::connect_tcp(&cluster, dst.as_ref())
                .await
                .map(|(up, _)| up)
                .map_err(|e| e.to_string())
        }
        None => match dst {
            Some(dst) => {
                match tokio::time::timeout(PASSTHROUGH_CONNECT, tokio::net::TcpStream::connect(dst))
                    .await
                {
                    Ok(Ok(up)) => Ok(up),
                    Ok(Err(e)) => Err(format!("connecting to {dst}: {e}")),
                    Err(_) => Err(format!("connecting to {dst}: timed out")),
                }
            }
            None => Err("not redirected: no original destination to relay to".to_owned()),
        },
    };
    match up {
        Ok(mut up) => {
            let _ = up.set_nodelay(true);
            tokio::select! {
                res = tokio::io::copy_bidirectional(&mut stream, &mut up) => {
                    if let Err(e) = res {
                        debug!(error = %e, "tcp relay ended");
                    }
                }
                _ = drain.terminated() => debug!("drain timeout: tcp relay closed"),
            }
        }
        Err(e) => warn!(error = %e, "tcp relay could not connect"),
    }
}

/// How long a transparent listener's relay waits to connect to an original
/// destination without a cluster (a cluster says its own `connect_timeout`).
const PASSTHROUGH_CONNECT: Duration = Duration::from_secs(5);

/// Where a redirected connection was going (SO_ORIGINAL_DST, IPv4 or IPv6);
/// `None` for a connection made to the listener itself, whose original
/// destination is its own address (or that has none: no conntrack entry).
pub fn original_destination(stream: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = socket2::SockRef::from(stream);
    // An IPv4 client of a listener on [::] arrives as an IPv4-mapped
    // address, and was redirected by iptables, not ip6tables.
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let dst = match v4 {
        true => sock.original_dst_v4(),
        false => sock.original_dst_v6(),
    }
    .ok()?
    .as_socket()?;
    let same = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
    };
    (!same(dst, local)).then_some(dst)
}

/// One connection of a transparent listener. Its protocol is detected, not
/// configured: a client silent for `detect_timeout` (the server speaks
/// first) or one that opens with neither TLS nor HTTP is relayed as TCP to
/// where it was going; TLS is terminated when the listener has `tls`, and
/// relayed untouched when it does not (the app's own TLS to the outside);
/// HTTP/1 and HTTP/2 are served by the listener's routes, with the original
/// destination on each request (`match.port`, passthrough clusters).
async fn transparent(
    stream: tokio::net::TcpStream,
    state: Arc<ListenerState>,
    watch: Watch,
    hold: Arc<Hold>,
) {
    let Some(t) = &state.transparent else {
        return;
    };
    let dst = original_destination(&stream);
    // What is relayed as bytes cannot be told "overloaded": closed instead.
    let shed = hold.shed();
    let refuse = || {
        t.shared.metrics.refused(&state.name, "overloaded");
        debug!(listener = %state.name, "overloaded: relayed connection closed");
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(t.detect_timeout, stream.peek(&mut first)).await {
        Ok(Ok(0) | Err(_)) => return, // Closed before a byte.
        Err(_) if shed => return refuse(),
        Err(_) => return relay_to(stream, t.cluster.as_deref(), dst, &t.shared, watch).await,
        Ok(Ok(_)) => {}
    }
    let Serve::Http { servers, handler } = &state.serve else {
        if shed {
            return refuse();
        }
        return relay_to(stream, t.cluster.as_deref(), dst, &t.shared, watch).await;
    };
    let mut handler = handler.clone();
    handler.hold(&hold);
    // Only a redirected connection has a destination: one made to the
    // listener itself has none (falling back to the listener's own address
    // would send a passthrough cluster back here, in a loop).
    handler.dst = dst;
    let strict = state
        .tls
        .as_ref()
        .is_some_and(|t| t.mode() == skiff_control::model::TlsMode::Strict);
    if first[0] != protocol::TLS_HANDSHAKE_RECORD && strict {
        debug!("plaintext on a strict mTLS listener: closed");
        return;
    }
    if first[0] == protocol::TLS_HANDSHAKE_RECORD {
        match &state.tls {
            Some(tls) => {
                if let Some(Accepted { io, peer }) = tls.accept(stream).await {
                    handler.set_peer(peer);
                    server::serve_connection(io, servers.clone(), handler, watch).await;
                }
            }
            None if shed => refuse(),
            None => relay_to(stream, t.cluster.as_deref(), dst, &t.shared, watch).await,
        }
        return;
    }
    match protocol::sniff(stream, t.header_timeout).await {
        Ok((protocol::Spoken::Garbage, _)) if shed => refuse(),
        Ok((protocol::Spoken::Garbage, io)) => {
            relay_to(io, t.cluster.as_deref(), dst, &t.shared, watch).await
        }
        // The bytes read stay in front: the server reads them again.
        Ok((_, io)) => server::serve_connection(io, servers.clone(), handler, watch).await,
        Err(e) => debug!(error = %e, "closed before its protocol showed"),
    }
}
