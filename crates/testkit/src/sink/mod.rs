//! A strict double of an OAP node's gRPC port. It serves exactly the methods OAP registers
//! ([`receivers::METHODS`]), with their gRPC kinds, and refuses what grpc-java's server and
//! OAP's handlers refuse ([`grpc`]): a unary call with a second message, an unknown method,
//! a compressed message without `grpc-encoding`, malformed protobuf, an event without a
//! layer. What it accepts it reads the way OAP's receivers do ([`receivers::receive`]), so a
//! test can ask what OAP would attribute to whom ([`Sink::attributed`]), and what it was
//! refused ([`Sink::refusals`]).
//!
//! It answers reports as OAP does (one empty message, status OK; `grpc.health.v1` answers
//! SERVING); a test service `test.Echo` echoes its messages, standing for a non-OAP upstream
//! behind a generic `Proxy`. It serves cleartext HTTP/2 (or TLS, see [`Sink::start_tls`]),
//! can be told to fail (`UNAVAILABLE`) to play a broken OAP, to answer slowly, to require
//! OAP's `authentication` token, or killed: every connection cut at once, as when an OAP
//! pod dies. An observer can be told of every call (the OAP stand-in reads its reports
//! that way).

pub mod grpc;
pub mod receivers;

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

pub use grpc::Status;
pub use receivers::{MeterReport, Received, Report, Sample};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Told of every call the sink accepts: its path, its messages and what OAP made of them.
pub type Observer = Arc<dyn Fn(&str, &[Bytes], &Received) + Send + Sync>;

/// `HealthCheckResponse { status: SERVING }`.
const SERVING: &[u8] = &[0x08, 0x01];

#[derive(Default)]
struct Recorded {
    by_path: BTreeMap<String, Vec<Bytes>>,
    /// The same messages, stream by stream (OAP reads some facts per stream).
    streams_by_path: BTreeMap<String, Vec<Vec<Bytes>>>,
    /// What OAP attributed, call after call.
    reports: Vec<Report>,
    /// The meter sets OAP's meter analyzer was given.
    meter_reports: Vec<MeterReport>,
    /// Calls closed with a status other than OK, and why.
    refusals: Vec<(String, Status)>,
    /// Messages OAP dropped without a status (see [`Received::discarded`]).
    discarded: u64,
    streams: u64,
    /// Connections accepted.
    connections: u64,
    /// Messages counted but not kept (see [`Sink::start_counting`]).
    counted: u64,
    /// Of the messages of accepted calls, those that came gzip-compressed.
    compressed: u64,
    /// Bytes of the bodies of accepted calls, as they came (compressed or not).
    wire_bytes: u64,
    /// The same, per path (a handful: looked up in order, allocated once each).
    counted_by_path: Vec<(String, u64)>,
    keep: bool,
    /// The largest message accepted (OAP's `maxMessageSize`).
    max_message_size: usize,
    /// Methods whose receiver module is not enabled (OAP then never registers them).
    disabled: Vec<String>,
    /// Calls must carry this `authentication` metadata, as OAP checks it when its
    /// `authentication` setting is on (UNAUTHENTICATED otherwise).
    required_token: Option<String>,
    /// Calls refused for a missing or wrong token.
    unauthenticated: u64,
    /// TLS handshakes that failed (see [`Sink::start_tls`]).
    tls_failures: u64,
    /// How long each answer is held back (a node in a long GC pause, say).
    delay: std::time::Duration,
    /// How long each answer is held back after its messages were handled and recorded (a
    /// node that processes every call but answers late, as OAP under load does).
    answer_delay: std::time::Duration,
    /// How long the sink waits after reading each DATA frame of a request (a node that
    /// takes data in slowly: its flow-control windows open at that pace).
    read_pace: std::time::Duration,
    /// HTTP/2 settings of new connections, and their graceful end.
    h2: H2Limits,
}

/// What a sink's new connections say and do in HTTP/2 (see [`Sink::set_h2_limits`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct H2Limits {
    /// SETTINGS_INITIAL_WINDOW_SIZE (hyper's default when `None`).
    pub stream_window: Option<u32>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (hyper's default when `None`).
    pub max_streams: Option<u32>,
    /// After this many calls a connection is shut down gracefully (GOAWAY, then the calls
    /// under way finish), as a restarting or rebalancing server does.
    pub goaway_after: Option<u64>,
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
    status_answer(&Status::new(status, message))
}

