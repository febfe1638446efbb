//! Originating mTLS to a cluster (`clusters.X.tls.server_identity`).
//!
//! One `Connector` per cluster, so the pools behind it (HTTP/1 idle
//! connections, the shared HTTP/2 connection) only ever hold connections
//! to that one verified identity. Two rustls configs differ only in ALPN:
//! the pool decides HTTP/1 or HTTP/2 before connecting, and says so.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::identity::Identity;
use super::spiffe::{CurrentKey, SpiffeServerVerifier};
use super::{VERSIONS, provider};

/// The upstream's certificate is valid but names another workload.
#[derive(Debug, Clone)]
pub struct IdentityMismatch {
    pub expected: String,
    /// The SPIFFE ID the server presented; `None` if its certificate had none.
    pub presented: Option<String>,
}

impl fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.presented {
            Some(p) => write!(
                f,
                "server identity mismatch: expected {}, presented {p}",
                self.expected
            ),
            None => write!(
                f,
                "server identity mismatch: expected {}, the certificate has no SPIFFE ID",
                self.expected
            ),
        }
    }
}

impl StdError for IdentityMismatch {}

/// Opens mTLS connections to one cluster's endpoints.
pub struct Connector {
    expected: Arc<str>,
    /// `[HTTP/1.1, HTTP/2]`; an error when there is no identity to present.
    configs: Result<[TlsConnector; 2], String>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("server_identity", &self.expected)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector that presents `identity` and accepts only `server_identity`.
    /// Without an identity (an unvalidated in-process config) every connect
    /// fails with a clear message rather than falling back to plaintext.
    pub fn new(identity: Option<&Arc<Identity>>, server_identity: &str) -> Self {
        let expected: Arc<str> = Arc::from(server_identity);
        let configs = match identity {
            None => Err("clusters with tls need `identity:` (cert, key, trust_bundle)".to_owned()),
            Some(identity) => {
                let make = |alpn: &[u8]| -> Result<TlsConnector, String> {
                    let mut config = ClientConfig::builder_with_provider(provider())
                        .with_protocol_versions(VERSIONS)
                        .map_err(|e| e.to_string())?
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                            identity: identity.clone(),
                            expected: expected.clone(),
                        }))
                        .with_client_cert_resolver(Arc::new(CurrentKey(identity.clone())));
                    config.alpn_protocols = vec![alpn.to_vec()];
                    // Every connection verifies the peer's current
                    // certificate and presents ours: a resumed session would
                    // skip both, hiding rotation and bundle changes.
                    config.resumption = Resumption::disabled();
                    Ok(TlsConnector::from(Arc::new(config)))
                };
                make(b"http/1.1").and_then(|h1| Ok([h1, make(b"h2")?]))
            }
        };
        Self { expected, configs }
    }

    /// The SPIFFE ID the upstream must present.
    pub fn server_identity(&self) -> &str {
        &self.expected
    }

    /// Runs the TLS handshake over `tcp` to `endpoint` (`host:port`),
    /// offering `h2` or `http/1.1` by ALPN. The error says why, including
    /// expected versus presented identity on a mismatch.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        endpoint: &str,
        h2: bool,
    ) -> Result<TlsStream<TcpStream>, String> {
        let configs = self.configs.as_ref().map_err(Clone::clone)?;
        let connector = &configs[usize::from(h2)];
        connector
            .connect(server_name(endpoint), tcp)
            .await
            .map_err(|e| describe(&e))
    }
}

/// The name for SNI: the endpoint's host. The verifier ignores it (the
/// SPIFFE ID decides), so an unparsable host only loses SNI.
fn server_name(endpoint: &str) -> ServerName<'static> {
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ServerName::IpAddress(ip.into());
    }
    ServerName::try_from(host.to_owned()).unwrap_or(ServerName::IpAddress(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED).into(),
    ))
}

/// A handshake error in words: an identity mismatch as itself (rustls
/// would print its debug form), anything else as rustls says it.
fn describe(e: &std::io::Error) -> String {
    let mut cur: Option<&(dyn StdError + 'static)> = e.get_ref().map(|e| e as _);
    while let Some(err) = cur {
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            err.downcast_ref::<rustls::Error>()
            && let Some(m) = other.0.downcast_ref::<IdentityMismatch>()
        {
            return m.to_string();
        }
        cur = err.source();
    }
    format!("TLS handshake failed: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert_eq!(
            server_name("10.0.0.1:80"),
            ServerName::IpAddress(IpAddr::from([10, 0, 0, 1]).into())
        );
        assert_eq!(
            server_name("[::1]:80"),
            ServerName::IpAddress("::1".parse::<IpAddr>().unwrap().into())
        );
        assert_eq!(
            server_name("reviews.default.svc:9080"),
            ServerName::try_from("reviews.default.svc").unwrap()
        );
    }

    #[test]
    fn mismatch_is_described() {
        let m = IdentityMismatch {
            expected: "spiffe://a/x".into(),
            presented: Some("spiffe://a/y".into()),
        };
        let rustls_err = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(Arc::new(m)),
        ));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_err);
        assert_eq!(
            describe(&io),
            "server identity mismatch: expected spiffe://a/x, presented spiffe://a/y"
        );
    }
}
