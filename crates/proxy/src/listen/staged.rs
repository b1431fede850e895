//! The events cut from a connection's data, queued together: once the data of a read is
//! handled, before a stream is acknowledged, or when [`STAGED_AT_MOST`] wait. One queue
//! lock per partition and read rather than one per event: under agents' framing a DATA
//! frame holds one message, so a read holds many.

use crate::ingest::stream::Intake;
use crate::queue::{Event, Queue};

/// Events a connection stages before it queues them all the same (what it holds of them
/// is about 130 bytes each, kept while the connection is busy).
pub(crate) const STAGED_AT_MOST: usize = 64;

/// Events not yet offered to the queue, by partition, in the order they were received.
#[derive(Default)]
pub(crate) struct Staged {
    partitions: Vec<Part>,
    count: usize,
}

/// One partition's staged events and the streams they came on.
#[derive(Default)]
pub(crate) struct Part {
    pub(crate) partition: usize,
    pub(crate) events: Vec<Event>,
    pub(crate) streams: Vec<u32>,
}

impl Part {
    /// Queues what fits from the front; true when nothing is left.
    pub(crate) fn try_queue(&mut self, intake: &Intake) -> bool {
        if self.events.is_empty() {
            return true;
        }
        let queued = intake.try_offer_front(self.partition, &mut self.events);
        self.streams.drain(..queued);
        self.events.is_empty()
    }

    /// Takes out the events of `stream`: its call was refused.
    pub(crate) fn remove_stream(&mut self, stream: u32) -> Vec<Event> {
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.streams.len() {
            if self.streams[i] == stream {
                self.streams.remove(i);
                removed.push(self.events.remove(i));
            } else {
                i += 1;
            }
        }
        removed
    }
}

impl Staged {
    pub(crate) fn push(&mut self, queue: &Queue, stream: u32, mut event: Event) {
        if self.partitions.is_empty() {
            self.partitions = (0..queue.partitions())
                .map(|partition| Part {
                    partition,
                    ..Part::default()
                })
                .collect();
        }
        let part = &mut self.partitions[queue.partition_of_event(&mut event)];
        part.events.push(event);
        part.streams.push(stream);
        self.count += 1;
    }

    pub(crate) fn is_full(&self) -> bool {
        self.count >= STAGED_AT_MOST
    }

    /// Queues every partition's events as far as there is room; true when all were.
    pub(crate) fn try_queue(&mut self, intake: &Intake) -> bool {
        if self.count == 0 {
            return true;
        }
        let mut left = 0;
        for part in &mut self.partitions {
            part.try_queue(intake);
            left += part.events.len();
        }
        self.count = left;
        left == 0
    }

    /// Takes out what is left (partitions that were full), to wait for room.
    pub(crate) fn take_left(&mut self) -> Vec<Part> {
        self.count = 0;
        self.partitions
            .iter_mut()
            .filter(|part| !part.events.is_empty())
            .map(|part| Part {
                partition: part.partition,
                events: std::mem::take(&mut part.events),
                streams: std::mem::take(&mut part.streams),
            })
            .collect()
    }
}
