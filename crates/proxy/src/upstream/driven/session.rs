//! One driven upstream connection's HTTP/2 client state, with no socket: calls in, frames
//! out (through [`Outgoing`]), frames in, answers out. The connection loop
//! ([`super::connection`]) reads and writes for it.
//!
//! What it keeps to RFC 9113 as a client: stream ids odd and rising; HEADERS then DATA per
//! stream, each DATA frame within the peer's frame size and both flow-control windows
//! (a SETTINGS change of the initial window moves every open stream's window, §6.9.2);
//! the peer's concurrent-stream limit (calls beyond it wait, unopened); header blocks
//! decoded in the order they arrive, CONTINUATION included, so the HPACK table follows the
//! server's; the windows the server sends on given back as it sends; SETTINGS and PING
//! acknowledged; streams the server refused (REFUSED_STREAM, or beyond a GOAWAY's last
//! stream) told apart from ones that may have been processed.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;
use tokio::sync::oneshot;

use crate::grpc;
use crate::h2::frame::{self, Head, Reason, flag, kind, setting};
use crate::h2::headers::{self, AnswerFields};
use crate::h2::hpack::Decoder;
use crate::h2::stream_ids::StreamIdMap;
use crate::upstream::client::Answer;
use crate::upstream::driven::outgoing::{Mark, Outgoing};
use crate::upstream::payload::{Payload, Progress};

/// Answer bytes kept per call (a health check's or a report's answer is a few bytes);
/// more is read and let go.
const MAX_ANSWER: usize = 64 * 1024;
/// Received bytes given back to the server's windows once this many are unacknowledged.
const WINDOW_RETURN: u32 = 32 * 1024;
/// The stream id past which a connection opens no more streams.
const LAST_STREAM_ID: u32 = (1 << 31) - 1;

/// A call handed to a connection.
pub(crate) struct Submission {
    /// The caller's number for it, to cancel it by.
    pub id: u64,
    pub path: Arc<str>,
    /// Header fields after the pseudo-headers and `content-type`/`te`.
    pub fields: Vec<(&'static str, HeaderValue)>,
    pub payload: Payload,
    pub progress: Option<Arc<Progress>>,
    pub answer: oneshot::Sender<Result<Answer, Ended>>,
}

/// Why a call has no answer.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Never opened: the connection stopped taking streams first. Nothing was sent.
    Unopened,
    /// Refused unprocessed by the upstream (REFUSED_STREAM, or above its GOAWAY).
    Refused(String),
    /// Reset, or the connection failed: the upstream may have processed it.
    Broken(String),
}

/// An error that ends the connection (RFC 9113 §5.4.1): GOAWAY with `reason`.
#[derive(Debug)]
pub(crate) struct ConnectionError {
    pub reason: Reason,
    pub message: String,
}

fn connection_error(reason: Reason, message: impl Into<String>) -> ConnectionError {
    ConnectionError {
        reason,
        message: message.into(),
    }
}

/// What the server has said of itself.
struct PeerSettings {
    max_frame: usize,
    initial_window: i64,
    max_streams: usize,
}

struct Stream {
    call: u64,
    payload: Payload,
    /// Bytes this stream may still send.
    window: i64,
    /// In [`ClientSession::sending`].
    queued: bool,
    /// Every byte of the request is queued, END_STREAM with it.
    request_done: bool,
    progress: Option<Arc<Progress>>,
    answer: Option<oneshot::Sender<Result<Answer, Ended>>>,
    /// What the response's (final) header block said, once it came.
    response: Option<AnswerFields>,
    body: BytesMut,
    /// Received on this stream and not yet given back.
    unreturned: u32,
}

