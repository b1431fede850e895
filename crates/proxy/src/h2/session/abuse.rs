//! Counts of work a client can cause without sending data, each with its limit.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::*;
use crate::h2::frame::Reason;
use crate::h2::headers;

/// Counts of work a client can cause without sending data, each with its limit.
/// Reaching one ends the connection with GOAWAY ENHANCE_YOUR_CALM.
#[derive(Default)]
pub(super) struct Abuse {
    /// Streams the client reset before they were answered (rapid reset, CVE-2023-44487).
    pub(super) client_resets: Window,
    /// Streams this side reset for the client's errors over the connection's life (the
    /// "MadeYouReset" class; the `h2` crate's `max_local_error_reset_streams`).
    pub(super) local_resets: Total,
    pub(super) settings: Window,
    pub(super) pings: Window,
    /// Frames that do nothing: empty DATA without END_STREAM, PRIORITY, unknown types.
    pub(super) empty: Window,
    /// WINDOW_UPDATEs beyond those the answers' DATA frames earned ([`Session::earned_updates`]).
    pub(super) window_updates: Window,
    /// Header lists over [`headers::MAX_LIST`].
    pub(super) oversized_headers: Total,
}

/// A count within a fixed window of time. When the window began is kept in tenths of a
/// second (8 bytes where an `Option<Instant>` and the count took 24): the counts are part
/// of what every idle connection keeps.
#[derive(Default)]
pub(super) struct Window {
    /// [`tenths`] when the window began; 0 before the first count.
    started: u32,
    pub(super) count: u32,
}

impl Window {
    /// Counts one; true when more than `limit` fell within [`ABUSE_WINDOW`].
    pub(super) fn count(&mut self, now: Instant, limit: u32) -> bool {
        let now = tenths(now);
        if self.started == 0 || now.saturating_sub(self.started) >= WINDOW_TENTHS {
            self.started = now;
            self.count = 0;
        }
        self.count += 1;
        self.count > limit
    }
}

/// [`ABUSE_WINDOW`] in tenths of a second.
const WINDOW_TENTHS: u32 = (ABUSE_WINDOW.as_millis() / 100) as u32;

/// Tenths of a second from the first call in the process, plus one (so never 0); saturates
/// after thirteen years.
fn tenths(now: Instant) -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    let tenths = now.saturating_duration_since(epoch).as_millis() / 100;
    u32::try_from(tenths).unwrap_or(u32::MAX - 1) + 1
}

/// A count over the connection's life.
#[derive(Default)]
pub(super) struct Total(u32);

impl Total {
    /// Counts one; true when more than `limit`.
    pub(super) fn count(&mut self, limit: u32) -> bool {
        self.0 += 1;
        self.0 > limit
    }
}

/// The window the abuse counts are kept over.
pub(super) const ABUSE_WINDOW: Duration = Duration::from_secs(10);
/// Client resets of unanswered streams per window (nginx allows about 2 × its concurrent
/// streams per read; a gRPC client cancels a call at its deadline, far below this).
pub(super) const MAX_CLIENT_RESETS: u32 = 128;
/// Stream errors the client causes over a connection's life (as the `h2` crate).
pub(super) const MAX_LOCAL_RESETS: u32 = 1024;
/// SETTINGS, PING, or frames doing nothing, per window.
pub(super) const MAX_CONTROL_FRAMES: u32 = 1000;
/// CONTINUATION frames in one header block: [`headers::MAX_BLOCK`] needs 4 of the
/// default frame size; more is a CONTINUATION flood.
pub(super) const MAX_CONTINUATIONS: u32 = 16;
/// Oversized header lists a connection may send before it is closed.
pub(super) const MAX_OVERSIZED_HEADERS: u32 = 4;

pub(super) fn calm(cause: &'static str, message: impl Into<String>) -> ConnectionError {
    ConnectionError::new(Reason::EnhanceYourCalm, cause, message)
}
impl Session {
    pub(super) fn count_empty(&mut self, now: Instant, what: &str) -> Result<(), ConnectionError> {
        if self.abuse.empty.count(now, MAX_CONTROL_FRAMES) {
            return Err(calm(
                "empty_frame_flood",
                format!("too many frames doing nothing ({what})"),
            ));
        }
        Ok(())
    }

    pub(super) fn count_oversized(&mut self) -> Result<(), ConnectionError> {
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

    pub(super) fn count_local_reset(&mut self) -> Result<(), ConnectionError> {
        if self.abuse.local_resets.count(MAX_LOCAL_RESETS) {
            return Err(calm(
                "local_resets",
                format!("more than {MAX_LOCAL_RESETS} streams reset for the client's errors"),
            ));
        }
        Ok(())
    }
}
