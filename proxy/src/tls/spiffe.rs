//! SPIFFE identities in certificates, and the verifiers that check them.
//!
//! A workload's identity is the `spiffe://trust-domain/path` URI SAN of its
//! leaf certificate. Both verifiers read the trust bundle from the current
//! identity material at every handshake, so a rotated bundle applies to the
//! next connection without rebuilding any rustls config.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::warn;

use super::identity::Identity;
use super::outbound::IdentityMismatch;
use super::provider;

/// The SPIFFE ID of a certificate: its first `spiffe://` URI SAN.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            Some((*uri).to_owned())
        }
        _ => None,
    })
}

// === impl CurrentKey ===

/// Presents the current certificate and key, as server and as client.
#[derive(Debug)]
pub(crate) struct CurrentKey(pub Arc<Identity>);

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

impl ResolvesClientCert for CurrentKey {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

// === impl BundleClientVerifier ===

/// Requires a client certificate chaining to the current trust bundle
/// (rustls's WebPKI verifier, rebuilt with each bundle).
#[derive(Debug)]
pub(crate) struct BundleClientVerifier(pub Arc<Identity>);

impl ClientCertVerifier for BundleClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA hints: the hints would have to outlive a bundle swap, and a
    /// mesh workload has exactly one certificate to send anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature::schemes()
    }
}

// === impl SpiffeServerVerifier ===

/// Verifies a server as a mesh peer: its chain must end at the current
/// trust bundle (WebPKI path building, validity dates, server-auth usage),
/// and its SPIFFE ID must be exactly `expected`. The DNS name the
/// connection was made to plays no part: endpoints are IP addresses, and
/// the identity is what the config promised.
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    pub identity: Arc<Identity>,
    pub expected: Arc<str>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.identity.current().roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let presented = spiffe_id(end_entity);
        if presented.as_deref() == Some(&*self.expected) {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = IdentityMismatch {
            expected: self.expected.to_string(),
            presented,
        };
        warn!(
            expected = %mismatch.expected,
            presented = mismatch.presented.as_deref().unwrap_or("none"),
            "refusing upstream: its certificate is not the expected identity"
        );
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(mismatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature::schemes()
    }
}

/// Handshake signatures are checked the same way on both sides, with the
/// ring provider's algorithms; only the certificate checks differ.
mod signature {
    use rustls::DigitallySignedStruct;
    use rustls::SignatureScheme;
    use rustls::client::danger::HandshakeSignatureValid;
    use rustls_pki_types::CertificateDer;

    use super::provider;

    pub(super) fn tls12(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    pub(super) fn tls13(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    pub(super) fn schemes() -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
