//! An upstream gRPC sink standing in for an OAP node's gRPC port: it accepts every method
//! over cleartext HTTP/2 (or TLS, see `Sink::start_tls`), records each message it receives per method, and answers reports
//! the way OAP does (one empty `Commands` message, status OK; `grpc.health.v1` answers
//! SERVING). Unknown methods are echoed back with a trailer, so pass-through can be checked.
//! An observer can be told of every call (the OAP stand-in reads its reports that way).
//! It can be told to fail (`UNAVAILABLE`) to play a broken OAP, or killed: every
//! connection cut at once, as when an OAP pod dies.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Told of every call the sink accepts: its path and messages.
pub type Observer = Arc<dyn Fn(&str, &[Bytes]) + Send + Sync>;

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse { status: SERVING }`.
const SERVING: &[u8] = &[0x08, 0x01];

/// Splits a gRPC body into its messages (the sink's own reading of the framing).
pub fn split_messages(mut body: &[u8]) -> Result<Vec<Bytes>, String> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err(format!("{} stray bytes after the last message", body.len()));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + len {
            return Err("truncated message".into());
        }
        messages.push(Bytes::copy_from_slice(&body[5..5 + len]));
        body = &body[5 + len..];
    }
    Ok(messages)
}

#[derive(Default)]
struct Recorded {
    by_path: BTreeMap<String, Vec<Bytes>>,
    /// The same messages, stream by stream (OAP reads some facts per stream).
    streams_by_path: BTreeMap<String, Vec<Vec<Bytes>>>,
    streams: u64,
    /// Connections accepted.
    connections: u64,
    /// Messages counted but not kept (see [`Sink::start_counting`]).
    counted: u64,
    keep: bool,
    /// Calls must carry this `authentication` metadata, as OAP checks it when its
    /// `authentication` setting is on (UNAUTHENTICATED otherwise).
    required_token: Option<String>,
    /// Calls refused for a missing or wrong token.
    unauthenticated: u64,
    /// TLS handshakes that failed (see [`Sink::start_tls`]).
    tls_failures: u64,
    /// How long each answer is held back (a node in a long GC pause, say).
    delay: std::time::Duration,
}

/// A running sink.
pub struct Sink {
    address: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    failing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    /// Turns true when the sink is killed; every connection task watches it.
    killed: tokio::sync::watch::Sender<bool>,
}

fn trailers_only(status: u16, message: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    let headers = response.headers_mut();
    headers.insert("content-type", "application/grpc".parse().expect("static"));
    headers.insert("grpc-status", status.into());
    if let Ok(value) = message.parse() {
        headers.insert("grpc-message", value);
    }
    response
}

fn answer(messages: Vec<Bytes>, trailers: http::HeaderMap) -> Response<Body> {
    let frames = messages
        .into_iter()
        .map(|m| {
            let mut framed = Vec::with_capacity(5 + m.len());
            framed.push(0);
            framed.extend_from_slice(&u32::try_from(m.len()).unwrap_or(u32::MAX).to_be_bytes());
            framed.extend_from_slice(&m);
            Ok::<_, Infallible>(Frame::data(Bytes::from(framed)))
        })
        .chain(std::iter::once(Ok(Frame::trailers(trailers))));
    let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed());
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().expect("static"));
    response
}

impl Sink {
    /// A sink on a free loopback port that keeps every message.
    pub async fn start() -> std::io::Result<Sink> {
        Self::start_on("127.0.0.1:0".parse().expect("a valid address"), true, None).await
    }

    /// A sink on `address` that keeps every message (a restarted upstream, say).
    pub async fn start_keeping(address: SocketAddr) -> std::io::Result<Sink> {
        Self::start_on(address, true, None).await
    }

    /// A sink that only counts messages (for load tests, where keeping them would measure
    /// the sink's memory instead of the proxy).
    pub async fn start_counting(address: SocketAddr) -> std::io::Result<Sink> {
        Self::start_on(address, false, None).await
    }

    /// A counting sink that tells `observer` of every call.
    pub async fn start_observed(address: SocketAddr, observer: Observer) -> std::io::Result<Sink> {
        Self::start_on(address, false, Some(observer)).await
    }

    /// A sink that keeps every message and serves TLS with `tls` (ALPN `h2`), as an OAP
    /// with its gRPC TLS settings does; failed handshakes are counted.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> std::io::Result<Sink> {
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Self::start_with(
            "127.0.0.1:0".parse().expect("a valid address"),
            true,
            None,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
        )
        .await
    }

    async fn start_on(
        address: SocketAddr,
        keep: bool,
        observer: Option<Observer>,
    ) -> std::io::Result<Sink> {
        Self::start_with(address, keep, observer, None).await
    }

    async fn start_with(
        address: SocketAddr,
        keep: bool,
        observer: Option<Observer>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Sink> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let recorded: Arc<Mutex<Recorded>> = Arc::new(Mutex::new(Recorded {
            keep,
            ..Recorded::default()
        }));
        let failing = Arc::new(AtomicBool::new(false));
        let (killed, kill_signal) = tokio::sync::watch::channel(false);
        let (rec, fail) = (recorded.clone(), failing.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (rec, fail, observer) = (rec.clone(), fail.clone(), observer.clone());
                let mut kill_signal = kill_signal.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let served = async {
                        match tls {
                            None => {
                                Self::count_connection(&rec);
                                Self::serve_connection(TokioIo::new(stream), rec, fail, observer)
                                    .await
                            }
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(stream) => {
                                    Self::count_connection(&rec);
                                    Self::serve_connection(
                                        TokioIo::new(stream),
                                        rec,
                                        fail,
                                        observer,
                                    )
                                    .await
                                }
                                Err(_) => {
                                    rec.lock()
                                        .expect("sink lock is never poisoned")
                                        .tls_failures += 1;
                                }
                            },
                        }
                    };
                    // Killed: the connection is dropped mid-whatever, without a GOAWAY.
                    tokio::select! {
                        _ = served => {}
                        _ = kill_signal.wait_for(|killed| *killed) => {}
                    }
                });
            }
        });
        Ok(Sink {
            address,
            recorded,
            failing,
            task,
            killed,
        })
    }

    fn count_connection(recorded: &Mutex<Recorded>) {
        recorded
            .lock()
            .expect("sink lock is never poisoned")
            .connections += 1;
    }

    async fn serve_connection<I>(
        io: I,
        rec: Arc<Mutex<Recorded>>,
        fail: Arc<AtomicBool>,
        observer: Option<Observer>,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let (rec, fail, observer) = (rec.clone(), fail.clone(), observer.clone());
            async move {
                Ok::<_, Infallible>(Self::serve(request, &rec, &fail, observer.as_ref()).await)
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    }

    async fn serve(
        request: Request<hyper::body::Incoming>,
        recorded: &Mutex<Recorded>,
        failing: &AtomicBool,
        observer: Option<&Observer>,
    ) -> Response<Body> {
        let path = request.uri().path().to_string();
        let echo_status = request
            .headers()
            .get("x-echo-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok());
        let token = request
            .headers()
            .get("authentication")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return trailers_only(13, "sink: reading the request failed"),
        };
        let delay = {
            let mut recorded = recorded.lock().expect("sink lock is never poisoned");
            if recorded.required_token.is_some() && recorded.required_token != token {
                recorded.unauthenticated += 1;
                return trailers_only(16, "sink: unauthenticated");
            }
            recorded.delay
        };
        if failing.load(Ordering::Relaxed) {
            return trailers_only(14, "sink: failing on purpose");
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let messages = match split_messages(&body) {
            Ok(messages) => messages,
            Err(err) => return trailers_only(13, &format!("sink: {err}")),
        };
        if let Some(observer) = observer {
            observer(&path, &messages);
        }
        let is_report = path.starts_with("/skywalking.")
            || path.starts_with("/envoy.")
            || !path[1..].contains('.');
        {
            let mut recorded = recorded.lock().expect("sink lock is never poisoned");
            recorded.streams += 1;
            recorded.counted += messages.len() as u64;
            if recorded.keep {
                recorded
                    .by_path
                    .entry(path.clone())
                    .or_default()
                    .extend(messages.iter().cloned());
                recorded
                    .streams_by_path
                    .entry(path.clone())
                    .or_default()
                    .push(messages.clone());
            }
        }
        let mut trailers = http::HeaderMap::new();
        if path == HEALTH_CHECK {
            trailers.insert("grpc-status", 0u16.into());
            answer(vec![Bytes::from_static(SERVING)], trailers)
        } else if is_report {
            trailers.insert("grpc-status", 0u16.into());
            answer(vec![Bytes::new()], trailers)
        } else {
            // Echo service: the messages back, a trailer of its own, the status asked for.
            trailers.insert("grpc-status", echo_status.unwrap_or(0).into());
            trailers.insert("x-sink-echo", "yes".parse().expect("static"));
            answer(messages, trailers)
        }
    }

    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Messages received on `path`.
    pub fn messages(&self, path: &str) -> Vec<Bytes> {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .by_path
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// The streams received on `path`, each as its messages in order.
    pub fn streams_on(&self, path: &str) -> Vec<Vec<Bytes>> {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .streams_by_path
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Messages received on every path (counted, whether kept or not).
    pub fn total(&self) -> u64 {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .counted
    }

    /// Client streams (calls) received.
    pub fn streams(&self) -> u64 {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .streams
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .connections
    }

    /// Dies like a killed OAP: stops accepting and cuts every open connection. What it
    /// recorded before stays readable.
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.killed.send(true);
    }

    /// From now on, answer calls without this `authentication` metadata with
    /// `UNAUTHENTICATED`, as OAP does with its `authentication` setting (`None`: stop).
    pub fn require_authentication(&self, token: Option<&str>) {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .required_token = token.map(String::from);
    }

    /// Calls refused for a missing or wrong `authentication`.
    pub fn unauthenticated(&self) -> u64 {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .unauthenticated
    }

    /// TLS handshakes that failed (a client that did not trust the sink, or presented no
    /// certificate when one was required).
    pub fn tls_failures(&self) -> u64 {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .tls_failures
    }

    /// From now on, hold every answer back by `delay` (a slow but working node).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .delay = delay;
    }

    /// From now on, answer every call with `UNAVAILABLE` (or stop doing so).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill();
    }
}
