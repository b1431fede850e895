//! A strict stand-in for an OpenTelemetry collector's OTLP gRPC receiver (the `otlp`
//! receiver on :4317, a grpc-go server), recording every span by trace ID, every metrics
//! resource by `service.name` and every log record by trace ID, so a test can ask which
//! collector saw which trace.
//!
//! It refuses what grpc-go and the collector's decoding refuse, rule by rule:
//! - a content type other than `application/grpc[+proto|;...]`: HTTP 415 (grpc-go
//!   `internal/transport/http2_server.go`, `operateHeaders`);
//! - a method it does not serve: `UNIMPLEMENTED "unknown service <service>"` or `"unknown
//!   method <method> for service <service>"` (grpc-go `server.go`, `handleStream`);
//! - a message over 4 MiB (grpc-go's `defaultServerMaxReceiveMessageSize`, which the
//!   collector's `max_recv_msg_size_mib` keeps unless set): `RESOURCE_EXHAUSTED "grpc:
//!   received message larger than max (N vs. M)"`, and after decompression `"grpc: received
//!   message after decompression larger than max (N vs. M)"` (grpc-go `rpc_util.go`,
//!   `recvAndDecompress`);
//! - the compressed flag without `grpc-encoding`: `INTERNAL "grpc: compressed flag set with
//!   identity or empty encoding"`; an encoding it has no decompressor for (the collector
//!   registers gzip, zstd and snappy; this stand-in reads gzip): `UNIMPLEMENTED "grpc:
//!   Decompressor is not installed for grpc-encoding \"x\""` (`rpc_util.go`,
//!   `checkRecvPayload`);
//! - a body that is not one whole message, or protobuf that does not parse, or a trace or
//!   span ID whose length is neither 0 nor 16 (8) bytes (pdata's `TraceID`/`SpanID`
//!   unmarshalling): `INTERNAL "grpc: error unmarshalling request: ..."`.
//!
//! It answers an empty `Export*ServiceResponse`, or a `partial_success` when told to
//! reject some, or a status when told to refuse (as the memory limiter refuses with
//! `UNAVAILABLE`).
//!
//! Started with an HTTP port ([`Collector::start_at`]) it also serves OTLP/HTTP (:4318,
//! HTTP/1.1 and HTTP/2), with the receiver's rules (`receiver/otlpreceiver/otlphttp.go`):
//! `POST` only (405), `application/x-protobuf` or `application/json` (415), a
//! `Content-Encoding` it cannot read (400), protobuf that does not parse (400); taken
//! exports are answered 200 with the response message in protobuf, refusals with 503
//! (retryable) or 400. JSON exports are counted, not read.

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::protobuf::{self, Malformed, Pb};
use crate::sink::grpc::{INTERNAL, RESOURCE_EXHAUSTED, UNIMPLEMENTED};
use crate::sink::{Status, status_answer};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub const TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub const METRICS: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
pub const LOGS: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// grpc-go's default largest message a server receives.
pub const MAX_RECEIVE_BYTES: usize = 4 << 20;

/// One span as the collector saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub name: String,
    /// Its resource's `service.name`.
    pub service: Option<String>,
}

#[derive(Default)]
struct Recorded {
    /// Only count what is taken (for benchmarks): keep nothing.
    counting: bool,
    span_count: u64,
    spans: Vec<Span>,
    /// Each metrics resource's `service.name` and its data points.
    metric_resources: Vec<(Option<String>, u64)>,
    /// Each log record's trace ID.
    log_records: Vec<Vec<u8>>,
    exports: u64,
    /// Exports taken over HTTP (protobuf and JSON), and JSON ones.
    http_exports: u64,
    json_exports: u64,
    refusals: Vec<(String, Status)>,
    /// Refuse every export with this status.
    refusing: Option<Status>,
    /// Answer every export with a partial success rejecting this many.
    rejecting: Option<(i64, String)>,
}

/// A running collector stand-in; stops when dropped.
pub struct Collector {
    address: SocketAddr,
    http_address: Option<SocketAddr>,
    recorded: Arc<Mutex<Recorded>>,
    task: tokio::task::JoinHandle<()>,
    http_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(task) = &self.http_task {
            task.abort();
        }
    }
}

