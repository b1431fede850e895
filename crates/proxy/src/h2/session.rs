//! One client connection's HTTP/2 state machine (RFC 9113), with no socket: bytes go in
//! through [`Session::input`], [`Event`]s come out of [`Session::poll_event`], and frames
//! to write collect in [`Session::output`]. The application answers through
//! [`Session::send`], [`Session::reset`] and [`Session::consumed`]. The I/O loop around it
//! is [`super::connection`]; unit tests and the fuzz target drive it directly.
//!
//! What a connection may hold is bounded here, whatever the client sends:
//! - data received and not yet consumed by the application is at most the connection
//!   window ([`Settings::connection_window`], the connection's budget): the window is
//!   given back only as the application consumes data, so a stalled upstream or a
//!   half-sent message slows its client down instead of filling memory;
//! - a header list is kept only up to [`headers::MAX_LIST`] decoded bytes;
//! - output is not added to while more than [`MAX_OUTPUT`] waits to be written;
//! - the read buffer shrinks to what an incomplete frame holds ([`Session::compact_input`]).
//!
//! Abuse that costs work without data is counted and ends the connection with GOAWAY
//! ENHANCE_YOUR_CALM ([`Abuse`]), as nginx and the `h2` crate do.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};

use super::frame::{self, Head, Reason, flag, kind, setting};
use super::headers::{self, Unservable};
use super::hpack;
use super::used_ids::{Used, UsedIds};

/// Above this much unwritten output, no more input is taken (a client that sends but does
/// not read cannot make the proxy buffer without bound).
pub(crate) const MAX_OUTPUT: usize = 1024 * 1024;
/// Room the write buffer starts with.
const OUTPUT_CHUNK: usize = 16 * 1024;
/// The PING payload of a drain.
const DRAIN_PING: [u8; 8] = *b"draining";
/// Streams this side reset, remembered so frames the client sent before it saw the reset
/// are ignored (RFC 9113 §5.1, "closed"); streams the client ended are remembered too, so
/// frames on them are the connection error RFC 9113 names. A frame on a stream no longer
/// remembered is refused on that stream alone (STREAM_CLOSED).
const REMEMBERED_CLOSED: usize = 128;

/// What the server announces and holds to.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    /// Each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// The connection's receive window: the most data the connection holds received and
    /// not yet consumed (its memory budget for request data).
    pub connection_window: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_concurrent_streams: 256,
            stream_window: 512 * 1024,
            connection_window: (4 << 20) + 64 * 1024,
        }
    }
}

/// Why a connection ends early; sent to the client in a GOAWAY. `cause` is the
/// `reason` label of `skylift_proxy_connections_closed_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError {
    pub reason: Reason,
    pub message: String,
    pub cause: &'static str,
}

impl ConnectionError {
    pub fn new(reason: Reason, cause: &'static str, message: impl Into<String>) -> Self {
        ConnectionError {
            reason,
            message: message.into(),
            cause,
        }
    }
}

fn protocol_error(message: impl Into<String>) -> ConnectionError {
    ConnectionError::new(Reason::Protocol, "protocol_error", message)
}

fn frame_size_error(message: impl Into<String>) -> ConnectionError {
    ConnectionError::new(Reason::FrameSize, "protocol_error", message)
}

/// What the client did, for the application.
#[derive(Debug)]
pub enum Event {
    /// A request: a new stream. Every opened stream ends with exactly one [`Event::Closed`].
    Open {
        stream: u32,
        request: Request<()>,
        end_stream: bool,
    },
    /// Request data (padding removed). Held against the connection's budget until the
    /// application calls [`Session::consumed`] for it, or the stream closes.
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
    },
    /// The request's trailers, which end it.
    Trailers { stream: u32, trailers: HeaderMap },
    /// The stream is gone: answered, reset by either side, or refused.
    Closed { stream: u32 },
}

/// How a stream's receive window is given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// As the application consumes data (a request body handed on).
    Body,
    /// As data arrives (the application gathers whole messages, up to its own limit);
    /// the connection's window still waits for consumption, so what a connection's
    /// half-sent messages hold is bounded by its budget.
    Messages,
}

/// A frame of an answer waiting its turn to be written.
#[derive(Debug)]
pub enum Outgoing {
    Headers {
        block: Bytes,
        end: bool,
    },
    /// `credit` is the application's own account of the bytes; it is handed back through
    /// [`Session::take_returned_credit`] once the data is written or dropped.
    Data {
        data: Bytes,
        end: bool,
        credit: u32,
    },
}

impl Outgoing {
    fn ends(&self) -> bool {
        match self {
            Outgoing::Headers { end, .. } | Outgoing::Data { end, .. } => *end,
        }
    }
}

struct Stream {
    /// The client may still send.
    recv_open: bool,
    flow: Flow,
    /// What the client may still send before a WINDOW_UPDATE.
    recv_window: i64,
    /// Counted and not yet given back to the stream's window.
    recv_unacked: u32,
    /// Delivered to the application and not yet consumed.
    held: u32,
    /// `content-length`, when the request has one, and the data counted against it.
    expected_length: Option<u64>,
    received_length: u64,
    /// What this side may still send.
    send_window: i64,
    pending: VecDeque<Outgoing>,
    /// The answer's last frame is written or pending.
    end_queued: bool,
    /// What its pending data waits for.
    blocked: Blocked,
    /// Its id is in the connection's list (once at most).
    in_line: bool,
}

/// What a stream's pending answer data waits for. Only streams waiting for the
/// connection's window are in its list, so a connection-level WINDOW_UPDATE never walks
/// streams that wait for their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocked {
    No,
    /// In [`Session::blocked`]: the connection's window is spent.
    Connection,
    /// The stream's own window is spent: its WINDOW_UPDATE (or a larger
    /// SETTINGS_INITIAL_WINDOW_SIZE) writes it.
    Stream,
}

/// A header block arriving in CONTINUATION frames.
struct Continuation {
    stream: u32,
    end_stream: bool,
    self_dependent: bool,
    block: BytesMut,
    frames: u32,
}

/// How a remembered stream closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    /// This side reset it: frames already in flight are ignored.
    ByUs,
    /// The client ended or reset it: more frames are a STREAM_CLOSED error.
    ByClient,
}

/// Where a connection is in going away on its own initiative (shutdown or age), done as
/// RFC 9113 §6.8 suggests: a first GOAWAY that refuses nothing yet, a PING, and once the
/// client answered (so every stream it opened before the first GOAWAY has arrived) the
/// GOAWAY naming the last stream that will be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    No,
    /// First GOAWAY and PING sent.
    Announced,
    /// Final GOAWAY sent.
    Final,
}

