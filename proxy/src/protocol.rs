//! Which HTTP versions a listener speaks, as a hyper connection builder.
//!
//! `auto` relies on hyper-util's sniffing: a connection that opens with the
//! HTTP/2 prior-knowledge preface is served as h2c, anything else as HTTP/1.x.
//! Over TLS the same sniffing applies to the decrypted stream; ALPN only
//! tells the client what the listener speaks.
//!
//! Before that, a listener with `tls.mode: permissive` sniffs one byte: a TLS
//! handshake record starts with 0x16, which no HTTP/1 method or HTTP/2
//! preface does, so mTLS and plaintext share the port (see `tls::Inbound`).
//!
//! hyper's `header_read_timeout` only starts once hyper-util has decided the
//! connection is HTTP/1, and HTTP/2 has no head timeout at all, so a client
//! that sends nothing, or half of the h2 preface, would hold its connection
//! forever. [`PrefaceDeadline`] closes that gap.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use skiff_control::model::ListenerProtocol;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The content type of a TLS handshake record: a ClientHello's first byte.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What an HTTP/2 prior-knowledge client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 streams a client may open and reset before the server has
/// accepted them (h2's default, made explicit): the "rapid reset" attack
/// (CVE-2023-44487) gets GOAWAY `ENHANCE_YOUR_CALM` past it.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Stream errors a client may provoke on one connection before it is closed
/// (hyper's default, made explicit; CVE-2024-27316-style floods).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

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

/// The connection builder for one listener.
pub fn builder(
    protocol: ListenerProtocol,
    header_timeout: Duration,
) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        // Follow the peer's bandwidth-delay product instead of a fixed 64 KiB
        // window, so large streams (8 MiB bodies, gRPC streams) keep moving.
        .adaptive_window(true)
        .max_concurrent_streams(1024)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    match protocol {
        ListenerProtocol::Http1 => b.http1_only(),
        ListenerProtocol::Http2 => b.http2_only(),
        ListenerProtocol::Auto | ListenerProtocol::Tcp => b,
    }
}

// === impl PrefaceDeadline ===

/// A downstream connection that must show what it speaks within
/// `header_timeout`: reads fail with `TimedOut` unless, by then, the bytes
/// have left the HTTP/2 preface (HTTP/1, where hyper's own
/// `header_read_timeout` takes over) or completed it (HTTP/2). After that the
/// wrapper only passes reads and writes through.
pub struct PrefaceDeadline<I> {
    io: I,
    /// `None` once the connection has shown its protocol (or ended).
    deadline: Option<Pin<Box<Sleep>>>,
    /// How many bytes of `H2_PREFACE` the client has sent so far.
    matched: usize,
}

impl<I> PrefaceDeadline<I> {
    /// Boxes one timer per connection, never per request.
    pub fn new(io: I, timeout: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
        }
    }

    /// Follows the preface through `new` bytes; true once the protocol is known.
    fn decided(&mut self, new: &[u8]) -> bool {
        let rest = &H2_PREFACE[self.matched..];
        let n = new.len().min(rest.len());
        if new.is_empty() || new[..n] != rest[..n] {
            return true;
        }
        self.matched += n;
        self.matched == H2_PREFACE.len()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else {
            return polled;
        };
        match &polled {
            Poll::Ready(Ok(())) => {
                if this.decided(&buf.filled()[before..]) {
                    this.deadline = None;
                }
            }
            Poll::Ready(Err(_)) => this.deadline = None,
            Poll::Pending => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request head within header_timeout",
                    )));
                }
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<I> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Each line: what the client sends, and whether the read then times out.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_only_undecided_connections() {
        let cases: [(&[u8], bool); 6] = [
            (b"", true),
            (b"PRI * HTTP/2.0\r\n", true),
            (b"P", true),
            (b"GET / HTTP/1.1\r\n", false),
            (b"PX", false),
            (H2_PREFACE, false),
        ];
        for (sent, times_out) in cases {
            let (client, server) = tokio::io::duplex(1024);
            let mut io = PrefaceDeadline::new(server, Duration::from_millis(200));
            let mut client = client;
            client.write_all(sent).await.unwrap();
            let mut got = vec![0u8; sent.len()];
            io.read_exact(&mut got).await.unwrap();
            let mut more = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(3600), io.read(&mut more)).await;
            match read {
                Ok(Err(e)) => {
                    assert!(times_out, "{sent:?}: {e}");
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                }
                Err(_) => assert!(!times_out, "{sent:?} should have timed out"),
                Ok(Ok(n)) => panic!("{sent:?}: read {n} bytes from nowhere"),
            }
            drop(client);
        }
    }
}
