//! One client connection, served by one task that owns the socket: it reads large chunks,
//! takes frames apart in place, and receives report streams itself, message by message into
//! the queue, with no task, channel or copy per stream. Other calls (sync, pass-through)
//! get a handler task each, talking to the connection through [`Signal`]s.
//!
//! Nothing is held for an idle connection beyond its state: the read and write buffers are
//! dropped whenever they are empty, and the signal channel exists only once a call needed
//! a handler.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::{Semaphore, watch};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

use super::body::{Chunk, RequestBody};
use super::frame::{self, Head, Reason, flag, kind, setting};
use super::headers::{self, Malformed};
use super::hpack;
use super::signal::{self, RESPONSE_CREDIT, Signal};
use super::transport::Transport;
use crate::grpc::{self, Code};
use crate::ingest::{self, Refusal, ReportStream};
use crate::journal::Fsync;
use crate::protocol::{self, Policy};
use crate::server;
use crate::state::State;

/// How a connection is served.
#[derive(Clone, Debug)]
pub struct Config {
    pub max_concurrent_streams: u32,
    /// Each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// The connection's receive window.
    pub connection_window: u32,
    /// Ping a connection silent this long; `None`: never.
    pub keepalive: Option<Duration>,
    /// Close a pinged connection that stays silent this long.
    pub keepalive_timeout: Duration,
    /// Ask the client to reconnect (GOAWAY) once the connection is this old (less up to
    /// a tenth, so connections made together do not all go at once).
    pub max_age: Option<Duration>,
    /// How long streams may go on after a GOAWAY for age or shutdown.
    pub drain_grace: Duration,
    /// How long a client may take to send its preface and SETTINGS, or to finish a
    /// header block it began: a client that opens a socket (or a request) and trickles
    /// bytes holds a connection slot (slowloris) and is closed after this.
    pub header_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_concurrent_streams: 256,
            stream_window: 512 * 1024,
            connection_window: 16 * 1024 * 1024,
            keepalive: None,
            keepalive_timeout: Duration::from_secs(20),
            max_age: None,
            drain_grace: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Bytes asked of each read.
const READ_CHUNK: usize = 128 * 1024;
/// Above this much unwritten output, no more input is taken (a client that sends but does
/// not read cannot make the proxy buffer without bound).
const MAX_OUTPUT: usize = 1024 * 1024;
/// Room the write buffer starts with.
const OUTPUT_CHUNK: usize = 16 * 1024;

/// The answer's header block to every report: status 200, gRPC content.
static REPORT_HEAD: LazyLock<Bytes> = LazyLock::new(|| {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut block = BytesMut::new();
    headers::encode_response(StatusCode::OK, &headers, &mut block);
    block.freeze()
});
/// The trailers of every accepted report: status OK.
static REPORT_TRAILERS: LazyLock<Bytes> = LazyLock::new(|| {
    let mut block = BytesMut::new();
    headers::encode_fields(&grpc::status_headers(Code::Ok, ""), &mut block);
    block.freeze()
});
/// One empty `Commands` message.
static EMPTY_COMMANDS: [u8; 5] = [0; 5];

/// Why a connection ends early; sent to the client in a GOAWAY.
#[derive(Debug)]
pub struct ConnectionError {
    pub reason: Reason,
    pub message: String,
}

fn connection_error(reason: Reason, message: impl Into<String>) -> ConnectionError {
    ConnectionError {
        reason,
        message: message.into(),
    }
}

fn protocol_error(message: impl Into<String>) -> ConnectionError {
    connection_error(Reason::Protocol, message)
}

/// Serves one connection until the client leaves or breaks the protocol.
pub async fn serve(io: Transport, state: State, config: Config, shutdown: watch::Receiver<bool>) {
    let mut connection = Connection::new(io, state, config, shutdown);
    let outcome = connection.run().await;
    connection.close(outcome).await;
}

/// What a stream is.
enum Kind {
    /// A report received here, message by message.
    Report(Box<ReportStream>),
    /// A call a handler task answers.
    Handled {
        body: Option<UnboundedSender<Chunk>>,
        task: AbortHandle,
        credits: Arc<Semaphore>,
    },
}

/// A frame waiting for its turn to be written.
enum Outgoing {
    Headers { block: Bytes, end: bool },
    Data { data: Bytes, end: bool, credit: u32 },
}

struct Stream {
    kind: Kind,
    /// The client may still send.
    recv_open: bool,
    /// What the client may still send before a WINDOW_UPDATE.
    recv_window: i64,
    /// Received and consumed, not yet given back.
    recv_unacked: u32,
    /// What this side may still send.
    send_window: i64,
    /// Frames not yet written (flow control, or behind such a frame).
    pending: VecDeque<Outgoing>,
    /// The response's last frame is written or pending.
    end_queued: bool,
    /// Waiting in the connection's list for window.
    blocked: bool,
}

/// A header block arriving in CONTINUATION frames.
struct Continuation {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

enum Wake {
    Signal(Option<Signal>),
    Readable(io::Result<()>),
    Writable(io::Result<()>),
    Keepalive,
    Shutdown,
    Drain,
    HeaderTimeout,
}

/// Where a connection is in going away on its own initiative (shutdown or age), done as
/// RFC 9113 §6.8 suggests: a first GOAWAY that refuses nothing yet, a PING, and once the
/// client answered (so every stream it opened before the first GOAWAY has arrived) the
/// GOAWAY naming the last stream that will be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drain {
    /// Serving; the timer (if any) is the connection's age limit.
    No,
    /// First GOAWAY and PING sent; the timer bounds the wait for the PING's answer.
    Announced,
    /// Final GOAWAY sent; the timer is the end of the grace period.
    Final,
}

/// The PING payload of a drain.
const DRAIN_PING: [u8; 8] = *b"draining";

struct Connection {
    io: Transport,
    state: State,
    config: Config,
    input: BytesMut,
    output: BytesMut,
    preface_seen: bool,
    settings_seen: bool,
    eof: bool,
    /// The client sent GOAWAY: no new streams; close when the last one is done.
    going_away: bool,
    decoder: hpack::Decoder,
    continuation: Option<Continuation>,
    streams: HashMap<u32, Stream>,
    highest_stream: u32,
    /// What the client may still send on the connection.
    recv_window: i64,
    recv_unacked: u32,
    send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    blocked: Vec<u32>,
    /// Handler tasks' signals; made when the first handler is.
    signals: Option<(UnboundedSender<Signal>, UnboundedReceiver<Signal>)>,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    keepalive: Option<Pin<Box<Sleep>>>,
    shutdown: watch::Receiver<bool>,
    drain: Drain,
    drain_reason: &'static str,
    drain_timer: Option<Pin<Box<Sleep>>>,
    /// Set while the preface and SETTINGS, or a header block's CONTINUATION frames, are
    /// awaited.
    header_timer: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    fn new(
        io: Transport,
        state: State,
        config: Config,
        shutdown: watch::Receiver<bool>,
    ) -> Connection {
        let now = Instant::now();
        let keepalive = config
            .keepalive
            .map(|interval| Box::pin(tokio::time::sleep_until(now + interval)));
        let drain_timer = config
            .max_age
            .map(|age| Box::pin(tokio::time::sleep_until(now + jittered(age))));
        Connection {
            io,
            state,
            input: BytesMut::new(),
            output: BytesMut::new(),
            preface_seen: false,
            settings_seen: false,
            eof: false,
            going_away: false,
            decoder: headers::decoder(),
            continuation: None,
            streams: HashMap::new(),
            highest_stream: 0,
            recv_window: i64::from(config.connection_window),
            recv_unacked: 0,
            send_window: frame::DEFAULT_WINDOW,
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            blocked: Vec::new(),
            signals: None,
            last_heard: now,
            ping_sent: None,
            keepalive,
            shutdown,
            drain: Drain::No,
            drain_reason: "",
            drain_timer,
            header_timer: Some(Box::pin(tokio::time::sleep_until(
                now + config.header_timeout,
            ))),
            config,
        }
    }

