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

use std::io;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use skiff_control::model::ListenerProtocol;
use tokio::net::TcpStream;

/// The content type of a TLS handshake record: a ClientHello's first byte.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

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
        .keep_alive_interval(Some(Duration::from_secs(30)));
    match protocol {
        ListenerProtocol::Http1 => b.http1_only(),
        ListenerProtocol::Http2 => b.http2_only(),
        ListenerProtocol::Auto | ListenerProtocol::Tcp => b,
    }
}
