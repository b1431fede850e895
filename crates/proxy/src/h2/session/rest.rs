//! A session at rest: what an idle connection keeps between reports. Agents hold their
//! connections open for hours and report every few seconds, so most connections are idle
//! most of the time, and what each keeps while idle is what a proxy with many clients
//! spends its memory on. A session with no stream, no partial frame and no output parks
//! into [`Parked`], the little that differs from a fresh session that has seen the
//! preface: the client's stream ids, both windows and the peer's settings, the abuse
//! counts, and (only when there is any) the HPACK table and the recently closed streams.

use std::collections::VecDeque;

use super::abuse::Abuse;
use super::{Closed, Drain, Session, Settings, UsedIds, headers, hpack};

/// What a parked session keeps.
pub(crate) struct Parked {
    used_ids: UsedIds,
    recv_window: i64,
    recv_unacked: u32,
    send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    earned_updates: u32,
    abuse: Abuse,
    /// Only when the client filled its HPACK table or streams closed lately: a client that
    /// never indexes a header (and the handshake alone) keeps nothing here.
    remembered: Option<Box<Remembered>>,
}

struct Remembered {
    decoder: hpack::Decoder,
    closed: VecDeque<(u32, Closed)>,
}

impl Session {
    /// Nothing is under way: the handshake is done, no stream is open, no frame is partly
    /// read, nothing waits to be written or handed over, and no drain has begun.
    pub(crate) fn can_park(&self) -> bool {
        self.greeted
            && self.preface_seen
            && self.settings_seen
            && !self.going_away
            && self.drain == Drain::No
            && self.continuation.is_none()
            && self.streams.is_empty()
            && self.blocked.is_empty()
            && self.events.is_empty()
            && self.input.is_empty()
            && self.output.is_empty()
            && self.returned_credit == 0
    }

    /// Parks a session [`Session::can_park`] says may be.
    pub(crate) fn park(self) -> Parked {
        debug_assert!(self.can_park());
        // Every field named: a field added later has to be placed here or kept.
        let Session {
            settings: _,
            input: _,
            output: _,
            preface_seen: _,
            settings_seen: _,
            going_away: _,
            mut decoder,
            continuation: _,
            streams: _,
            used_ids,
            recv_window,
            recv_unacked,
            send_window,
            peer_initial_window,
            peer_max_frame,
            blocked: _,
            earned_updates,
            #[cfg(test)]
                retried: _,
            closed,
            events: _,
            returned_credit: _,
            drain: _,
            drain_reason: _,
            abuse,
            frames: _,
            greeted: _,
        } = self;
        let remembered = (!decoder.is_fresh() || !closed.is_empty()).then(|| {
            decoder.forget_recent();
            Box::new(Remembered { decoder, closed })
        });
        Parked {
            used_ids,
            recv_window,
            recv_unacked,
            send_window,
            peer_initial_window,
            peer_max_frame,
            earned_updates,
            abuse,
            remembered,
        }
    }

    /// The session a parked one was, with its streams to come.
    pub(crate) fn unpark(settings: Settings, parked: Parked) -> Session {
        let (decoder, closed) = match parked.remembered {
            Some(remembered) => (remembered.decoder, remembered.closed),
            None => (headers::decoder(), VecDeque::new()),
        };
        Session {
            greeted: true,
            preface_seen: true,
            settings_seen: true,
            decoder,
            closed,
            used_ids: parked.used_ids,
            recv_window: parked.recv_window,
            recv_unacked: parked.recv_unacked,
            send_window: parked.send_window,
            peer_initial_window: parked.peer_initial_window,
            peer_max_frame: parked.peer_max_frame,
            earned_updates: parked.earned_updates,
            abuse: parked.abuse,
            ..Session::new(settings)
        }
    }
}