/// A trailers-only answer closing a call with `status` (at its HTTP status).
/// A trailers-only answer with `status` (and its HTTP status).
pub(crate) fn status_answer(status: &Status) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() =
        http::StatusCode::from_u16(status.http).unwrap_or(http::StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert("content-type", "application/grpc".parse().expect("static"));
    headers.insert("grpc-status", status.code.into());
    if let Ok(value) = status.message.parse() {
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
    /// the sink's memory instead of the proxy). It refuses what grpc-java refuses (unknown
    /// methods, a unary call's second message, bad framing) but does not read the
    /// messages as OAP's handlers would, so as not to be the benchmark's bottleneck.
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
            max_message_size: grpc::OAP_MAX_MESSAGE_SIZE,
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
        let limits = rec.lock().expect("sink lock is never poisoned").h2;
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let enough = Arc::new(tokio::sync::Notify::new());
        let (counted, told) = (calls.clone(), enough.clone());
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let (rec, fail, observer) = (rec.clone(), fail.clone(), observer.clone());
            if limits
                .goaway_after
                .is_some_and(|after| counted.fetch_add(1, Ordering::Relaxed) + 1 == after)
            {
                told.notify_one();
            }
            async move {
                Ok::<_, Infallible>(Self::serve(request, &rec, &fail, observer.as_ref()).await)
            }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        if let Some(window) = limits.stream_window {
            builder.initial_stream_window_size(window);
        }
        if let Some(streams) = limits.max_streams {
            builder.max_concurrent_streams(streams);
        }
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = enough.notified() => {}
        }
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    }

    /// Reads a request body, at `pace` per DATA frame when it is not zero (hyper gives a
    /// frame's bytes back to the flow-control windows as it is read).
    async fn read(
        mut body: hyper::body::Incoming,
        pace: std::time::Duration,
    ) -> Result<Bytes, hyper::Error> {
        if pace.is_zero() {
            return Ok(body.collect().await?.to_bytes());
        }
        let mut read = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                read.extend_from_slice(&data);
                tokio::time::sleep(pace).await;
            }
        }
        Ok(read.freeze())
    }

    async fn serve(
        request: Request<hyper::body::Incoming>,
        recorded: &Mutex<Recorded>,
        failing: &AtomicBool,
        observer: Option<&Observer>,
    ) -> Response<Body> {
        let path = request.uri().path().to_string();
        let (parts, body) = request.into_parts();
        if let Err(refused) = grpc::check_headers(&parts.method, &parts.headers) {
            return Self::refuse(recorded, &path, refused);
        }
        // ServerImpl: an unregistered method is UNIMPLEMENTED before anything else.
        let disabled = recorded
            .lock()
            .expect("sink lock is never poisoned")
            .disabled
            .iter()
            .any(|d| {
                receivers::lookup(d).map(|m| m.path) == receivers::lookup(&path).map(|m| m.path)
            });
        let Some(method) = receivers::lookup(&path).filter(|_| !disabled) else {
            let name = path.strip_prefix('/').unwrap_or(&path);
            return Self::refuse(
                recorded,
                &path,
                Status::new(grpc::UNIMPLEMENTED, format!("Method not found: {name}")),
            );
        };
        let encoding = match grpc::encoding(&parts.headers) {
            Ok(encoding) => encoding,
            Err(refused) => return Self::refuse(recorded, &path, refused),
        };
        let token = parts
            .headers
            .get("authentication")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let echo_status = parts
            .headers
            .get("x-echo-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok());
        let read_pace = recorded
            .lock()
            .expect("sink lock is never poisoned")
            .read_pace;
        let body = match Self::read(body, read_pace).await {
            Ok(body) => body,
            Err(_) => return trailers_only(grpc::INTERNAL, "sink: reading the request failed"),
        };
        let (delay, answer_delay, max_message_size, authenticated) = {
            let mut recorded = recorded.lock().expect("sink lock is never poisoned");
            // OAP's AuthenticationInterceptor, when its `authentication` setting is on.
            let authenticated =
                recorded.required_token.is_none() || recorded.required_token == token;
            if !authenticated {
                recorded.unauthenticated += 1;
            }
            (
                recorded.delay,
                recorded.answer_delay,
                recorded.max_message_size,
                authenticated,
            )
        };
        if !authenticated {
            return Self::refuse(
                recorded,
                &path,
                Status::new(grpc::UNAUTHENTICATED, "sink: unauthenticated"),
            );
        }
        if failing.load(Ordering::Relaxed) {
            return trailers_only(grpc::UNAVAILABLE, "sink: failing on purpose");
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let grpc::Deframed {
            messages,
            refused,
            compressed,
        } = grpc::deframe(&body, encoding, max_message_size);
        if let Err(too_many) = method.kind.check(messages.len())
            && (refused.is_none() || messages.len() > 1)
        {
            // A unary handler runs only at half-close, with exactly one message.
            return Self::refuse(recorded, &path, too_many);
        }
        if method.kind == grpc::Kind::Unary
            && let Some(refused) = refused
        {
            return Self::refuse(recorded, &path, refused);
        }
        // A streaming handler has seen the messages before a refused frame. A counting sink
        // keeps grpc-java's call rules but does not read the messages, so that it stays as
        // fast as a benchmark's upstream must.
        let reads =
            { recorded.lock().expect("sink lock is never poisoned").keep } || observer.is_some();
        let mut received = if reads {
            receivers::receive(method, &messages)
        } else {
            Received::default()
        };
        if received.refusal.is_none() {
            received.refusal = refused;
        }
        if let Some(observer) = observer {
            observer(&path, &messages, &received);
        }
        {
            let mut recorded = recorded.lock().expect("sink lock is never poisoned");
            recorded.streams += 1;
            recorded.counted += messages.len() as u64;
            recorded.compressed += compressed as u64;
            recorded.wire_bytes += body.len() as u64;
            match recorded
                .counted_by_path
                .iter_mut()
                .find(|(counted, _)| *counted == path)
            {
                Some((_, n)) => *n += messages.len() as u64,
                None => recorded
                    .counted_by_path
                    .push((path.clone(), messages.len() as u64)),
            }
            recorded.discarded += received.discarded;
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
                recorded.reports.extend(received.reports.iter().cloned());
                recorded
                    .meter_reports
                    .extend(received.meter_reports.iter().cloned());
            }
            if let Some(refused) = &received.refusal {
                recorded.refusals.push((path.clone(), refused.clone()));
            }
        }
        // Health checks are answered on time: the node is up, its report handling slow.
        if !answer_delay.is_zero() && !method.is_health_check() {
            tokio::time::sleep(answer_delay).await;
        }
        if let Some(refused) = received.refusal {
            return status_answer(&refused);
        }
        let mut trailers = http::HeaderMap::new();
        if method.is_health_check() {
            trailers.insert("grpc-status", 0u16.into());
            answer(vec![Bytes::from_static(SERVING)], trailers)
        } else if method.echoes() {
            // The test echo service: the messages back, a trailer of its own, the status asked for.
            trailers.insert("grpc-status", echo_status.unwrap_or(0).into());
            trailers.insert("x-sink-echo", "yes".parse().expect("static"));
            answer(messages, trailers)
        } else {
            // Every OAP receiver answers one empty message (Commands, or the method's empty
            // downstream type) and OK.
            trailers.insert("grpc-status", 0u16.into());
            answer(vec![Bytes::new()], trailers)
        }
    }

    /// Closes a call with `status` and records the refusal.
    fn refuse(recorded: &Mutex<Recorded>, path: &str, status: Status) -> Response<Body> {
        recorded
            .lock()
            .expect("sink lock is never poisoned")
            .refusals
            .push((path.to_string(), status.clone()));
        status_answer(&status)
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

    /// What OAP attributed on `method` (`Service/method`, no package): messages (or sets,
    /// or profiles) per `who` (see [`receivers`] for what `who` is per method).
    pub fn attributed(&self, method: &str) -> BTreeMap<(String, String), u64> {
        let mut counts = BTreeMap::new();
        for report in &self
            .recorded
            .lock()
            .expect("sink lock is never poisoned")
            .reports
        {
            if report.method == method {
                *counts.entry(report.who.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Everything OAP attributed, in the order it arrived.
    pub fn reports(&self) -> Vec<Report> {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .reports
            .clone()
    }

    /// The meter sets OAP's meter analyzer was given, in order.
    pub fn meter_reports(&self) -> Vec<MeterReport> {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .meter_reports
            .clone()
    }

    /// Calls closed with a status other than OK: (path, status).
    pub fn refusals(&self) -> Vec<(String, Status)> {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .refusals
            .clone()
    }

    /// Messages OAP would have dropped without a status (see [`Received::discarded`]).
    pub fn discarded(&self) -> u64 {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .discarded
    }

    /// From now on, serve as an OAP whose receiver for `path` is not enabled (selector
    /// empty in `application.yml`): the method is not registered, so UNIMPLEMENTED.
    pub fn disable(&self, path: &str) {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .disabled
            .push(path.to_string());
    }

    /// From now on, refuse messages larger than `bytes` (OAP's `maxMessageSize`).
    pub fn set_max_message_size(&self, bytes: usize) {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .max_message_size = bytes;
    }

    /// Messages received on every path (counted, whether kept or not).
    pub fn total(&self) -> u64 {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .counted
    }

    /// Messages received on `path` (counted, whether kept or not).
    pub fn total_of(&self, path: &str) -> u64 {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .counted_by_path
            .iter()
            .find(|(counted, _)| counted == path)
            .map_or(0, |(_, n)| *n)
    }

    /// Messages of accepted calls that came gzip-compressed, and the bytes those calls'
    /// bodies took on the wire.
    pub fn compressed(&self) -> (u64, u64) {
        let recorded = self.recorded.lock().expect("sink lock is never poisoned");
        (recorded.compressed, recorded.wire_bytes)
    }

    /// Calls accepted (those refused before their handler are in [`Sink::refusals`]).
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

    /// From now on, handle and record every call at once but hold its answer back by
    /// `delay` (a node that processes the data and answers late).
    pub fn set_answer_delay(&self, delay: std::time::Duration) {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .answer_delay = delay;
    }

    /// From now on, wait `pace` after reading each DATA frame of a request (or stop doing
    /// so): a node that takes data in slowly but steadily.
    pub fn set_read_pace(&self, pace: std::time::Duration) {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .read_pace = pace;
    }

    /// From now on, new connections use these HTTP/2 settings and end gracefully after so
    /// many calls (a strict or restarting server).
    pub fn set_h2_limits(&self, limits: H2Limits) {
        self.recorded
            .lock()
            .expect("sink lock is never poisoned")
            .h2 = limits;
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
