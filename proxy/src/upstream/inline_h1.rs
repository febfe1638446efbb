//! Skiff's own HTTP/1.1 client for requests without a body, driven from the
//! request's own task.
//!
//! hyper's client runs each upstream connection as a task of its own: a
//! request crosses to it through a channel, the response comes back through
//! a oneshot and the body through another channel, so every request wakes
//! two tasks twice and re-polls the whole downstream stack in between. Most
//! requests through a sidecar carry no body (GET, HEAD, DELETE), and for
//! them the exchange is simple enough to do inline: write the head, parse
//! the response head (httparse, as hyper does), and hand back a body that
//! reads the connection itself and puts it back in the pool at its end.
//! The profile behind this is in docs/benchmarks.md.
//!
//! Requests with a body, and upgrades, keep hyper's client: streaming a body
//! while the response may already be arriving is where hyper earns its keep.
//!
//! What a peer sends is never trusted: heads are bounded in size and field
//! count, a `Content-Length` must be one number, chunk sizes are parsed by
//! httparse, and anything malformed fails the request as `upstream-reset`
//! and closes the connection; nothing here panics on a peer's bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use skiff_filters::Body;
use skiff_filters::circuit_breaker::Permit;
use skiff_filters::error::BoxError;
use tokio::io::AsyncWriteExt;
use tokio_util::io::poll_read_buf;

use super::BoxIo;
use crate::cluster::Endpoint;
use crate::h1::{
    self, Framing, MAX_HEAD_BYTES, MAX_HEADERS, READ_CHUNK, Step, connection_has,
    connection_has_close, decode, framing, invalid,
};

/// A pooled connection's request-head buffer larger than this (after a
/// big head) is dropped.
const KEEP_BUFFER: usize = 4 * 1024;

/// One upstream HTTP/1.1 connection this client owns.
pub struct Conn {
    io: BoxIo,
    /// Bytes read and not yet consumed; empty between exchanges.
    buf: BytesMut,
    /// The request head being written; kept for the next one.
    head: Vec<u8>,
    /// Whether an exchange already completed on it: a reused connection
    /// may have been closed by the server meanwhile (see [`Failed::retry`]).
    reused: bool,
    /// The breaker's connection permit: it lives as long as the connection.
    _permit: Option<Permit>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.buf.len())
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub struct Failed {
    /// The request may go again on another connection: a pooled connection
    /// failed before the server said anything, the signature of a server
    /// that closed it while idle, and the request either never left or is
    /// idempotent (RFC 9110 §9.2.2), as browsers and nginx retry it.
    pub retry: bool,
    pub error: io::Error,
}

impl Conn {
    pub fn new(io: BoxIo, permit: Option<Permit>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            reused: false,
            _permit: permit,
        }
    }

    /// Whether an idle connection still looks usable: the server has not
    /// closed it and sent nothing unasked. Reads without waiting.
    pub fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Ready means EOF, an error, or bytes nobody asked for.
        poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.buf).is_pending()
    }

    /// Sends a request that has no body and reads the response head. The
    /// response's body owns the connection and returns it to `ep`'s pool
    /// once read to its end, if the exchange leaves it reusable.
    pub async fn send(
        mut self,
        req: &Request<Body>,
        ep: &Arc<Endpoint>,
    ) -> Result<Response<Body>, Failed> {
        let head_only = req.method() == Method::HEAD;
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let mut close = connection_has_close(req.headers());
        self.write_head(req);
        if let Err(error) = self.io.write_all(&self.head).await {
            return Err(Failed {
                retry: self.reused,
                error,
            });
        }
        let fail = |error| Failed {
            retry: false,
            error,
        };
        let mut answered = false;
        let parsed = loop {
            let parsed = match self.read_head().await {
                Ok(parsed) => parsed,
                Err(error) => {
                    let silent = !answered && self.buf.is_empty();
                    return Err(Failed {
                        retry: self.reused && idempotent && silent,
                        error,
                    });
                }
            };
            answered = true;
            // 1xx answers (100 Continue, 103 Early Hints) precede the real
            // one; 101 was not asked for on this path.
            if parsed.status.is_informational() {
                if parsed.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(fail(invalid("101 Switching Protocols without an upgrade")));
                }
                continue;
            }
            break parsed;
        };
        close |= !parsed.keep_alive;
        let framing = if head_only
            || parsed.status == StatusCode::NO_CONTENT
            || parsed.status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else {
            framing(&parsed.headers).map_err(fail)?
        };
        if matches!(framing, Framing::Close) {
            close = true;
        }
        let mut rsp = Response::new(Body::Empty);
        *rsp.status_mut() = parsed.status;
        *rsp.version_mut() = parsed.version;
        *rsp.headers_mut() = parsed.headers;
        let body = UpstreamBody {
            conn: Some(self),
            framing,
            close,
            pool: Arc::clone(ep),
        };
        let body = if body.done() {
            body.finish();
            Body::Empty
        } else {
            Body::boxed(body)
        };
        *rsp.body_mut() = body;
        Ok(rsp)
    }

    /// `METHOD /path HTTP/1.1`, the headers as they are, and `content-length:
    /// 0` where the method's requests normally carry a body.
    fn write_head(&mut self, req: &Request<Body>) {
        let head = &mut self.head;
        head.clear();
        head.extend_from_slice(req.method().as_str().as_bytes());
        head.push(b' ');
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let mut has_length = false;
        for (name, value) in req.headers() {
            // Skiff frames what it sends; there is no body to frame here
            // but the length a client stated for its empty one.
            if name == TRANSFER_ENCODING {
                continue;
            }
            has_length |= name == CONTENT_LENGTH;
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if !has_length && matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            head.extend_from_slice(b"content-length: 0\r\n");
        }
        head.extend_from_slice(b"\r\n");
    }

    /// Reads until a whole response head is buffered, and parses it.
    async fn read_head(&mut self) -> io::Result<Parsed> {
        loop {
            if !self.buf.is_empty()
                && let Some(parsed) = parse_head(&mut self.buf)?
            {
                return Ok(parsed);
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(invalid("response head too large"));
            }
            self.buf.reserve(READ_CHUNK);
            let n =
                std::future::poll_fn(|cx| poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))
                    .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response head",
                ));
            }
        }
    }
}

