//! Which HTTP versions a listener speaks, as a hyper connection builder.
//!
//! `auto` relies on hyper-util's sniffing: a connection that opens with the
//! HTTP/2 prior-knowledge preface is served as h2c, anything else as HTTP/1.x.
//! (TLS sniffing for permissive mTLS joins here with the mTLS issue.)

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use skiff_control::model::ListenerProtocol;

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
