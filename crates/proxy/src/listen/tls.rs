//! TLS termination for clients (`--tls-cert-file`, `--tls-key-file`, optionally
//! `--tls-client-ca-file` to require client certificates). The files are read again when
//! they change (as a cert-manager Secret mounted in the pod does on renewal): each new
//! connection is accepted with the configuration current at that moment, open ones keep
//! theirs. A changed file that cannot be used is reported and the last good configuration
//! stays.
//!
//! After the handshake the connection's HTTP/2 is served by the same loop as cleartext
//! (see [`crate::h2`]), over [`crate::h2::transport`].

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ServerConfig, WebPkiClientVerifier};

pub(crate) use crate::pem::TlsError;
use crate::pem::{certificates, read};

/// Where the certificate, key and (optional) client CA bundle are read from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are required and must chain to this bundle.
    pub client_ca: Option<PathBuf>,
    /// HTTP/1.1 is served beside HTTP/2 (ALPN `http/1.1` offered after `h2`).
    pub http1: bool,
}

/// The server configuration the files make.
pub fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates(path)?);
            if added == 0 {
                return Err(TlsError::ClientCa {
                    path: path.clone(),
                    message: "no certificate could be parsed".into(),
                });
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    // gRPC is HTTP/2 only; HTTP/1.1 clients are offered it when it is served. A client
    // that offers neither gets HTTP/2, as before ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    if files.http1 {
        config.alpn_protocols.push(b"http/1.1".to_vec());
    }
    Ok(Arc::new(config))
}

/// The configuration new connections are accepted with, kept current with the files.
pub struct Termination {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Termination {
    /// Reads the files; an unusable file is an error at start.
    pub fn load(files: TlsFiles) -> Result<Termination, TlsError> {
        let config = build(&files)?;
        Ok(Termination {
            files,
            current: RwLock::new(config),
        })
    }

    /// The TLS handshake of a new connection, with the configuration current now; at
    /// most `within`.
    pub async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
        within: Duration,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
        let config = self.current.read().expect("never poisoned").clone();
        let accepting = tokio_rustls::TlsAcceptor::from(config).accept(stream);
        tokio::time::timeout(within, accepting)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Reads the files again whenever they change, looking every `every`. Runs until
    /// aborted.
    pub async fn follow(self: Arc<Self>, every: Duration) {
        let files = &self.files;
        let paths = [
            Some(&files.cert),
            Some(&files.key),
            files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        crate::watched::reload(paths, every, "client TLS", &self.current, || build(files)).await
    }
}
