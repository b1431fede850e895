//! TLS to the upstreams (`--upstream-tls-ca-file`, optionally a client certificate for
//! mutual TLS with `--upstream-tls-cert-file` and `--upstream-tls-key-file`).
//!
//! Upstreams are usually pod IPs, while an OAP certificate names its Service, so the name
//! verified (and sent as SNI) can be set with `--upstream-tls-server-name`; without it the
//! upstream's own host is verified (an IP address against the certificate's IP SANs).
//! The files are read again when they change, as a mounted cert-manager Secret does on
//! renewal: new connections use the new configuration, open ones keep theirs.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};

use crate::pem::{TlsError, certificates, read};

/// Where the upstream TLS settings are read from.
#[derive(Clone, Debug)]
pub struct UpstreamTlsFiles {
    /// The CA bundle upstream certificates must chain to.
    pub ca: PathBuf,
    /// A client certificate and key, presented to upstreams that ask (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name verified and sent as SNI, in place of each upstream's host.
    pub server_name: Option<String>,
}

/// The client configuration the files make.
pub fn build(files: &UpstreamTlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(&files.ca)?);
    if added == 0 {
        return Err(TlsError::ClientCa {
            path: files.ca.clone(),
            message: "no certificate could be parsed".into(),
        });
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match &files.client_cert {
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| TlsError::Key {
                path: key.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Why a TLS connection to an upstream could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OriginationError {
    #[error("{0:?} is not a name or address TLS can verify")]
    ServerName(String),
    #[error("TLS handshake with {upstream}: {source}")]
    Handshake {
        upstream: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {0} timed out")]
    Timeout(String),
    #[error("{0} did not agree to HTTP/2 (ALPN h2) over TLS")]
    NotHttp2(String),
}

/// The configuration new upstream connections are made with, kept current with the files.
pub struct Origination {
    files: UpstreamTlsFiles,
    current: RwLock<Arc<ClientConfig>>,
}

impl Origination {
    /// Reads the files; an unusable file is an error at start.
    pub fn load(files: UpstreamTlsFiles) -> Result<Origination, TlsError> {
        let config = build(&files)?;
        Ok(Origination {
            files,
            current: RwLock::new(config),
        })
    }

    /// The name verified for an upstream whose host is `host` (`[v6]` bracketed or not).
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, OriginationError> {
        let name = self
            .files
            .server_name
            .as_deref()
            .unwrap_or(host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(name.to_string())
            .map_err(|_| OriginationError::ServerName(name.to_string()))
    }

    /// The TLS handshake over a connected `tcp` to the upstream at `host`, at most
    /// `within`; the upstream must agree to HTTP/2.
    pub async fn connect(
        &self,
        host: &str,
        tcp: tokio::net::TcpStream,
        within: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, OriginationError> {
        let name = self.server_name(host)?;
        let config = self.current.read().expect("never poisoned").clone();
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let stream = tokio::time::timeout(within, handshake)
            .await
            .map_err(|_| OriginationError::Timeout(host.to_string()))?
            .map_err(|source| OriginationError::Handshake {
                upstream: host.to_string(),
                source,
            })?;
        // gRPC needs HTTP/2; a server that picked nothing is taken to speak it (prior
        // knowledge), as gRPC clients do.
        match stream.get_ref().1.alpn_protocol() {
            None | Some(b"h2") => Ok(stream),
            Some(_) => Err(OriginationError::NotHttp2(host.to_string())),
        }
    }

    /// Reads the files again whenever they change, looking every `every`. Runs until
    /// aborted.
    pub async fn follow(self: Arc<Self>, every: Duration) {
        let files = &self.files;
        let paths = std::iter::once(files.ca.clone())
            .chain(
                files
                    .client_cert
                    .iter()
                    .flat_map(|(cert, key)| [cert.clone(), key.clone()]),
            )
            .collect();
        crate::watched::reload(paths, every, "upstream TLS", &self.current, || build(files)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origination(server_name: Option<&str>) -> Origination {
        Origination {
            files: UpstreamTlsFiles {
                ca: PathBuf::from("unused"),
                client_cert: None,
                server_name: server_name.map(str::to_string),
            },
            current: RwLock::new(Arc::new(
                ClientConfig::builder()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth(),
            )),
        }
    }

    #[test]
    fn the_verified_name_is_the_upstreams_host_unless_one_is_given() {
        let by_host = origination(None);
        assert_eq!(
            by_host.server_name("10.0.0.7").unwrap(),
            ServerName::IpAddress(std::net::Ipv4Addr::new(10, 0, 0, 7).into())
        );
        assert!(matches!(
            by_host.server_name("[fd00::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert_eq!(
            by_host.server_name("oap.obs.svc").unwrap(),
            ServerName::try_from("oap.obs.svc").unwrap()
        );
        assert!(by_host.server_name("not a name!").is_err());
        let named = origination(Some("oap.obs.svc.cluster.local"));
        assert_eq!(
            named.server_name("10.0.0.7").unwrap(),
            ServerName::try_from("oap.obs.svc.cluster.local").unwrap()
        );
    }
}
