//! HTTP/1.1 clients (`--upstream-http-port`): a connection that does not open with the
//! HTTP/2 preface (or that chose `http/1.1` by ALPN) is served by hyper's HTTP/1.1 server,
//! keep-alive, chunked bodies, `Expect: 100-continue` and pipelining included; its
//! requests go to [`crate::listen::http`]. A connection must send each request head within
//! `--header-timeout`; a shutdown lets the request in progress finish, then closes.

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::listen::http;
use crate::listen::state::State;

/// The largest request head (request line and headers) read: beyond it, 431.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Serves one HTTP/1.1 connection until it ends; says why it ended.
pub(crate) async fn serve<I>(
    io: I,
    state: State,
    peer: SocketAddr,
    tls: bool,
    mut shutdown: watch::Receiver<bool>,
) -> &'static str
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = state.limits.header_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(http::handle(&state, Some(peer.ip()), tls, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut drained = false;
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutting_down(&mut shutdown) => {
            drained = true;
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match result {
        Ok(()) if drained => "drained",
        Ok(()) => "client_closed",
        Err(err) if err.is_timeout() => "stalled",
        Err(err) if err.is_parse() || err.is_parse_too_large() => "protocol_error",
        Err(_) => "io_error",
    }
}

/// Returns once a shutdown has begun (the watch's guard is not held past it).
async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|closing| *closing).await.is_err() {
        // The proxy is gone: nothing will ask this connection to drain.
        std::future::pending::<()>().await;
    }
}