/// Counts of work a client can cause without sending data, each with its limit.
/// Reaching one ends the connection with GOAWAY ENHANCE_YOUR_CALM.
struct Abuse {
    /// Streams the client reset before they were answered (rapid reset, CVE-2023-44487).
    client_resets: Window,
    /// Streams this side reset for the client's errors over the connection's life (the
    /// "MadeYouReset" class; the `h2` crate's `max_local_error_reset_streams`).
    local_resets: Total,
    settings: Window,
    pings: Window,
    /// Frames that do nothing: empty DATA without END_STREAM, PRIORITY, unknown types.
    empty: Window,
    /// WINDOW_UPDATEs beyond those the answers' DATA frames earned ([`Session::earned_updates`]).
    window_updates: Window,
    /// Header lists over [`headers::MAX_LIST`].
    oversized_headers: Total,
}

/// A count within a fixed window of time.
#[derive(Default)]
struct Window {
    started: Option<Instant>,
    count: u32,
}

impl Window {
    /// Counts one; true when more than `limit` fell within [`ABUSE_WINDOW`].
    fn count(&mut self, now: Instant, limit: u32) -> bool {
        match self.started {
            Some(started) if now.saturating_duration_since(started) < ABUSE_WINDOW => {}
            _ => {
                self.started = Some(now);
                self.count = 0;
            }
        }
        self.count += 1;
        self.count > limit
    }
}

/// A count over the connection's life.
#[derive(Default)]
struct Total(u32);

impl Total {
    /// Counts one; true when more than `limit`.
    fn count(&mut self, limit: u32) -> bool {
        self.0 += 1;
        self.0 > limit
    }
}

/// The window the abuse counts are kept over.
pub(crate) const ABUSE_WINDOW: Duration = Duration::from_secs(10);
/// Client resets of unanswered streams per window (nginx allows about 2 × its concurrent
/// streams per read; a gRPC client cancels a call at its deadline, far below this).
pub(crate) const MAX_CLIENT_RESETS: u32 = 128;
/// Stream errors the client causes over a connection's life (as the `h2` crate).
pub(crate) const MAX_LOCAL_RESETS: u32 = 1024;
/// SETTINGS, PING, or frames doing nothing, per window.
pub(crate) const MAX_CONTROL_FRAMES: u32 = 1000;
/// CONTINUATION frames in one header block: [`headers::MAX_BLOCK`] needs 4 of the
/// default frame size; more is a CONTINUATION flood.
pub(crate) const MAX_CONTINUATIONS: u32 = 16;
/// Oversized header lists a connection may send before it is closed.
pub(crate) const MAX_OVERSIZED_HEADERS: u32 = 4;
/// WINDOW_UPDATEs a connection may have in hand from the DATA it was sent.
const MAX_EARNED_UPDATES: u32 = 1 << 16;

fn calm(cause: &'static str, message: impl Into<String>) -> ConnectionError {
    ConnectionError::new(Reason::EnhanceYourCalm, cause, message)
}

pub struct Session {
    settings: Settings,
    input: BytesMut,
    output: BytesMut,
    preface_seen: bool,
    settings_seen: bool,
    /// The client sent GOAWAY, or the final GOAWAY of a drain was sent: no new streams.
    going_away: bool,
    decoder: hpack::Decoder,
    continuation: Option<Continuation>,
    streams: HashMap<u32, Stream>,
    /// The streams the client opened: the highest, and which recent ids it used.
    used_ids: UsedIds,
    /// What the client may still send on the connection.
    recv_window: i64,
    /// Consumed and not yet given back to the connection's window.
    recv_unacked: u32,
    send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// Streams waiting for the connection's window, served in turn as it opens.
    blocked: VecDeque<u32>,
    /// WINDOW_UPDATEs the client may send without counting: two (its stream's and the
    /// connection's) for each DATA frame written to it, as a reader acknowledges them.
    earned_updates: u32,
    /// Streams looked at for the connection's window, for the tests' account of work.
    #[cfg(test)]
    retried: u64,
    closed: VecDeque<(u32, Closed)>,
    events: VecDeque<Event>,
    returned_credit: usize,
    drain: Drain,
    drain_reason: &'static str,
    abuse: Abuse,
    /// Frames taken apart so far: progress, for the I/O loop's stall timer.
    frames: u64,
    /// The server's SETTINGS are written.
    greeted: bool,
}

impl Session {
    /// A session; it writes its SETTINGS (and raises the connection window) when first
    /// polled, so making one allocates nothing.
    pub fn new(settings: Settings) -> Session {
        Session {
            input: BytesMut::new(),
            output: BytesMut::new(),
            preface_seen: false,
            settings_seen: false,
            going_away: false,
            decoder: headers::decoder(),
            continuation: None,
            streams: HashMap::new(),
            used_ids: UsedIds::default(),
            recv_window: i64::from(settings.connection_window),
            recv_unacked: 0,
            send_window: frame::DEFAULT_WINDOW,
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            blocked: VecDeque::new(),
            earned_updates: 0,
            #[cfg(test)]
            retried: 0,
            closed: VecDeque::new(),
            events: VecDeque::new(),
            returned_credit: 0,
            drain: Drain::No,
            drain_reason: "",
            abuse: Abuse {
                client_resets: Window::default(),
                local_resets: Total::default(),
                settings: Window::default(),
                pings: Window::default(),
                empty: Window::default(),
                window_updates: Window::default(),
                oversized_headers: Total::default(),
            },
            frames: 0,
            greeted: false,
            settings,
        }
    }

    /// Where received bytes go.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Frames to write; the caller removes what it wrote.
    pub(crate) fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    /// Output waits to be written, or may be added to.
    pub(crate) fn output_full(&self) -> bool {
        self.output.len() >= MAX_OUTPUT
    }

    /// Drops buffers that hold nothing, and copies an incomplete frame out of a large read
    /// buffer, so a connection waiting on the client holds only what it was sent.
    pub(crate) fn compact_input(&mut self) {
        if self.input.is_empty() {
            self.input = BytesMut::new();
        } else if self.input.capacity() > 2 * self.input.len() + 4096 {
            self.input = BytesMut::from(&self.input[..]);
        }
        if self.output.is_empty() {
            self.output = BytesMut::new();
        }
    }

    /// The client owes bytes to finish what it began: its preface and SETTINGS, a header
    /// block, or a frame. (Whole frames waiting while output is full are not owed.)
    pub fn incomplete(&self) -> bool {
        let partial_frame = !self.input.is_empty()
            && (self.input.len() < frame::HEADER_LEN
                || self.input.len() < frame::HEADER_LEN + Head::parse(&self.input).len);
        !self.settings_seen || self.continuation.is_some() || partial_frame
    }

    /// The preface and SETTINGS arrived.
    pub fn started(&self) -> bool {
        self.settings_seen
    }

    /// Frames taken apart so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Request data delivered to the application and not yet consumed.
    pub fn held(&self) -> u64 {
        self.streams.values().map(|s| u64::from(s.held)).sum()
    }

    /// The client may send no more data: the whole connection window is held by data the
    /// application has not consumed (everything consumed is given back at once then).
    /// Only consuming some of it lets the connection go on.
    pub(crate) fn window_spent(&self) -> bool {
        self.recv_window <= 0
    }

