//! A server's TLS (the adapter's, the admission webhook's): the serving certificate and the front-proxy CA that client
//! certificates are verified against, either of which can change while the adapter runs.
//! Each new connection is accepted with the configuration current at that moment. Open
//! connections keep the serving certificate they were accepted with, but not a client CA
//! that has since changed: a connection made before the front-proxy CA was known carries
//! no client certificate, and the aggregator would go on sending every request over it
//! unauthenticated, so [`TlsState::client_ca_changes`] tells the listener to close them.
//!
//! Clients are asked for a certificate but not required to present one (the aggregator
//! presents its front-proxy certificate; other callers may bring a bearer token, and
//! probes bring nothing). A certificate that is presented must chain to the front-proxy CA.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ServerConfig, WebPkiClientVerifier};

use crate::certs;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the serving certificate has no certificate in it")]
    NoCertificate,
    #[error("the serving private key cannot be read: {0}")]
    Key(String),
    #[error("the front-proxy CA has no usable certificate: {0}")]
    ClientCa(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What the configuration is made from.
#[derive(Clone, Default)]
struct Parts {
    /// (certificate chain PEM, private key PEM).
    serving: Option<(String, String)>,
    /// PEM of the CA bundle front-proxy certificates chain to.
    client_ca: Option<String>,
}

/// The TLS configuration new connections get; empty until a serving certificate is set.
pub struct TlsState {
    parts: Mutex<Parts>,
    current: RwLock<Option<Arc<ServerConfig>>>,
    /// Counts changes of the client CA; bumped after `current` holds the new one.
    client_ca_changes: tokio::sync::watch::Sender<u64>,
}

impl Default for TlsState {
    fn default() -> Self {
        TlsState {
            parts: Mutex::default(),
            current: RwLock::default(),
            client_ca_changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

fn build(parts: &Parts) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let Some((cert_pem, key_pem)) = &parts.serving else {
        return Ok(None);
    };
    let chain = certs::certificates(cert_pem);
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let verifier = match &parts.client_ca {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(certs::certificates(pem));
            if added == 0 {
                return Err(TlsError::ClientCa("no certificate could be read".into()));
            }
            WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // The aggregator speaks HTTP/2; curl and older clients HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

impl TlsState {
    pub fn new() -> Arc<TlsState> {
        Arc::new(TlsState::default())
    }

    /// The configuration for a connection accepted now; `None` before the first certificate.
    pub fn config(&self) -> Option<Arc<ServerConfig>> {
        self.current.read().expect("never poisoned").clone()
    }

    /// Applies a change; a change that does not build keeps the previous configuration.
    fn change(&self, edit: impl FnOnce(&mut Parts)) -> Result<(), TlsError> {
        let mut parts = self.parts.lock().expect("never poisoned");
        let mut next = parts.clone();
        edit(&mut next);
        let config = build(&next)?;
        *parts = next;
        *self.current.write().expect("never poisoned") = config;
        Ok(())
    }

    /// Serves with this certificate chain and key (PEM) from now on.
    pub fn set_serving(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let serving = Some((cert_pem.to_string(), key_pem.to_string()));
        if self.parts.lock().expect("never poisoned").serving == serving {
            return Ok(());
        }
        self.change(|parts| parts.serving = serving)
    }

    /// Verifies client certificates against this CA bundle from now on; `None` asks for none.
    /// Connections accepted before are told to close ([`TlsState::client_ca_changes`]).
    pub fn set_client_ca(&self, pem: Option<&str>) -> Result<(), TlsError> {
        let client_ca = pem.map(String::from);
        if self.parts.lock().expect("never poisoned").client_ca == client_ca {
            return Ok(());
        }
        self.change(|parts| parts.client_ca = client_ca)?;
        self.client_ca_changes.send_modify(|changes| *changes += 1);
        Ok(())
    }

    /// Changes whenever the client CA changes. Subscribe before reading [`TlsState::config`]
    /// for a connection: a change after that point is then always seen.
    pub fn client_ca_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.client_ca_changes.subscribe()
    }
}

/// How often certificate files are looked at.
const FILE_CHECK: Duration = Duration::from_secs(1);

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    // `metadata` follows symlinks, so a Secret volume's atomic swap shows as a change.
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Serves the certificate in `cert_file` / `key_file`, loading them again whenever either
/// changes. The first load must succeed; later failures keep the previous certificate.
pub async fn serve_files(
    state: Arc<TlsState>,
    cert_file: PathBuf,
    key_file: PathBuf,
) -> Result<std::convert::Infallible, TlsError> {
    let load = |state: &TlsState| -> Result<(), TlsError> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map_err(|e| TlsError::Key(format!("reading {}: {e}", path.display())))
        };
        state.set_serving(&read(&cert_file)?, &read(&key_file)?)
    };
    let mut seen = (stamp(&cert_file), stamp(&key_file));
    load(&state)?;
    loop {
        tokio::time::sleep(FILE_CHECK).await;
        let now = (stamp(&cert_file), stamp(&key_file));
        if now == seen {
            continue;
        }
        seen = now;
        match load(&state) {
            Ok(()) => tracing::info!(cert = %cert_file.display(), "serving certificate reloaded"),
            // A pair caught halfway through a rewrite fails; the next change loads it.
            Err(err) => {
                tracing::warn!(error = %err, "serving certificate not reloaded; keeping the previous one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{issue_serving, new_authority};

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn no_certificate_no_configuration_and_bad_changes_keep_the_last_good_one() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let state = TlsState::new();
        assert!(state.config().is_none());
        let ca = new_authority("ca", now(), DAY).unwrap();
        let serving = issue_serving(&ca, &["a.b.svc".into()], now(), DAY).unwrap();
        state
            .set_serving(&serving.cert_pem, &serving.key_pem)
            .unwrap();
        let first = state.config().unwrap();
        assert_eq!(first.alpn_protocols[0], b"h2");
        assert!(matches!(
            state.set_client_ca(Some("garbage")),
            Err(TlsError::ClientCa(_))
        ));
        assert!(Arc::ptr_eq(&first, &state.config().unwrap()));
        assert!(matches!(
            state.set_serving(&serving.cert_pem, "garbage"),
            Err(TlsError::Key(_))
        ));
        state.set_client_ca(Some(&ca.cert_pem)).unwrap();
        assert!(!Arc::ptr_eq(&first, &state.config().unwrap()));
    }

    #[tokio::test]
    async fn certificate_files_are_served_and_reloaded_when_they_change() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = std::env::temp_dir().join(format!("skylift-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
        let ca = new_authority("ca", now(), DAY).unwrap();
        let write = |serving: &certs::KeyedCert| {
            std::fs::write(&cert_file, &serving.cert_pem).unwrap();
            std::fs::write(&key_file, &serving.key_pem).unwrap();
        };
        write(&issue_serving(&ca, &["first.svc".into()], now(), DAY).unwrap());
        let state = TlsState::new();
        let task = tokio::spawn(serve_files(
            state.clone(),
            cert_file.clone(),
            key_file.clone(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state.config().is_none() {
            assert!(std::time::Instant::now() < deadline, "first load");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first = state.config().unwrap();
        // A rewrite with the same size and a new mtime counts as a change.
        tokio::time::sleep(Duration::from_millis(20)).await;
        write(&issue_serving(&ca, &["second.svc".into()], now(), DAY).unwrap());
        while Arc::ptr_eq(&first, &state.config().unwrap()) {
            assert!(
                std::time::Instant::now() < deadline,
                "reloaded within a few seconds"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            state.parts.lock().unwrap().serving.as_ref().unwrap().0,
            std::fs::read_to_string(&cert_file).unwrap()
        );
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
