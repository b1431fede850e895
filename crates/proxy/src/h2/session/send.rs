//! Answers: frames queued per stream and written as the client's windows allow.

use super::*;
use crate::h2::frame::{self, Reason};

impl Session {
    /// Queues a frame of a stream's answer and writes what flow control allows. Nothing
    /// is sent after the answer's last frame.
    pub fn send(&mut self, id: u32, outgoing: Outgoing) {
        let Some(stream) = self.streams.get_mut(&id) else {
            if let Outgoing::Data { credit, .. } = outgoing {
                self.returned_credit += credit as usize;
            }
            return;
        };
        if stream.state.answered() {
            if let Outgoing::Data { credit, .. } = outgoing {
                self.returned_credit += credit as usize;
            }
            return;
        }
        if outgoing.ends() {
            stream.state = stream.state.end_queued();
        }
        stream.pending.push_back(outgoing);
        self.write_stream(id);
    }

    /// The answer to this stream has ended (its last frame is queued).
    pub fn answered(&self, id: u32) -> bool {
        self.streams.get(&id).is_none_or(|s| s.state.answered())
    }

    /// Resets a stream for the application's reasons (an upstream failure, say).
    pub fn reset(&mut self, id: u32, reason: Reason) {
        if self.streams.contains_key(&id) {
            frame::rst_stream(id, reason, self.out());
            self.remove(id, Closed::ByUs);
        }
    }

    /// Writes a stream's pending frames as far as the windows allow.
    pub(super) fn write_stream(&mut self, id: u32) {
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

    /// Removes a stream whose answer is written; a client still sending is told to stop
    /// without error (RFC 9113 §8.1).
    pub(super) fn close_if_done(&mut self, id: u32) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if !stream.pending.is_empty() {
            return;
        }
        match stream.state {
            State::Open | State::HalfClosedRemote => {}
            State::HalfClosedLocal => {
                frame::rst_stream(id, Reason::NoError, self.out());
                self.remove(id, Closed::ByUs);
            }
            State::Closing => self.remove(id, Closed::ByClient),
        }
    }
}
