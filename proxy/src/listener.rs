//! Accept loops: one per listener, stopped by the drain.

use std::sync::Arc;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use skiff_filters::telemetry::Metrics;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::app::Shared;
use crate::server::{self, Handler};
use crate::shutdown::Watch;
use crate::upstream;

/// What a listener does with an accepted connection.
pub enum Serve {
    Http {
        builder: Arc<auto::Builder<TokioExecutor>>,
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
pub async fn run(
    listener: TcpListener,
    name: Arc<str>,
    serve: Serve,
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
                    tokio::task::yield_now().await;
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
        match &serve {
            Serve::Http { builder, handler } => {
                let (builder, handler) = (builder.clone(), handler.clone());
                tokio::spawn(async move {
                    server::serve_connection(stream, builder, handler, watch).await;
                    drop(guard);
                });
            }
            Serve::Tcp { cluster, shared } => {
                let (cluster, shared) = (cluster.clone(), shared.clone());
                tokio::spawn(async move {
                    relay(stream, &cluster, &shared, watch).await;
                    drop(guard);
                });
            }
        }
    }
    debug!(listener = %name, "stopped accepting");
}

/// Relays a TCP connection to the cluster's next endpoint. A raw byte stream
/// has no graceful close, so on drain it keeps going until the drain timeout.
async fn relay(mut stream: TcpStream, name: &str, shared: &Shared, _drain: Watch) {
    let cluster = shared.runtime.load().cluster(name).cloned();
    let Some(cluster) = cluster else {
        warn!(cluster = name, "tcp listener's cluster is gone");
        return;
    };
    match upstream::connect_tcp(&cluster).await {
        Ok((mut up, _)) => {
            if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut up).await {
                debug!(error = %e, "tcp relay ended");
            }
        }
        Err(e) => warn!(error = %e, "tcp relay could not connect"),
    }
}
