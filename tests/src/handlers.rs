//! Ready-made backend handlers and the types tests read their results with.
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use crate::body::{BoxBody, boxed, full};

/// A response with `status` and a text body.
pub fn text(status: u16, body: &str) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(full(body.to_owned()))
        .unwrap()
}

/// A handler answering 200 with body `name` and header `x-backend: name`,
/// so a test with several backends sees which one served each request.
pub fn named(
    name: &'static str,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<Response<BoxBody>> + Send + Sync + 'static {
    move |_req| {
        std::future::ready(
            Response::builder()
                .header("x-backend", name)
                .body(full(name))
                .unwrap(),
        )
    }
}

/// Describes the request it got as JSON (method, uri, path, version, every
/// header with all its values, the body as text), so tests see exactly what
/// the proxy forwarded. Read the answer with [`Seen::from_json`].
pub async fn inspect(req: Request<Incoming>) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        headers.insert(name.as_str().to_owned(), values.into());
    }
    let description = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "path": parts.uri.path(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(full(description.to_string()))
        .unwrap()
}

/// What an [`inspect`] backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Lowercase names, each with all its values in order.
    pub headers: Vec<(String, Vec<String>)>,
    pub body: String,
}

// === impl Seen ===

impl Seen {
    /// Parses an [`inspect`] response body.
    pub fn from_json(body: &[u8]) -> Self {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "not an inspect description ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let headers = v["headers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, vs)| {
                        let values = vs
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| x.as_str().unwrap_or_default().to_owned())
                                    .collect()
                            })
                            .unwrap_or_default();
                        (k.clone(), values)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            method: s("method"),
            uri: s("uri"),
            path: s("path"),
            version: s("version"),
            headers,
            body: s("body"),
        }
    }

    /// The first value of header `name` (any case), if it arrived.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, vs)| vs.first())
            .map(String::as_str)
    }

    /// Whether header `name` (any case) arrived at all.
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

/// Length and sha256 of one body an [`Echo`] backend received in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub len: u64,
    pub sha256: String,
}

/// Streams each request body straight back as the response body (frame by
/// frame, without buffering, so an 8 MiB body never sits in memory here)
/// while hashing it; `received()` lists what arrived, so a test can compare
/// the far end's sha256 with what it sent and with what came back.
///
/// Response headers: `x-echo-version` (the request's HTTP version),
/// `x-echo-method`, and `x-echo-transfer-encoding` / `x-echo-content-length`
/// as the request carried them.
#[derive(Clone, Default)]
pub struct Echo {
    received: Arc<Mutex<Vec<Received>>>,
}

// === impl Echo ===

impl Echo {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handler to put on a backend route.
    pub fn handler(
        &self,
    ) -> impl Fn(Request<Incoming>) -> std::future::Ready<Response<BoxBody>> + Send + Sync + 'static
    {
        let received = self.received.clone();
        move |req| {
            let (parts, body) = req.into_parts();
            let mut response = Response::builder()
                .status(200)
                .header("x-echo-version", format!("{:?}", parts.version))
                .header("x-echo-method", parts.method.as_str());
            for (name, echo) in [
                ("transfer-encoding", "x-echo-transfer-encoding"),
                ("content-length", "x-echo-content-length"),
                ("content-type", "content-type"),
            ] {
                if let Some(v) = parts.headers.get(name) {
                    response = response.header(echo, v);
                }
            }
            let hashing = Hashing {
                inner: body,
                hasher: Sha256::new(),
                len: 0,
                log: Some(received.clone()),
            };
            std::future::ready(response.body(boxed(hashing)).unwrap())
        }
    }

    /// Every body received in full so far, in completion order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Passes frames through, hashing data; records the digest at end of stream.
struct Hashing {
    inner: Incoming,
    hasher: Sha256,
    len: u64,
    /// Taken when the digest is recorded, so it is recorded once.
    log: Option<Arc<Mutex<Vec<Received>>>>,
}

impl Hashing {
    fn record(&mut self) {
        if let Some(log) = self.log.take() {
            let sha256 = crate::body::hex(&self.hasher.clone().finalize());
            log.lock().unwrap().push(Received {
                len: self.len,
                sha256,
            });
        }
    }
}

impl Body for Hashing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.hasher.update(data);
                    this.len += data.len() as u64;
                }
                // HTTP/2 stops polling once the body says it ended, so the
                // digest is recorded here too, before the last frame leaves.
                if this.inner.is_end_stream() {
                    this.record();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.record();
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// Holds requests at the backend until the test opens it, and tells the
/// test when each request arrived: the way to have a request provably in
/// flight (for drain, timeouts, multiplexing) without sleeping.
#[derive(Clone)]
pub struct Gate {
    arrived_tx: mpsc::UnboundedSender<()>,
    arrived_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>>,
    open: watch::Sender<bool>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Gate ===

impl Gate {
    pub fn new() -> Self {
        let (arrived_tx, arrived_rx) = mpsc::unbounded_channel();
        Self {
            arrived_tx,
            arrived_rx: Arc::new(tokio::sync::Mutex::new(arrived_rx)),
            open: watch::channel(false).0,
        }
    }

    /// A handler that reports arrival, waits for the gate to open, then
    /// answers 200 with body `released`.
    pub fn handler(
        &self,
    ) -> impl Fn(
        Request<Incoming>,
    ) -> Pin<Box<dyn std::future::Future<Output = Response<BoxBody>> + Send>>
    + Send
    + Sync
    + 'static {
        let gate = self.clone();
        move |_req| {
            let gate = gate.clone();
            Box::pin(async move {
                gate.pass().await;
                text(200, "released")
            })
        }
    }

    /// Reports arrival and waits until the gate opens (for custom handlers).
    pub async fn pass(&self) {
        let _ = self.arrived_tx.send(());
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }

    /// Waits until one more request reached the gate.
    pub async fn arrived(&self) {
        let mut rx = self.arrived_rx.lock().await;
        crate::guard("a request reaching the gate", rx.recv()).await;
    }

    /// Lets every waiting and future request through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// A handler that never answers: for timeouts.
pub async fn never(_req: Request<Incoming>) -> Response<BoxBody> {
    std::future::pending().await
}

/// Header names and values of `map` as `(name, value)` text pairs, for messages.
pub fn header_pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}
