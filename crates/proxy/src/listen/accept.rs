//! Accepting clients: gRPC over HTTP/2 (and HTTP/1.1 with `--upstream-http-port`), in
//! cleartext or TLS, at most `--max-connections` at once; each request goes to its
//! method's policy.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::listen::calls::Calls;
use crate::listen::http1;
use crate::listen::sniff::{self, Spoken};

use crate::h2::{self, Transport, frame};

use crate::listen::state::State;

/// Longest wait for the answer to a keep-alive ping.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection counted in `State::connections` (which drives autoscaling) for as long as
/// this lives: the count comes down however the connection's task ends, panics included.
struct Counted(State);

impl Counted {
    /// Counts a connection in, unless that would pass `--max-connections`.
    fn admit(state: &State) -> Result<Counted, usize> {
        let open = state.connections.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(max) = state.limits.max_connections
            && open > max
        {
            state.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(max);
        }
        Ok(Counted(state.clone()))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves until `shutdown` turns true; then stops accepting, and every open connection
/// is sent a GOAWAY and ends once its streams are answered.
pub async fn serve(
    listener: TcpListener,
    state: State,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // One for all connections: each holds a reference, not a copy (an idle connection's
    // task is most of what it costs).
    let config = Arc::new(connection_config(&state));
    // What HTTP/2 connections wait on: begun when `shutdown` turns.
    let stop = Arc::new(h2::Shutdown::default());
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
            _ = shutdown.changed() => {
                stop.begin();
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let counted = match Counted::admit(&state) {
            Ok(counted) => counted,
            Err(max) => {
                // Closed before HTTP/2 (before TLS), as Satellite closes it: the client
                // takes it for a failed connection and tries again after its backoff,
                // through the Service, perhaps to another replica. A GOAWAY instead made
                // grpc-python reconnect at once, again and again, and grow by gigabytes
                // (apache-skywalking 1.2.0 on grpcio 1.85). Counted, and reported to OAP
                // as demand (`turned_away`); costs one accept.
                state.metrics.refused();
                state
                    .turned_away
                    .record(peer.ip(), std::time::Instant::now());
                tracing::debug!(%peer, max, "closed a connection over the limit");
                drop(stream);
                continue;
            }
        };
        let config = config.clone();
        tracing::trace!(%peer, "connection accepted");
        // Captures what it must and no more (not the peer's address, 32 bytes): it is part
        // of every connection's task.
        let closed = move |cause| {
            counted.0.metrics.connection_closed(cause);
            drop(counted);
            tracing::trace!(cause, "connection closed");
        };
        match state.tls.clone() {
            // HTTP/1.1 is served too: the first bytes say which.
            None if state.http.is_some() => {
                let (state, shutdown, stop) = (state.clone(), shutdown.clone(), stop.clone());
                tokio::spawn(async move {
                    match sniff::first_bytes(&stream, config.header_timeout).await {
                        Spoken::Http2 => {
                            let calls = Calls::new(state);
                            let transport = Transport::Plain(stream);
                            h2::serve(transport, calls, config, stop, closed).await;
                        }
                        Spoken::Http1 => {
                            closed(http1::serve(stream, state, peer, false, shutdown).await);
                        }
                        Spoken::Closed => closed("client_closed"),
                    }
                });
            }
            // The connection's future is the task: most of what an idle connection costs.
            None => {
                let calls = Calls::new(state.clone());
                let transport = Transport::Plain(stream);
                tokio::spawn(h2::serve(transport, calls, config, stop.clone(), closed));
            }
            Some(tls) => {
                let (state, shutdown, stop) = (state.clone(), shutdown.clone(), stop.clone());
                tokio::spawn(async move {
                    // Boxed: only during the handshake does a connection carry its state.
                    let handshake = Box::pin(tls.handshake(stream, config.header_timeout)).await;
                    let transport = match handshake {
                        // The client chose HTTP/1.1 (offered with --upstream-http-port).
                        Ok(stream) if stream.get_ref().1.alpn_protocol() == Some(b"http/1.1") => {
                            closed(http1::serve(stream, state, peer, true, shutdown).await);
                            return;
                        }
                        Ok(stream) => {
                            let (tcp, connection) = stream.into_inner();
                            Transport::tls(tcp, connection)
                        }
                        Err(err) => {
                            state.metrics.tls_failed();
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            closed("tls_handshake_failed");
                            return;
                        }
                    };
                    let calls = Calls::new(state.clone());
                    h2::serve(transport, calls, config, stop, closed).await;
                });
            }
        }
    }
}

/// How client connections are served, from the proxy's limits.
fn connection_config(state: &State) -> h2::Config {
    h2::Config {
        settings: h2::Settings {
            connection_window: connection_budget(state.limits.max_message_bytes),
            ..h2::Settings::default()
        },
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
        idle_timeout: state.limits.idle_timeout,
    }
}

/// A connection's budget for request data received and not yet consumed (its receive
/// window): room for one message of the largest size, and 64 KiB.
pub(crate) fn connection_budget(max_message_bytes: usize) -> u32 {
    u32::try_from(max_message_bytes + 5 + 64 * 1024)
        .unwrap_or(u32::MAX)
        .min(frame::MAX_WINDOW as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `accept` spawns for a cleartext connection, named so its size can be read.
    fn connection_task(
        io: Transport,
        calls: Calls,
        config: Arc<h2::Config>,
        shutdown: Arc<h2::Shutdown>,
    ) -> impl Future<Output = ()> {
        // What `closed` captures: the connection's count (a `State`).
        let counted = Counted(calls_state());
        h2::serve(io, calls, config, shutdown, move |_| drop(counted))
    }

    fn calls_state() -> State {
        unreachable!("only the type is looked at")
    }

    fn output_size<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The task of a connection is most of what an idle one costs (the budget is
    /// about 1 KB per idle connection); 1784 bytes when the loop kept a future per
    /// readiness and timer and a copy of the config, 1312 after, 1096 once the used stream
    /// ids were kept only after a skip, 504 since connections rest (the serving loop
    /// boxed while it runs). tokio adds about 110 bytes of header and trailer and rounds
    /// the task to 128 bytes: up to 520 it takes 640, which with the socket's 256 keeps
    /// an idle connection under 1 KB. A guard, not a target: what grows it should be
    /// boxed or shared.
    #[test]
    fn a_connections_task_stays_small() {
        let size = output_size(connection_task);
        assert!(size <= 520, "a connection's task is {size} bytes");
    }
}
