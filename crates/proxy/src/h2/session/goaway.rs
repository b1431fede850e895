//! Going away: a drain (GOAWAY, PING, final GOAWAY) or a connection error.

use super::*;
use crate::h2::frame::{self, Reason};

/// The PING payload of a drain.
pub(super) const DRAIN_PING: [u8; 8] = *b"draining";
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

impl Session {
    pub fn drain(&self) -> Drain {
        self.drain
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
