//! How hard a report is tried: the upstream call's deadlines, and each event's budget of
//! calls that may have delivered it.
//!
//! A call has two deadlines, because OAP handles a stream's messages as they arrive and
//! answers only once the stream ends:
//! - `call_timeout`: OAP must take the request (its flow-control windows let the bytes
//!   out) with no pause longer than this. A call whose data moves, however slowly, is
//!   progressing; one whose data does not is stuck behind a stalled or dead node;
//! - `answer_timeout`: once OAP has taken the whole request, the call waits this long for
//!   the answer. OAP has the data and is handling it; sending it again would only make OAP
//!   count it twice (and add to the load that made it slow). A node that died meanwhile is
//!   found sooner: its connection breaks (TCP keepalive finds a vanished host).
//!
//! A call that timed out, broke off once connected, or failed with a status may have been
//! processed by OAP all the same, so sending the event again may duplicate it. Each such
//! call counts against the event; past `attempts` the event is dropped and counted
//! `retries_exhausted`, instead of being sent again for as long as OAP stays slow. A call
//! that never connected reached nobody and costs nothing: an unreachable pool keeps its
//! events (the queue's bounds and overflow policy hold meanwhile), as Satellite keeps its
//! own until a connection comes back.
//!
//! An event whose answer timed out at an upstream goes to another one next when there is
//! one, and is sent to that upstream again at most once: a second unanswered call there
//! drops it (`retries_exhausted`). Which upstreams it timed out at is kept as bits of a
//! 32-bit mask (a hash of the address picks the bit; it fits in the event beside the
//! attempts count, so events are no larger for it), in memory: after a restart the
//! attempts count survives, the mask does not.

use std::time::{Duration, Instant};

use crate::queue::Event;

/// The delivery budget and deadlines (`--delivery-attempts`, `--upstream-timeout`,
/// `--upstream-answer-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Calls that may have delivered an event before it is given up on; 0: no bound.
    pub attempts: u16,
    /// How long OAP may leave the request's data unmoved while taking it in.
    pub call_timeout: Duration,
    /// How long a call whose request OAP has taken waits for its answer.
    pub answer_timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            attempts: 5,
            call_timeout: Duration::from_secs(10),
            // SkyWalking's Java agent gives OAP 30 s (`collector.grpc_upstream_timeout`).
            answer_timeout: Duration::from_secs(30),
        }
    }
}

/// The bit of an event's timeout mask that stands for `upstream`.
pub(crate) fn timeout_bit(upstream: &str) -> u32 {
    // FNV-1a: stable across processes and cheap; a collision only makes the proxy more
    // careful with one more upstream.
    let hash = upstream.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    1 << (hash % 32)
}

/// What the failed calls of one delivery did to its events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Failures {
    /// Calls that may have reached OAP.
    pub reached: u16,
    /// Bits of the upstreams whose answer timed out after they took the request.
    pub unanswered: u32,
    /// Bits of an upstream that left a call unanswered again: the events it had left
    /// unanswered before are given up on.
    pub unanswered_again: u32,
}

impl Delivery {
    /// When a call times out: `call_timeout` after its data last moved (or it began), and,
    /// once OAP took all of it, `answer_timeout` after that.
    pub fn deadline(&self, moved: Instant, taken: Option<Instant>) -> Instant {
        match taken {
            Some(taken) => taken + self.answer_timeout,
            None => moved + self.call_timeout,
        }
    }

    /// Calls that may deliver left to an event that has had `attempts`.
    pub fn left(&self, attempts: u16) -> u16 {
        if self.attempts == 0 {
            u16::MAX
        } else {
            self.attempts.saturating_sub(attempts)
        }
    }