impl Collector {
    /// A collector on a free loopback port.
    pub async fn start() -> std::io::Result<Collector> {
        Self::start_on("127.0.0.1:0".parse().expect("a valid address")).await
    }

    /// A collector on `address`.
    pub async fn start_on(address: SocketAddr) -> std::io::Result<Collector> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let task = tokio::spawn(accept(listener, recorded.clone(), false));
        Ok(Collector {
            address,
            http_address: None,
            recorded,
            task,
            http_task: None,
        })
    }

    /// A collector on `ip` (a free gRPC port) that also serves OTLP/HTTP on `ip:http_port`:
    /// collectors on different loopback addresses (127.0.0.2, 127.0.0.3, ...) share one
    /// HTTP port, as a pool's pods do.
    pub async fn start_at(ip: std::net::IpAddr, http_port: u16) -> std::io::Result<Collector> {
        Self::start_at_ports(SocketAddr::new(ip, 0), http_port).await
    }

    /// A collector on `address` that also serves OTLP/HTTP on its IP at `http_port`.
    pub async fn start_at_ports(address: SocketAddr, http_port: u16) -> std::io::Result<Collector> {
        let ip = address.ip();
        let mut collector = Self::start_on(address).await?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, http_port)).await?;
        collector.http_address = Some(listener.local_addr()?);
        collector.http_task = Some(tokio::spawn(accept(
            listener,
            collector.recorded.clone(),
            true,
        )));
        Ok(collector)
    }

    /// The OTLP/HTTP address, when it serves one.
    pub fn http_address(&self) -> Option<String> {
        self.http_address.map(|a| a.to_string())
    }

    /// Exports taken over HTTP, and how many of them were JSON.
    pub fn http_exports(&self) -> (u64, u64) {
        self.with(|r| (r.http_exports, r.json_exports))
    }

    pub fn address(&self) -> String {
        self.address.to_string()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Recorded) -> T) -> T {
        f(&mut self
            .recorded
            .lock()
            .expect("collector lock is never poisoned"))
    }

    /// Keep nothing from now on, only count (for benchmarks).
    pub fn count_only(&self) {
        self.with(|r| r.counting = true);
    }

    /// Spans taken (counted whether kept or not).
    pub fn span_count(&self) -> u64 {
        self.with(|r| r.span_count)
    }

    /// Every span taken, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        self.with(|r| r.spans.clone())
    }

    /// Every metrics resource taken: its `service.name` and data points.
    pub fn metric_resources(&self) -> Vec<(Option<String>, u64)> {
        self.with(|r| r.metric_resources.clone())
    }

    /// Every log record taken: its trace ID (empty outside a trace).
    pub fn log_records(&self) -> Vec<Vec<u8>> {
        self.with(|r| r.log_records.clone())
    }

    /// Export calls taken.
    pub fn exports(&self) -> u64 {
        self.with(|r| r.exports)
    }

    /// Calls refused, with their status.
    pub fn refusals(&self) -> Vec<(String, Status)> {
        self.with(|r| r.refusals.clone())
    }

    /// Refuse every export with `status` from now on (`None`: take them again).
    pub fn refuse_with(&self, status: Option<Status>) {
        self.with(|r| r.refusing = status);
    }

    /// Take every export, but answer a partial success rejecting `count` of it.
    pub fn reject_partially(&self, rejection: Option<(i64, &str)>) {
        self.with(|r| r.rejecting = rejection.map(|(n, m)| (n, m.to_string())));
    }
}

/// Serves the connections of `listener`: gRPC (HTTP/2), or OTLP/HTTP (HTTP/1.1 and
/// HTTP/2) when `http`.
async fn accept(listener: tokio::net::TcpListener, recorded: Arc<Mutex<Recorded>>, http: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Go's TCP connections have Nagle off by default.
        let _ = stream.set_nodelay(true);
        let recorded = recorded.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let recorded = recorded.clone();
                async move {
                    Ok::<_, Infallible>(if http {
                        serve_http(request, &recorded).await
                    } else {
                        serve(request, &recorded).await
                    })
                }
            });
            let io = TokioIo::new(stream);
            if http {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            } else {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            }
        });
    }
}

