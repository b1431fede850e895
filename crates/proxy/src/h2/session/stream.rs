//! One stream's state, and the streams the session remembers after they close.

use std::collections::VecDeque;

use super::*;
use crate::h2::frame::{self, Reason};

/// Streams this side reset, remembered so frames the client sent before it saw the reset
/// are ignored (RFC 9113 §5.1, "closed"); streams the client ended are remembered too, so
/// frames on them are the connection error RFC 9113 names. A frame on a stream no longer
/// remembered is refused on that stream alone (STREAM_CLOSED).
pub(super) const REMEMBERED_CLOSED: usize = 128;

/// A live stream's state (RFC 9113 §5.1, as the server sees it). Idle streams are not yet
/// in the session's map and closed ones are no longer: [`Closed`] remembers how they went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Both sides may send.
    Open,
    /// The client ended its side (END_STREAM, or trailers): the answer is still to come.
    HalfClosedRemote,
    /// The answer's last frame is queued (the application can add nothing more), and the
    /// client may still send. Once the frames are written the stream closes with
    /// RST_STREAM NO_ERROR, telling the client to stop (RFC 9113 §8.1).
    HalfClosedLocal,
    /// Both sides ended: the stream waits only for its queued frames to be written.
    Closing,
}

impl State {
    /// The state a request starts in.
    pub(super) fn opened(end_stream: bool) -> State {
        if end_stream {
            State::HalfClosedRemote
        } else {
            State::Open
        }
    }

    /// The client may still send.
    pub(super) fn receiving(self) -> bool {
        matches!(self, State::Open | State::HalfClosedLocal)
    }

    /// The answer's last frame is queued.
    pub(super) fn answered(self) -> bool {
        matches!(self, State::HalfClosedLocal | State::Closing)
    }

    /// The client ended its side.
    #[must_use]
    pub(super) fn end_received(self) -> State {
        match self {
            State::Open => State::HalfClosedRemote,
            State::HalfClosedLocal => State::Closing,
            done => done,
        }
    }

    /// The answer's last frame is queued.
    #[must_use]
    pub(super) fn end_queued(self) -> State {
        match self {
            State::Open => State::HalfClosedLocal,
            State::HalfClosedRemote => State::Closing,
            done => done,
        }
    }
}

pub(super) struct Stream {
    pub(super) state: State,
    pub(super) flow: Flow,
    /// What the client may still send before a WINDOW_UPDATE.
    pub(super) recv_window: i64,
    /// Counted and not yet given back to the stream's window.
    pub(super) recv_unacked: u32,
    /// Delivered to the application and not yet consumed.
    pub(super) held: u32,
    /// `content-length`, when the request has one, and the data counted against it.
    pub(super) expected_length: Option<u64>,
    pub(super) received_length: u64,
    /// What this side may still send.
    pub(super) send_window: i64,
    pub(super) pending: VecDeque<Outgoing>,
    /// What its pending data waits for.
    pub(super) blocked: Blocked,
    /// Its id is in the connection's list (once at most).
    pub(super) in_line: bool,
}

/// What a stream's pending answer data waits for. Only streams waiting for the
/// connection's window are in its list, so a connection-level WINDOW_UPDATE never walks
/// streams that wait for their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Blocked {
    No,
    /// In [`Session::blocked`]: the connection's window is spent.
    Connection,
    /// The stream's own window is spent: its WINDOW_UPDATE (or a larger
    /// SETTINGS_INITIAL_WINDOW_SIZE) writes it.
    Stream,
}

/// How a remembered stream closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Closed {
    /// This side reset it: frames already in flight are ignored.
    ByUs,
    /// The client ended or reset it: more frames are a STREAM_CLOSED error.
    ByClient,
}

impl Session {
    pub(super) fn remembered(&self, id: u32) -> Option<Closed> {
        self.closed
            .iter()
            .rev()
            .find(|(closed, _)| *closed == id)
            .map(|(_, how)| *how)
    }
    /// A stream error the client caused: reset, and counted.
    pub(super) fn stream_error(&mut self, id: u32, reason: Reason) -> Result<(), ConnectionError> {
        frame::rst_stream(id, reason, self.out());
        if self.streams.contains_key(&id) {
            self.remove(id, Closed::ByUs);
        } else {
            self.remember(id, Closed::ByUs);
        }
        self.count_local_reset()
    }

    pub(super) fn remember(&mut self, id: u32, how: Closed) {
        if self.closed.len() == REMEMBERED_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back((id, how));
    }

    pub(super) fn remove(&mut self, id: u32, how: Closed) {
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
}