/// A header block being received across HEADERS and CONTINUATION frames.
struct PartialBlock {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

pub(crate) struct ClientSession {
    https: bool,
    authority: Bytes,
    /// The most streams open at once, whatever the server allows.
    stream_cap: usize,
    next_id: u32,
    streams: StreamIdMap<Stream>,
    /// Streams with request bytes to send, in turn.
    sending: VecDeque<u32>,
    /// Calls not yet opened (the stream limit is reached).
    waiting: VecDeque<Submission>,
    peer: PeerSettings,
    /// The connection's send window.
    window: i64,
    /// Received on the connection and not yet given back.
    unreturned: u32,
    decoder: Decoder,
    partial: Option<PartialBlock>,
    settings_seen: bool,
    /// The last stream the server said it may process, once it sent GOAWAY.
    goaway: Option<u32>,
    pub out: Outgoing,
}

impl ClientSession {
    /// A session that has queued the connection preface and its SETTINGS.
    pub fn new(https: bool, authority: &str, stream_cap: usize) -> ClientSession {
        let mut out = Outgoing::default();
        out.frames().put_slice(frame::PREFACE);
        // No server push; everything else stays at its default (the answers are small).
        frame::settings(&[(setting::ENABLE_PUSH, 0)], out.frames());
        ClientSession {
            https,
            authority: Bytes::copy_from_slice(authority.as_bytes()),
            stream_cap: stream_cap.max(1),
            next_id: 1,
            streams: StreamIdMap::default(),
            sending: VecDeque::new(),
            waiting: VecDeque::new(),
            peer: PeerSettings {
                max_frame: frame::DEFAULT_MAX_FRAME,
                initial_window: frame::DEFAULT_WINDOW,
                // Unlimited until the server says (RFC 9113 §6.5.2).
                max_streams: usize::MAX,
            },
            window: frame::DEFAULT_WINDOW,
            unreturned: 0,
            decoder: headers::decoder(),
            partial: None,
            settings_seen: false,
            goaway: None,
            out,
        }
    }

    /// Streams open, and calls waiting for one.
    pub fn calls(&self) -> usize {
        self.streams.len() + self.waiting.len()
    }

    /// No more streams will be opened here (GOAWAY, or ids ran out).
    pub fn draining(&self) -> bool {
        self.goaway.is_some() || self.next_id > LAST_STREAM_ID
    }

    /// Takes a call: opened at once if the stream limits allow, else when a stream ends.
    pub fn submit(&mut self, submission: Submission) {
        if self.draining() {
            let _ = submission.answer.send(Err(Ended::Unopened));
            return;
        }
        self.waiting.push_back(submission);
        self.open_waiting();
    }

    /// Gives up a call: unopened, it is forgotten; open, its stream is reset (after the
    /// frames already queued for it).
    pub fn cancel(&mut self, call: u64) {
        if let Some(at) = self.waiting.iter().position(|s| s.id == call) {
            self.waiting.remove(at);
            return;
        }
        let id = self
            .streams
            .iter()
            .find(|(_, stream)| stream.call == call)
            .map(|(&id, _)| id);
        if let Some(id) = id {
            self.streams.remove(&id);
            frame::rst_stream(id, Reason::Cancel, self.out.frames());
            self.open_waiting();
        }
    }

    fn open_waiting(&mut self) {
        let limit = self.stream_cap.min(self.peer.max_streams);
        while self.streams.len() < limit && !self.draining() {
            let Some(submission) = self.waiting.pop_front() else {
                return;
            };
            if submission.answer.is_closed() {
                // Its caller gave up before it could be opened.
                continue;
            }
            self.open(submission);
        }
    }

    fn open(&mut self, submission: Submission) {
        let id = self.next_id;
        self.next_id += 2;
        let mut block = BytesMut::new();
        let fields = [
            (&b"content-type"[..], &b"application/grpc"[..]),
            (b"te", b"trailers"),
        ]
        .into_iter()
        .chain(
            submission
                .fields
                .iter()
                .map(|(name, value)| (name.as_bytes(), value.as_bytes())),
        );
        headers::encode_request(
            self.https,
            &self.authority,
            submission.path.as_bytes(),
            fields,
            &mut block,
        );
        frame::headers(id, &block, false, self.peer.max_frame, self.out.frames());
        if let Some(progress) = &submission.progress {
            progress.set_sent();
        }
        self.streams.insert(
            id,
            Stream {
                call: submission.id,
                payload: submission.payload,
                window: self.peer.initial_window,
                queued: true,
                request_done: false,
                progress: submission.progress,
                answer: Some(submission.answer),
                response: None,
                body: BytesMut::new(),
                unreturned: 0,
            },
        );
        self.sending.push_back(id);
    }

