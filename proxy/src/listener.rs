//! Accept loops: one per listener, stopped by the drain.

use std::sync::Arc;

use skiff_filters::telemetry::Metrics;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::app::Shared;
use crate::protocol::Servers;
use crate::server::{self, Handler};
use crate::shutdown::Watch;
use crate::tls::{Accepted, Inbound};
use crate::upstream::{self, Io};

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

/// Accepts until the drain starts; dropping the socket then makes new
/// connects fail fast, so clients and load balancers move elsewhere.
///
/// With `tls`, each connection's handshake (or permissive sniff) runs in its
/// own task, so a slow or hostile client never holds up the accept loop.
pub async fn run(
    listener: TcpListener,
    name: Arc<str>,
    serve: Serve,
    tls: Option<Arc<Inbound>>,
    metrics: Arc<Metrics>,
    mut drain: Watch,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: keep serving what we have.
                    warn!(listener = %name, error = %e, "accept failed");
                    // Out of file descriptors and the like: retrying at once
                    // would spin a core until it clears.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.draining() => break,
        };
        debug!(listener = %name, %peer, "accepted");
        // Small writes (headers, gRPC frames) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let guard = metrics.connection_opened(&name);
        let watch = drain.clone();
        match (&serve, tls.clone()) {
            (Serve::Http { servers, handler }, None) => {
                let (servers, handler) = (servers.clone(), handler.clone());
                tokio::spawn(async move {
                    server::serve_connection(stream, servers, handler, watch).await;
                    drop(guard);
                });
            }
            (Serve::Http { servers, handler }, Some(tls)) => {
                let (servers, mut handler) = (servers.clone(), handler.clone());
                tokio::spawn(async move {
                    if let Some(Accepted { io, peer }) = tls.accept(stream).await {
                        handler.peer = peer;
                        server::serve_connection(io, servers, handler, watch).await;
                    }
                    drop(guard);
                });
            }
            (Serve::Tcp { cluster, shared }, tls) => {
                let (cluster, shared) = (cluster.clone(), shared.clone());
                tokio::spawn(async move {
                    match tls {
                        None => relay(stream, &cluster, &shared, watch).await,
                        Some(tls) => {
                            if let Some(accepted) = tls.accept(stream).await {
                                relay(accepted.io, &cluster, &shared, watch).await;
                            }
                        }
                    }
                    drop(guard);
                });
            }
        }
    }
    debug!(listener = %name, "stopped accepting");
}

/// Relays a TCP connection to the cluster's next endpoint. A raw byte stream
/// has no graceful close, so on drain it keeps going until the drain timeout.
async fn relay<I: Io>(mut stream: I, name: &str, shared: &Shared, mut drain: Watch) {
    let cluster = shared.runtime.load().cluster(name).cloned();
    let Some(cluster) = cluster else {
        warn!(cluster = name, "tcp listener's cluster is gone");
        return;
    };
    match upstream::connect_tcp(&cluster).await {
        Ok((mut up, _)) => tokio::select! {
            res = tokio::io::copy_bidirectional(&mut stream, &mut up) => {
                if let Err(e) = res {
                    debug!(error = %e, "tcp relay ended");
                }
            }
            _ = drain.terminated() => debug!("drain timeout: tcp relay closed"),
        },
        Err(e) => warn!(error = %e, "tcp relay could not connect"),
    }
}
