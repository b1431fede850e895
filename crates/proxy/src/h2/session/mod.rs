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
//! - the read buffer shrinks to what an incomplete frame holds ([`Session::compact`]),
//!   and a read that fills little of it is copied out before messages are cut from it
//!   ([`Session::fit_input`]).
//!
//! Abuse that costs work without data is counted and ends the connection with GOAWAY
//! ENHANCE_YOUR_CALM ([`abuse`]), as nginx and the `h2` crate do.
//!
//! The session's seams, as the `h2` crate's `proto` has them: here the buffers, the frame
//! loop and what the application sees; [`stream`] a stream's state (RFC 9113 §5.1) and the
//! streams remembered after they close; [`recv`] the frames of requests; [`control`]
//! SETTINGS, PING and WINDOW_UPDATE; [`flow`] the windows both ways; [`send`] answers;
//! [`abuse`] the counts and limits; [`goaway`] draining and connection errors.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};

use super::frame::{self, Head, Reason, flag, kind, setting};
use super::headers;
use super::hpack;
use super::stream_ids::StreamIdMap;
use super::used_ids::{Used, UsedIds};

mod abuse;
mod control;
mod flow;
mod goaway;
mod recv;
mod rest;
mod send;
mod stream;

use abuse::{ABUSE_WINDOW, MAX_CLIENT_RESETS, MAX_CONTINUATIONS, MAX_CONTROL_FRAMES};
use abuse::{Abuse, calm};
use flow::MAX_EARNED_UPDATES;
use goaway::DRAIN_PING;
pub use goaway::Drain;
use recv::Continuation;
pub(crate) use rest::Parked;
use stream::{Blocked, Closed, State, Stream};

/// Above this much unwritten output, no more input is taken (a client that sends but does
/// not read cannot make the proxy buffer without bound).
pub(crate) const MAX_OUTPUT: usize = 1024 * 1024;
/// Room the write buffer starts with.
const OUTPUT_CHUNK: usize = 16 * 1024;
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
    /// (The request and trailers are boxed: an event is moved several times on its way,
    /// once per DATA frame under agents' framing, and sits in the session's event queue,
    /// whose room a connection keeps; a `Request` inline made every event 232 bytes.)
    Open {
        stream: u32,
        request: Box<Request<()>>,
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
    Trailers {
        stream: u32,
        trailers: Box<HeaderMap>,
    },
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
    streams: StreamIdMap<Stream>,
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
            streams: StreamIdMap::default(),
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
            abuse: Abuse::default(),
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

    /// Drops buffers that hold nothing, and copies an incomplete frame out of its read
    /// buffer, so a connection waiting on the client holds only what it was sent. With no
    /// stream open, the room of the per-stream tables goes too (not the recently closed
    /// ids, by which late frames are told): agents' connections are idle between reports
    /// most of their lives. Taken again with the next stream: a few small allocations
    /// beside a report's messages.
    pub(crate) fn compact(&mut self) {
        if self.input.is_empty() {
            self.input = BytesMut::new();
        } else if self.input.capacity() > self.input.len() {
            // Exactly the frame begun: reads are sized by the last one (h2::connection), so
            // the room left may be only a few KiB, which `fit_input`'s rule for reads keeps.
            self.input = BytesMut::from(&self.input[..]);
        }
        if self.output.is_empty() {
            self.output = BytesMut::new();
        }
        if self.streams.is_empty() {
            if self.streams.capacity() > 0 {
                self.streams = StreamIdMap::default();
            }
            if self.events.is_empty() && self.events.capacity() > 0 {
                self.events = VecDeque::new();
            }
            if self.blocked.is_empty() && self.blocked.capacity() > 0 {
                self.blocked = VecDeque::new();
            }
        }
    }

    /// Copies what was read out of a read buffer it fills less than half of, before any
    /// message is cut from it. Queued messages are slices of the buffer they arrived in and
    /// keep all of it alive: a client that sends a small message per read would otherwise
    /// pin a whole read buffer (128 KiB) with each, far beyond what the queue's byte budget
    /// counts. After this a queued message holds at most about twice its size; the large
    /// buffer, let go of at once, is what the allocator hands the next read.
    pub(crate) fn fit_input(&mut self) {
        if self.input.capacity() > 2 * self.input.len() + 4096 {
            self.input = BytesMut::from(&self.input[..]);
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
}

#[cfg(test)]
mod tests;
