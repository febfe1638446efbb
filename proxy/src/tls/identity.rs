//! This workload's identity, loaded from PEM files and reloaded when they change.
//!
//! The material (certificate chain, signing key, trust bundle and the
//! client verifier built from it) lives in one `ArcSwap`. A handshake loads
//! it once, so it sees either the old or the new material, never a mix; a
//! connection already established keeps the keys it negotiated, so rotation
//! never breaks traffic in flight.
//!
//! Rotation is a poll, not a filesystem watch: Kubernetes delivers secrets
//! through symlink swaps that inotify reports unreliably, and comparing the
//! bytes of three small files once a second is cheap and always right. A
//! file caught half-written (or a new certificate beside the old key) fails
//! to parse or to match, is logged, and the previous material stays until
//! the next poll sees a consistent set.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use skiff_control::model;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::{provider, spiffe};

/// How often `spawn_reloader` looks at the identity files.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why identity material could not be loaded. The old material, if any, stays.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity: {path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// The material of one successful load.
pub(crate) struct Material {
    /// Our chain and key, presented as server and as client.
    pub key: Arc<CertifiedKey>,
    /// The trust bundle: peers' chains must end at one of these.
    pub roots: Arc<RootCertStore>,
    /// Verifies client certificates against `roots` (inbound).
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// Our own SPIFFE ID, from the leaf's URI SAN.
    pub spiffe_id: Option<String>,
}

/// This workload's mTLS identity; shared by every listener and cluster.
pub struct Identity {
    cert: PathBuf,
    key: PathBuf,
    trust_bundle: PathBuf,
    current: ArcSwap<Material>,
    /// The bytes of the three files at the last load attempt, good or bad:
    /// a poll that finds them unchanged does nothing (and logs nothing).
    seen: Mutex<Files>,
}

/// The contents of cert, key and trust bundle, in that order.
type Files = [Vec<u8>; 3];

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert", &self.cert)
            .field("spiffe_id", &self.current.load().spiffe_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the files named by `identity:`; fails if any is missing or invalid.
    pub fn load(config: &model::Identity) -> Result<Self, IdentityError> {
        let cert = PathBuf::from(&config.cert);
        let key = PathBuf::from(&config.key);
        let trust_bundle = PathBuf::from(&config.trust_bundle);
        let files = read_all(&cert, &key, &trust_bundle)?;
        let material = parse(&files, [&cert, &key, &trust_bundle])?;
        match &material.spiffe_id {
            Some(id) => info!(spiffe_id = %id, cert = %cert.display(), "identity loaded"),
            None => warn!(
                cert = %cert.display(),
                "identity loaded, but the certificate has no spiffe:// URI SAN: peers cannot verify it by identity"
            ),
        }
        Ok(Self {
            cert,
            key,
            trust_bundle,
            current: ArcSwap::from_pointee(material),
            seen: Mutex::new(files),
        })
    }

    /// Our SPIFFE ID as the current certificate states it.
    pub fn spiffe_id(&self) -> Option<String> {
        self.current.load().spiffe_id.clone()
    }

    /// Reads the files again and swaps the material in if they changed.
    /// `Ok(true)`: new material in use; `Ok(false)`: nothing changed; an
    /// error: the files changed but are unusable, and the old material stays.
    pub fn reload(&self) -> Result<bool, IdentityError> {
        let files = read_all(&self.cert, &self.key, &self.trust_bundle)?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == files {
                return Ok(false);
            }
            seen.clone_from(&files);
        }
        let material = parse(&files, [&self.cert, &self.key, &self.trust_bundle])?;
        info!(
            spiffe_id = material.spiffe_id.as_deref().unwrap_or("-"),
            "identity reloaded: new connections use the new certificate"
        );
        self.current.store(Arc::new(material));
        Ok(true)
    }

    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<Material>> {
        self.current.load()
    }
}

/// Polls `identity`'s files every `every` and reloads them when they change,
/// logging an unusable set once (not at every poll) and keeping the old one.
pub fn spawn_reloader(identity: Arc<Identity>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_error: Option<String> = None;
        loop {
            tick.tick().await;
            // File reads block: keep them off the runtime's worker threads.
            let id = identity.clone();
            let Ok(result) = tokio::task::spawn_blocking(move || id.reload()).await else {
                continue;
            };
            match result {
                Ok(_) => last_error = None,
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        error!(error = %text, "identity files changed but are unusable; keeping the previous certificate");
                    }
                    last_error = Some(text);
                }
            }
        }
    })
}

fn read_all(cert: &PathBuf, key: &PathBuf, trust_bundle: &PathBuf) -> Result<Files, IdentityError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| IdentityError::Read {
            path: path.clone(),
            source,
        })
    };
    Ok([read(cert)?, read(key)?, read(trust_bundle)?])
}

fn parse(files: &Files, paths: [&PathBuf; 3]) -> Result<Material, IdentityError> {
    let [cert_path, key_path, bundle_path] = paths;
    let invalid = |path: &PathBuf, why: String| IdentityError::Invalid {
        path: path.clone(),
        why,
    };

    let chain = certificates(&files[0]).map_err(|why| invalid(cert_path, why))?;
    let key = PrivateKeyDer::from_pem_slice(&files[1])
        .map_err(|e| invalid(key_path, format!("no usable PRIVATE KEY block: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(key_path, format!("unsupported private key: {e}")))?;
    let spiffe_id = chain.first().and_then(spiffe::spiffe_id);
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        invalid(
            key_path,
            format!(
                "this key does not belong to the certificate in {}",
                cert_path.display()
            ),
        )
    })?;

    let mut roots = RootCertStore::empty();
    for ca in certificates(&files[2]).map_err(|why| invalid(bundle_path, why))? {
        roots
            .add(ca)
            .map_err(|e| invalid(bundle_path, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| invalid(bundle_path, format!("cannot verify clients with it: {e}")))?;
    Ok(Material {
        key: Arc::new(certified),
        roots,
        client_verifier,
        spiffe_id,
    })
}

/// Every CERTIFICATE block of a PEM file; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".to_owned());
    }
    Ok(certs)
}
