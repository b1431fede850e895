//! A gRPC load generator for the proxy benchmark: N client connections (each its own
//! HTTP/2 connection), each sending back-to-back calls for a fixed time, either client
//! streams of SkyWalking segments or unary reports. Prints one JSON object: calls,
//! messages, wall time and latency percentiles.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

mod agent;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// `TraceSegmentReportService/collect` client streams of `--messages` segments.
    Segments,
    /// `TraceSegmentReportService/collect` client streams of `--messages` segments sent as
    /// agents send them: each segment in a DATA frame of its own (grpc-java and grpcio
    /// write each message as it is made), the frames written since the last flush coalesced
    /// into one socket write as their transports do.
    Agent,
    /// Unary `JVMMetricReportService/collect` calls, each one `JVMMetricCollection` of
    /// about `--message-bytes`.
    Unary,
    /// `MeterReportService/collectBatch` client streams of `--messages` MeterDataCollections
    /// of about `--message-bytes`, each connection one instance as an agent is (a meter
    /// set's first MeterData names the service and instance, the routing key).
    Meters,
    /// Unary OTLP `TraceService/Export` calls, each `--messages` spans of `--traces`
    /// trace IDs (fresh ones call after call), about `--message-bytes` per span.
    Otlp,
    /// The same exports as OTLP/HTTP (`POST /v1/traces`, protobuf) over HTTP/1.1 with
    /// keep-alive: `--connections` × `--concurrency` connections, one request at a time.
    OtlpHttp,
    /// Open `--connections` HTTP/2 connections and hold them idle for `--seconds`.
    Idle,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value_t = 100)]
    messages: usize,
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Milliseconds each caller waits after each call (0: calls back to back).
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// With `otlp` modes: the trace IDs the spans of one export belong to.
    #[arg(long, default_value_t = 20)]
    traces: usize,
    /// Messages per second in all, spread over the callers (0: as fast as answered). A
    /// fixed rate below saturation compares CPU per message at equal work.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

type LoadBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A request body of `chunks`, each a DATA frame of its own.
fn load_body(chunks: &[Bytes]) -> LoadBody {
    let frames: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = chunks
        .iter()
        .map(|chunk| Ok(hyper::body::Frame::data(chunk.clone())))
        .collect();
    http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
}

/// Distinct OTLP trace exports a caller rotates through.
const OTLP_VARIANTS: u32 = 64;

/// An `ExportTraceServiceRequest` of `spans` spans over `traces` trace IDs (unique to
/// `seed`), each span about `size` bytes, in one resource and scope.
fn otlp_export(seed: u32, spans: usize, traces: usize, size: usize) -> Bytes {
    use skylift_testkit::protobuf::Pb;
    let mut scope = Pb::new().msg(1, Pb::new().str(1, "skylift.bench"));
    let padding = "x".repeat(size.saturating_sub(60));
    for i in 0..spans {
        let trace = (i % traces.max(1)) as u32;
        let mut trace_id = seed.to_be_bytes().to_vec();
        trace_id.extend_from_slice(&trace.to_be_bytes());
        trace_id.extend_from_slice(&[0x5a; 8]);
        scope = scope.msg(
            2,
            Pb::new()
                .bytes(1, &trace_id)
                .bytes(2, &(i as u64).to_be_bytes())
                .str(5, "GET /checkout")
                .varint(7, 1_700_000_000_000_000_000)
                .varint(8, 1_700_000_000_001_000_000)
                .str(9, &padding),
        );
    }
    let resource = Pb::new().msg(
        1,
        Pb::new()
            .str(1, "service.name")
            .msg(2, Pb::new().str(1, "bench-service")),
    );
    Bytes::from(
        Pb::new()
            .msg(1, Pb::new().msg(1, resource).msg(2, scope))
            .done(),
    )
}

