//! How hard a report is tried: the upstream call's deadline, and each event's budget of
//! calls that may have delivered it.
//!
//! A call that timed out, broke off once connected, or failed with a status may have been
//! processed by OAP all the same (OAP handles a stream's messages as they arrive), so
//! sending the event again may duplicate it. Each such call counts against the event; past
//! `attempts` the event is dropped and counted `retries_exhausted`, instead of being sent
//! again for as long as OAP stays slow. A call that never connected reached nobody and
//! costs nothing: an unreachable pool keeps its events (the queue's bounds and overflow
//! policy hold meanwhile), as Satellite keeps its own until a connection comes back.

use std::time::Duration;

use crate::queue::Event;

/// The delivery budget and deadline (`--delivery-attempts`, `--upstream-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Calls that may have delivered an event before it is given up on; 0: no bound.
    pub attempts: u16,
    /// How long one upstream call and its answer may take.
    pub call_timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            attempts: 5,
            call_timeout: Duration::from_secs(10),
        }
    }
}

impl Delivery {
    /// Calls that may deliver left to an event that has had `attempts`.
    pub fn left(&self, attempts: u16) -> u16 {
        if self.attempts == 0 {
            u16::MAX
        } else {
            self.attempts.saturating_sub(attempts)
        }
    }

    /// Counts `reached` failed calls against each event; those past the budget are split
    /// off, to be dropped: `(exhausted, again)`, each in its original order.
    pub fn charge(&self, events: Vec<Event>, reached: u16) -> (Vec<Event>, Vec<Event>) {
        let mut exhausted = Vec::new();
        let mut again = Vec::with_capacity(events.len());
        for mut event in events {
            event.attempts = event.attempts.saturating_add(reached);
            if self.attempts > 0 && event.attempts >= self.attempts {
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

    #[test]
    fn calls_that_may_have_delivered_spend_the_budget_and_others_do_not() {
        let delivery = Delivery {
            attempts: 3,
            ..Delivery::default()
        };
        let (exhausted, again) = delivery.charge(vec![event(0), event(1), event(2)], 1);
        assert_eq!(
            exhausted.iter().map(|e| e.attempts).collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(again.iter().map(|e| e.attempts).collect::<Vec<_>>(), [1, 2]);
        // A call that never connected reached nobody: nothing is spent.
        let (exhausted, again) = delivery.charge(vec![event(2)], 0);
        assert!(exhausted.is_empty());
        assert_eq!(again[0].attempts, 2);
        // No bound: kept however often it failed.
        let unbounded = Delivery {
            attempts: 0,
            ..Delivery::default()
        };
        let (exhausted, again) = unbounded.charge(vec![event(u16::MAX - 1)], 3);
        assert!(exhausted.is_empty());
        assert_eq!(again[0].attempts, u16::MAX);
        assert_eq!(delivery.left(1), 2);
        assert_eq!(delivery.left(5), 0);
        assert_eq!(unbounded.left(7), u16::MAX);
    }
}
