//! One stream's state, and the streams the session remembers after they close.

use std::collections::VecDeque;

use super::*;
use crate::h2::frame::{self, Reason};

/// Streams this side reset, remembered so frames the client sent before it saw the reset
/// are ignored (RFC 9113 §5.1, "closed"); streams the client ended are remembered too, so
/// frames on them are the connection error RFC 9113 names. A frame on a stream no longer
/// remembered is refused on that stream alone (STREAM_CLOSED).
pub(super) const REMEMBERED_CLOSED: usize = 128;

pub(super) struct Stream {
    /// The client may still send.
    pub(super) recv_open: bool,
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
    /// The answer's last frame is written or pending.
    pub(super) end_queued: bool,
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