    /// Queues DATA frames, stream by stream in turn, while the windows allow and until
    /// `budget` bytes are waiting to be written.
    pub fn fill(&mut self, budget: usize) {
        while self.out.len() < budget {
            let Some(id) = self.sending.pop_front() else {
                return;
            };
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            let remaining = bytes::Buf::remaining(&stream.payload);
            let allowed = stream.window.min(self.window).max(0) as usize;
            let n = remaining.min(allowed).min(self.peer.max_frame);
            if n == 0 && remaining > 0 {
                if self.window <= 0 && stream.window > 0 {
                    // The connection's window is shut: this stream keeps its turn.
                    self.sending.push_front(id);
                    return;
                }
                // Its own window is shut: back in turn when the server opens it.
                stream.queued = false;
                continue;
            }
            let end = n == remaining;
            let head_flags = if end { flag::END_STREAM } else { 0 };
            frame::head(n, kind::DATA, head_flags, id, self.out.frames());
            self.out.push_data(stream.payload.take_span(n));
            self.out.mark(Mark { stream: id, end });
            stream.window -= n as i64;
            self.window -= n as i64;
            if end {
                stream.request_done = true;
                stream.queued = false;
            } else {
                self.sending.push_back(id);
            }
        }
    }

    /// The socket took a DATA frame whole.
    pub fn written(&mut self, mark: Mark) {
        if let Some(progress) = self
            .streams
            .get(&mark.stream)
            .and_then(|s| s.progress.as_ref())
        {
            progress.set_moved();
            if mark.end {
                progress.set_taken();
            }
        }
    }

    /// Handles a received frame (its payload, padding and all).
    pub fn receive(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if !self.settings_seen && head.kind != kind::SETTINGS {
            return Err(connection_error(
                Reason::Protocol,
                "the server's first frame was not SETTINGS",
            ));
        }
        if let Some(partial) = &self.partial
            && (head.kind != kind::CONTINUATION || head.stream != partial.stream)
        {
            return Err(connection_error(
                Reason::Protocol,
                "a header block was interrupted",
            ));
        }
        match head.kind {
            kind::DATA => self.data(head, payload),
            kind::HEADERS => self.headers(head, payload),
            kind::CONTINUATION => self.continuation(head, payload),
            kind::RST_STREAM => self.reset(head, &payload),
            kind::SETTINGS => self.settings(head, &payload),
            kind::PING => self.ping(head, &payload),
            kind::GOAWAY => self.goaway(head, &payload),
            kind::WINDOW_UPDATE => self.window_update(head, &payload),
            kind::PUSH_PROMISE => Err(connection_error(
                Reason::Protocol,
                "PUSH_PROMISE with push disabled",
            )),
            // PRIORITY and unknown frame types are ignored (RFC 9113 §5.5, §6.3).
            _ => Ok(()),
        }
    }