    /// Starts going away: streams already opened are served, new ones are refused once
    /// the client has seen the final GOAWAY.
    fn start_drain(&mut self, reason: &'static str) {
        if self.drain != Drain::No {
            return;
        }
        self.drain = Drain::Announced;
        self.drain_reason = reason;
        frame::goaway(
            i32::MAX as u32,
            Reason::NoError,
            reason.as_bytes(),
            self.out(),
        );
        frame::ping(DRAIN_PING, false, self.out());
        self.set_drain_timer(Duration::from_secs(1));
    }

    /// The client has had time to see the first GOAWAY: the last stream is fixed now.
    fn final_goaway(&mut self) {
        if self.drain != Drain::Announced {
            return;
        }
        self.drain = Drain::Final;
        self.going_away = true;
        frame::goaway(
            self.highest_stream,
            Reason::NoError,
            self.drain_reason.as_bytes(),
            self.out(),
        );
        self.set_drain_timer(self.config.drain_grace);
    }

    fn set_drain_timer(&mut self, after: Duration) {
        self.drain_timer = Some(Box::pin(tokio::time::sleep_until(Instant::now() + after)));
    }

    fn on_drain_timer(&mut self) -> Result<(), ConnectionError> {
        match self.drain {
            Drain::No => {
                self.state.metrics.aged_out();
                self.start_drain("skylift-proxy: max connection age reached; reconnect");
                Ok(())
            }
            Drain::Announced => {
                self.final_goaway();
                Ok(())
            }
            Drain::Final => Err(connection_error(
                Reason::NoError,
                "streams still open when the grace period ended",
            )),
        }
    }

