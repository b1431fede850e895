//! The order a start keeps, so the aggregator is never served before it can be
//! authenticated: the front-proxy CA is loaded first; only then are the serving certificate
//! set and its CA bundle published in the APIService (which tells the aggregator it may
//! call), and only then are connections accepted. Otherwise a connection the aggregator
//! makes in between carries no client certificate, and it keeps using it.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::access::{self, Access};
use crate::bootstrap;
use crate::serve::serve;
use crate::tls::{self, TlsState};

/// Where the serving certificate comes from.
pub enum Certificates {
    /// Files (cert-manager, say), reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// A CA and certificate the adapter keeps in a Secret, its CA bundle published.
    SelfManaged(bootstrap::Settings),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the serving certificate files: {0}")]
    Files(#[from] tls::TlsError),
    #[error("the front-proxy settings watch stopped before it read them")]
    FrontProxyWatch,
    #[error("the certificate task stopped")]
    Certificates,
}

/// Loads the front-proxy settings, then the certificates, then serves `app` on `listener`;
/// returns only if a part stops.
pub async fn run(
    client: kube::Client,
    access: Arc<Access>,
    certificates: Certificates,
    listener: TcpListener,
    app: Router,
) -> StartError {
    let tls = TlsState::new();
    let (loaded, mut front_proxy_loaded) = tokio::sync::watch::channel(false);
    let watch = tokio::spawn(access::watch_front_proxy(
        client.clone(),
        access,
        tls.clone(),
        loaded,
    ));
    tracing::info!("reading the front-proxy CA before serving");
    if front_proxy_loaded.wait_for(|loaded| *loaded).await.is_err() {
        return StartError::FrontProxyWatch;
    }
    tracing::info!("front-proxy settings read; serving certificate next");
    let certificates = match certificates {
        Certificates::Files { cert, key } => {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Err(err) = tls::serve_files(tls, cert, key).await;
                StartError::Files(err)
            })
        }
        Certificates::SelfManaged(settings) => {
            let tls = tls.clone();
            tokio::spawn(async move {
                bootstrap::run(client, settings, tls).await;
                StartError::Certificates
            })
        }
    };
    let server = tokio::spawn(serve(listener, tls, app));
    let stopped = certificates.await.unwrap_or(StartError::Certificates);
    server.abort();
    watch.abort();
    stopped
}
