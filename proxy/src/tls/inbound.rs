//! Terminating TLS on a listener (`listeners[].tls.mode`).
//!
//! `strict`: every connection must be mTLS with a client certificate that
//! chains to the trust bundle. `permissive`: the first byte decides, as in
//! Istio: a TLS handshake record (a ClientHello) gets the strict treatment,
//! anything else is served as plaintext with no identity. Every TLS outcome
//! is counted in `skiff_tls_handshakes_total{listener,result}`.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::NoServerSessionStorage;
use skiff_control::model::TlsMode;
use skiff_filters::authz::PeerIdentity;
use skiff_filters::telemetry::Metrics;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::identity::Identity;
use super::spiffe::{BundleClientVerifier, CurrentKey, spiffe_id};
use super::{VERSIONS, provider};
use crate::protocol;
use crate::upstream::BoxIo;

/// A connection ready for HTTP (or a TCP relay).
pub struct Accepted {
    pub io: BoxIo,
    /// The client's SPIFFE ID; `None` for plaintext (permissive) callers.
    pub peer: Option<PeerIdentity>,
}

/// One listener's TLS termination.
pub struct Inbound {
    mode: TlsMode,
    acceptor: TlsAcceptor,
    listener: Arc<str>,
    metrics: Arc<Metrics>,
    /// Bounds the sniff and the handshake, as `header_timeout` bounds a
    /// request head: a silent client must not hold a task forever.
    handshake_timeout: Duration,
}

impl Inbound {
    /// `strict` (mTLS only) or `permissive`.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// `alpn`: what the listener speaks (`h2`, `http/1.1`), in preference order.
    pub fn new(
        identity: &Arc<Identity>,
        mode: TlsMode,
        alpn: Vec<Vec<u8>>,
        listener: Arc<str>,
        metrics: Arc<Metrics>,
        handshake_timeout: Duration,
    ) -> Result<Self, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)?
            .with_client_cert_verifier(Arc::new(BundleClientVerifier(identity.clone())))
            .with_cert_resolver(Arc::new(CurrentKey(identity.clone())));
        config.alpn_protocols = alpn;
        // No resumption: every connection proves its current certificate,
        // so a rotated bundle or a revoked workload takes effect at once.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            mode,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            listener,
            metrics,
            handshake_timeout,
        })
    }

    /// Runs the handshake (or, permissive, lets plaintext through). `None`:
    /// the connection was refused and closed; the reason is logged and counted.
    pub async fn accept(&self, stream: TcpStream) -> Option<Accepted> {
        let peer_addr = Peer(stream.peer_addr().ok());
        let sniffed =
            tokio::time::timeout(self.handshake_timeout, protocol::sniff_tls(&stream)).await;
        let is_tls = match sniffed {
            Ok(Ok(is_tls)) => is_tls,
            Ok(Err(e)) => {
                debug!(listener = %self.listener, peer = %peer_addr, error = %e, "closed before sending anything");
                return None;
            }
            Err(_) => {
                self.count("timeout");
                debug!(listener = %self.listener, peer = %peer_addr, "no first byte within the handshake timeout");
                return None;
            }
        };
        if !is_tls {
            if self.mode == TlsMode::Permissive {
                return Some(Accepted {
                    io: Box::new(stream),
                    peer: None,
                });
            }
            self.count("plaintext");
            debug!(listener = %self.listener, peer = %peer_addr, "plaintext refused: this listener is mTLS only (tls.mode strict)");
            return None;
        }
        let tls = match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let result = failure(&e);
                self.count(result);
                if result == "peer_closed" {
                    // Port scanners, TCP health checks, impatient clients:
                    // not worth a warning each.
                    debug!(listener = %self.listener, peer = %peer_addr, error = %e, "peer left during the mTLS handshake");
                } else {
                    warn!(listener = %self.listener, peer = %peer_addr, result, error = %e, "mTLS handshake refused");
                }
                return None;
            }
            Err(_) => {
                self.count("timeout");
                debug!(listener = %self.listener, peer = %peer_addr, "mTLS handshake timed out");
                return None;
            }
        };
        self.count("ok");
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(spiffe_id)
            .map(|id| PeerIdentity(Arc::from(id)));
        debug!(
            listener = %self.listener,
            peer = %peer_addr,
            peer_identity = peer.as_ref().map_or("none", |p| &p.0),
            "mTLS connection"
        );
        Some(Accepted {
            io: Box::new(tls),
            peer,
        })
    }

    fn count(&self, result: &'static str) {
        self.metrics.tls_handshake(&self.listener, result);
    }
}

/// The `result` label of a failed handshake.
fn failure(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let Some(err) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => "peer_closed",
            _ => "error",
        };
    };
    match err {
        rustls::Error::NoCertificatesPresented => "no_client_cert",
        rustls::Error::InvalidCertificate(_) => "bad_cert",
        rustls::Error::AlertReceived(_) => "peer_refused",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "error",
    }
}

/// A peer's address for a log field: the address, or `unknown` when the
/// socket could not say (it closed first), rather than `Some(..)`/`None`.
#[derive(Clone, Copy)]
struct Peer(Option<std::net::SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}