    fn out(&mut self) -> &mut BytesMut {
        with_room(&mut self.output)
    }

    async fn run(&mut self) -> Result<(), ConnectionError> {
        let settings = [
            (
                setting::MAX_CONCURRENT_STREAMS,
                self.config.max_concurrent_streams,
            ),
            (setting::INITIAL_WINDOW_SIZE, self.config.stream_window),
            (
                setting::MAX_HEADER_LIST_SIZE,
                u32::try_from(headers::MAX_BLOCK).expect("small"),
            ),
        ];
        frame::settings(&settings, self.out());
        let raise = self.config.connection_window.saturating_sub(65_535);
        if raise > 0 {
            frame::window_update(0, raise, self.out());
        }
        loop {
            self.process_input().await?;
            self.give_back_connection_window();
            self.flush()?;
            if self.eof
                || (self.going_away
                    && self.streams.is_empty()
                    && self.output.is_empty()
                    && !self.io.wants_write())
            {
                return Ok(());
            }
            // An idle connection keeps no buffers.
            if self.input.is_empty() {
                self.input = BytesMut::new();
            }
            if self.output.is_empty() {
                self.output = BytesMut::new();
            }
            let reading = self.output.len() < MAX_OUTPUT;
            let writing = !self.output.is_empty() || self.io.wants_write();
            let draining = self.drain != Drain::No;
            let wake = tokio::select! {
                biased;
                signal = next_signal(&mut self.signals) => Wake::Signal(signal),
                ready = self.io.writable(), if writing => Wake::Writable(ready),
                ready = self.io.readable(), if reading => Wake::Readable(ready),
                () = timer(&mut self.keepalive) => Wake::Keepalive,
                changed = self.shutdown.changed(), if !draining => match changed {
                    Ok(()) if *self.shutdown.borrow() => Wake::Shutdown,
                    Ok(()) => Wake::Signal(None),
                    // The proxy is gone without a shutdown: nothing to wait for.
                    Err(_) => Wake::Shutdown,
                },
                () = timer(&mut self.drain_timer) => Wake::Drain,
                () = timer(&mut self.header_timer) => Wake::HeaderTimeout,
            };
            match wake {
                Wake::Signal(Some(signal)) => {
                    self.on_signal(signal);
                    while let Some(signal) =
                        self.signals.as_mut().and_then(|(_, rx)| rx.try_recv().ok())
                    {
                        self.on_signal(signal);
                    }
                }
                Wake::Signal(None) => {}
                Wake::Readable(ready) => {
                    ready.map_err(io_error)?;
                    self.read()?;
                }
                Wake::Writable(ready) => ready.map_err(io_error)?,
                Wake::Keepalive => self.on_keepalive()?,
                Wake::Shutdown => self.start_drain("skylift-proxy: shutting down; reconnect"),
                Wake::Drain => self.on_drain_timer()?,
                Wake::HeaderTimeout => {
                    self.header_timer = None;
                    let what = if self.settings_seen {
                        "a header block"
                    } else {
                        "the HTTP/2 preface and SETTINGS"
                    };
                    self.state.metrics.timed_out();
                    return Err(connection_error(
                        Reason::EnhanceYourCalm,
                        format!(
                            "{what} not complete within {:?}",
                            self.config.header_timeout
                        ),
                    ));
                }
            }
        }
    }

    fn read(&mut self) -> Result<(), ConnectionError> {
        self.input.reserve(READ_CHUNK);
        match self.io.try_read_buf(&mut self.input) {
            Ok(0) => self.eof = true,
            Ok(_) => self.last_heard = Instant::now(),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(io_error(err)),
        }
        Ok(())
    }