fn http_answer(status: u16, content_type: &str, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
    response
        .headers_mut()
        .insert("content-type", content_type.parse().expect("a valid type"));
    response
}

/// An OTLP/HTTP export, as the collector's `otlphttp.go` handles it.
async fn serve_http(
    request: Request<hyper::body::Incoming>,
    recorded: &Mutex<Recorded>,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    let signal = match path.as_str() {
        "/v1/traces" => TRACES,
        "/v1/metrics" => METRICS,
        "/v1/logs" => LOGS,
        _ => return http_answer(404, "text/plain", b"404 page not found".to_vec()),
    };
    let refuse = |status: u16, message: String| {
        recorded
            .lock()
            .expect("collector lock is never poisoned")
            .refusals
            .push((
                path.clone(),
                Status {
                    code: 0,
                    message: message.clone(),
                    http: status,
                },
            ));
        http_answer(status, "text/plain", message.into_bytes())
    };
    if request.method() != http::Method::POST {
        return refuse(
            405,
            format!("{} method not allowed, supported: [POST]", request.method()),
        );
    }
    let content_type = header(&request, "content-type").unwrap_or_default();
    let json = content_type.starts_with("application/json");
    if !json && !content_type.starts_with("application/x-protobuf") {
        return refuse(
            415,
            format!(
                "{content_type} unsupported media type, supported: [application/json, application/x-protobuf]"
            ),
        );
    }
    let encoding = header(&request, "content-encoding");
    let Ok(body) = request.into_body().collect().await else {
        return refuse(400, "failed to read the request body".into());
    };
    let body = body.to_bytes();
    let message = match encoding.as_deref() {
        None | Some("identity") | Some("") => body.to_vec(),
        Some("gzip") => match gunzip(&body) {
            Ok(out) => out,
            Err(_) => return refuse(400, "gzip: invalid header".into()),
        },
        Some(other) => return refuse(400, format!("unsupported Content-Encoding: {other}")),
    };
    if json {
        if serde_json::from_slice::<serde_json::Value>(&message).is_err() {
            return refuse(400, "invalid JSON export".into());
        }
        let mut r = recorded.lock().expect("collector lock is never poisoned");
        r.http_exports += 1;
        r.json_exports += 1;
        return http_answer(200, "application/json", b"{}".to_vec());
    }
    let read = match signal {
        TRACES => read_traces(&message).map(Taken::Spans),
        METRICS => read_metrics(&message).map(Taken::Metrics),
        _ => read_logs(&message).map(Taken::Logs),
    };
    let taken = match read {
        Ok(taken) => taken,
        Err(reason) => return refuse(400, format!("proto: {reason}")),
    };
    let mut r = recorded.lock().expect("collector lock is never poisoned");
    if let Some(status) = r.refusing.clone() {
        // A retryable refusal is 503 over HTTP (`errors.GetHTTPStatusCodeFromStatus`).
        let code = if status.code == crate::sink::grpc::UNAVAILABLE {
            503
        } else {
            400
        };
        r.refusals.push((
            path,
            Status {
                http: code,
                ..status.clone()
            },
        ));
        return http_answer(code, "text/plain", status.message.into_bytes());
    }
    r.http_exports += 1;
    r.take(taken);
    let response = match &r.rejecting {
        Some((count, message)) => Pb::new()
            .msg(1, Pb::new().varint(1, *count as u64).str(2, message))
            .done(),
        None => Vec::new(),
    };
    http_answer(200, "application/x-protobuf", response)
}

fn answer(message: Vec<u8>) -> Response<Body> {
    let mut framed = vec![0];
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", 0.into());
    let frames = [
        Ok::<_, Infallible>(Frame::data(Bytes::from(framed))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed());
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().expect("static"));
    response
}

fn refuse(recorded: &Mutex<Recorded>, path: &str, status: Status) -> Response<Body> {
    recorded
        .lock()
        .expect("collector lock is never poisoned")
        .refusals
        .push((path.to_string(), status.clone()));
    status_answer(&status)
}