    fn data(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(connection_error(Reason::Protocol, "DATA on stream 0"));
        }
        // Every byte counts against the connection, whoever it was for (§6.9).
        let len = payload.len() as u32;
        self.unreturned += len;
        if self.unreturned >= WINDOW_RETURN {
            frame::window_update(0, self.unreturned, self.out.frames());
            self.unreturned = 0;
        }
        let Some(data) = frame::unpadded(&head, payload) else {
            return Err(connection_error(Reason::Protocol, "padding past the frame"));
        };
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            // A stream already reset or finished here.
            return Ok(());
        };
        if stream.response.is_none() {
            return self.stream_error(head.stream, Reason::Protocol, "DATA before HEADERS");
        }
        if stream.body.len() + data.len() <= MAX_ANSWER {
            stream.body.extend_from_slice(&data);
        }
        if head.has(flag::END_STREAM) {
            self.finish(head.stream, None);
        } else {
            stream.unreturned += len;
            if stream.unreturned >= WINDOW_RETURN {
                frame::window_update(head.stream, stream.unreturned, self.out.frames());
                stream.unreturned = 0;
            }
        }
        Ok(())
    }

    fn headers(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(connection_error(Reason::Protocol, "HEADERS on stream 0"));
        }
        let Some(block) = frame::unpadded(&head, payload) else {
            return Err(connection_error(Reason::Protocol, "padding past the frame"));
        };
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.block(head.stream, &block, end_stream);
        }
        self.partial = Some(PartialBlock {
            stream: head.stream,
            end_stream,
            block: BytesMut::from(&block[..]),
        });
        Ok(())
    }

    fn continuation(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        let Some(partial) = &mut self.partial else {
            return Err(connection_error(
                Reason::Protocol,
                "CONTINUATION without HEADERS",
            ));
        };
        if partial.block.len() + payload.len() > headers::MAX_BLOCK {
            return Err(connection_error(
                Reason::EnhanceYourCalm,
                "a header block past 64 KiB",
            ));
        }
        partial.block.extend_from_slice(&payload);
        if !head.has(flag::END_HEADERS) {
            return Ok(());
        }
        let partial = self.partial.take().expect("present");
        self.block(partial.stream, &partial.block, partial.end_stream)
    }

    /// A whole header block: decoded whatever stream it is for (the table must follow).
    fn block(&mut self, id: u32, block: &[u8], end_stream: bool) -> Result<(), ConnectionError> {
        let fields = headers::decode_answer(&mut self.decoder, block)
            .map_err(|_| connection_error(Reason::Compression, "an undecodable header block"))?;
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        match &stream.response {
            None => {
                if fields.status.is_some_and(|s| (100..200).contains(&s)) && !end_stream {
                    // Informational (RFC 9113 §8.1): the response is still to come.
                    return Ok(());
                }
                stream.response = Some(fields);
                if end_stream {
                    // Trailers-only.
                    self.finish(id, None);
                }
            }
            Some(_) if end_stream => self.finish(id, Some(fields)),
            Some(_) => {
                return self.stream_error(id, Reason::Protocol, "trailers without END_STREAM");
            }
        }
        Ok(())
    }

    /// The server ended the stream: the call is answered.
    fn finish(&mut self, id: u32, trailers: Option<AnswerFields>) {
        let Some(mut stream) = self.streams.remove(&id) else {
            return;
        };
        let headers = stream.response.take().unwrap_or_default();
        let mut trailers = trailers.unwrap_or_default();
        // From the trailers, else from the headers of a trailers-only answer (as
        // grpc::status_of), else from the HTTP status.
        let code = trailers
            .grpc_status
            .or(headers.grpc_status)
            .flatten()
            .unwrap_or_else(|| {
                let status = headers
                    .status
                    .and_then(|s| http::StatusCode::from_u16(s).ok())
                    .unwrap_or(http::StatusCode::BAD_GATEWAY);
                grpc::status_of_http(status)
            });
        let message = trailers.grpc_message.take().or(headers.grpc_message);
        let answer = Answer {
            code,
            message: grpc::percent_decoded(message.as_deref().unwrap_or_default()),
            body: stream.body.split().freeze(),
        };
        // Let go of the request before its caller hears: a batch's messages can then go
        // back to their events without a copy.
        stream.payload = Payload::Contiguous(Bytes::new());
        if let Some(sender) = stream.answer.take() {
            let _ = sender.send(Ok(answer));
        }
        if !stream.request_done {
            // Answered before the whole request went: the rest is not sent (RFC 9113 §8.1).
            frame::rst_stream(id, Reason::Cancel, self.out.frames());
        }
        self.open_waiting();
    }

    /// Resets a stream this side finds broken, and fails its call.
    fn stream_error(&mut self, id: u32, reason: Reason, why: &str) -> Result<(), ConnectionError> {
        if let Some(mut stream) = self.streams.remove(&id) {
            frame::rst_stream(id, reason, self.out.frames());
            if let Some(sender) = stream.answer.take() {
                let _ = sender.send(Err(Ended::Broken(format!("the upstream's answer: {why}"))));
            }
            self.open_waiting();
        }
        Ok(())
    }

    fn reset(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(connection_error(Reason::Protocol, "RST_STREAM on stream 0"));
        }
        let Ok(code) = <[u8; 4]>::try_from(payload) else {
            return Err(connection_error(
                Reason::FrameSize,
                "RST_STREAM not 4 bytes",
            ));
        };
        let code = u32::from_be_bytes(code);
        if let Some(mut stream) = self.streams.remove(&head.stream) {
            let ended = if code == Reason::RefusedStream as u32 {
                Ended::Refused("the upstream refused the stream".into())
            } else {
                Ended::Broken(format!("the upstream reset the stream (error code {code})"))
            };
            if let Some(sender) = stream.answer.take() {
                let _ = sender.send(Err(ended));
            }
            self.open_waiting();
        }
        Ok(())
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(connection_error(Reason::Protocol, "SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            if !payload.is_empty() {
                return Err(connection_error(
                    Reason::FrameSize,
                    "a SETTINGS ack with a payload",
                ));
            }
            return Ok(());
        }
        let Some(values) = frame::parse_settings(payload) else {
            return Err(connection_error(Reason::FrameSize, "SETTINGS not in sixes"));
        };
        self.settings_seen = true;
        for (id, value) in values {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(connection_error(
                            Reason::FlowControl,
                            "an initial window past 2^31-1",
                        ));
                    }
                    let delta = value - self.peer.initial_window;
                    self.peer.initial_window = value;
                    for (&id, stream) in self.streams.iter_mut() {
                        stream.window += delta;
                        if stream.window > frame::MAX_WINDOW {
                            return Err(connection_error(
                                Reason::FlowControl,
                                "a stream window past 2^31-1",
                            ));
                        }
                        if stream.window > 0 && !stream.queued && !stream.request_done {
                            stream.queued = true;
                            self.sending.push_back(id);
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    let value = value as usize;
                    if !(frame::DEFAULT_MAX_FRAME..(1 << 24)).contains(&value) {
                        return Err(connection_error(
                            Reason::Protocol,
                            "a frame size outside 2^14..2^24-1",
                        ));
                    }
                    self.peer.max_frame = value;
                }
                setting::MAX_CONCURRENT_STREAMS => {
                    self.peer.max_streams = value as usize;
                }
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(connection_error(Reason::Protocol, "ENABLE_PUSH past 1"));
                }
                // The header table size only bounds an encoder that indexes (this one never
                // does); the header list size is the server's to enforce.
                _ => {}
            }
        }
        frame::settings_ack(self.out.frames());
        self.open_waiting();
        Ok(())
    }

    fn ping(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(connection_error(Reason::Protocol, "PING on a stream"));
        }
        let Ok(opaque) = <[u8; 8]>::try_from(payload) else {
            return Err(connection_error(Reason::FrameSize, "PING not 8 bytes"));
        };
        if !head.has(flag::ACK) {
            frame::ping(opaque, true, self.out.frames());
        }
        Ok(())
    }

    fn goaway(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(connection_error(Reason::Protocol, "GOAWAY on a stream"));
        }
        if payload.len() < 8 {
            return Err(connection_error(Reason::FrameSize, "GOAWAY under 8 bytes"));
        }
        let last =
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        self.goaway = Some(self.goaway.map_or(last, |before| before.min(last)));
        let beyond: Vec<u32> = self
            .streams
            .keys()
            .copied()
            .filter(|&id| id > last)
            .collect();
        for id in beyond {
            if let Some(sender) = self
                .streams
                .remove(&id)
                .and_then(|mut stream| stream.answer.take())
            {
                let _ = sender.send(Err(Ended::Refused(format!(
                    "the upstream went away (error code {code}) before processing the stream"
                ))));
            }
        }
        for submission in self.waiting.drain(..) {
            let _ = submission.answer.send(Err(Ended::Unopened));
        }
        Ok(())
    }

    fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        let Ok(increment) = <[u8; 4]>::try_from(payload) else {
            return Err(connection_error(
                Reason::FrameSize,
                "WINDOW_UPDATE not 4 bytes",
            ));
        };
        let increment = i64::from(u32::from_be_bytes(increment) & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(connection_error(
                    Reason::Protocol,
                    "a zero window increment",
                ));
            }
            self.window += increment;
            if self.window > frame::MAX_WINDOW {
                return Err(connection_error(
                    Reason::FlowControl,
                    "the connection window past 2^31-1",
                ));
            }
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            return Ok(());
        };
        if increment == 0 {
            return self.stream_error(head.stream, Reason::Protocol, "a zero window increment");
        }
        stream.window += increment;
        if stream.window > frame::MAX_WINDOW {
            return self.stream_error(head.stream, Reason::FlowControl, "a window past 2^31-1");
        }
        if stream.window > 0 && !stream.queued && !stream.request_done {
            stream.queued = true;
            self.sending.push_back(head.stream);
        }
        Ok(())
    }

    /// The connection failed or closed: every call ends, broken. Calls not yet opened
    /// were never sent (their progress says so); open ones may have been processed.
    pub fn fail_all(&mut self, why: &str) {
        for (_, mut stream) in self.streams.drain() {
            if let Some(sender) = stream.answer.take() {
                let _ = sender.send(Err(Ended::Broken(why.to_string())));
            }
        }
        for submission in self.waiting.drain(..) {
            let _ = submission.answer.send(Err(Ended::Broken(why.to_string())));
        }
        self.sending.clear();
    }

    /// The frame ending the connection from this side.
    pub fn goodbye(&mut self, reason: Reason, debug: &str) {
        frame::goaway(0, reason, debug.as_bytes(), self.out.frames());
    }
}

#[cfg(test)]
mod tests;
