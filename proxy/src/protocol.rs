//! Which HTTP version a connection speaks, and the servers for each.
//!
//! Skiff reads a new connection's first bytes itself ([`sniff`]): the HTTP/2
//! prior-knowledge preface means HTTP/2, anything else HTTP/1.x. Then the
//! listener's `protocol` decides (docs/configuration.md):
//!
//! * `auto` serves either;
//! * `http1` never serves HTTP/2: the preface gets the answer an HTTP/1.1
//!   server gives a request line it cannot serve (505, `skiff-error:
//!   bad-request`), then the connection closes;
//! * `http2` never serves HTTP/1: anything but the preface is a connection
//!   error (RFC 9113 §3.4), answered with GOAWAY `PROTOCOL_ERROR`.
//!
//! Each refusal is counted in `skiff_downstream_refusals_total{reason=
//! "wrong-protocol"}`. Over TLS the same rules apply to the decrypted stream, and ALPN offers
//! only the listener's protocol.
//!
//! Before that, a listener with `tls.mode: permissive` sniffs one byte: a TLS
//! handshake record starts with 0x16, which no HTTP/1 method or HTTP/2
//! preface does, so mTLS and plaintext share the port (see `tls::Inbound`).
//!
//! The sniff must end within `header_timeout`, so a client that sends nothing,
//! or half of the h2 preface, cannot hold its connection; after it, the
//! same timeout bounds each HTTP/1 request head (`server::h1`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::TokioTimer;
use skiff_control::model::{Listener, ListenerProtocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::panics::Executor;

/// The content type of a TLS handshake record: a ClientHello's first byte.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What an HTTP/2 prior-knowledge client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 streams a client may open and reset before the server has
/// accepted them (h2's default, made explicit): the "rapid reset" attack
/// (CVE-2023-44487) gets GOAWAY `ENHANCE_YOUR_CALM` past it.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Stream errors a client may provoke on one connection before it is closed
/// (hyper's default, made explicit; CVE-2024-27316-style floods).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// How far h2 parses past Skiff's own head limits, so that a head over the
/// limit still reaches Skiff's handler and gets its 431 with `skiff-error`
/// and a count. Past this headroom h2 refuses on its own (its 431 and a
/// stream reset; docs/filters.md, "Refusals hyper makes"). HTTP/1 heads are
/// Skiff's own to parse (`server::h1`), and all its refusals are Skiff's.
const PARSER_HEADROOM: usize = 4;
/// The least head size h2 accepts, whatever the listener's limit.
const MIN_PARSER_HEAD_BYTES: usize = 1024 * 1024;

/// The answer to an HTTP/2 preface on an `http1` listener.
const HTTP1_ONLY_REPLY: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\n\
skiff-error: bad-request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 35\r\n\
connection: close\r\n\
\r\n\
this listener speaks HTTP/1.1 only\n";

/// GOAWAY (last stream 0, `PROTOCOL_ERROR`): the answer to anything but the
/// HTTP/2 preface on an `http2` listener.
const HTTP2_ONLY_REPLY: &[u8] = &[
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // length 8, GOAWAY, no flags, stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// Whether the client opened with a TLS handshake. Peeks, so the byte is
/// still there for whoever reads next; waits for the first byte.
pub async fn sniff_tls(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(first[0] == TLS_HANDSHAKE_RECORD)
}

/// The ALPN protocols a TLS listener offers, most preferred first.
pub fn alpn(protocol: ListenerProtocol) -> Vec<Vec<u8>> {
    match protocol {
        ListenerProtocol::Http1 => vec![b"http/1.1".to_vec()],
        ListenerProtocol::Http2 => vec![b"h2".to_vec()],
        ListenerProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        // A TLS-wrapped byte relay negotiates no application protocol.
        ListenerProtocol::Tcp => Vec::new(),
    }
}

/// The HTTP version a connection opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spoken {
    Http1,
    Http2,
    /// Neither: the first bytes cannot start an HTTP/1 request line (a
    /// method token and a space) or the HTTP/2 preface. A TLS ClientHello
    /// on a plaintext port, a stray protocol, noise.
    Garbage,
}

/// The answer to a connection that speaks no HTTP ([`Spoken::Garbage`]).
/// hyper would answer a bare 400; this one says why, as every answer Skiff
/// makes does.
pub const GARBAGE_REPLY: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
skiff-error: bad-request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 45\r\n\
connection: close\r\n\
\r\n\
bad-request: this is not an HTTP/1.1 request\n";

/// An HTTP token character (RFC 9110 §5.6.2), which a method is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the bytes read so far say, if they say enough: HTTP/2 once the
/// whole preface is there; HTTP/1 once a method token ends in a space (or
/// fills the buffer: hyper judges long methods); garbage at the first byte
/// that cannot belong to a request line's start. Empty lines before the
/// request line are allowed (RFC 9112 §2.2).
pub fn decide(read: &[u8]) -> Option<Spoken> {
    if read == H2_PREFACE {
        return Some(Spoken::Http2);
    }
    if H2_PREFACE.starts_with(read) {
        return None;
    }
    let line = &read[read
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()..];
    let method = line.iter().take_while(|&&b| is_tchar(b)).count();
    match line.get(method) {
        Some(b' ') if method > 0 => Some(Spoken::Http1),
        Some(_) => Some(Spoken::Garbage),
        None if read.len() == H2_PREFACE.len() => Some(Spoken::Http1),
        None => None,
    }
}

/// What to do with a sniffed connection on a listener of `protocol`: serve
/// it, or refuse it with these bytes.
pub fn admit(protocol: ListenerProtocol, spoken: Spoken) -> Result<Spoken, &'static [u8]> {
    match (protocol, spoken) {
        (ListenerProtocol::Http1, Spoken::Http2) => Err(HTTP1_ONLY_REPLY),
        (ListenerProtocol::Http2, Spoken::Http1) => Err(HTTP2_ONLY_REPLY),
        (_, Spoken::Garbage) => Err(GARBAGE_REPLY),
        (_, spoken) => Ok(spoken),
    }
}

