//! How upstream connections are opened: TCP (no delay, 3 s to connect, keepalive), then
//! TLS when [`crate::upstream::tls`] is configured. The driven connections
//! ([`crate::upstream::driven`]) take the socket as it is; hyper's client (forwarded calls)
//! gets it with its writes gathered by [`crate::upstream::coalesce`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::upstream::coalesce::Coalescing;
use crate::upstream::tls::Origination;

/// Longest a TCP connect, and then a TLS handshake, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Idle time before the first keepalive probe, time between probes, and unanswered probes
/// that end the connection.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const TCP_KEEPALIVE_PROBES: u32 = 3;
/// Longest written data may go unacknowledged before the connection is given up.
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens upstream connections, in cleartext or TLS.
#[derive(Clone)]
pub(crate) struct UpstreamConnector {
    tcp: HttpConnector,
    tls: Option<Arc<Origination>>,
}

impl UpstreamConnector {
    pub fn new(tls: Option<Arc<Origination>>) -> UpstreamConnector {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // A call waits for a slow OAP's answer for as long as its connection lives, so a
        // host that vanished must break the connection: keepalive probes find it when the
        // connection is idle (about 25 s), the user timeout when data goes unacknowledged.
        // The kernel does it; HTTP/2 PINGs would, but grpc-java servers answer PINGs more
        // often than every 5 minutes with GOAWAY `too_many_pings` while they send nothing.
        tcp.set_keepalive(Some(TCP_KEEPALIVE_IDLE));
        tcp.set_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL));
        tcp.set_keepalive_retries(Some(TCP_KEEPALIVE_PROBES));
        #[cfg(target_os = "linux")]
        tcp.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
        // Requests over TLS carry the `https` scheme; the TCP part is the same.
        tcp.enforce_http(false);
        UpstreamConnector { tcp, tls }
    }
}

impl UpstreamConnector {
    /// A connection for [`crate::upstream::driven`], opened as the HTTP/2 client's are:
    /// the same TCP options, then TLS when configured.
    pub(crate) async fn open(&self, uri: Uri) -> Result<DirectIo, BoxError> {
        let mut tcp = self.tcp.clone();
        let stream = tower_service::Service::call(&mut tcp, uri.clone())
            .await?
            .into_inner();
        let Some(tls) = &self.tls else {
            return Ok(DirectIo::Plain(stream));
        };
        let host = uri.host().unwrap_or_default();
        let stream = tls.connect(host, stream, CONNECT_TIMEOUT).await?;
        Ok(DirectIo::Tls(Box::new(stream)))
    }

    /// Requests say `https`.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// A driven connection's socket, in cleartext or TLS.
pub(crate) enum DirectIo {
    Plain(TcpStream),
    /// Boxed: a TLS session is a kilobyte.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for DirectIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            DirectIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            DirectIo::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for DirectIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            DirectIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            DirectIo::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            DirectIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            DirectIo::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            DirectIo::Plain(io) => Pin::new(io).poll_flush(cx),
            DirectIo::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            DirectIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            DirectIo::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = Coalescing<UpstreamIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Coalescing<UpstreamIo>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { Ok(Coalescing::new(TokioIo::new(connector.open(uri).await?))) })
    }
}

/// A connection of hyper's client (forwarded calls).
pub(crate) type UpstreamIo = TokioIo<DirectIo>;

impl Connection for Coalescing<UpstreamIo> {
    fn connected(&self) -> Connected {
        match self.get_ref().inner() {
            DirectIo::Plain(tcp) => tcp.connected(),
            DirectIo::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}