    /// Writes what it can without waiting.
    fn flush(&mut self) -> Result<(), ConnectionError> {
        match self.io.flush_pending() {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Err(io_error(err)),
        }
        while !self.output.is_empty() {
            match self.io.try_write(&self.output) {
                Ok(n) => self.output.advance(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(io_error(err)),
            }
        }
        Ok(())
    }

    fn on_keepalive(&mut self) -> Result<(), ConnectionError> {
        let Some(interval) = self.config.keepalive else {
            return Ok(());
        };
        let now = Instant::now();
        let next = match self.ping_sent {
            Some(sent) if self.last_heard < sent => {
                if now >= sent + self.config.keepalive_timeout {
                    return Err(connection_error(
                        Reason::NoError,
                        "keep-alive ping not answered",
                    ));
                }
                sent + self.config.keepalive_timeout
            }
            _ if now >= self.last_heard + interval => {
                self.ping_sent = Some(now);
                frame::ping(*b"skylift!", false, self.out());
                now + self.config.keepalive_timeout
            }
            _ => {
                self.ping_sent = None;
                self.last_heard + interval
            }
        };
        if let Some(sleep) = self.keepalive.as_mut() {
            sleep.as_mut().reset(next);
        }
        Ok(())
    }

    /// Handles every complete frame received.
    async fn process_input(&mut self) -> Result<(), ConnectionError> {
        if !self.preface_seen {
            let seen = self.input.len().min(frame::PREFACE.len());
            if self.input[..seen] != frame::PREFACE[..seen] {
                return Err(protocol_error("not an HTTP/2 connection preface"));
            }
            if seen < frame::PREFACE.len() {
                return Ok(());
            }
            self.input.advance(frame::PREFACE.len());
            self.preface_seen = true;
        }
        while self.input.len() >= frame::HEADER_LEN && self.output.len() < MAX_OUTPUT {
            let head = Head::parse(&self.input);
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(connection_error(
                    Reason::FrameSize,
                    format!("frame of {} bytes exceeds 16384", head.len),
                ));
            }
            if self.input.len() < frame::HEADER_LEN + head.len {
                break;
            }
            self.input.advance(frame::HEADER_LEN);
            let payload = self.input.split_to(head.len).freeze();
            self.on_frame(head, payload).await?;
        }
        Ok(())
    }

