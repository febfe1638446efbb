//! `skiff certs`: a small mesh CA and SPIFFE workload certificates, for the
//! demo, tests and small clusters (a real mesh gets them from its CA, e.g.
//! SPIRE or cert-manager, in the same PEM layout).
//!
//! Keys are ECDSA P-256. Workload certificates carry exactly one URI SAN,
//! the SPIFFE ID, are valid for server and client authentication (a
//! workload is both), and are short-lived (24h by default) because
//! rotation is cheap: `skiff run` picks up new files without a restart.
//! Files are written to a temporary name and renamed, so a running proxy
//! never reads half of one.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

/// Certificates start this long in the past, so a peer whose clock is a
/// little behind does not see them as not yet valid.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} is not a SPIFFE ID: expected spiffe://trust-domain/path")]
    BadId(String),
    #[error("{what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
}

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> CertsError + '_ {
    move |source| CertsError::Rcgen {
        what: what.to_owned(),
        source,
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a few minutes ago (clock skew) until `lifetime` from now.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now.checked_sub(BACKDATE).unwrap_or(now),
            not_after: now + lifetime,
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// A mesh certificate authority.
#[derive(Debug, Clone)]
pub struct Ca(pub Pair);

impl Ca {
    /// A new self-signed CA. It signs workload certificates only (path
    /// length 0), which is all a mesh CA needs.
    pub fn generate(validity: Validity) -> Result<Self, CertsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Skiff");
        dn.push(DnType::CommonName, "Skiff mesh CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity.apply(&mut params);
        let cert = params.self_signed(&key).map_err(rcgen_err("CA"))?;
        Ok(Self(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }))
    }

    /// Reads `DIR/ca.pem` and `DIR/ca-key.pem`.
    pub fn load(dir: &Path) -> Result<Self, CertsError> {
        Ok(Self(Pair {
            cert_pem: read(&dir.join("ca.pem"))?,
            key_pem: read(&dir.join("ca-key.pem"))?,
        }))
    }

    /// Writes `DIR/ca.pem` and `DIR/ca-key.pem` (the key readable by the owner only).
    pub fn write(&self, dir: &Path) -> Result<(), CertsError> {
        create_dir(dir)?;
        write(&dir.join("ca.pem"), &self.0.cert_pem, false)?;
        write(&dir.join("ca-key.pem"), &self.0.key_pem, true)
    }

    pub fn cert_pem(&self) -> &str {
        &self.0.cert_pem
    }

    /// A workload certificate for `spiffe_id`, signed by this CA.
    pub fn issue(&self, spiffe_id: &str, validity: Validity) -> Result<Pair, CertsError> {
        if skiff_control::spiffe::check(spiffe_id).is_err() {
            return Err(CertsError::BadId(spiffe_id.to_owned()));
        }
        let ca_key = KeyPair::from_pem(&self.0.key_pem).map_err(rcgen_err("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.0.cert_pem, ca_key)
            .map_err(rcgen_err("CA certificate"))?;
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("workload key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Skiff");
        dn.push(DnType::CommonName, "Skiff workload");
        params.distinguished_name = dn;
        let uri = spiffe_id
            .to_owned()
            .try_into()
            .map_err(rcgen_err("SPIFFE ID"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rcgen_err("workload certificate"))?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes a workload's `DIR/cert.pem`, `DIR/key.pem` and the trust bundle
/// `DIR/ca.pem`: exactly what `identity:` points at.
pub fn write_workload(dir: &Path, workload: &Pair, ca: &Ca) -> Result<(), CertsError> {
    create_dir(dir)?;
    write(&dir.join("ca.pem"), ca.cert_pem(), false)?;
    write(&dir.join("key.pem"), &workload.key_pem, true)?;
    write(&dir.join("cert.pem"), &workload.cert_pem, false)
}

fn read(path: &Path) -> Result<String, CertsError> {
    std::fs::read_to_string(path).map_err(|source| CertsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `path` through a temporary file and a rename, so a reader sees
/// the old file or the new one, never part of one.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_workload_with_its_spiffe_id() {
        let ca = Ca::generate(Validity::from_now(Duration::from_secs(3600))).unwrap();
        let w = ca
            .issue(
                "spiffe://test.local/ns/a/sa/web",
                Validity::from_now(Duration::from_secs(60)),
            )
            .unwrap();
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(w.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            crate::tls::spiffe_id(&der).as_deref(),
            Some("spiffe://test.local/ns/a/sa/web")
        );
        assert!(matches!(
            ca.issue("web", Validity::from_now(Duration::from_secs(60))),
            Err(CertsError::BadId(_))
        ));
    }

    #[test]
    fn writes_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate(Validity::from_now(Duration::from_secs(3600))).unwrap();
        ca.write(dir.path()).unwrap();
        let loaded = Ca::load(dir.path()).unwrap();
        let w = loaded
            .issue("spiffe://t/x", Validity::from_now(Duration::from_secs(60)))
            .unwrap();
        let out = dir.path().join("w");
        write_workload(&out, &w, &loaded).unwrap();
        for f in ["cert.pem", "key.pem", "ca.pem"] {
            assert!(out.join(f).exists(), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