/// Reads until the first bytes complete the HTTP/2 preface, start an HTTP/1
/// request line, or cannot be either ([`decide`]), within `timeout`. The
/// bytes read are handed back in front of the stream, so the server sees the
/// connection from its first byte. Fails when the client closes or times
/// out before that.
pub async fn sniff<I: AsyncRead + Unpin>(
    mut io: I,
    timeout: Duration,
) -> io::Result<(Spoken, Prefixed<I>)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    let decided = tokio::time::timeout(timeout, async {
        loop {
            let n = io.read(&mut buf[len..]).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            len += n;
            if let Some(spoken) = decide(&buf[..len]) {
                return Ok(spoken);
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request within header_timeout"))??;
    Ok((
        decided,
        Prefixed {
            buf,
            pos: 0,
            len,
            io,
        },
    ))
}

/// Head limits of one listener (`max_request_headers_kb`, `..._count`).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes of header names and values, the request target included.
    pub bytes: usize,
    /// Header fields.
    pub count: usize,
}

impl HeadLimits {
    pub fn of(l: &Listener) -> Self {
        Self {
            bytes: l.max_request_headers_kb as usize * 1024,
            count: l.max_request_headers_count as usize,
        }
    }
}

/// The servers of one listener, built once and shared by its connections:
/// hyper's HTTP/2 server (HTTP/1 is Skiff's own, `server::h1`).
#[derive(Debug)]
pub struct Servers {
    pub protocol: ListenerProtocol,
    pub http2: http2::Builder<Executor>,
}

/// The servers for listener `l`; its HTTP/2 streams run on `exec`.
pub fn servers(protocol: ListenerProtocol, l: &Listener, exec: Executor) -> Servers {
    let limits = HeadLimits::of(l);
    let parser_bytes = (limits.bytes * PARSER_HEADROOM).max(MIN_PARSER_HEAD_BYTES);
    let mut http2 = http2::Builder::new(exec);
    http2
        .timer(TokioTimer::new())
        // Follow the peer's bandwidth-delay product instead of a fixed 64 KiB
        // window, so large streams (8 MiB bodies, gRPC streams) keep moving.
        .adaptive_window(true)
        .max_concurrent_streams(l.max_concurrent_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_header_list_size(u32::try_from(parser_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    Servers { protocol, http2 }
}

// === impl Prefixed ===

/// A stream with the bytes [`sniff`] read put back in front of it. The
/// buffer is the preface's 24 bytes, inline: nothing per connection on the heap.
pub struct Prefixed<I> {
    buf: [u8; H2_PREFACE.len()],
    pos: usize,
    len: usize,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.len {
            let n = (this.len - this.pos).min(out.remaining());
            out.put_slice(&this.buf[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Each line: what the client sends before going quiet, and what the
    /// sniff decides (`None`: the header timeout ends it). Paused time: the
    /// timeout fires at 200ms exactly, however busy the machine.
    #[tokio::test(start_paused = true)]
    async fn the_sniff_decides_or_times_out() {
        let cases: [(&[u8], Option<Spoken>); 16] = [
            (b"", None),
            (b"PRI * HTTP/2.0\r\n", None),
            (b"P", None),
            (b"GE", None),
            (b"\r\nGET", None),
            (b"GET / HTTP/1.1\r\n", Some(Spoken::Http1)),
            (b"\r\nGET / HTTP/1.1\r\n", Some(Spoken::Http1)),
            (b"PX ", Some(Spoken::Http1)),
            (b"PRI / HTTP/1.1", Some(Spoken::Http1)),
            (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", Some(Spoken::Http1)),
            (b"GARBAGE\r\n\r\n", Some(Spoken::Garbage)),
            (b" GET /", Some(Spoken::Garbage)),
            (b"\x16\x03\x01\x02\x00", Some(Spoken::Garbage)),
            (b"G(T / HTTP/1.1", Some(Spoken::Garbage)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nmore", Some(Spoken::Http2)),
            (H2_PREFACE, Some(Spoken::Http2)),
        ];
        for (sent, expected) in cases {
            let (mut client, server) = tokio::io::duplex(1024);
            client.write_all(sent).await.unwrap();
            let started = tokio::time::Instant::now();
            match (sniff(server, Duration::from_millis(200)).await, expected) {
                (Ok((spoken, mut io)), Some(expected)) => {
                    assert_eq!(spoken, expected, "{sent:?}");
                    // Every byte the client sent is read back, in order.
                    drop(client);
                    let mut got = Vec::new();
                    io.read_to_end(&mut got).await.unwrap();
                    assert_eq!(got, sent);
                }
                (Err(e), None) => {
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{sent:?}");
                    assert_eq!(started.elapsed(), Duration::from_millis(200));
                }
                (other, expected) => panic!(
                    "{sent:?}: {:?}, expected {expected:?}",
                    other.map(|(s, _)| s)
                ),
            }
        }
    }

    #[test]
    fn each_protocol_admits_only_itself() {
        use ListenerProtocol::*;
        for (protocol, spoken, admitted) in [
            (Auto, Spoken::Http1, true),
            (Auto, Spoken::Http2, true),
            (Http1, Spoken::Http1, true),
            (Http1, Spoken::Http2, false),
            (Http2, Spoken::Http2, true),
            (Http2, Spoken::Http1, false),
        ] {
            assert_eq!(
                admit(protocol, spoken).is_ok(),
                admitted,
                "{protocol:?} {spoken:?}"
            );
        }
        assert_eq!(
            HTTP1_ONLY_REPLY.len()
                - HTTP1_ONLY_REPLY
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .unwrap()
                - 4,
            35,
            "content-length matches the body"
        );
    }
}
