//! The HTTPS listener: each connection is accepted with the TLS configuration current at
//! that moment and closed gracefully when the client CA changes, its client certificate's
//! common name is attached to every request on it, and HTTP/1.1 or HTTP/2 is served as ALPN
//! chose.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::certs;
use crate::tls::TlsState;

/// The verified client certificate of a connection, if it brought one; attached to every
/// request of the connection as an extension.
#[derive(Clone, Debug, Default)]
pub struct ClientCert {
    /// The subject's common name; `None` when no certificate was presented.
    pub common_name: Option<String>,
}

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` over TLS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<TlsState>, app: Router) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Subscribed before the configuration is read: a CA change from here on closes
        // this connection.
        let mut client_ca_changes = tls.client_ca_changes();
        let Some(config) = tls.config() else {
            tracing::debug!(%peer, "no serving certificate yet; connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let accepted =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream))
                    .await;
            let stream = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let cert = ClientCert {
                common_name: stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| certs::common_name(leaf)),
            };
            let service =
                hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                    request.extensions_mut().insert(cert.clone());
                    app.clone().oneshot(request)
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = client_ca_changes.changed() => {
                    // HTTP/2: GOAWAY, requests under way finish; HTTP/1.1: closed after the
                    // current one. The client reconnects under the new CA.
                    tracing::debug!(%peer, "client CA changed; closing the connection");
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
}
