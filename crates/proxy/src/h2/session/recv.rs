//! Frames that carry a stream's request: HEADERS, CONTINUATION, DATA, RST_STREAM, PRIORITY.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

use super::*;
use crate::h2::frame::{self, Head, Reason, flag};
use crate::h2::headers::{self, Unservable};

/// A header block arriving in CONTINUATION frames.
pub(super) struct Continuation {
    pub(super) stream: u32,
    pub(super) end_stream: bool,
    pub(super) self_dependent: bool,
    pub(super) block: BytesMut,
    pub(super) frames: u32,
}

impl Session {
    pub(super) fn on_priority(
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

    pub(super) fn on_rst_stream(
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
        let unanswered = !stream.state.answered();
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

    pub(super) fn on_headers(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
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

    pub(super) fn on_continuation(
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

    pub(super) fn on_header_block(
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
            if !stream.state.receiving() {
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
            stream.state = stream.state.end_received();
            self.events.push_back(Event::Trailers {
                stream: id,
                trailers: Box::new(trailers),
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
                state: State::opened(end_stream),
                flow: Flow::Body,
                recv_window: i64::from(self.settings.stream_window),
                recv_unacked: 0,
                held: 0,
                expected_length,
                received_length: 0,
                send_window: self.peer_initial_window,
                pending: VecDeque::new(),
                blocked: Blocked::No,
                in_line: false,
            },
        );
        self.events.push_back(Event::Open {
            stream: id,
            request: Box::new(request),
            end_stream,
        });
        Ok(())
    }

    pub(super) fn on_data(
        &mut self,
        head: Head,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), ConnectionError> {
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
        if !stream.state.receiving() {
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
            stream.state = stream.state.end_received();
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
}