    /// Counts a delivery's failed calls against each event; those past the budget (or
    /// unanswered twice by one upstream) are split off, to be dropped: `(exhausted,
    /// again)`, each in its original order.
    pub(crate) fn charge(
        &self,
        events: Vec<Event>,
        failures: Failures,
    ) -> (Vec<Event>, Vec<Event>) {
        let mut exhausted = Vec::new();
        let mut again = Vec::with_capacity(events.len());
        for mut event in events {
            event.attempts = event.attempts.saturating_add(failures.reached);
            let unanswered_twice =
                (event.unanswered_at | failures.unanswered) & failures.unanswered_again != 0;
            event.unanswered_at |= failures.unanswered | failures.unanswered_again;
            if unanswered_twice || (self.attempts > 0 && event.attempts >= self.attempts) {
                exhausted.push(event);
            } else {
                again.push(event);
            }
        }
        (exhausted, again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(attempts: u16) -> Event {
        Event {
            attempts,
            ..Event::segment(Bytes::from_static(b"\0\0\0\0\0"))
        }
    }

    fn reached(reached: u16) -> Failures {
        Failures {
            reached,
            ..Failures::default()
        }
    }

    #[test]
    fn calls_that_may_have_delivered_spend_the_budget_and_others_do_not() {
        let delivery = Delivery {
            attempts: 3,
            ..Delivery::default()
        };
        let (exhausted, again) = delivery.charge(vec![event(0), event(1), event(2)], reached(1));
        assert_eq!(
            exhausted.iter().map(|e| e.attempts).collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(again.iter().map(|e| e.attempts).collect::<Vec<_>>(), [1, 2]);
        // A call that never connected reached nobody: nothing is spent.
        let (exhausted, again) = delivery.charge(vec![event(2)], reached(0));
        assert!(exhausted.is_empty());
        assert_eq!(again[0].attempts, 2);
        // No bound: kept however often it failed.
        let unbounded = Delivery {
            attempts: 0,
            ..Delivery::default()
        };
        let (exhausted, again) = unbounded.charge(vec![event(u16::MAX - 1)], reached(3));
        assert!(exhausted.is_empty());
        assert_eq!(again[0].attempts, u16::MAX);
        assert_eq!(delivery.left(1), 2);
        assert_eq!(delivery.left(5), 0);
        assert_eq!(unbounded.left(7), u16::MAX);
    }

    #[test]
    fn an_upstream_that_left_a_call_unanswered_is_remembered_and_a_second_time_ends_it() {
        let delivery = Delivery::default();
        let (a, b) = (timeout_bit("oap-0:11800"), timeout_bit("oap-1:11800"));
        assert_ne!(a, b);
        assert_eq!(a, timeout_bit("oap-0:11800"), "stable");
        let first = Failures {
            reached: 1,
            unanswered: a,
            unanswered_again: 0,
        };
        let (exhausted, again) = delivery.charge(vec![event(0)], first);
        assert!(exhausted.is_empty());
        assert_eq!((again[0].attempts, again[0].unanswered_at), (1, a));
        let then_b = Failures {
            unanswered: b,
            ..first
        };
        let (_, mut again) = delivery.charge(again, then_b);
        assert_eq!(again[0].unanswered_at, a | b);
        // Budget left, but an upstream that already left it unanswered did so again; an
        // event it had not left unanswered before (regrouped with it) is kept, and marked.
        again.push(event(0));
        let again_a = Failures {
            reached: 1,
            unanswered: 0,
            unanswered_again: a,
        };
        let (exhausted, again) = delivery.charge(again, again_a);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].attempts, again[0].unanswered_at), (1, a));
        assert_eq!(exhausted[0].attempts, 3);
    }

    #[test]
    fn a_call_times_out_when_its_data_stops_moving_or_its_answer_is_late() {
        let delivery = Delivery {
            call_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(30),
            ..Delivery::default()
        };
        let began = Instant::now();
        let moved = began + Duration::from_secs(25);
        assert_eq!(
            delivery.deadline(began, None),
            began + Duration::from_secs(10)
        );
        // Still taking it in 25 s later: 10 s from the last move.
        assert_eq!(
            delivery.deadline(moved, None),
            began + Duration::from_secs(35)
        );
        // All taken at 26 s: its answer may take 30 s from then.
        let taken = began + Duration::from_secs(26);
        assert_eq!(
            delivery.deadline(moved, Some(taken)),
            began + Duration::from_secs(56)
        );
    }
}
