//! mTLS between Skiffs: this workload's identity, inbound termination
//! (`listeners[].tls`) and outbound origination (`clusters.X.tls`).
//!
//! * `identity`: the certificate chain, key and trust bundle from the PEM
//!   files of `identity:`, swapped whole when the files change on disk
//!   (polled), so new handshakes use new material and established
//!   connections keep theirs.
//! * `spiffe`: identities are SPIFFE IDs carried as URI SANs; the verifiers
//!   that check a peer's chain against the trust bundle and, outbound, its
//!   SPIFFE ID instead of a DNS name.
//! * `inbound`: accept a connection as strict mTLS, or sniff for a TLS
//!   ClientHello first (permissive), counting handshake outcomes.
//! * `outbound`: a cluster's connector, presenting our identity and
//!   requiring the peer's exact `server_identity`.
//!
//! rustls with the ring provider only; TLS 1.2 and 1.3, nothing older.

mod identity;
mod inbound;
mod outbound;
mod spiffe;

use std::sync::{Arc, LazyLock};

use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;

pub use identity::{Identity, IdentityError, RELOAD_INTERVAL, spawn_reloader};
pub use inbound::{Accepted, Inbound};
pub use outbound::{Connector, IdentityMismatch};
pub use spiffe::spiffe_id;

/// TLS 1.3 first; 1.2 for peers that lack 1.3. Nothing older is offered.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider (ring), shared by every config Skiff builds, so
/// no process-wide default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}