async fn serve(
    request: Request<hyper::body::Incoming>,
    recorded: &Mutex<Recorded>,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'));
    if !grpc {
        let mut refusal = Status::new(INTERNAL, "invalid gRPC request content-type");
        refusal.http = 415;
        return refuse(recorded, &path, refusal);
    }
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.rsplit_once('/'))
        .unwrap_or(("", ""));
    if ![TRACES, METRICS, LOGS].contains(&path.as_str()) {
        let known = [TRACES, METRICS, LOGS].iter().any(|p| {
            p.strip_prefix('/')
                .and_then(|p| p.rsplit_once('/'))
                .map(|(s, _)| s)
                == Some(service)
        });
        let message = if known {
            format!("unknown method {method} for service {service}")
        } else {
            format!("unknown service {service}")
        };
        return refuse(recorded, &path, Status::new(UNIMPLEMENTED, message));
    }
    let encoding = header(&request, "grpc-encoding");
    let Ok(body) = request.into_body().collect().await else {
        return refuse(recorded, &path, Status::new(INTERNAL, "stream broke off"));
    };
    let message = match deframe(&body.to_bytes(), encoding.as_deref()) {
        Ok(message) => message,
        Err(status) => return refuse(recorded, &path, status),
    };
    let read = match path.as_str() {
        TRACES => read_traces(&message).map(Taken::Spans),
        METRICS => read_metrics(&message).map(Taken::Metrics),
        _ => read_logs(&message).map(Taken::Logs),
    };
    let taken = match read {
        Ok(taken) => taken,
        Err(reason) => {
            return refuse(
                recorded,
                &path,
                Status::new(
                    INTERNAL,
                    format!("grpc: error unmarshalling request: {reason}"),
                ),
            );
        }
    };
    let mut r = recorded.lock().expect("collector lock is never poisoned");
    if let Some(status) = r.refusing.clone() {
        r.refusals.push((path, status.clone()));
        return status_answer(&status);
    }
    r.take(taken);
    let response = match &r.rejecting {
        // ExportTracePartialSuccess { rejected = 1; error_message = 2 } (all three signals).
        Some((count, message)) => Pb::new()
            .msg(1, Pb::new().varint(1, *count as u64).str(2, message))
            .done(),
        None => Vec::new(),
    };
    answer(response)
}

impl Recorded {
    /// Records an export taken.
    fn take(&mut self, taken: Taken) {
        self.exports += 1;
        if let Taken::Spans(spans) = &taken {
            self.span_count += spans.len() as u64;
        }
        if self.counting {
            return;
        }
        match taken {
            Taken::Spans(spans) => self.spans.extend(spans),
            Taken::Metrics(resources) => self.metric_resources.extend(resources),
            Taken::Logs(records) => self.log_records.extend(records),
        }
    }
}

enum Taken {
    Spans(Vec<Span>),
    Metrics(Vec<(Option<String>, u64)>),
    Logs(Vec<Vec<u8>>),
}

/// The one message of a unary request, as grpc-go's `recvAndDecompress` reads it.
fn deframe(body: &[u8], encoding: Option<&str>) -> Result<Vec<u8>, Status> {
    let unmarshal = |what: &str| {
        Status::new(
            INTERNAL,
            format!("grpc: error unmarshalling request: {what}"),
        )
    };
    let header = body.get(..5).ok_or_else(|| unmarshal("unexpected EOF"))?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length > MAX_RECEIVE_BYTES {
        return Err(Status::new(
            RESOURCE_EXHAUSTED,
            format!("grpc: received message larger than max ({length} vs. {MAX_RECEIVE_BYTES})"),
        ));
    }
    let message = body
        .get(5..5 + length)
        .ok_or_else(|| unmarshal("unexpected EOF"))?;
    match header[0] {
        0 => Ok(message.to_vec()),
        1 => match encoding {
            None | Some("identity") => Err(Status::new(
                INTERNAL,
                "grpc: compressed flag set with identity or empty encoding",
            )),
            Some("gzip") => {
                let out = gunzip(message).map_err(|e| {
                    Status::new(
                        INTERNAL,
                        format!("grpc: failed to decompress the received message: {e}"),
                    )
                })?;
                if out.len() > MAX_RECEIVE_BYTES {
                    return Err(Status::new(
                        RESOURCE_EXHAUSTED,
                        format!(
                            "grpc: received message after decompression larger than max ({} vs. {MAX_RECEIVE_BYTES})",
                            out.len()
                        ),
                    ));
                }
                Ok(out)
            }
            Some(other) => Err(Status::new(
                UNIMPLEMENTED,
                format!("grpc: Decompressor is not installed for grpc-encoding \"{other}\""),
            )),
        },
        flag => Err(Status::new(
            INTERNAL,
            format!("grpc: received unexpected payload format {flag}"),
        )),
    }
}

