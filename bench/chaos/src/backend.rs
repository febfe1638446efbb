//! The upstream endpoints: tiny HTTP/1.1 + h2c servers that can be killed
//! the way a crashed process dies and started again on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The body every endpoint answers with: small, so the proxy's cost dominates.
const BODY: &[u8] = b"hello\n";

/// A running endpoint. One task owns the accept loop *and* every connection
/// it accepted (in a `JoinSet`), so [`Backend::kill`] tears all of them down
/// at once: the listening socket closes (new connects are refused) and the
/// established connections, idle in Skiff's pool or carrying a request, are
/// closed mid-flight. That is what the proxy sees when a process crashes.
pub struct Backend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Backend {
    /// Binds `addr` (port 0 for a free one) and serves until killed.
    /// `served` counts the requests answered; pass the same counter on a
    /// restart so the endpoint's total survives it.
    pub async fn start(addr: SocketAddr, served: Arc<AtomicU64>) -> anyhow::Result<Self> {
        let listener = bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, served));
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the endpoint and returns once its task, and with it every
    /// connection task, has been dropped.
    pub async fn kill(self) {
        self.task.abort();
        // The result is the cancellation we just asked for.
        let _ = self.task.await;
    }
}

/// Binds, retrying briefly: on a restart the old socket may take a moment
/// to be released. Tokio sets `SO_REUSEADDR`, so connections left in
/// TIME_WAIT by the kill do not block the port.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(_) if tries < 50 && addr.port() != 0 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("binding endpoint {addr}")),
        }
    }
}

async fn serve(listener: TcpListener, served: Arc<AtomicU64>) {
    // Dropped with this task on kill: dropping a JoinSet aborts its tasks.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, served.clone()));
                }
                // Out of file descriptors and the like: keep serving the
                // connections already open, try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(stream: TcpStream, served: Arc<AtomicU64>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        served.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY)))) }
    });
    // A connection error here is the proxy closing its side; nothing to do.
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