/// A response head, parsed.
struct Parsed {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with keep-alive.
    keep_alive: bool,
}

/// Parses the response head at the start of `buf`, consuming it; `None`
/// while it is incomplete. Header values share the head's bytes.
fn parse_head(buf: &mut BytesMut) -> io::Result<Option<Parsed>> {
    let mut fields = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut rsp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut rsp,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(invalid("too many response headers")),
        Err(_) => return Err(invalid("malformed response head")),
    };
    let status = rsp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| invalid("bad status code"))?;
    let version = if rsp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = rsp.headers.len();
    h1::spans(buf.as_ptr(), rsp.headers, &mut spans);
    let head = buf.split_to(len).freeze();
    let headers = h1::header_map(&head, &spans[..count])?;
    let keep_alive = match version {
        Version::HTTP_10 => connection_has(&headers, "keep-alive"),
        _ => !connection_has_close(&headers),
    };
    Ok(Some(Parsed {
        status,
        version,
        headers,
        keep_alive,
    }))
}

/// A response body read straight from its connection, which goes back to
/// the endpoint's pool when the body ends cleanly. Dropped early (the client
/// went away), the connection is closed with it: unread bytes would corrupt
/// the next exchange.
struct UpstreamBody {
    conn: Option<Conn>,
    framing: Framing,
    /// Whether the connection must not be reused after this exchange.
    close: bool,
    pool: Arc<Endpoint>,
}

impl UpstreamBody {
    fn done(&self) -> bool {
        self.framing.done()
    }

    /// The body is complete: the connection is pooled if it can be.
    fn finish(mut self) {
        self.release();
    }

    fn release(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Bytes past the response (a server that answers twice) would be
        // read as the next response: not reusable either.
        if self.close || !conn.buf.is_empty() {
            return;
        }
        conn.reused = true;
        // An idle pooled connection holds no read buffer: with 10,000
        // endpoints a pool is mostly connections waiting, and 8 KiB each
        // would be most of their memory (docs/benchmarks.md, "Mesh
        // scale"). The next exchange takes a fresh one from the
        // allocator's thread cache.
        conn.buf = BytesMut::new();
        if conn.head.capacity() > KEEP_BUFFER {
            conn.head = Vec::new();
        }
        super::checkin_inline(&self.pool, conn);
    }

    /// The next frame, or `None` at the end; errors are the upstream's.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Frame<Bytes>>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            match decode(&mut conn.buf, &mut self.framing)? {
                Step::Frame(frame) => return Poll::Ready(Ok(Some(frame))),
                Step::End => {
                    self.release();
                    return Poll::Ready(Ok(None));
                }
                Step::NeedMore => {
                    conn.buf.reserve(READ_CHUNK);
                    if ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf))? > 0 {
                        continue;
                    }
                    self.conn = None;
                    if self.framing == Framing::Close {
                        return Poll::Ready(Ok(None));
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before the response body's end",
                    )));
                }
            }
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(this.poll_next(cx)) {
            Ok(Some(frame)) => {
                // The last bytes of a sized body: pool the connection now,
                // as the caller may never poll again.
                if this.framing == Framing::Length(0) {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Ok(None) => Poll::Ready(None),
            Err(e) => {
                this.conn = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.done()
    }

    fn size_hint(&self) -> SizeHint {
        self.framing.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::Chunk;

    fn head(text: &str) -> io::Result<Option<Parsed>> {
        parse_head(&mut BytesMut::from(text.as_bytes()))
    }

    #[test]
    fn response_heads_and_their_framing() {
        let p = head("HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello\n")
            .unwrap()
            .unwrap();
        assert_eq!(p.status, 200);
        assert!(p.keep_alive);
        assert_eq!(p.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(framing(&p.headers).unwrap(), Framing::Length(6));

        let p = head("HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(!p.keep_alive);
        assert_eq!(framing(&p.headers).unwrap(), Framing::Close);
        let p = head("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!p.keep_alive);

        // The last coding decides; a length beside chunked is ignored.
        let p = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(framing(&p.headers).unwrap(), Framing::Chunked(Chunk::Size));
        let p = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(framing(&p.headers).unwrap(), Framing::Close);
        let p = head("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(framing(&p.headers).unwrap(), Framing::Length(3));
        for bad in ["3, 4", "-1", "", "0x10", "99999999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            let p = head(&text).unwrap().unwrap();
            assert!(framing(&p.headers).is_err(), "{bad:?}");
        }

        assert!(head("HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SMTP ready\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "x: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(head(&many).is_err());
    }
}
