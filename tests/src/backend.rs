//! Fake upstreams: HTTP backends built fluently, and raw TCP servers.
//!
//! ```text
//! let backend = Backend::http1()
//!     .route("/hello", |_req| async { handlers::text(200, "hi") })
//!     .fallback(handlers::inspect)
//!     .spawn()
//!     .await;
//! // ... point the proxy at backend.addr() ...
//! assert_eq!(backend.connections(), 1);
//! backend.join().await; // re-raises a handler's panic in the test
//! ```
//!
//! A handler that panics (an assertion about the request it got, say) must
//! fail the test, not just reset one connection that the proxy then reports
//! as a 502. So panics are caught, answered with a 500, and kept; `join()`
//! raises the first one again in the test's task.
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::body::{BoxBody, BoxError, boxed};
use crate::handlers;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<BoxBody>> + Send + Sync>;
type PanicSlot = Arc<Mutex<Option<Box<dyn Any + Send>>>>;

/// Which HTTP versions a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 only (with upgrades).
    Http1,
    /// HTTP/2 with prior knowledge (h2c) only.
    Http2,
    /// Either, sniffed per connection (as tonic and most servers do).
    Auto,
}

/// A fake HTTP upstream being configured; [`Backend::spawn`] starts it.
pub struct Backend {
    protocol: Protocol,
    routes: HashMap<String, Handler>,
    fallback: Handler,
}

// === impl Backend ===

impl Backend {
    /// A backend that speaks only HTTP/1.1.
    pub fn http1() -> Self {
        Self::new(Protocol::Http1)
    }

    /// A backend that speaks only h2c (HTTP/2 prior knowledge).
    pub fn http2() -> Self {
        Self::new(Protocol::Http2)
    }

    /// A backend that speaks both, sniffing each connection.
    pub fn auto() -> Self {
        Self::new(Protocol::Auto)
    }

    /// A backend (both protocols) answering every request no route matched
    /// with [`handlers::named`]: body `name`, header `x-backend: name`.
    pub fn named(name: &'static str) -> Self {
        Self::auto().fallback(handlers::named(name))
    }

    /// A backend of `protocol`. Requests with no matching route get
    /// [`handlers::inspect`]'s description, so a test can see what arrived.
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            routes: HashMap::new(),
            fallback: into_handler(handlers::inspect),
        }
    }

    /// Answers requests whose path is exactly `path` with `handler`.
    pub fn route<F, Fut, B>(mut self, path: &str, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.routes.insert(path.to_owned(), into_handler(handler));
        self
    }

    /// Answers every request no route matched with `handler`.
    pub fn fallback<F, Fut, B>(mut self, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.fallback = into_handler(handler);
        self
    }

    /// Binds `127.0.0.1:0` and serves until the returned handle is joined or dropped.
    pub async fn spawn(self) -> Listening {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Counters::default();
        let panics = PanicSlot::default();
        let service = Service {
            routes: Arc::new(self.routes),
            fallback: self.fallback,
            requests: counters.requests.clone(),
            panics: panics.clone(),
        };
        let protocol = self.protocol;
        let (shutdown, task) = accept_loop(listener, counters.clone(), move |stream| {
            serve_http(stream, protocol, service.clone())
        });
        Listening {
            addr,
            counters,
            panics,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }
}

fn into_handler<F, Fut, B>(handler: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Arc::new(move |req| {
        let response = handler(req);
        Box::pin(async move { response.await.map(boxed) })
    })
}

/// Routes one request to its handler, catching a panic so it can be re-raised by `join()`.
#[derive(Clone)]
struct Service {
    routes: Arc<HashMap<String, Handler>>,
    fallback: Handler,
    requests: Arc<AtomicUsize>,
    panics: PanicSlot,
}

impl Service {
    async fn call(self, req: Request<Incoming>) -> Result<Response<BoxBody>, BoxError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let handler = self
            .routes
            .get(req.uri().path())
            .unwrap_or(&self.fallback)
            .clone();
        // Calling the handler may itself panic (before any future exists).
        let outcome = AssertUnwindSafe(async move { handler(req).await })
            .catch_unwind()
            .await;
        match outcome {
            Ok(response) => Ok(response),
            Err(panic) => {
                let mut slot = self.panics.lock().unwrap();
                if slot.is_none() {
                    *slot = Some(panic);
                }
                Ok(handlers::text(500, "backend handler panicked"))
            }
        }
    }
}

async fn serve_http(stream: TcpStream, protocol: Protocol, service: Service) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let svc = hyper::service::service_fn(move |req| service.clone().call(req));
    // Connection errors are the client's doing (often the proxy resetting on
    // purpose); what tests check is what each side saw, not this result.
    let _ = match protocol {
        Protocol::Http1 => hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
            .map_err(BoxError::from),
        Protocol::Http2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
            .map_err(BoxError::from),
        Protocol::Auto => {
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(io, svc)
                .await
        }
    };
}