    /// Open streams.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    pub(crate) fn has_streams(&self) -> bool {
        !self.streams.is_empty()
    }

    /// Nothing more will happen: the connection is going away, every stream is done and
    /// all output is taken.
    pub fn finished(&self) -> bool {
        self.going_away && self.streams.is_empty() && self.output.is_empty()
    }

    pub fn drain(&self) -> Drain {
        self.drain
    }

    /// Credit of written or dropped [`Outgoing::Data`] since the last call.
    pub(crate) fn take_returned_credit(&mut self) -> usize {
        std::mem::take(&mut self.returned_credit)
    }

    fn out(&mut self) -> &mut BytesMut {
        if self.output.capacity() == 0 {
            self.output.reserve(OUTPUT_CHUNK);
        }
        &mut self.output
    }

    /// The server's side of the connection preface (RFC 9113 §3.4): its SETTINGS, and the
    /// connection window raised to the budget.
    fn greet(&mut self) {
        self.greeted = true;
        let announced = [
            (
                setting::MAX_CONCURRENT_STREAMS,
                self.settings.max_concurrent_streams,
            ),
            (setting::INITIAL_WINDOW_SIZE, self.settings.stream_window),
            (
                setting::MAX_HEADER_LIST_SIZE,
                u32::try_from(headers::MAX_LIST).expect("small"),
            ),
        ];
        frame::settings(&announced, self.out());
        let raise = self
            .settings
            .connection_window
            .saturating_sub(frame::DEFAULT_WINDOW as u32);
        if raise > 0 {
            frame::window_update(0, raise, self.out());
        }
    }

    /// The next event the input makes, taking frames apart until one does; `None` when
    /// the input holds no complete frame (or output is full).
    pub(crate) fn poll_event(&mut self, now: Instant) -> Result<Option<Event>, ConnectionError> {
        if !self.greeted {
            self.greet();
        }
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if !self.preface_seen {
                let seen = self.input.len().min(frame::PREFACE.len());
                if self.input[..seen] != frame::PREFACE[..seen] {
                    return Err(protocol_error("not an HTTP/2 connection preface"));
                }
                if seen < frame::PREFACE.len() {
                    return Ok(None);
                }
                self.input.advance(frame::PREFACE.len());
                self.preface_seen = true;
            }
            if self.input.len() < frame::HEADER_LEN || self.output_full() {
                return Ok(None);
            }
            let head = Head::parse(&self.input);
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(frame_size_error(format!(
                    "frame of {} bytes exceeds 16384",
                    head.len
                )));
            }
            if self.input.len() < frame::HEADER_LEN + head.len {
                return Ok(None);
            }
            self.input.advance(frame::HEADER_LEN);
            let payload = self.input.split_to(head.len).freeze();
            self.frames += 1;
            self.on_frame(head, payload, now)?;
            // Data discarded on the way (closed streams, padding) is given back too.
            self.give_back_connection_window();
        }
    }

    fn on_frame(
        &mut self,
        head: Head,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), ConnectionError> {
        if !self.settings_seen {
            if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                return Err(protocol_error("the first frame must be SETTINGS"));
            }
            self.settings_seen = true;
        }
        if let Some(continuation) = &self.continuation
            && (head.kind != kind::CONTINUATION || head.stream != continuation.stream)
        {
            return Err(protocol_error("expected CONTINUATION"));
        }
        match head.kind {
            kind::DATA => self.on_data(head, payload, now),
            kind::HEADERS => self.on_headers(head, payload),
            kind::CONTINUATION => self.on_continuation(head, payload, now),
            kind::RST_STREAM => self.on_rst_stream(head, &payload, now),
            kind::SETTINGS => self.on_settings(head, &payload, now),
            kind::PING => self.on_ping(head, &payload, now),
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(protocol_error("GOAWAY on a stream"));
                }
                if payload.len() < 8 {
                    return Err(frame_size_error("GOAWAY shorter than 8 bytes"));
                }
                self.going_away = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.on_window_update(head, &payload, now),
            kind::PRIORITY => self.on_priority(head, &payload, now),
            kind::PUSH_PROMISE => Err(protocol_error("a client cannot push")),
            // Unknown frame types are ignored (RFC 9113 §4.1), and counted.
            _ => self.count_empty(now, "a frame of an unknown type"),
        }
    }

    fn count_empty(&mut self, now: Instant, what: &str) -> Result<(), ConnectionError> {
        if self.abuse.empty.count(now, MAX_CONTROL_FRAMES) {
            return Err(calm(
                "empty_frame_flood",
                format!("too many frames doing nothing ({what})"),
            ));
        }
        Ok(())
    }

    fn on_ping(&mut self, head: Head, payload: &[u8], now: Instant) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(protocol_error("PING on a stream"));
        }
        let Ok(payload) = <[u8; 8]>::try_from(payload) else {
            return Err(frame_size_error("PING is not 8 bytes"));
        };
        if head.has(flag::ACK) {
            if payload == DRAIN_PING {
                self.final_goaway();
            }
            return Ok(());
        }
        if self.abuse.pings.count(now, MAX_CONTROL_FRAMES) {
            return Err(calm("ping_flood", "too many PINGs"));
        }
        frame::ping(payload, true, self.out());
        Ok(())
    }

    fn on_settings(
        &mut self,
        head: Head,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(protocol_error("SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(frame_size_error("SETTINGS ACK with a payload"))
            };
        }
        if self.abuse.settings.count(now, MAX_CONTROL_FRAMES) {
            return Err(calm("settings_flood", "too many SETTINGS"));
        }
        let Some(values) = frame::parse_settings(payload) else {
            return Err(frame_size_error("SETTINGS length is not a multiple of 6"));
        };
        for (id, value) in values {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(ConnectionError::new(
                            Reason::FlowControl,
                            "protocol_error",
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > frame::MAX_WINDOW {
                            return Err(ConnectionError::new(
                                Reason::FlowControl,
                                "protocol_error",
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
        // A larger initial window may free streams waiting for their own (this walk is
        // paid for by the SETTINGS flood limit).
        let opened: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, stream)| stream.blocked == Blocked::Stream && stream.send_window > 0)
            .map(|(id, _)| *id)
            .collect();
        for id in opened {
            self.write_stream(id);
        }
        self.retry_blocked();
        Ok(())
    }

    fn on_window_update(
        &mut self,
        head: Head,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ConnectionError> {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return Err(frame_size_error("WINDOW_UPDATE is not 4 bytes"));
        };
        if self.earned_updates > 0 {
            self.earned_updates -= 1;
        } else if self.abuse.window_updates.count(now, MAX_CONTROL_FRAMES) {
            return Err(calm(
                "window_update_flood",
                "too many WINDOW_UPDATEs for the data sent",
            ));
        }
        let increment = i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(protocol_error("WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return Err(ConnectionError::new(
                    Reason::FlowControl,
                    "protocol_error",
                    "connection window above 2^31-1",
                ));
            }
            self.retry_blocked();
            return Ok(());
        }
        if head.stream > self.used_ids.highest() {
            return Err(protocol_error("WINDOW_UPDATE on an idle stream"));
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            // A closed stream: a WINDOW_UPDATE may cross the frame that closed it.
            return Ok(());
        };
        if increment == 0 {
            return self.stream_error(head.stream, Reason::Protocol);
        }
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            return self.stream_error(head.stream, Reason::FlowControl);
        }
        self.write_stream(head.stream);
        Ok(())
    }

    fn on_priority(
        &mut self,
        head: Head,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(protocol_error("PRIORITY on stream 0"));
        }
        self.count_empty(now, "PRIORITY")?;
        if payload.len() != 5 {
            return self.stream_error(head.stream, Reason::FrameSize);
        }
        let dependency = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        if dependency & 0x7fff_ffff == head.stream {
            return self.stream_error(head.stream, Reason::Protocol);
        }
        Ok(())
    }

    fn on_rst_stream(
        &mut self,
        head: Head,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(protocol_error("RST_STREAM on stream 0"));
        }
        if payload.len() != 4 {
            return Err(frame_size_error("RST_STREAM is not 4 bytes"));
        }
        if head.stream > self.used_ids.highest() {
            return Err(protocol_error("RST_STREAM on an idle stream"));
        }
        let Some(stream) = self.streams.get(&head.stream) else {
            return Ok(());
        };
        let unanswered = !stream.end_queued;
        self.remove(head.stream, Closed::ByClient);
        if unanswered && self.abuse.client_resets.count(now, MAX_CLIENT_RESETS) {
            return Err(calm(
                "rapid_reset",
                format!(
                    "more than {MAX_CLIENT_RESETS} streams reset within {}s",
                    ABUSE_WINDOW.as_secs()
                ),
            ));
        }
        Ok(())
    }

    fn on_headers(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(protocol_error("HEADERS on stream 0"));
        }
        let self_dependent = head.has(flag::PRIORITY) && {
            let at = usize::from(head.has(flag::PADDED));
            payload.len() >= at + 4
                && u32::from_be_bytes([
                    payload[at],
                    payload[at + 1],
                    payload[at + 2],
                    payload[at + 3],
                ]) & 0x7fff_ffff
                    == head.stream
        };
        let Some(block) = frame::unpadded(&head, payload) else {
            return Err(protocol_error("HEADERS padding exceeds the frame"));
        };
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.on_header_block(head.stream, end_stream, self_dependent, &block);
        }
        self.continuation = Some(Continuation {
            stream: head.stream,
            end_stream,
            self_dependent,
            block: BytesMut::from(&block[..]),
            frames: 0,
        });
        Ok(())
    }

    fn on_continuation(
        &mut self,
        head: Head,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), ConnectionError> {
        let Some(continuation) = self.continuation.as_mut() else {
            return Err(protocol_error("CONTINUATION without HEADERS"));
        };
        continuation.frames += 1;
        if continuation.frames > MAX_CONTINUATIONS {
            return Err(calm(
                "continuation_flood",
                format!("more than {MAX_CONTINUATIONS} CONTINUATION frames in a header block"),
            ));
        }
        continuation.block.extend_from_slice(&payload);
        if continuation.block.len() > headers::MAX_BLOCK {
            return Err(calm("header_block_too_large", "header block too large"));
        }
        if payload.is_empty() && !head.has(flag::END_HEADERS) {
            self.count_empty(now, "an empty CONTINUATION")?;
        }
        if !head.has(flag::END_HEADERS) {
            return Ok(());
        }
        let continuation = self.continuation.take().expect("checked above");
        self.on_header_block(
            continuation.stream,
            continuation.end_stream,
            continuation.self_dependent,
            &continuation.block,
        )
    }

    fn remembered(&self, id: u32) -> Option<Closed> {
        self.closed
            .iter()
            .rev()
            .find(|(closed, _)| *closed == id)
            .map(|(_, how)| *how)
    }

    fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        self_dependent: bool,
        block: &[u8],
    ) -> Result<(), ConnectionError> {
        let compression = |_| {
            ConnectionError::new(
                Reason::Compression,
                "protocol_error",
                "undecodable header block",
            )
        };
        if self.streams.contains_key(&id) {
            // Trailers: the block is decoded whatever becomes of the stream, so the table
            // stays in step with the client's.
            let trailers =
                headers::decode_trailers(&mut self.decoder, block).map_err(compression)?;
            let stream = self.streams.get_mut(&id).expect("checked above");
            if !stream.recv_open {
                return self.stream_error(id, Reason::StreamClosed);
            }
            if !end_stream || self_dependent {
                return self.stream_error(id, Reason::Protocol);
            }
            let trailers = match trailers {
                Ok(trailers) => trailers,
                Err(Unservable::TooLarge) => {
                    self.count_oversized()?;
                    return self.stream_error(id, Reason::EnhanceYourCalm);
                }
                Err(Unservable::Malformed(_)) => return self.stream_error(id, Reason::Protocol),
            };
            if stream
                .expected_length
                .is_some_and(|length| length != stream.received_length)
            {
                return self.stream_error(id, Reason::Protocol);
            }
            stream.recv_open = false;
            self.events.push_back(Event::Trailers {
                stream: id,
                trailers,
            });
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(protocol_error(format!(
                "HEADERS on stream {id}, which a client cannot open"
            )));
        }
        if id <= self.used_ids.highest() {
            // Decoded first: the client's table moved on with this block.
            let _ignored =
                headers::decode_trailers(&mut self.decoder, block).map_err(compression)?;
            return match self.remembered(id) {
                Some(Closed::ByUs) => Ok(()),
                Some(Closed::ByClient) => Err(ConnectionError::new(
                    Reason::StreamClosed,
                    "protocol_error",
                    format!("HEADERS on closed stream {id}"),
                )),
                // Forgotten: perhaps one this side reset or answered early, whose frames
                // were still on the way. Only that stream is refused, as the `h2` crate
                // refuses it; the connection's other streams go on.
                None => match self.used_ids.used(id) {
                    Used::Never => Err(protocol_error(format!(
                        "HEADERS on stream {id}, below streams already opened"
                    ))),
                    Used::Yes | Used::Unknown => self.stream_error(id, Reason::StreamClosed),
                },
            };
        }
        let request = headers::decode_request(&mut self.decoder, block).map_err(compression)?;
        self.used_ids.open(id);
        if self.going_away {
            frame::rst_stream(id, Reason::RefusedStream, self.out());
            self.remember(id, Closed::ByUs);
            return Ok(());
        }
        if self.streams.len() >= self.settings.max_concurrent_streams as usize {
            return self.stream_error(id, Reason::RefusedStream);
        }
        if self_dependent {
            return self.stream_error(id, Reason::Protocol);
        }
        let request = match request {
            Ok(request) => request,
            Err(Unservable::TooLarge) => {
                // RFC 9113 §10.5.1: answered 431, and the rest of the request refused.
                let mut block = BytesMut::new();
                headers::encode_response(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    &HeaderMap::new(),
                    &mut block,
                );
                let max_frame = self.peer_max_frame;
                frame::headers(id, &block, true, max_frame, self.out());
                if !end_stream {
                    frame::rst_stream(id, Reason::NoError, self.out());
                }
                self.remember(id, Closed::ByUs);
                return self.count_oversized();
            }
            Err(Unservable::Malformed(why)) => {
                tracing::debug!(stream = id, why, "malformed request");
                return self.stream_error(id, Reason::Protocol);
            }
        };
        let expected_length = match request.headers().get(http::header::CONTENT_LENGTH) {
            None => None,
            Some(value) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(length) if !(end_stream && length > 0) => Some(length),
                _ => return self.stream_error(id, Reason::Protocol),
            },
        };
        self.streams.insert(
            id,
            Stream {
                recv_open: !end_stream,
                flow: Flow::Body,
                recv_window: i64::from(self.settings.stream_window),
                recv_unacked: 0,
                held: 0,
                expected_length,
                received_length: 0,
                send_window: self.peer_initial_window,
                pending: VecDeque::new(),
                end_queued: false,
                blocked: Blocked::No,
                in_line: false,
            },
        );
        self.events.push_back(Event::Open {
            stream: id,
            request,
            end_stream,
        });
        Ok(())
    }

    fn count_oversized(&mut self) -> Result<(), ConnectionError> {
        if self.abuse.oversized_headers.count(MAX_OVERSIZED_HEADERS) {
            return Err(calm(
                "header_list_too_large",
                format!(
                    "more than {MAX_OVERSIZED_HEADERS} header lists over {} bytes",
                    headers::MAX_LIST
                ),
            ));
        }
        Ok(())
    }

    fn count_local_reset(&mut self) -> Result<(), ConnectionError> {
        if self.abuse.local_resets.count(MAX_LOCAL_RESETS) {
            return Err(calm(
                "local_resets",
                format!("more than {MAX_LOCAL_RESETS} streams reset for the client's errors"),
            ));
        }
        Ok(())
    }

    /// A stream error the client caused: reset, and counted.
    fn stream_error(&mut self, id: u32, reason: Reason) -> Result<(), ConnectionError> {
        frame::rst_stream(id, reason, self.out());
        if self.streams.contains_key(&id) {
            self.remove(id, Closed::ByUs);
        } else {
            self.remember(id, Closed::ByUs);
        }
        self.count_local_reset()
    }

    fn on_data(&mut self, head: Head, payload: Bytes, now: Instant) -> Result<(), ConnectionError> {
        let id = head.stream;
        if id == 0 {
            return Err(protocol_error("DATA on stream 0"));
        }
        // Flow control counts the whole payload, padding included.
        let counted = u32::try_from(payload.len()).expect("frames are small");
        self.recv_window -= i64::from(counted);
        if self.recv_window < 0 {
            return Err(ConnectionError::new(
                Reason::FlowControl,
                "protocol_error",
                "DATA beyond the connection window",
            ));
        }
        let Some(data) = frame::unpadded(&head, payload) else {
            return Err(protocol_error("DATA padding exceeds the frame"));
        };
        let end_stream = head.has(flag::END_STREAM);
        if data.is_empty() && !end_stream {
            self.count_empty(now, "an empty DATA frame")?;
        }
        let delivered = u32::try_from(data.len()).expect("frames are small");
        // Padding is consumed at once.
        self.recv_unacked += counted - delivered;
        let Some(stream) = self.streams.get_mut(&id) else {
            self.recv_unacked += delivered;
            if id > self.used_ids.highest() {
                return Err(protocol_error("DATA on an idle stream"));
            }
            return match self.remembered(id) {
                // Sent before the client saw the reset: discarded.
                Some(Closed::ByUs) => Ok(()),
                Some(Closed::ByClient) => Err(ConnectionError::new(
                    Reason::StreamClosed,
                    "protocol_error",
                    format!("DATA on closed stream {id}"),
                )),
                // Forgotten (see on_header_block): a stream error, not the connection's.
                None => self.stream_error(id, Reason::StreamClosed),
            };
        };
        if !stream.recv_open {
            self.recv_unacked += delivered;
            return self.stream_error(id, Reason::StreamClosed);
        }
        stream.recv_window -= i64::from(counted);
        if stream.recv_window < 0 {
            self.recv_unacked += delivered;
            return self.stream_error(id, Reason::FlowControl);
        }
        stream.received_length += u64::from(delivered);
        if let Some(expected) = stream.expected_length
            && (stream.received_length > expected
                || (end_stream && stream.received_length != expected))
        {
            self.recv_unacked += delivered;
            return self.stream_error(id, Reason::Protocol);
        }
        stream.recv_unacked += counted - delivered;
        if stream.flow == Flow::Messages {
            stream.recv_unacked += delivered;
        }
        stream.held += delivered;
        if end_stream {
            stream.recv_open = false;
        }
        self.give_back_stream_window(id);
        self.give_back_connection_window();
        self.events.push_back(Event::Data {
            stream: id,
            data,
            end_stream,
        });
        Ok(())
    }

    /// How the stream's window is given back (see [`Flow`]); [`Flow::Body`] until set.
    pub(crate) fn set_flow(&mut self, id: u32, flow: Flow) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.flow = flow;
        }
    }

    /// The application is done with `bytes` of a stream's data: room in the windows again.
    pub(crate) fn consumed(&mut self, id: u32, bytes: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let bytes = bytes.min(stream.held);
        stream.held -= bytes;
        if stream.flow == Flow::Body {
            stream.recv_unacked += bytes;
        }
        self.recv_unacked += bytes;
        self.give_back_stream_window(id);
        self.give_back_connection_window();
    }

    fn give_back_stream_window(&mut self, id: u32) {
        let threshold = self.settings.stream_window / 2;
        if let Some(stream) = self.streams.get_mut(&id)
            && stream.recv_open
            && stream.recv_unacked >= threshold
        {
            let increment = std::mem::take(&mut stream.recv_unacked);
            stream.recv_window += i64::from(increment);
            frame::window_update(id, increment, self.out());
        }
    }

    /// Consumed data is given back in quarters of the budget, to spare WINDOW_UPDATEs, or
    /// at once when the client has no window left (it could send nothing to make up the
    /// quarter).
    fn give_back_connection_window(&mut self) {
        let starved = self.recv_window <= 0 && self.recv_unacked > 0;
        if starved || self.recv_unacked >= self.settings.connection_window / 4 {
            let increment = std::mem::take(&mut self.recv_unacked);
            self.recv_window += i64::from(increment);
            frame::window_update(0, increment, self.out());
        }
    }

    /// Queues a frame of a stream's answer and writes what flow control allows. Nothing
    /// is sent after the answer's last frame.
    pub fn send(&mut self, id: u32, outgoing: Outgoing) {
        let Some(stream) = self.streams.get_mut(&id) else {
            if let Outgoing::Data { credit, .. } = outgoing {
                self.returned_credit += credit as usize;
            }
            return;
        };
        if stream.end_queued {
            if let Outgoing::Data { credit, .. } = outgoing {
                self.returned_credit += credit as usize;
            }
            return;
        }
        stream.end_queued = outgoing.ends();
        stream.pending.push_back(outgoing);
        self.write_stream(id);
    }

    /// The answer to this stream has ended (its last frame is queued).
    pub fn answered(&self, id: u32) -> bool {
        self.streams.get(&id).is_none_or(|s| s.end_queued)
    }

    /// Resets a stream for the application's reasons (an upstream failure, say).
    pub fn reset(&mut self, id: u32, reason: Reason) {
        if self.streams.contains_key(&id) {
            frame::rst_stream(id, reason, self.out());
            self.remove(id, Closed::ByUs);
        }
    }

    /// Writes a stream's pending frames as far as the windows allow.
    fn write_stream(&mut self, id: u32) {
        if self.output.capacity() == 0 {
            self.output.reserve(OUTPUT_CHUNK);
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        while let Some(front) = stream.pending.front_mut() {
            match front {
                Outgoing::Headers { block, end } => {
                    frame::headers(id, block, *end, self.peer_max_frame, &mut self.output);
                }
                // An empty frame carries only the end flag and needs no window.
                Outgoing::Data { data, end, credit } if data.is_empty() => {
                    if *end {
                        frame::data(id, &[], true, &mut self.output);
                    }
                    self.returned_credit += *credit as usize;
                }
                Outgoing::Data { data, end, credit } => {
                    let allowed = self
                        .send_window
                        .min(stream.send_window)
                        .min(self.peer_max_frame as i64);
                    if allowed <= 0 {
                        if stream.send_window <= 0 {
                            stream.blocked = Blocked::Stream;
                        } else {
                            stream.blocked = Blocked::Connection;
                            if !stream.in_line {
                                stream.in_line = true;
                                self.blocked.push_back(id);
                            }
                        }
                        return;
                    }
                    stream.blocked = Blocked::No;
                    let n = data.len().min(allowed as usize);
                    let chunk = data.split_to(n);
                    frame::data(id, &chunk, *end && data.is_empty(), &mut self.output);
                    self.earned_updates = self
                        .earned_updates
                        .saturating_add(2)
                        .min(MAX_EARNED_UPDATES);
                    self.send_window -= n as i64;
                    stream.send_window -= n as i64;
                    if !data.is_empty() {
                        continue;
                    }
                    self.returned_credit += *credit as usize;
                }
            }
            stream.pending.pop_front();
        }
        self.close_if_done(id);
    }

    /// Streams waiting for the connection's window, in turn, while it lasts: a stream not
    /// finished goes to the back, and the rest wait for the next WINDOW_UPDATE. A window
    /// opened by one byte costs one stream's turn, not a walk over every waiting stream.
    fn retry_blocked(&mut self) {
        while self.send_window > 0
            && let Some(id) = self.blocked.pop_front()
        {
            #[cfg(test)]
            {
                self.retried += 1;
            }
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            stream.in_line = false;
            if stream.blocked == Blocked::Connection {
                stream.blocked = Blocked::No;
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
            self.remove(id, Closed::ByUs);
        } else {
            self.remove(id, Closed::ByClient);
        }
    }

    fn remember(&mut self, id: u32, how: Closed) {
        if self.closed.len() == REMEMBERED_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back((id, how));
    }

    fn remove(&mut self, id: u32, how: Closed) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        // Streams that close while in line leave their ids behind; they are skipped when
        // reached, and swept here so a client that never opens its window cannot grow the
        // list with them.
        if stream.in_line && self.blocked.len() > 2 * self.streams.len() + 16 {
            let streams = &self.streams;
            self.blocked.retain(|id| streams.contains_key(id));
        }
        // What the application held of it is free again.
        self.recv_unacked += stream.held;
        for outgoing in stream.pending {
            if let Outgoing::Data { credit, .. } = outgoing {
                self.returned_credit += credit as usize;
            }
        }
        self.remember(id, how);
        self.events.push_back(Event::Closed { stream: id });
        self.give_back_connection_window();
    }

    /// Starts going away: streams already opened are served, new ones are refused once
    /// the client has seen the final GOAWAY.
    pub(crate) fn start_drain(&mut self, reason: &'static str) {
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
    }

    /// The client has had time to see the first GOAWAY: the last stream is fixed now.
    pub(crate) fn final_goaway(&mut self) {
        if self.drain != Drain::Announced {
            return;
        }
        self.drain = Drain::Final;
        self.going_away = true;
        let last = self.used_ids.highest();
        let reason = self.drain_reason;
        frame::goaway(last, Reason::NoError, reason.as_bytes(), self.out());
    }

    /// Asks the client whether it is still there.
    pub fn ping(&mut self, payload: [u8; 8]) {
        frame::ping(payload, false, self.out());
    }

    /// Ends the connection for `error`: a GOAWAY saying why, when the client spoke HTTP/2.
    pub fn close(&mut self, error: &ConnectionError) {
        if self.preface_seen {
            let last = self.used_ids.highest();
            frame::goaway(last, error.reason, error.message.as_bytes(), self.out());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skylift_testkit::h2raw::grpc_request as request_block;

    /// A client's side: frames written with the same writers (the layout is symmetric).
    fn preface() -> BytesMut {
        let mut out = BytesMut::from(&frame::PREFACE[..]);
        frame::settings(&[], &mut out);
        out
    }

    fn open(stream: u32, out: &mut BytesMut) {
        frame::headers(stream, &request_block("/a/b"), false, 16_384, out);
    }

    /// Feeds `bytes` and collects the events, or the connection error.
    fn feed(session: &mut Session, bytes: &[u8]) -> Result<Vec<Event>, ConnectionError> {
        session.input().extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(event) = session.poll_event(Instant::now())? {
            events.push(event);
        }
        Ok(events)
    }

    /// The frames in the session's output, taken: (kind, stream, payload).
    fn written(session: &mut Session) -> Vec<(u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        let out = session.output().split();
        let mut rest = &out[..];
        while rest.len() >= frame::HEADER_LEN {
            let head = Head::parse(rest);
            frames.push((
                head.kind,
                head.stream,
                rest[frame::HEADER_LEN..frame::HEADER_LEN + head.len].to_vec(),
            ));
            rest = &rest[frame::HEADER_LEN + head.len..];
        }
        frames
    }

    fn window_updates(frames: &[(u8, u32, Vec<u8>)], stream: u32) -> u32 {
        frames
            .iter()
            .filter(|f| f.0 == kind::WINDOW_UPDATE && f.1 == stream)
            .map(|f| u32::from_be_bytes(f.2[..4].try_into().unwrap()))
            .sum()
    }

    fn small() -> Settings {
        Settings {
            max_concurrent_streams: 8,
            stream_window: 64 * 1024,
            connection_window: 100_000,
        }
    }

    fn started(settings: Settings) -> Session {
        let mut session = Session::new(settings);
        feed(&mut session, &preface()).unwrap();
        written(&mut session);
        session
    }

    #[test]
    fn a_request_opens_delivers_data_and_is_answered() {
        let mut session = started(Settings::default());
        let mut out = BytesMut::new();
        open(1, &mut out);
        frame::data(1, b"hello", true, &mut out);
        let events = feed(&mut session, &out).unwrap();
        assert!(
            matches!(&events[0], Event::Open { stream: 1, request, end_stream: false } if request.uri().path() == "/a/b")
        );
        assert!(
            matches!(&events[1], Event::Data { stream: 1, data, end_stream: true } if &data[..] == b"hello")
        );
        session.send(
            1,
            Outgoing::Headers {
                block: Bytes::from_static(&[0x88]),
                end: true,
            },
        );
        let frames = written(&mut session);
        assert_eq!(frames[0].0, kind::HEADERS);
        let events = feed(&mut session, &[]).unwrap();
        assert!(matches!(events[..], [Event::Closed { stream: 1 }]));
        assert!(!session.has_streams());
    }

    #[test]
    fn the_connection_window_comes_back_only_as_data_is_consumed() {
        let mut session = started(small());
        let mut out = BytesMut::new();
        open(1, &mut out);
        open(3, &mut out);
        // 2 × 48 000 bytes held, not consumed: under the 100 000 budget.
        for stream in [1, 3] {
            for _ in 0..3 {
                frame::data(stream, &[7; 16_000], false, &mut out);
            }
        }
        feed(&mut session, &out).unwrap();
        let frames = written(&mut session);
        assert_eq!(window_updates(&frames, 0), 0, "nothing given back yet");
        // 4 001 more bytes pass the budget: a flow-control error.
        let mut over = BytesMut::new();
        frame::data(1, &[7; 4_001], false, &mut over);
        let mut replay = started(small());
        let mut both = out.clone();
        both.extend_from_slice(&over);
        let error = feed(&mut replay, &both).unwrap_err();
        assert_eq!(error.reason, Reason::FlowControl);

        // Consumed, the window comes back, and the stream's too (a request body).
        session.consumed(1, 48_000);
        let frames = written(&mut session);
        assert_eq!(window_updates(&frames, 0), 48_000);
        assert_eq!(window_updates(&frames, 1), 48_000);
        // A stream closed with data unconsumed frees it.
        session.reset(3, Reason::Cancel);
        let frames = written(&mut session);
        assert_eq!(window_updates(&frames, 0), 48_000);
    }

    #[test]
    fn a_message_stream_gets_its_window_as_data_arrives_but_not_the_connection() {
        let mut session = started(small());
        let mut out = BytesMut::new();
        open(1, &mut out);
        feed(&mut session, &out).unwrap();
        session.set_flow(1, Flow::Messages);
        let mut out = BytesMut::new();
        for _ in 0..3 {
            frame::data(1, &[1; 16_000], false, &mut out);
        }
        feed(&mut session, &out).unwrap();
        let frames = written(&mut session);
        assert_eq!(
            window_updates(&frames, 1),
            48_000,
            "a message larger than the stream window can arrive"
        );
        assert_eq!(window_updates(&frames, 0), 0);
    }

    /// One 4 KB entry inserted, then referenced until the block is 64 KB.
    fn bomb() -> Vec<u8> {
        let mut block = request_block("/a/b");
        block.extend_from_slice(&[0x40, 5]);
        block.extend_from_slice(b"x-big");
        // The value's length, 4000, as an HPACK integer: 127 + 33 + 30 × 128.
        block.extend_from_slice(&[0x7f, 0x80 | 33, 30]);
        block.extend(std::iter::repeat_n(b'v', 4000));
        while block.len() < headers::MAX_BLOCK - 8 {
            block.push(0x80 | 62);
        }
        block
    }

    #[test]
    fn an_hpack_bomb_is_answered_431_and_the_table_stays_in_step() {
        let mut session = started(Settings::default());
        let mut out = BytesMut::new();
        frame::headers(1, &bomb(), true, 16_384, &mut out);
        let events = feed(&mut session, &out).unwrap();
        assert!(events.is_empty(), "no stream opened");
        let frames = written(&mut session);
        assert_eq!(frames[0].0, kind::HEADERS);
        assert_eq!(
            frames[0].2,
            [0x08, 0x03, b'4', b'3', b'1'],
            ":status 431 as a literal"
        );
        // The table took the 4 KB entry: a next request may reference it (index 62).
        let mut block = request_block("/c/d");
        block.push(0x80 | 62);
        let mut out = BytesMut::new();
        frame::headers(3, &block, true, 16_384, &mut out);
        let events = feed(&mut session, &out).unwrap();
        assert!(
            matches!(&events[0], Event::Open { request, .. } if request.headers()["x-big"].len() == 4000)
        );
        // A client that keeps at it is sent away.
        let mut error = None;
        for stream in (5..).step_by(2).take(MAX_OVERSIZED_HEADERS as usize) {
            let mut out = BytesMut::new();
            frame::headers(stream, &bomb(), true, 16_384, &mut out);
            if let Err(e) = feed(&mut session, &out) {
                error = Some(e);
            }
        }
        let error = error.expect("closed");
        assert_eq!(error.reason, Reason::EnhanceYourCalm);
        assert_eq!(error.cause, "header_list_too_large");
    }

    #[test]
    fn a_connection_stuck_on_a_partial_frame_keeps_only_that_frame() {
        let mut session = started(Settings::default());
        session.input().reserve(128 * 1024);
        // The first 5 bytes of a PING.
        session.input().extend_from_slice(&[0, 0, 8, kind::PING, 0]);
        assert!(feed(&mut session, &[]).unwrap().is_empty());
        assert!(session.incomplete());
        session.compact_input();
        assert!(
            session.input().capacity() < 64,
            "{}",
            session.input().capacity()
        );
        let frames_before = session.frames();
        // The rest of the frame completes it.
        feed(&mut session, &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(session.frames(), frames_before + 1);
        assert!(!session.incomplete());
        assert_eq!(written(&mut session)[0].2, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn rapid_resets_past_the_limit_end_the_connection() {
        let mut session = started(Settings::default());
        let now = Instant::now();
        let mut result = Ok(None);
        for i in 0..=MAX_CLIENT_RESETS {
            let stream = 2 * i + 1;
            let mut out = BytesMut::new();
            open(stream, &mut out);
            out.extend_from_slice(&[0, 0, 4, kind::RST_STREAM, 0]);
            out.extend_from_slice(&stream.to_be_bytes());
            out.extend_from_slice(&8u32.to_be_bytes());
            session.input().extend_from_slice(&out);
            loop {
                result = session.poll_event(now);
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            if i < MAX_CLIENT_RESETS {
                assert!(result.is_ok(), "reset {i} allowed");
            }
        }
        let error = result.unwrap_err();
        assert_eq!(error.cause, "rapid_reset");
        // The same resets spread over time are allowed.
        let mut session = started(Settings::default());
        for i in 0..=MAX_CLIENT_RESETS * 2 {
            let stream = 2 * i + 1;
            let mut out = BytesMut::new();
            open(stream, &mut out);
            out.extend_from_slice(&[0, 0, 4, kind::RST_STREAM, 0]);
            out.extend_from_slice(&stream.to_be_bytes());
            out.extend_from_slice(&8u32.to_be_bytes());
            session.input().extend_from_slice(&out);
            let later = now + ABUSE_WINDOW * (i / MAX_CLIENT_RESETS + 1);
            while session.poll_event(later).unwrap().is_some() {}
        }
    }

    fn rst_codes(frames: &[(u8, u32, Vec<u8>)], stream: u32) -> Vec<u32> {
        frames
            .iter()
            .filter(|f| f.0 == kind::RST_STREAM && f.1 == stream)
            .map(|f| u32::from_be_bytes(f.2[..4].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn late_frames_on_a_forgotten_stream_refuse_that_stream_and_the_connection_goes_on() {
        let mut session = started(Settings::default());
        let mut out = BytesMut::new();
        open(1, &mut out);
        feed(&mut session, &out).unwrap();
        // Answered early while the client still sends (an error status, say).
        session.send(
            1,
            Outgoing::Headers {
                block: Bytes::from_static(&[0x88]),
                end: true,
            },
        );
        // A busy connection: enough streams come and go after it that it is forgotten.
        let busy = 3;
        let mut out = BytesMut::new();
        open(busy, &mut out);
        feed(&mut session, &out).unwrap();
        for i in 0..=REMEMBERED_CLOSED as u32 {
            let stream = 5 + 2 * i;
            let mut out = BytesMut::new();
            open(stream, &mut out);
            feed(&mut session, &out).unwrap();
            session.reset(stream, Reason::Cancel);
        }
        feed(&mut session, &[]).unwrap();
        written(&mut session);

        // The client's frames on stream 1, sent before it saw the answer, arrive now.
        let mut late = BytesMut::new();
        frame::data(1, b"late", false, &mut late);
        frame::headers(1, &request_block("/a/b"), true, 16_384, &mut late);
        frame::data(busy, b"still here", true, &mut late);
        let events = feed(&mut session, &late).expect("the connection goes on");
        assert!(
            matches!(
                &events[..],
                [Event::Data {
                    stream: 3,
                    end_stream: true,
                    ..
                }]
            ),
            "{events:?}"
        );
        let frames = written(&mut session);
        assert_eq!(
            rst_codes(&frames, 1),
            [Reason::StreamClosed as u32],
            "refused once, then remembered: {frames:?}"
        );
        assert!(!frames.iter().any(|f| f.0 == kind::GOAWAY));
    }

    /// A session whose client's connection window (65 535) is spent by answers, with
    /// `streams` streams each waiting to send 1 000 bytes more.
    fn waiting_for_the_connection_window(streams: u32) -> Session {
        let mut session = started(Settings {
            max_concurrent_streams: 1024,
            ..Settings::default()
        });
        let mut out = BytesMut::new();
        for i in 0..streams {
            open(1 + 2 * i, &mut out);
        }
        feed(&mut session, &out).unwrap();
        for i in 0..streams {
            session.send(
                1 + 2 * i,
                Outgoing::Data {
                    data: Bytes::from(vec![0; 1_000]),
                    end: false,
                    credit: 0,
                },
            );
        }
        assert!(session.send_window <= 0);
        written(&mut session);
        session
    }

    #[test]
    fn a_window_opened_byte_by_byte_costs_a_turn_per_update_not_a_walk_over_the_streams() {
        let streams = 500;
        let mut session = waiting_for_the_connection_window(streams);
        let before = session.retried;
        let mut out = BytesMut::new();
        for _ in 0..200 {
            frame::window_update(0, 1, &mut out);
        }
        feed(&mut session, &out).unwrap();
        let data: Vec<u32> = written(&mut session)
            .iter()
            .filter(|f| f.0 == kind::DATA)
            .map(|f| f.1)
            .collect();
        assert_eq!(data.len(), 200, "a byte each");
        assert!(
            session.retried - before <= 2 * 200,
            "{} streams looked at for 200 bytes of window",
            session.retried - before
        );
        // The waiting streams are served in turn, not the first one again and again.
        let distinct: std::collections::BTreeSet<u32> = data.iter().copied().collect();
        assert_eq!(distinct.len(), 200);
    }

    #[test]
    fn window_updates_nothing_was_sent_for_are_a_flood_and_a_readers_are_not() {
        let now = Instant::now();
        let mut session = started(Settings::default());
        let mut out = BytesMut::new();
        for _ in 0..=MAX_CONTROL_FRAMES {
            frame::window_update(0, 1, &mut out);
        }
        session.input().extend_from_slice(&out);
        let error = loop {
            match session.poll_event(now) {
                Err(error) => break error,
                Ok(None) => panic!("{} WINDOW_UPDATEs taken", MAX_CONTROL_FRAMES + 1),
                Ok(Some(_)) => {}
            }
        };
        assert_eq!(error.reason, Reason::EnhanceYourCalm);
        assert_eq!(error.cause, "window_update_flood");

        // A client reading a large answer acknowledges every DATA frame on its stream and
        // on the connection: far more than the flood limit, and all earned.
        let mut session = started(Settings::default());
        let mut out = BytesMut::new();
        open(1, &mut out);
        feed(&mut session, &out).unwrap();
        let answer = 32 << 20;
        session.send(
            1,
            Outgoing::Data {
                data: Bytes::from(vec![0; answer]),
                end: true,
                credit: 0,
            },
        );
        let (mut received, mut updates) = (0, 0);
        while received < answer {
            let frames = written(&mut session);
            let mut acks = BytesMut::new();
            for (kind, stream, payload) in frames.iter().filter(|f| f.0 == kind::DATA) {
                assert_eq!((*kind, *stream), (kind::DATA, 1));
                received += payload.len();
                if payload.is_empty() {
                    continue;
                }
                let len = u32::try_from(payload.len()).unwrap();
                frame::window_update(1, len, &mut acks);
                frame::window_update(0, len, &mut acks);
                updates += 2;
            }
            assert!(!acks.is_empty(), "stuck at {received} bytes");
            session.input().extend_from_slice(&acks);
            while session
                .poll_event(now)
                .expect("a reader is no flood")
                .is_some()
            {}
        }
        assert!(updates > 2 * MAX_CONTROL_FRAMES, "{updates}");
    }

    #[test]
    fn answer_credit_comes_back_when_written_or_dropped() {
        let mut session = started(Settings::default());
        let mut out = BytesMut::new();
        open(1, &mut out);
        open(3, &mut out);
        feed(&mut session, &out).unwrap();
        let data = |n: usize| Outgoing::Data {
            data: Bytes::from(vec![0; n]),
            end: false,
            credit: n as u32,
        };
        session.send(
            1,
            Outgoing::Headers {
                block: Bytes::from_static(&[0x88]),
                end: false,
            },
        );
        session.send(1, data(1000));
        assert_eq!(session.take_returned_credit(), 1000, "written");
        // Beyond the client's 65 535-byte window the rest waits, then is dropped.
        session.send(1, data(70_000));
        assert_eq!(session.take_returned_credit(), 0);
        session.reset(1, Reason::Cancel);
        assert_eq!(
            session.take_returned_credit(),
            70_000,
            "dropped with its stream"
        );
    }
}
