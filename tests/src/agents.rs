//! Agents as the proxy sees them: each holds one HTTP/2 connection for as long as it runs
//! and reports a client stream of segments every period, like a SkyWalking agent's gRPC
//! reporter. A connection that is turned away (GOAWAY at the limit) or lost is tried
//! again a second later, as gRPC clients reconnect. Counts say what was acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const SEGMENTS: &str = "/skywalking.v3.TraceSegmentReportService/collect";

/// What one agent did.
#[derive(Debug, Default)]
pub struct AgentCounts {
    /// Segments in calls answered OK: the proxy acknowledged them.
    pub acknowledged: AtomicU64,
    /// Segments in calls answered otherwise (the agent would drop or resend them).
    pub refused: AtomicU64,
    /// Connections turned away or lost.
    pub disconnects: AtomicU64,
    pub connected: AtomicBool,
    /// The segment numbers of every call answered OK, as ranges.
    pub acknowledged_numbers: std::sync::Mutex<Vec<std::ops::Range<u64>>>,
}

/// A running agent.
pub struct Agent {
    pub instance: String,
    pub counts: Arc<AgentCounts>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// A `SegmentObject`: traceId = 1, traceSegmentId = 2, spans = 3, service = 4, instance = 5.
/// Its segment id is `segment-<instance>-<number>` (see [`segment_id`]).
fn segment(service: &str, instance: &str, number: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut field = |tag: u8, value: &[u8]| {
        out.push(tag << 3 | 2);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    };
    field(1, format!("trace-{instance}-{number}").as_bytes());
    field(2, format!("segment-{instance}-{number}").as_bytes());
    field(3, &[b's'; 120]);
    field(4, service.as_bytes());
    field(5, instance.as_bytes());
    out
}

/// The segment id of a segment an agent made (`segment-<instance>-<number>`).
pub fn segment_id(message: &[u8]) -> Option<&str> {
    let mut rest = message;
    while rest.len() >= 2 {
        let (tag, len) = (rest[0] >> 3, usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if tag == 2 {
            return std::str::from_utf8(value).ok();
        }
        rest = &rest[2 + len..];
    }
    None
}

fn stream_body(service: &str, instance: &str, first: u64, count: u64) -> Bytes {
    let mut body = BytesMut::new();
    for number in first..first + count {
        let message = segment(service, instance, number);
        body.extend_from_slice(&[0]);
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
    }
    body.freeze()
}

async fn connect(target: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(target).await.ok()?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// One report call: `Some(status)` when answered, `None` when the connection failed.
async fn report(
    sender: &mut SendRequest<Full<Bytes>>,
    target: SocketAddr,
    body: Bytes,
) -> Option<u32> {
    sender.ready().await.ok()?;
    let request = hyper::Request::post(format!("http://{target}{SEGMENTS}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let in_headers = response.headers().get("grpc-status").cloned();
    let collected = response.into_body().collect().await.ok()?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(in_headers)?;
    status.to_str().ok()?.parse().ok()
}

impl Agent {
    /// Starts reporting `per_call` segments every `period` to `target` as `service`/`instance`.
    pub fn start(
        target: SocketAddr,
        service: &str,
        instance: &str,
        per_call: u64,
        period: Duration,
    ) -> Agent {
        let counts = Arc::new(AgentCounts::default());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (service, name) = (service.to_string(), instance.to_string());
        let task_counts = counts.clone();
        let task = tokio::spawn(async move {
            let counts = task_counts;
            let mut next = 0u64;
            while !*stopped.borrow() {
                if let Some(mut sender) = connect(target).await {
                    let mut ticker = tokio::time::interval(period);
                    loop {
                        tokio::select! {
                            _ = ticker.tick() => {}
                            _ = stopped.changed() => break,
                        }
                        let body = stream_body(&service, &name, next, per_call);
                        match report(&mut sender, target, body).await {
                            Some(status) => {
                                counts.connected.store(true, Ordering::Relaxed);
                                next += per_call;
                                if status == 0 {
                                    counts
                                        .acknowledged_numbers
                                        .lock()
                                        .expect("never poisoned")
                                        .push(next - per_call..next);
                                }
                                let counter = if status == 0 {
                                    &counts.acknowledged
                                } else {
                                    &counts.refused
                                };
                                counter.fetch_add(per_call, Ordering::Relaxed);
                            }
                            None => break,
                        }
                    }
                }
                if *stopped.borrow() {
                    break;
                }
                counts.connected.store(false, Ordering::Relaxed);
                counts.disconnects.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.changed() => {}
                }
            }
            counts.connected.store(false, Ordering::Relaxed);
        });
        Agent {
            instance: instance.to_string(),
            counts,
            stop,
            task,
        }
    }

    pub fn connected(&self) -> bool {
        self.counts.connected.load(Ordering::Relaxed)
    }

    pub fn acknowledged(&self) -> u64 {
        self.counts.acknowledged.load(Ordering::Relaxed)
    }

    /// Stops after the call in flight is answered, and closes the connection.
    pub async fn stop(self) -> Arc<AgentCounts> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.counts
    }
}
