//! Accepting clients: gRPC over cleartext HTTP/2, at most `--max-connections` at once;
//! each request goes to its method's policy.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::coalesce::Coalescing;
use crate::grpc::Body;
use crate::protocol::{self, Policy};
use crate::refuse::refuse;
use crate::state::State;
use crate::{forward, ingest};

/// Longest wait for the answer to a keep-alive ping.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Routes one request by its method's policy. The forwarding paths, whose futures hold an
/// upstream call, are boxed so that a report's future does not carry their size.
pub async fn handle(state: State, request: Request<Incoming>) -> Response<Body> {
    match protocol::lookup(request.uri().path()) {
        Some(method) => match method.policy {
            Policy::AsyncStream | Policy::AsyncUnary
                if ingest::can_reshape(method, request.headers()) =>
            {
                ingest::report(&state, method, request).await
            }
            Policy::Sync => Box::pin(forward::sync_call(&state, request)).await,
            Policy::AsyncStream | Policy::AsyncUnary | Policy::PassThrough => {
                Box::pin(forward::pass_through(&state, request)).await
            }
        },
        None => Box::pin(forward::pass_through(&state, request)).await,
    }
}

/// Serves until `shutdown` turns true (then stops accepting; open connections finish).
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
            let reason = format!(
                "skylift-proxy: connection limit of {max} reached; reconnect to another replica"
            );
            tokio::spawn(async move {
                let refusal = refuse(stream, &reason, Duration::from_secs(5)).await;
                tracing::info!(%peer, ?refusal, "refused a connection over the limit");
            });
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn({
                let state = state.clone();
                move |request| {
                    let state = state.clone();
                    // Boxed: hyper moves each request's future into a task of its own, and
                    // moving a pointer is cheaper than moving a KiB-sized state machine.
                    async move {
                        Ok::<_, std::convert::Infallible>(Box::pin(handle(state, request)).await)
                    }
                }
            });
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            if let Some(interval) = state.limits.keepalive {
                builder
                    .timer(TokioTimer::new())
                    .keep_alive_interval(interval)
                    .keep_alive_timeout(interval.min(KEEPALIVE_TIMEOUT));
            }
            let served = builder
                .serve_connection(TokioIo::new(Coalescing::new(stream)), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            state.connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