/// A request header's value as text.
fn header<B>(request: &Request<B>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A gzip member inflated, to one byte past the largest message received (enough to tell
/// it is too large).
fn gunzip(compressed: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(MAX_RECEIVE_BYTES as u64 + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// An ID field: empty, or exactly `size` bytes (pdata's `TraceID`/`SpanID`).
fn id(message: &[u8], number: u64, size: usize) -> Result<Vec<u8>, String> {
    let id = protobuf::bytes_field(message, number).map_err(malformed)?;
    if !id.is_empty() && id.len() != size {
        return Err(format!("invalid length for ID: {} bytes", id.len()));
    }
    Ok(id.to_vec())
}

fn malformed(err: Malformed) -> String {
    err.to_string()
}

/// The string value of a resource's attribute `key`.
fn attribute(resource: &[u8], key: &str) -> Result<Option<String>, String> {
    let mut found = None;
    for attribute in protobuf::messages(resource, 1).map_err(malformed)? {
        if protobuf::string(attribute, 1)
            .map_err(malformed)?
            .as_deref()
            == Some(key)
            && let Some(value) = protobuf::merged(attribute, 2).map_err(malformed)?
        {
            found = protobuf::string(&value, 1).map_err(malformed)?;
        }
    }
    Ok(found)
}

/// Resource → scope → item, as traces and logs are shaped; `item` reads each item with its
/// resource's `service.name`.
fn walk<T>(
    message: &[u8],
    mut item: impl FnMut(&[u8], Option<&str>) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for resource_items in protobuf::messages(message, 1).map_err(malformed)? {
        let resource = protobuf::merged(resource_items, 1)
            .map_err(malformed)?
            .unwrap_or_default();
        let service = attribute(&resource, "service.name")?;
        for scope in protobuf::messages(resource_items, 2).map_err(malformed)? {
            protobuf::fields(scope).map_err(malformed)?;
            for each in protobuf::messages(scope, 2).map_err(malformed)? {
                out.push(item(each, service.as_deref())?);
            }
        }
    }
    Ok(out)
}

fn read_traces(message: &[u8]) -> Result<Vec<Span>, String> {
    walk(message, |span, service| {
        Ok(Span {
            trace_id: id(span, 1, 16)?,
            span_id: id(span, 2, 8)?,
            name: protobuf::string(span, 5)
                .map_err(malformed)?
                .unwrap_or_default(),
            service: service.map(str::to_string),
        })
    })
}

fn read_logs(message: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    walk(message, |record, _| {
        id(record, 10, 8)?;
        id(record, 9, 16)
    })
}

fn read_metrics(message: &[u8]) -> Result<Vec<(Option<String>, u64)>, String> {
    let mut out = Vec::new();
    for resource_metrics in protobuf::messages(message, 1).map_err(malformed)? {
        let resource = protobuf::merged(resource_metrics, 1)
            .map_err(malformed)?
            .unwrap_or_default();
        let mut points = 0;
        for scope in protobuf::messages(resource_metrics, 2).map_err(malformed)? {
            for metric in protobuf::messages(scope, 2).map_err(malformed)? {
                // gauge 5, sum 7, histogram 9, exponential histogram 10, summary 11.
                for kind in [5, 7, 9, 10, 11] {
                    if let Some(data) = protobuf::merged(metric, kind).map_err(malformed)? {
                        points += protobuf::messages(&data, 1).map_err(malformed)?.len() as u64;
                    }
                }
            }
        }
        out.push((attribute(&resource, "service.name")?, points));
    }
    Ok(out)
}