/// How many connections and requests a server has seen.
#[derive(Clone, Default)]
struct Counters {
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// Accepts connections until told to stop, running `serve` on each; a
/// connection task's panic is re-raised by the accept loop, hence by `join()`.
fn accept_loop<F, Fut>(
    listener: TcpListener,
    counters: Counters,
    serve: F,
) -> (oneshot::Sender<()>, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (shutdown_tx, mut shutdown) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, _) = accepted.unwrap();
                    counters.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve(stream));
                }
                Some(done) = connections.join_next() => reraise(done),
            }
        }
        while let Some(done) = connections.try_join_next() {
            reraise(done);
        }
        // Dropping the set aborts connections still open.
    });
    (shutdown_tx, task)
}

fn reraise(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A running fake upstream. Dropping it stops the server; `join()` stops it
/// and re-raises any panic from its handlers.
pub struct Listening {
    addr: SocketAddr,
    counters: Counters,
    panics: PanicSlot,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

// === impl Listening ===

impl Listening {
    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// HTTP requests received so far (raw TCP servers: always 0).
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Stops the server and re-raises the first panic of any of its handlers
    /// or connection tasks.
    pub async fn join(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        let panic = self.panics.lock().unwrap().take();
        if let Some(panic) = panic {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A raw TCP server: `handler` gets each accepted stream. For upstreams that
/// misbehave below HTTP (accept then close or reset) and for `tcp` listeners.
pub struct TcpServer;

// === impl TcpServer ===

impl TcpServer {
    /// Binds `127.0.0.1:0` and runs `handler` on every accepted connection.
    pub async fn spawn<F, Fut>(handler: F) -> Listening
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Counters::default();
        let (shutdown, task) = accept_loop(listener, counters.clone(), handler);
        Listening {
            addr,
            counters,
            panics: PanicSlot::default(),
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Echoes every byte back until the client half-closes, then closes.
    pub async fn echo() -> Listening {
        Self::spawn(|mut stream| async move {
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        })
        .await
    }

    /// Reads the start of a request, then closes without answering.
    pub async fn close_after_read() -> Listening {
        Self::spawn(|mut stream| async move {
            read_some(&mut stream).await;
            drop(stream);
        })
        .await
    }

    /// Reads the start of a request, then resets the connection (RST, via
    /// SO_LINGER 0) without answering.
    pub async fn reset_after_read() -> Listening {
        Self::spawn(|mut stream| async move {
            read_some(&mut stream).await;
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            drop(stream);
        })
        .await
    }
}

/// Waits until the peer sent something (or closed), so a misbehaving server
/// fails the request itself rather than the connection attempt.
async fn read_some(stream: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await;
}

/// An address where nothing listens: bound, read back, then released.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A listening address whose accept queue is full, so a new connection
/// attempt's SYN is dropped and the connect hangs until the caller's own
/// timeout: the way to exercise a connect timeout on loopback. Keep the
/// returned guard alive for as long as the address must stay black-holed.
pub async fn blackhole() -> (SocketAddr, impl Send) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    // Backlog 0: Linux then queues at most one unaccepted connection.
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue: connect until an attempt no longer completes promptly.
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(
            std::time::Duration::from_millis(300),
            TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue of {addr}: {e}"),
            Err(_) => return (addr, (socket, fillers)),
        }
    }
    panic!("the accept queue of {addr} never filled up");
}

/// The demo gRPC greeter (`skiff_examples`) serving on `127.0.0.1:0`;
/// stopped when dropped.
pub struct Greeter {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

// === impl Greeter ===

impl Greeter {
    /// Starts a greeter that names itself `instance` in its replies.
    pub async fn spawn(instance: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let greeter = skiff_examples::greeter::Greeter::new(instance);
        let task = tokio::spawn(async move {
            if let Err(e) = skiff_examples::greeter::serve(listener, greeter).await {
                panic!("greeter failed: {e}");
            }
        });
        Self { addr, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connect-timeout tests rely on this: a connect to a black hole
    /// neither succeeds nor fails on its own.
    #[tokio::test]
    async fn blackhole_connects_hang() {
        let (addr, _guard) = blackhole().await;
        let attempt = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            TcpStream::connect(addr),
        )
        .await;
        assert!(attempt.is_err(), "connect returned: {attempt:?}");
    }

    #[tokio::test]
    #[should_panic(expected = "handler assertion")]
    async fn join_reraises_a_handler_panic() {
        let backend = Backend::http1()
            .route("/boom", |_req| async {
                panic!("handler assertion");
                #[allow(unreachable_code)]
                handlers::text(200, "")
            })
            .spawn()
            .await;
        let mut client = crate::Client::http1(backend.addr()).await;
        assert_eq!(client.get("/boom").await.status, 500);
        backend.join().await;
    }

    #[tokio::test]
    async fn counts_connections_and_requests() {
        let backend = Backend::auto().spawn().await;
        for protocol in [
            crate::client::ClientProtocol::Http1,
            crate::client::ClientProtocol::H2c,
        ] {
            let mut client = crate::Client::connect(backend.addr(), protocol).await;
            let seen = client.get("/a").await.seen();
            assert_eq!(seen.path, "/a");
            client.get("/b").await;
        }
        assert_eq!(backend.connections(), 2);
        assert_eq!(backend.requests(), 4);
        backend.join().await;
    }
}