    async fn on_frame(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if !self.settings_seen {
            if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                return Err(protocol_error("the first frame must be SETTINGS"));
            }
            self.settings_seen = true;
            self.header_timer = None;
        }
        if let Some(continuation) = &self.continuation
            && (head.kind != kind::CONTINUATION || head.stream != continuation.stream)
        {
            return Err(protocol_error("expected CONTINUATION"));
        }
        match head.kind {
            kind::DATA => self.on_data(head, payload).await,
            kind::HEADERS => self.on_headers(head, payload).await,
            kind::CONTINUATION => self.on_continuation(head, payload).await,
            kind::RST_STREAM => {
                if head.stream == 0 || payload.len() != 4 {
                    return Err(protocol_error("malformed RST_STREAM"));
                }
                if head.stream > self.highest_stream {
                    return Err(protocol_error("RST_STREAM on an idle stream"));
                }
                self.remove(head.stream);
                Ok(())
            }
            kind::SETTINGS => self.on_settings(head, &payload),
            kind::PING => {
                if head.stream != 0 || payload.len() != 8 {
                    return Err(connection_error(Reason::FrameSize, "malformed PING"));
                }
                if head.has(flag::ACK) {
                    if payload[..] == DRAIN_PING {
                        self.final_goaway();
                    } else {
                        self.ping_sent = None;
                    }
                } else {
                    let mut echo = [0u8; 8];
                    echo.copy_from_slice(&payload);
                    frame::ping(echo, true, self.out());
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(protocol_error("GOAWAY on a stream"));
                }
                self.going_away = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.on_window_update(head, &payload),
            kind::PUSH_PROMISE => Err(protocol_error("a client cannot push")),
            // PRIORITY is advisory; unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(protocol_error("SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(connection_error(
                    Reason::FrameSize,
                    "SETTINGS ACK with a payload",
                ))
            };
        }
        let Some(settings) = frame::parse_settings(payload) else {
            return Err(connection_error(
                Reason::FrameSize,
                "SETTINGS length is not a multiple of 6",
            ));
        };
        for (id, value) in settings {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(connection_error(
                            Reason::FlowControl,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > frame::MAX_WINDOW {
                            return Err(connection_error(
                                Reason::FlowControl,
                                "a stream window above 2^31-1",
                            ));
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(protocol_error("SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(protocol_error("SETTINGS_ENABLE_PUSH must be 0 or 1"));
                }
                _ => {}
            }
        }
        frame::settings_ack(self.out());
        self.retry_blocked();
        Ok(())
    }

    fn on_window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return Err(connection_error(
                Reason::FrameSize,
                "malformed WINDOW_UPDATE",
            ));
        };
        let increment = i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(protocol_error("WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return Err(connection_error(
                    Reason::FlowControl,
                    "connection window above 2^31-1",
                ));
            }
            self.retry_blocked();
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            return Ok(());
        };
        if increment == 0 {
            self.reset(head.stream, Reason::Protocol);
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            self.reset(head.stream, Reason::FlowControl);
            return Ok(());
        }
        self.write_stream(head.stream);
        Ok(())
    }

    async fn on_headers(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(protocol_error("HEADERS on stream 0"));
        }
        let Some(block) = frame::unpadded(&head, payload) else {
            return Err(protocol_error("HEADERS padding exceeds the frame"));
        };
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.on_header_block(head.stream, end_stream, &block).await;
        }
        self.header_timer = Some(Box::pin(tokio::time::sleep_until(
            Instant::now() + self.config.header_timeout,
        )));
        self.continuation = Some(Continuation {
            stream: head.stream,
            end_stream,
            block: BytesMut::from(&block[..]),
        });
        Ok(())
    }

    async fn on_continuation(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        let Some(continuation) = self.continuation.as_mut() else {
            return Err(protocol_error("CONTINUATION without HEADERS"));
        };
        continuation.block.extend_from_slice(&payload);
        if continuation.block.len() > headers::MAX_BLOCK {
            return Err(connection_error(
                Reason::EnhanceYourCalm,
                "header block too large",
            ));
        }
        if !head.has(flag::END_HEADERS) {
            return Ok(());
        }
        let continuation = self.continuation.take().expect("checked above");
        self.header_timer = None;
        self.on_header_block(
            continuation.stream,
            continuation.end_stream,
            &continuation.block,
        )
        .await
    }

    async fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), ConnectionError> {
        let compression = |_| connection_error(Reason::Compression, "undecodable header block");
        if let Some(stream) = self.streams.get_mut(&id) {
            // Trailers.
            let trailers =
                headers::decode_trailers(&mut self.decoder, block).map_err(compression)?;
            if !stream.recv_open {
                self.reset(id, Reason::StreamClosed);
                return Ok(());
            }
            if !end_stream {
                self.reset(id, Reason::Protocol);
                return Ok(());
            }
            stream.recv_open = false;
            match &mut stream.kind {
                Kind::Handled { body, .. } => {
                    if let Some(body) = body.take() {
                        let _ = body.send(Chunk::Trailers(trailers));
                    }
                }
                Kind::Report(_) => self.end_report(id).await,
            }
            self.close_if_done(id);
            return Ok(());
        }
        let unopenable = if id.is_multiple_of(2) {
            Some(Reason::Protocol)
        } else if id <= self.highest_stream {
            Some(Reason::StreamClosed)
        } else {
            None
        };
        if let Some(reason) = unopenable {
            return Err(connection_error(
                reason,
                format!("HEADERS on stream {id}, which cannot be opened"),
            ));
        }
        let request = headers::decode_request(&mut self.decoder, block).map_err(compression)?;
        self.highest_stream = id;
        if self.going_away || self.streams.len() >= self.config.max_concurrent_streams as usize {
            frame::rst_stream(id, Reason::RefusedStream, self.out());
            return Ok(());
        }
        let request = match request {
            Ok(request) => request,
            Err(Malformed(why)) => {
                tracing::debug!(stream = id, why, "malformed request");
                frame::rst_stream(id, Reason::Protocol, self.out());
                return Ok(());
            }
        };
        self.open(id, request, end_stream).await;
        Ok(())
    }

    /// Starts a stream: a report is received here, anything else goes to a handler task.
    async fn open(&mut self, id: u32, request: Request<()>, end_stream: bool) {
        let method = protocol::lookup(request.uri().path());
        let report = method.filter(|method| {
            matches!(method.policy, Policy::AsyncStream | Policy::AsyncUnary)
                && ingest::can_reshape(method, request.headers())
        });
        let mut refused = None;
        let kind = match report {
            Some(method) => {
                let mut report = ReportStream::open(&self.state, method, &request);
                refused = report.refusal_at_open();
                Kind::Report(Box::new(report))
            }
            None => self.spawn_handler(id, request, method, end_stream),
        };
        self.streams.insert(
            id,
            Stream {
                kind,
                recv_open: !end_stream,
                recv_window: i64::from(self.config.stream_window),
                recv_unacked: 0,
                send_window: self.peer_initial_window,
                pending: VecDeque::new(),
                end_queued: false,
                blocked: false,
            },
        );
        if let Some(refusal) = refused {
            // Answered at once; whatever the client still sends is discarded.
            self.refuse(id, refusal);
        } else if end_stream && report.is_some() {
            self.end_report(id).await;
            self.close_if_done(id);
        }
    }

    fn signal_sender(&mut self) -> UnboundedSender<Signal> {
        self.signals
            .get_or_insert_with(mpsc::unbounded_channel)
            .0
            .clone()
    }

    fn spawn_handler(
        &mut self,
        id: u32,
        request: Request<()>,
        method: Option<&'static protocol::Method>,
        end_stream: bool,
    ) -> Kind {
        let signals = self.signal_sender();
        let (body, chunks) = if end_stream {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        };
        let request = request.map(|()| RequestBody::new(id, chunks, signals.clone()));
        let credits = Arc::new(Semaphore::new(RESPONSE_CREDIT));
        let response = Box::pin(server::dispatch(self.state.clone(), method, request));
        let task = tokio::spawn(signal::respond(id, response, signals, credits.clone()));
        Kind::Handled {
            body,
            task: task.abort_handle(),
            credits,
        }
    }

    async fn on_data(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        let id = head.stream;
        if id == 0 {
            return Err(protocol_error("DATA on stream 0"));
        }
        // Flow control counts the whole payload, padding included.
        let counted = i64::try_from(payload.len()).expect("frames are small");
        self.recv_window -= counted;
        if self.recv_window < 0 {
            return Err(connection_error(
                Reason::FlowControl,
                "DATA beyond the connection window",
            ));
        }
        // The connection window is given back at once: each stream's own window bounds
        // what waits for a handler.
        self.recv_unacked += counted as u32;
        let Some(data) = frame::unpadded(&head, payload) else {
            return Err(protocol_error("DATA padding exceeds the frame"));
        };
        let Some(stream) = self.streams.get_mut(&id) else {
            if id > self.highest_stream {
                return Err(protocol_error("DATA on an idle stream"));
            }
            // A stream already answered and reset: what is still in flight is discarded.
            return Ok(());
        };
        if !stream.recv_open {
            self.reset(id, Reason::StreamClosed);
            return Ok(());
        }
        stream.recv_window -= counted;
        if stream.recv_window < 0 {
            self.reset(id, Reason::FlowControl);
            return Ok(());
        }
        let end = head.has(flag::END_STREAM);
        if end {
            stream.recv_open = false;
        }
        let padding = counted as u32 - data.len() as u32;
        match &mut stream.kind {
            Kind::Report(report) => {
                stream.recv_unacked += counted as u32;
                if stream.end_queued {
                    // Already answered (refused): discarded.
                } else {
                    report.push(&self.state, data);
                    if let Err(refusal) = self.pump(id).await {
                        self.refuse(id, refusal);
                        return Ok(());
                    }
                    if end {
                        self.end_report(id).await;
                    }
                }
            }
            Kind::Handled { body, .. } => {
                stream.recv_unacked += padding;
                if !data.is_empty()
                    && let Some(body) = body.as_ref()
                {
                    let _ = body.send(Chunk::Data(data));
                }
                if end {
                    *body = None;
                }
            }
        }
        self.give_back_stream_window(id);
        self.close_if_done(id);
        Ok(())
    }

    /// Queues the events a report's data makes; waits for room when the queue is full.
    async fn pump(&mut self, id: u32) -> Result<(), Refusal> {
        loop {
            let Some(Stream {
                kind: Kind::Report(report),
                ..
            }) = self.streams.get_mut(&id)
            else {
                return Ok(());
            };
            let Some(event) = report.next_event(&self.state)? else {
                return Ok(());
            };
            if let Err(event) = self.state.queue.try_offer(event) {
                // Rare: the queue is full. What is already answered goes out first; this
                // connection then waits, and flow control holds its client back.
                let _ = self.flush();
                Box::pin(ingest::queue_waiting(&self.state, event)).await?;
            }
        }
    }

    /// The client ended a report stream: the last event is queued and the stream answered.
    async fn end_report(&mut self, id: u32) {
        let Some(Stream {
            kind: Kind::Report(report),
            end_queued: false,
            ..
        }) = self.streams.get_mut(&id)
        else {
            return;
        };
        let last = match report.finish() {
            Ok(last) => last,
            Err(refusal) => return self.refuse(id, refusal),
        };
        let queued_any = report.received > 0;
        if let Some(event) = last
            && let Err(event) = self.state.queue.try_offer(event)
        {
            let _ = self.flush();
            if let Err(refusal) = Box::pin(ingest::queue_waiting(&self.state, event)).await {
                return self.refuse(id, refusal);
            }
        }
        // With the disk queue the client hears its data was taken only once it is written
        // to the journal (and with `--fsync always`, synced: one sync serves every client
        // waiting at the time).
        if queued_any && let Some(journal) = self.state.queue.journal() {
            let journal = journal.clone();
            let written = journal.write_out();
            let durable = match (written, journal.fsync()) {
                (Err(failed), _) => Err(failed),
                (Ok(()), Fsync::Always) => {
                    let _ = self.flush();
                    Box::pin(journal.durable()).await
                }
                (Ok(()), Fsync::Interval(_)) => Ok(()),
            };
            if durable.is_err() {
                return self.refuse(
                    id,
                    Refusal(
                        Code::Unavailable,
                        "skylift-proxy: the queue journal could not be written to disk; retry"
                            .into(),
                    ),
                );
            }
        }
        self.send(
            id,
            Outgoing::Headers {
                block: REPORT_HEAD.clone(),
                end: false,
            },
        );
        self.send(
            id,
            Outgoing::Data {
                data: Bytes::from_static(&EMPTY_COMMANDS),
                end: false,
                credit: 0,
            },
        );
        self.send(
            id,
            Outgoing::Headers {
                block: REPORT_TRAILERS.clone(),
                end: true,
            },
        );
    }

    /// Answers a stream with a gRPC error (trailers-only).
    fn refuse(&mut self, id: u32, Refusal(code, message): Refusal) {
        let block = error_block(code, &message);
        self.send(id, Outgoing::Headers { block, end: true });
        self.close_if_done(id);
    }

    fn give_back_stream_window(&mut self, id: u32) {
        let threshold = self.config.stream_window / 2;
        if let Some(stream) = self.streams.get_mut(&id)
            && stream.recv_open
            && stream.recv_unacked >= threshold
        {
            let increment = std::mem::take(&mut stream.recv_unacked);
            stream.recv_window += i64::from(increment);
            frame::window_update(id, increment, self.out());
        }
    }

    fn give_back_connection_window(&mut self) {
        if self.recv_unacked >= self.config.connection_window / 2 {
            let increment = std::mem::take(&mut self.recv_unacked);
            self.recv_window += i64::from(increment);
            frame::window_update(0, increment, self.out());
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::Head { stream, block, end } => {
                self.send(stream, Outgoing::Headers { block, end });
            }
            Signal::Data {
                stream,
                data,
                end,
                credit,
            } => self.send(stream, Outgoing::Data { data, end, credit }),
            Signal::Trailers { stream, block } => {
                self.send(stream, Outgoing::Headers { block, end: true });
            }
            Signal::Reset { stream, reason } => {
                if self.streams.contains_key(&stream) {
                    self.reset(stream, reason);
                }
            }
            Signal::Consumed { stream, bytes } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.recv_unacked += bytes;
                    self.give_back_stream_window(stream);
                }
            }
            Signal::Finished { stream } => {
                if self.streams.get(&stream).is_some_and(|s| !s.end_queued) {
                    self.reset(stream, Reason::Internal);
                }
            }
        }
    }

    /// Queues a frame of a stream's answer and writes what flow control allows.
    fn send(&mut self, id: u32, outgoing: Outgoing) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.end_queued {
            return;
        }
        stream.end_queued = match &outgoing {
            Outgoing::Headers { end, .. } | Outgoing::Data { end, .. } => *end,
        };
        stream.pending.push_back(outgoing);
        self.write_stream(id);
    }

    /// Writes a stream's pending frames as far as the windows allow.
    fn write_stream(&mut self, id: u32) {
        // The write buffer is taken by field, beside the stream it writes for.
        with_room(&mut self.output);
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        while let Some(front) = stream.pending.front_mut() {
            match front {
                Outgoing::Headers { block, end } => {
                    frame::headers(id, block, *end, self.peer_max_frame, &mut self.output);
                }
                // An empty frame carries only the end flag and needs no window.
                Outgoing::Data { data, end, .. } if data.is_empty() => {
                    if *end {
                        frame::data(id, &[], true, &mut self.output);
                    }
                }
                Outgoing::Data { data, end, credit } => {
                    let allowed = self
                        .send_window
                        .min(stream.send_window)
                        .min(self.peer_max_frame as i64);
                    if allowed <= 0 {
                        if !stream.blocked {
                            stream.blocked = true;
                            self.blocked.push(id);
                        }
                        return;
                    }
                    let n = data.len().min(allowed as usize);
                    let chunk = data.split_to(n);
                    frame::data(id, &chunk, *end && data.is_empty(), &mut self.output);
                    self.send_window -= n as i64;
                    stream.send_window -= n as i64;
                    if !data.is_empty() {
                        continue;
                    }
                    if let Kind::Handled { credits, .. } = &stream.kind
                        && *credit > 0
                    {
                        credits.add_permits(*credit as usize);
                    }
                }
            }
            stream.pending.pop_front();
        }
        self.close_if_done(id);
    }

    fn retry_blocked(&mut self) {
        for id in std::mem::take(&mut self.blocked) {
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.blocked = false;
                self.write_stream(id);
            }
        }
    }

    /// Removes a stream whose answer is written; a client still sending is told to stop
    /// without error (RFC 9113 §8.1).
    fn close_if_done(&mut self, id: u32) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if !(stream.end_queued && stream.pending.is_empty()) {
            return;
        }
        if stream.recv_open {
            frame::rst_stream(id, Reason::NoError, self.out());
        }
        self.remove(id);
    }

    fn reset(&mut self, id: u32, reason: Reason) {
        frame::rst_stream(id, reason, self.out());
        self.remove(id);
    }

    fn remove(&mut self, id: u32) {
        if let Some(stream) = self.streams.remove(&id) {
            self.retire(stream);
        }
    }

    /// What a stream leaves behind: a report's count, a handler's task.
    fn retire(&self, stream: Stream) {
        match stream.kind {
            Kind::Report(report) => {
                if report.received > 0 {
                    self.state
                        .metrics
                        .received_many(report.protocol(), report.received);
                }
            }
            Kind::Handled { task, .. } => task.abort(),
        }
    }

    /// Ends the connection: a GOAWAY saying why when the client broke the protocol, then
    /// every stream retired.
    async fn close(mut self, outcome: Result<(), ConnectionError>) {
        if let Err(error) = &outcome {
            tracing::debug!(reason = ?error.reason, message = %error.message, "closing a client connection");
            // A client that never spoke HTTP/2 would not understand a GOAWAY.
            if self.preface_seen {
                frame::goaway(
                    self.highest_stream,
                    error.reason,
                    error.message.as_bytes(),
                    self.out(),
                );
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while !self.output.is_empty() || self.io.wants_write() {
                    if self.io.writable().await.is_err() || self.flush().is_err() {
                        break;
                    }
                }
            })
            .await;
        }
        for (_, stream) in std::mem::take(&mut self.streams) {
            self.retire(stream);
        }
    }
}

/// `age` less up to a tenth, different for every connection.
fn jittered(age: Duration) -> Duration {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    age - age.mul_f64((random % 1000) as f64 / 10_000.0)
}

/// The write buffer, given room again after it was dropped while idle.
fn with_room(output: &mut BytesMut) -> &mut BytesMut {
    if output.capacity() == 0 {
        output.reserve(OUTPUT_CHUNK);
    }
    output
}

fn io_error(err: io::Error) -> ConnectionError {
    connection_error(Reason::NoError, format!("connection failed: {err}"))
}

async fn next_signal(
    signals: &mut Option<(UnboundedSender<Signal>, UnboundedReceiver<Signal>)>,
) -> Option<Signal> {
    match signals {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits for a timer that may not be set.
async fn timer(sleep: &mut Option<Pin<Box<Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A trailers-only gRPC error's header block.
fn error_block(code: Code, message: &str) -> Bytes {
    let mut block = BytesMut::new();
    headers::encode_response(
        StatusCode::OK,
        &grpc::error_headers(code, message),
        &mut block,
    );
    block.freeze()
}
