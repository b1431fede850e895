//! Accepting clients: gRPC over cleartext HTTP/2, at most `--max-connections` at once;
//! each request goes to its method's policy.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use tokio::net::TcpListener;

use crate::forward;
use crate::grpc::Body;
use crate::inbound::{self, RequestBody, Transport};
use crate::protocol::{Method, Policy};
use crate::refuse::refuse;
use crate::state::State;

/// Longest wait for the answer to a keep-alive ping.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Answers a call that is not a report taken apart on its connection (see
/// [`crate::inbound`]): sync calls, streams forwarded whole (bidirectional uploads, Go
/// profiles, compressed streams that cannot be reshaped), and every method the proxy does
/// not know (`method` None), which is passed through on the path the client used. Known
/// methods are called upstream on the name OAP registers, whatever the client's spelling.
pub async fn dispatch(
    state: State,
    method: Option<&'static Method>,
    request: Request<RequestBody>,
) -> Response<Body> {
    let path = method.map(|m| m.path);
    match method.map(|m| m.policy) {
        Some(Policy::Sync) => forward::sync_call(&state, path, request).await,
        _ => forward::pass_through(&state, path, request).await,
    }
}

/// Serves until `shutdown` turns true; then stops accepting, and every open connection
/// is sent a GOAWAY and ends once its streams are answered.
pub async fn serve(
    listener: TcpListener,
    state: State,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let open = state.connections.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(max) = state.limits.max_connections
            && open > max
        {
            state.connections.fetch_sub(1, Ordering::AcqRel);
            state.metrics.refused();
            state
                .turned_away
                .record(peer.ip(), std::time::Instant::now());
            let reason = format!(
                "skylift-proxy: connection limit of {max} reached; reconnect to another replica"
            );
            let tls = state.tls.clone();
            tokio::spawn(async move {
                let patience = Duration::from_secs(5);
                // A TLS client is told why inside TLS, which it can read.
                let refusal = match tls {
                    None => refuse(stream, &reason, patience).await,
                    Some(tls) => match tls.handshake(stream, patience).await {
                        Ok(stream) => refuse(stream, &reason, patience).await,
                        Err(_) => return,
                    },
                };
                tracing::info!(%peer, ?refusal, "refused a connection over the limit");
            });
            continue;
        }
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            let config = inbound::Config {
                keepalive: state.limits.keepalive,
                keepalive_timeout: state
                    .limits
                    .keepalive
                    .map_or(KEEPALIVE_TIMEOUT, |interval| {
                        interval.min(KEEPALIVE_TIMEOUT)
                    }),
                max_age: state.limits.max_connection_age,
                drain_grace: state.limits.max_connection_age_grace,
                header_timeout: state.limits.header_timeout,
                ..inbound::Config::default()
            };
            let transport = match &state.tls {
                None => Some(Transport::Plain(stream)),
                Some(tls) => match tls.handshake(stream, config.header_timeout).await {
                    Ok(stream) => {
                        let (tcp, connection) = stream.into_inner();
                        Some(Transport::tls(tcp, connection))
                    }
                    Err(err) => {
                        state.metrics.tls_failed();
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        None
                    }
                },
            };
            if let Some(transport) = transport {
                inbound::serve(transport, state.clone(), config, shutdown).await;
                tracing::trace!(%peer, "connection closed");
            }
            state.connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
