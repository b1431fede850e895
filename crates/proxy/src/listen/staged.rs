//! The events cut from a connection's data, queued together: once the data of a read is
//! handled, before a stream is acknowledged, or when [`STAGED_AT_MOST`] wait. One queue
//! lock per partition and read rather than one per event: under agents' framing a DATA
//! frame holds one message, so a read holds many. (One list in the order received,
//! whatever the partition count: what a busy connection keeps of it stays under 64
//! events.)

use crate::ingest::stream::Intake;
use crate::queue::{Event, Queue};

/// Events a connection stages before it queues them all the same (what it holds of them
/// is about 130 bytes each, kept while the connection is busy).
pub(crate) const STAGED_AT_MOST: usize = 64;

/// Events not yet offered to the queue, in the order received.
#[derive(Default)]
pub(crate) struct Staged {
    events: Vec<Event>,
    /// Each staged event's partition.
    partitions: Vec<usize>,
    /// Each staged event's stream.
    streams: Vec<u32>,
}

impl Staged {
    pub(crate) fn push(&mut self, queue: &Queue, stream: u32, mut event: Event) {
        self.partitions.push(queue.partition_of_event(&mut event));
        self.events.push(event);
        self.streams.push(stream);
    }

    pub(crate) fn is_full(&self) -> bool {
        self.events.len() >= STAGED_AT_MOST
    }

    /// Queues the staged events from the first up to the first that does not fit now;
    /// true when all were (or there were none). What is left, from the one that did not
    /// fit, waits for [`Staged::take_in_order`].
    pub(crate) fn try_queue(&mut self, intake: &Intake) -> bool {
        if self.events.is_empty() {
            return true;
        }
        let queued = intake.try_offer_prefix(&mut self.events, &self.partitions);
        self.partitions.drain(..queued);
        self.streams.drain(..queued);
        self.events.is_empty()
    }

    /// Takes out every staged event left with its stream, in the order received, to be
    /// offered one by one.
    pub(crate) fn take_in_order(&mut self) -> Vec<(u32, Event)> {
        self.partitions.clear();
        self.streams.drain(..).zip(self.events.drain(..)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Overflow, QueueConfig};
    use bytes::Bytes;
    use std::time::Duration;

    #[test]
    fn staged_events_come_back_in_the_order_they_arrived_whatever_their_partitions() {
        let queue = Queue::new(QueueConfig {
            partitions: 3,
            capacity: 10,
            max_bytes: 1 << 20,
            batch_size: 10,
            flush_interval: Duration::from_millis(100),
            overflow: Overflow::Reject,
            overflow_wait: Duration::ZERO,
            in_flight: 1,
        });
        let mut staged = Staged::default();
        let arrived: Vec<(u32, usize, String)> = (0..9)
            .map(|i| (i % 2, i as usize % 3, format!("m{i}")))
            .collect();
        for (stream, run, name) in &arrived {
            let event = Event {
                run: Some(*run),
                ..Event::segment(Bytes::from(name.clone()))
            };
            staged.push(&queue, *stream, event);
        }
        let back: Vec<(u32, String)> = staged
            .take_in_order()
            .into_iter()
            .map(|(stream, event)| {
                (
                    stream,
                    String::from_utf8(event.framed.to_vec()).expect("a name"),
                )
            })
            .collect();
        let expected: Vec<(u32, String)> = arrived
            .into_iter()
            .map(|(stream, _, name)| (stream, name))
            .collect();
        assert_eq!(back, expected);
        assert!(staged.try_queue(&intake_for(queue)), "nothing is left");
    }

    fn intake_for(queue: Queue) -> Intake {
        Intake {
            queue: std::sync::Arc::new(queue),
            metrics: std::sync::Arc::new(crate::metrics::Metrics::default()),
            routing: crate::balance::routing::Routing::default(),
            max_message_bytes: 1 << 20,
            federation: None,
        }
    }
}