fn grpc_framed(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

/// OTLP/HTTP exports over HTTP/1.1 keep-alive connections, one request at a time each.
async fn otlp_http(args: &Args) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..args.connections * args.concurrency {
        let exports: Vec<Bytes> = (0..OTLP_VARIANTS)
            .map(|v| {
                otlp_export(
                    caller as u32 * OTLP_VARIANTS + v,
                    args.messages,
                    args.traces,
                    args.message_bytes,
                )
            })
            .collect();
        let stream = tokio::net::TcpStream::connect(args.target).await?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let target = args.target;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            let mut next = 0;
            while Instant::now() < deadline {
                let request = hyper::Request::post("/v1/traces")
                    .header("host", target.to_string())
                    .header("content-type", "application/x-protobuf")
                    .body(Full::new(exports[next % exports.len()].clone()))
                    .expect("a valid request");
                next += 1;
                let sent = Instant::now();
                if sender.ready().await.is_err() {
                    failures += 1;
                    break;
                }
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        ok && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(sent.elapsed());
                } else {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    report(args, "otlp-http", tasks, started).await
}

type CallerResult = (Vec<Duration>, u64);

/// Prints the run's JSON line from the callers' latencies and failures.
async fn report(
    args: &Args,
    mode: &str,
    tasks: Vec<tokio::task::JoinHandle<CallerResult>>,
    started: Instant,
) -> anyhow::Result<()> {
    let per_call = match args.mode {
        Mode::Unary => 1,
        _ => args.messages,
    };
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let calls = latencies.len();
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "connections": args.connections,
            "calls": calls,
            "failed_calls": failures,
            "messages": calls * per_call,
            "seconds": elapsed,
            "messages_per_second": (calls * per_call) as f64 / elapsed,
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            // The agent-like load's socket writes (its coalescing, checked).
            "socket_writes": agent::SOCKET_WRITES.load(std::sync::atomic::Ordering::Relaxed),
        })
    );
    Ok(())
}

