//! Flow control: receive windows given back as the application consumes, and answers
//! waiting for the client's windows served in turn.

use super::*;
use crate::h2::frame;

/// WINDOW_UPDATEs a connection may have in hand from the DATA it was sent.
pub(super) const MAX_EARNED_UPDATES: u32 = 1 << 16;
impl Session {
    /// The client may send no more data: the whole connection window is held by data the
    /// application has not consumed (everything consumed is given back at once then).
    /// Only consuming some of it lets the connection go on.
    pub(crate) fn window_spent(&self) -> bool {
        self.recv_window <= 0
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

    pub(super) fn give_back_stream_window(&mut self, id: u32) {
        let threshold = self.settings.stream_window / 2;
        if let Some(stream) = self.streams.get_mut(&id)
            && stream.state.receiving()
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
    pub(super) fn give_back_connection_window(&mut self) {
        let starved = self.recv_window <= 0 && self.recv_unacked > 0;
        if starved || self.recv_unacked >= self.settings.connection_window / 4 {
            let increment = std::mem::take(&mut self.recv_unacked);
            self.recv_window += i64::from(increment);
            frame::window_update(0, increment, self.out());
        }
    }

    /// Streams waiting for the connection's window, in turn, while it lasts: a stream not
    /// finished goes to the back, and the rest wait for the next WINDOW_UPDATE. A window
    /// opened by one byte costs one stream's turn, not a walk over every waiting stream.
    pub(super) fn retry_blocked(&mut self) {
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
}
