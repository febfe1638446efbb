//! Clients: HTTP/1.1 and h2c over one connection each, raw TCP helpers,
//! and a tonic client for the demo greeter.
//!
//! Built on `hyper::client::conn` rather than a pooling client so a test
//! controls the connection (how many, which protocol) and the request
//! target exactly: an h2c request may name any `:authority` while the TCP
//! connection goes to the proxy.
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_examples::pb::greeter_client::GreeterClient;
use skiff_examples::pb::{HelloReply, HelloRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

use crate::body::{BoxBody, empty};
use crate::handlers::Seen;

/// Which protocol a [`Client`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

enum Sender {
    Http1(http1::SendRequest<BoxBody>),
    H2c(http2::SendRequest<BoxBody>),
}

/// One client connection to `addr`. HTTP/1.1 sends one request at a time
/// (use several clients for concurrency); h2c multiplexes, and the client
/// can be cloned cheaply with [`Client::clone_h2`].
pub struct Client {
    addr: SocketAddr,
    sender: Sender,
}

// === impl Client ===

impl Client {
    /// Connects with HTTP/1.1.
    pub async fn http1(addr: SocketAddr) -> Self {
        Self::connect(addr, ClientProtocol::Http1).await
    }

    /// Connects with h2c (HTTP/2 prior knowledge).
    pub async fn h2c(addr: SocketAddr) -> Self {
        Self::connect(addr, ClientProtocol::H2c).await
    }

    /// Connects with `protocol`; panics if the TCP connect or handshake fails.
    pub async fn connect(addr: SocketAddr, protocol: ClientProtocol) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let sender = match protocol {
            ClientProtocol::Http1 => {
                let (sender, conn) = http1::handshake(io).await.unwrap();
                tokio::spawn(conn.with_upgrades());
                Sender::Http1(sender)
            }
            ClientProtocol::H2c => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
                tokio::spawn(conn);
                Sender::H2c(sender)
            }
        };
        Self { addr, sender }
    }

    /// Another handle on the same h2c connection (for concurrent streams).
    pub fn clone_h2(&self) -> Self {
        match &self.sender {
            Sender::H2c(s) => Self {
                addr: self.addr,
                sender: Sender::H2c(s.clone()),
            },
            Sender::Http1(_) => panic!("an HTTP/1.1 connection carries one request at a time"),
        }
    }

    /// The protocol this client speaks.
    pub fn protocol(&self) -> ClientProtocol {
        match self.sender {
            Sender::Http1(_) => ClientProtocol::Http1,
            Sender::H2c(_) => ClientProtocol::H2c,
        }
    }

    /// Sends `req` and returns the response head with its body still
    /// streaming. A path-only URI is completed with this connection's
    /// address (`Host` for HTTP/1.1, `:authority` for h2c) unless the
    /// request names its own host.
    pub async fn send(&mut self, mut req: Request<BoxBody>) -> hyper::Result<Response<Incoming>> {
        let addr = self.addr;
        match &mut self.sender {
            Sender::Http1(sender) => {
                if !req.headers().contains_key(http::header::HOST) {
                    let host = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| addr.to_string());
                    req.headers_mut()
                        .insert(http::header::HOST, host.parse().unwrap());
                }
                *req.version_mut() = Version::HTTP_11;
                sender.ready().await?;
                sender.send_request(req).await
            }
            Sender::H2c(sender) => {
                if req.uri().authority().is_none() {
                    let authority = req
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                        .unwrap_or_else(|| addr.to_string());
                    let path = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "/".to_owned());
                    *req.uri_mut() = Uri::builder()
                        .scheme("http")
                        .authority(authority)
                        .path_and_query(path)
                        .build()
                        .unwrap();
                    req.headers_mut().remove(http::header::HOST);
                }
                *req.version_mut() = Version::HTTP_2;
                sender.ready().await?;
                sender.send_request(req).await
            }
        }
    }

    /// Sends `req` and reads the whole response, trailers included.
    pub async fn request(&mut self, req: Request<BoxBody>) -> Collected {
        let what = format!("{} {}", req.method(), req.uri());
        let response = crate::guard(&what, self.send(req))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        crate::guard(&what, Collected::read(response)).await
    }

    /// `GET path` with no body.
    pub async fn get(&mut self, path: &str) -> Collected {
        self.request(Request::get(path).body(empty()).unwrap())
            .await
    }

    /// `GET path` with extra headers.
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Collected {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.request(req.body(empty()).unwrap()).await
    }
}

/// A whole response: head, body and trailers.
#[derive(Debug)]
pub struct Collected {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

// === impl Collected ===

impl Collected {
    /// Reads `response` to the end.
    pub async fn read(response: Response<Incoming>) -> Self {
        let (parts, body) = response.into_parts();
        let collected = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("reading the body of a {} response: {e}", parts.status));
        let trailers = collected.trailers().cloned();
        Self {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    }

    /// The first value of header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as an [`inspect`](crate::handlers::inspect) description;
    /// panics (showing the response) if it is not one.
    pub fn seen(&self) -> Seen {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected the backend's description, got {self:?}"
        );
        Seen::from_json(&self.body)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends raw `request` bytes on a new connection to `addr` and reads until
/// the peer closes (send `Connection: close`). For requests a well-behaved
/// client library would not send.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    crate::guard(
        "reading a raw response to EOF",
        stream.read_to_end(&mut out),
    )
    .await
    .unwrap();
    out
}

/// Reads until the peer closes (or resets) the connection: what a client
/// got before the proxy hung up, when a reset is as good as EOF.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match crate::guard("reading until the peer closes", stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads from `stream` until the end of an HTTP/1 response head (`\r\n\r\n`)
/// and returns the head; bytes after it stay in the returned remainder.
pub async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        let n = crate::guard("reading a response head", stream.read(&mut chunk))
            .await
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response head; got so far: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

// === gRPC ===

/// A tonic client for the demo greeter, connected to `addr` (a proxy
/// listener, usually).
pub async fn greeter_client(addr: SocketAddr) -> GreeterClient<Channel> {
    GreeterClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A greeter request for `name`; `count` is how many replies a
/// server-streaming call gets (0 elsewhere).
pub fn hello(name: &str, count: u32) -> HelloRequest {
    HelloRequest {
        name: name.to_owned(),
        count,
    }
}

/// One guarded unary `SayHello { name }` on a new connection to `addr`.
pub async fn say_hello(addr: SocketAddr, name: &str) -> Result<HelloReply, tonic::Status> {
    let mut client = greeter_client(addr).await;
    crate::guard("SayHello", client.say_hello(hello(name, 0)))
        .await
        .map(tonic::Response::into_inner)
}