/// One framed `JVMMetricCollection` of about `size` bytes (JVMMetric entries added until
/// it is that large).
fn jvm_body(size: usize) -> Bytes {
    let mut message = skylift_testkit::reports::jvm_metrics("bench-service", "bench-1", 1);
    let entry = skylift_testkit::protobuf::Pb::new()
        .msg(
            1,
            skylift_testkit::protobuf::Pb::new()
                .varint(1, 1_700_000_000_000)
                .msg(2, skylift_testkit::protobuf::Pb::new().double(2, 12.5)),
        )
        .done();
    while message.len() + entry.len() <= size {
        message.extend_from_slice(&entry);
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(&message);
    out.freeze()
}

fn body(messages: usize, size: usize) -> Bytes {
    let mut out = BytesMut::new();
    // A segment-shaped message: traceId (1), segmentId (2), service (4), instance (5), padding.
    let mut message = Vec::with_capacity(size);
    for (field, value) in [
        (1u8, "trace-0001"),
        (2, "segment-0001"),
        (4, "bench-service"),
        (5, "bench-1"),
    ] {
        message.push(field << 3 | 2);
        message.push(value.len() as u8);
        message.extend_from_slice(value.as_bytes());
    }
    while message.len() < size {
        let chunk = (size - message.len()).saturating_sub(3).min(120);
        message.push(3 << 3 | 2); // spans
        message.push(chunk as u8);
        message.extend(std::iter::repeat_n(b'x', chunk));
    }
    for _ in 0..messages {
        out.extend_from_slice(&[0]);
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(&message);
    }
    out.freeze()
}

/// `messages` framed MeterDataCollections of about `size` bytes, of `instance`.
fn meter_body(messages: usize, size: usize, instance: usize) -> Bytes {
    use skylift_testkit::protobuf::Pb;
    let mut out = BytesMut::new();
    for _ in 0..messages {
        let mut collection = Pb::new().msg(
            1,
            Pb::new()
                .msg(1, Pb::new().str(1, "instance_jvm_cpu").double(3, 12.5))
                .str(3, "bench-service")
                .str(4, &format!("bench-{instance}"))
                .varint(5, 1_700_000_000_000),
        );
        let mut meter = 0;
        while collection.clone().done().len() < size {
            collection = collection.msg(
                1,
                Pb::new().msg(
                    1,
                    Pb::new()
                        .str(1, &format!("jvm_memory_pool_{meter}"))
                        .double(3, meter as f64 * 1024.0),
                ),
            );
            meter += 1;
        }
        let message = collection.done();
        out.extend_from_slice(&[0]);
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(&message);
    }
    out.freeze()
}

/// Opens idle HTTP/2 connections (handshake done, no calls) and holds them.
async fn hold_idle(args: &Args) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let stream = tokio::net::TcpStream::connect(args.target).await?;
        let (sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await?;
        held.push((sender, tokio::spawn(connection)));
    }
    println!(
        "{}",
        serde_json::json!({"mode": "idle", "connections": held.len()})
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (path, per_call) = match args.mode {
        Mode::Segments | Mode::Agent => (
            "/skywalking.v3.TraceSegmentReportService/collect",
            args.messages,
        ),
        Mode::Unary => ("/skywalking.v3.JVMMetricReportService/collect", 1),
        Mode::Meters => (
            "/skywalking.v3.MeterReportService/collectBatch",
            args.messages,
        ),
        Mode::Otlp => (
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            args.messages,
        ),
        Mode::OtlpHttp => return otlp_http(&args).await,
        Mode::Idle => return hold_idle(&args).await,
    };
    let payload = match args.mode {
        Mode::Unary => jvm_body(args.message_bytes),
        Mode::Meters => Bytes::new(), // one per connection, below
        Mode::Agent => body(1, args.message_bytes),
        _ => body(per_call, args.message_bytes),
    };
    // Each caller's time between calls at --rate.
    let callers = args.connections * args.concurrency;
    let period = (args.rate > 0)
        .then(|| Duration::from_secs_f64((callers * per_call) as f64 / args.rate as f64));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    if let Mode::Agent = args.mode {
        let load = agent::Load {
            target: args.target,
            path,
            connections: args.connections,
            concurrency: args.concurrency,
            segment: payload,
            messages: per_call,
            period,
            deadline,
        };
        let tasks = agent::callers(&load).await?;
        return report(&args, "agent", tasks, started).await;
    }
    let mut tasks = Vec::new();
    for connection in 0..args.connections {
        let first_caller = connection * args.concurrency;
        // The calls a caller rotates through, each as the DATA frames it is sent in. Each
        // connection an agent of its own, reporting its own instance's meters.
        let payloads: Vec<Vec<Bytes>> = match args.mode {
            Mode::Meters => vec![vec![meter_body(per_call, args.message_bytes, connection)]],
            Mode::Otlp => (0..OTLP_VARIANTS)
                .map(|v| {
                    let seed = connection as u32 * OTLP_VARIANTS + v;
                    vec![grpc_framed(&otlp_export(
                        seed,
                        per_call,
                        args.traces,
                        args.message_bytes,
                    ))]
                })
                .collect(),
            _ => vec![vec![payload.clone()]],
        };
        let stream = tokio::net::TcpStream::connect(args.target).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http2::handshake::<_, _, LoadBody>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(connection);
        for caller in 0..args.concurrency {
            let mut sender = sender.clone();
            let (payloads, target) = (payloads.clone(), args.target);
            let pace = Duration::from_millis(args.pace_ms);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0u64;
                let mut next = caller;
                // Callers start spread over one period, not all at once.
                let mut ticks = period.map(|period| {
                    let index = first_caller + caller;
                    let offset = period.mul_f64(index as f64 / callers.max(1) as f64);
                    let mut ticks =
                        tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticks
                });
                while Instant::now() < deadline {
                    if let Some(ticks) = &mut ticks {
                        ticks.tick().await;
                    }
                    let payload = load_body(&payloads[next % payloads.len()]);
                    next += 1;
                    let request = hyper::Request::post(format!("http://{target}{path}"))
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .body(payload)
                        .expect("a valid request");
                    let sent = Instant::now();
                    if sender.ready().await.is_err() {
                        failures += 1;
                        break;
                    }
                    let ok = match sender.send_request(request).await {
                        Ok(response) => match response.into_body().collect().await {
                            Ok(body) => body
                                .trailers()
                                .and_then(|t| t.get("grpc-status"))
                                .is_some_and(|s| s == "0"),
                            Err(_) => false,
                        },
                        Err(_) => false,
                    };
                    if ok {
                        latencies.push(sent.elapsed());
                    } else {
                        failures += 1;
                    }
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                }
                (latencies, failures)
            }));
        }
    }
    let mode = format!("{:?}", args.mode).to_lowercase();
    report(&args, &mode, tasks, started).await
}
