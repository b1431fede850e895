//! Segment streams sent as agents send them. grpc-java (Netty) and grpcio write each message
//! as a DATA frame of its own the moment the agent hands it over (`onNext`), and their
//! transports coalesce everything written since the last flush into one socket write:
//! Netty's `WriteQueue` drains the queued commands before it flushes, and the outbound
//! buffer goes out in one gathering write. h2 (hyper's HTTP/2) writes a DATA frame whose
//! payload is large on its own, so here h2 writes into a [`Coalescing`] transport: every
//! write lands in a buffer, and a writer task sends what has accumulated once the
//! connection's task has yielded — one write per flush, as those transports make.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

/// Bytes a connection may have waiting for its writer before h2 is held back (Netty's
/// default high water mark is 64 KiB; grpc-java's flow control keeps about 1 MiB in flight).
const PENDING_LIMIT: usize = 1 << 20;

/// Socket writes made by every connection's writer, for the report.
pub static SOCKET_WRITES: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// h2's task, waiting for room.
    blocked: Option<Waker>,
    failed: Option<io::ErrorKind>,
    shut: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake_writer: Notify,
}

/// A TCP connection whose writes are coalesced until its writer task runs.
pub struct Coalescing {
    read: OwnedReadHalf,
    shared: Arc<Shared>,
}

impl Coalescing {
    pub fn new(stream: TcpStream) -> Coalescing {
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake_writer: Notify::new(),
        });
        tokio::spawn(write_pending(write, shared.clone()));
        Coalescing { read, shared }
    }
}

/// Sends what has accumulated, one write per wake-up (`write_all` only loops on a short
/// write), until the connection is shut or a write fails.
async fn write_pending(mut socket: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut batch = Vec::new();
    loop {
        shared.wake_writer.notified().await;
        let shut = {
            let mut pending = shared.pending.lock().unwrap();
            std::mem::swap(&mut batch, &mut pending.bytes);
            if let Some(waker) = pending.blocked.take() {
                waker.wake();
            }
            pending.shut
        };
        if !batch.is_empty() {
            SOCKET_WRITES.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = socket.write_all(&batch).await {
                let mut pending = shared.pending.lock().unwrap();
                pending.failed = Some(error.kind());
                if let Some(waker) = pending.blocked.take() {
                    waker.wake();
                }
                return;
            }
            batch.clear();
        }
        if shut {
            let _ = socket.shutdown().await;
            return;
        }
    }
}

impl AsyncRead for Coalescing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalescing {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut pending = self.shared.pending.lock().unwrap();
        if let Some(kind) = pending.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if pending.bytes.len() >= PENDING_LIMIT {
            pending.blocked = Some(cx.waker().clone());
            return Poll::Pending;
        }
        pending.bytes.extend_from_slice(buf);
        self.shared.wake_writer.notify_one();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer sends what is pending once this task yields: that is the flush.
        match self.shared.pending.lock().unwrap().failed {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.pending.lock().unwrap().shut = true;
        self.shared.wake_writer.notify_one();
        Poll::Ready(Ok(()))
    }
}

/// What the agent-like callers are to send.
pub struct Load {
    pub target: std::net::SocketAddr,
    pub path: &'static str,
    pub connections: usize,
    pub concurrency: usize,
    /// One framed segment; a call sends `messages` of them, each in its own DATA frame.
    pub segment: Bytes,
    pub messages: usize,
    /// Each caller's time between calls (`None`: back to back).
    pub period: Option<Duration>,
    pub deadline: Instant,
}

/// Opens the connections and starts their callers.
pub async fn callers(
    load: &Load,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<super::CallerResult>>> {
    let callers = load.connections * load.concurrency;
    let uri: http::Uri = format!("http://{}{}", load.target, load.path).parse()?;
    let mut tasks = Vec::with_capacity(callers);
    for connection in 0..load.connections {
        let stream = TcpStream::connect(load.target).await?;
        stream.set_nodelay(true)?;
        // Windows as grpc-java opens them (1 MiB per stream), so the client is not what
        // holds the proxy back.
        let (sender, driver) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 20)
            .handshake::<_, Bytes>(Coalescing::new(stream))
            .await?;
        tokio::spawn(driver);
        for caller in 0..load.concurrency {
            let index = connection * load.concurrency + caller;
            // Callers start spread over one period, not all at once.
            let ticks = load.period.map(|period| {
                let offset = period.mul_f64(index as f64 / callers.max(1) as f64);
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            });
            tasks.push(tokio::spawn(call_repeatedly(
                sender.clone(),
                uri.clone(),
                load.segment.clone(),
                load.messages,
                ticks,
                load.deadline,
            )));
        }
    }
    Ok(tasks)
}

async fn call_repeatedly(
    mut sender: h2::client::SendRequest<Bytes>,
    uri: http::Uri,
    segment: Bytes,
    messages: usize,
    mut ticks: Option<tokio::time::Interval>,
    deadline: Instant,
) -> super::CallerResult {
    let mut latencies = Vec::new();
    let mut failures = 0u64;
    while Instant::now() < deadline {
        if let Some(ticks) = &mut ticks {
            ticks.tick().await;
        }
        let sent = Instant::now();
        sender = match sender.ready().await {
            Ok(sender) => sender,
            Err(_) => {
                failures += 1;
                break;
            }
        };
        match call(&mut sender, &uri, &segment, messages).await {
            Ok(true) => latencies.push(sent.elapsed()),
            Ok(false) | Err(_) => failures += 1,
        }
    }
    (latencies, failures)
}

/// One client stream: the segments written one after another without yielding (an agent
/// handing over its buffered segments), then the answer read. True when it is gRPC OK.
async fn call(
    sender: &mut h2::client::SendRequest<Bytes>,
    uri: &http::Uri,
    segment: &Bytes,
    messages: usize,
) -> Result<bool, h2::Error> {
    let request = http::Request::post(uri.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
    let (answer, mut stream) = sender.send_request(request, messages == 0)?;
    for sent in 1..=messages {
        stream.send_data(segment.clone(), sent == messages)?;
    }
    let answer = answer.await?;
    let ok = |headers: &http::HeaderMap| headers.get("grpc-status").is_some_and(|s| s == "0");
    if answer.headers().contains_key("grpc-status") {
        return Ok(ok(answer.headers()));
    }
    let mut body = answer.into_body();
    while let Some(data) = body.data().await {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
    }
    Ok(body.trailers().await?.is_some_and(|trailers| ok(&trailers)))
}
