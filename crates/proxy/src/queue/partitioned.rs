//! The queue: bounded partitions of events, with every event accounted for.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::queue::event::Event;
use crate::queue::journal::Journal;

/// What a full partition does with a new event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse it: the client is answered `RESOURCE_EXHAUSTED` and keeps its data.
    Reject,
    /// Acknowledge and drop it.
    Drop,
}

/// Why an event was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Partition full, client told `RESOURCE_EXHAUSTED`.
    QueueFullRejected,
    /// Partition full, acknowledged and dropped.
    QueueFull,
    /// Every upstream attempt failed and it could not be kept.
    UpstreamFailed,
    /// Still queued when a shutdown's drain time ran out.
    ShutdownTimeout,
    /// Upstreams refused the data itself (a status they would give it anywhere, such as
    /// INVALID_ARGUMENT or UNIMPLEMENTED), on every upstream tried.
    RefusedByUpstream,
    /// Its delivery budget is spent: `--delivery-attempts` calls carried it and failed
    /// after it may have reached OAP (each may have delivered it).
    RetriesExhausted,
}

impl DropReason {
    pub(crate) const ALL: [DropReason; 6] = [
        DropReason::QueueFullRejected,
        DropReason::QueueFull,
        DropReason::UpstreamFailed,
        DropReason::ShutdownTimeout,
        DropReason::RefusedByUpstream,
        DropReason::RetriesExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFullRejected => "queue_full_rejected",
            DropReason::QueueFull => "queue_full",
            DropReason::UpstreamFailed => "upstream_failed",
            DropReason::ShutdownTimeout => "shutdown_timeout",
            DropReason::RefusedByUpstream => "refused_by_upstream",
            DropReason::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// How the queue is sized and flushed.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub partitions: usize,
    /// Events one partition holds (pending, so in-flight included).
    pub capacity: usize,
    /// Bytes one partition holds.
    pub max_bytes: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub overflow: Overflow,
    /// How long a client waits for room in a full queue (its stream is not read
    /// meanwhile, so HTTP/2 flow control holds the client back) before `overflow` applies.
    pub overflow_wait: Duration,
    /// Batches one partition sends at once (each its own upstream stream).
    pub in_flight: usize,
}

/// Whether an event must find room in its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    /// A client's: only if there is room (capacity, bytes, journal).
    IfRoom,
    /// Read back from the journal at start, acknowledged by an earlier run: whatever the
    /// room, even if it cannot be journaled again.
    Recovered,
}

/// The outcome of offering an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    Queued,
    /// The client must be told `RESOURCE_EXHAUSTED`.
    Rejected,
    /// Acknowledged, but dropped.
    Dropped,
}

#[derive(Default)]
struct Partition {
    events: Mutex<VecDeque<Event>>,
    /// Events and bytes in the partition or in flight from it.
    pending: AtomicUsize,
    pending_bytes: AtomicUsize,
    ready: Notify,
}

/// Counters of the accounting identity.
#[derive(Debug, Default)]
pub(crate) struct Accounting {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

/// A snapshot of the accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub received: u64,
    pub forwarded: u64,
    pub pending: u64,
    pub dropped: [u64; DropReason::ALL.len()],
}

impl Totals {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    /// `received = forwarded + pending + dropped`.
    pub fn balances(&self) -> bool {
        self.received == self.forwarded + self.pending + self.dropped_total()
    }
}

/// Events taken from one partition for one send.
#[derive(Debug)]
pub struct Batch {
    pub partition: usize,
    pub events: Vec<Event>,
}

/// The queues of all partitions.
pub struct Queue {
    config: QueueConfig,
    partitions: Vec<Partition>,
    next_partition: AtomicUsize,
    accounting: Accounting,
    /// Woken whenever events leave the queue, for clients waiting for room.
    room: Notify,
    /// With `--queue disk`: every queued event is journaled first.
    journal: Option<Arc<Journal>>,
}

impl Queue {
    pub fn new(config: QueueConfig) -> Self {
        let partitions = (0..config.partitions.max(1))
            .map(|_| Partition::default())
            .collect();
        Queue {
            config,
            partitions,
            next_partition: AtomicUsize::new(0),
            accounting: Accounting::default(),
            room: Notify::new(),
            journal: None,
        }
    }

    /// A queue whose events are journaled on disk (its partitions must match the
    /// journal's).
    pub(crate) fn with_journal(config: QueueConfig, journal: Arc<Journal>) -> Self {
        Queue {
            journal: Some(journal),
            ..Queue::new(config)
        }
    }

    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// Queues an event recovered from the journal at start, whatever the room: it was
    /// acknowledged to its client by an earlier run. Journaled again in its new partition.
    pub(crate) fn restore(&self, event: Event) {
        let admitted = self.admit(event, Admission::Recovered);
        debug_assert!(admitted.is_ok(), "a recovered event is always queued");
        self.accounting.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The partition of an event with routing key `key` received in run `run`.
    fn partition_of(&self, key: Option<&str>, run: usize) -> usize {
        match key {
            Some(key) => {
                (crate::balance::route::stable_hash(key.as_bytes()) % self.partitions.len() as u64)
                    as usize
            }
            None => run % self.partitions.len(),
        }
    }

    /// Whether `partition` holds room for one more event of `cost`.
    fn has_room(&self, partition: &Partition, cost: usize) -> bool {
        self.has_room_beyond(partition, (0, 0), cost)
    }

    /// Whether `partition` holds room for one more event of `cost` beyond `promised`
    /// (events, bytes) taken under its lock and not counted yet.
    fn has_room_beyond(
        &self,
        partition: &Partition,
        promised: (usize, usize),
        cost: usize,
    ) -> bool {
        partition.pending.load(Ordering::Relaxed) + promised.0 < self.config.capacity
            && partition.pending_bytes.load(Ordering::Relaxed) + promised.1 + cost
                <= self.config.max_bytes
    }

    /// A number for events received together (see [`Event::run`]).
    pub(crate) fn next_run(&self) -> usize {
        self.next_partition.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues `event` if its partition has room; gives it back otherwise. Counts nothing.
    // The event comes back only when there is no room (rare); boxing it to shrink the
    // error would cost an allocation for every event instead.
    #[allow(clippy::result_large_err)]
    fn try_queue(&self, event: Event) -> Result<(), Event> {
        self.admit(event, Admission::IfRoom)
    }

    /// Puts `event` at the back of its partition, journaled first with a journal.
    #[allow(clippy::result_large_err)] // see try_queue
    fn admit(&self, mut event: Event, admission: Admission) -> Result<(), Event> {
        let index = self.partition_of_event(&mut event);
        let partition = &self.partitions[index];
        let mut events = partition
            .events
            .lock()
            .expect("queue lock is never poisoned");
        if !self.make_room_for(index, &mut event, admission) {
            return Err(event);
        }
        events.push_back(event);
        let wake = self.wakes(events.len() - 1, events.len());
        drop(events);
        if wake {
            partition.ready.notify_one();
        }
        Ok(())
    }

    /// Takes room in partition `index` for `event` (the caller holds its lock), journaling
    /// it first with a journal; false when it does not fit.
    fn make_room_for(&self, index: usize, event: &mut Event, admission: Admission) -> bool {
        let partition = &self.partitions[index];
        let cost = event.cost();
        if !self.has_room(partition, cost) && admission == Admission::IfRoom {
            return false;
        }
        // On disk before it is queued (and so before its client hears it was taken); a
        // journal out of room or failing is a full queue to the client.
        if let Some(journal) = &self.journal {
            match (journal.append(index, event), admission) {
                (Ok(seq), _) => {
                    event.seq = Some(seq);
                    // A recovered event keeps the budget it spent before.
                    if event.attempts > 0 {
                        journal.attempted(index, std::iter::once((seq, event.attempts)));
                    }
                }
                (Err(_), Admission::IfRoom) => return false,
                // Kept in memory all the same: sent if this run lives long enough.
                (Err(err), Admission::Recovered) => {
                    tracing::warn!(error = %err, "a recovered event could not be journaled again")
                }
            }
        }
        partition.pending.fetch_add(1, Ordering::Relaxed);
        partition.pending_bytes.fetch_add(cost, Ordering::Relaxed);
        true
    }

    /// Whether to wake a sender once a partition went from `before` to `after` events:
    /// when it stops being empty (its flush timer starts) and when a batch fills up; Notify
    /// keeps a permit, so no wake-up is lost. A sender that takes a batch wakes the next
    /// one itself while full batches remain.
    fn wakes(&self, before: usize, after: usize) -> bool {
        let batch = self.config.batch_size;
        (before == 0 && after > 0) || (before < batch && after >= batch)
    }

    /// Queues a client's events (in the order received; `partitions[i]` is event `i`'s, see
    /// [`Queue::partition_of_event`]) from the first up to the first that does not fit
    /// (room, or the journal refusing it), as offering them one by one would, under the
    /// locks of the partitions they go to, taken together (in partition order, so two
    /// connections cannot deadlock). Returns how many were queued; they leave `events`.
    /// The first left is the one to wait for room: a stream's order wants none after it
    /// queued first (a message refused for want of room ends its stream).
    pub(crate) fn try_offer_prefix(&self, events: &mut Vec<Event>, partitions: &[usize]) -> usize {
        debug_assert_eq!(events.len(), partitions.len());
        debug_assert!(
            events
                .iter()
                .zip(partitions)
                .all(|(event, &index)| self.partition_for_run(event) == Some(index))
        );
        // Per partition: its lock, its length before, and what the events queued take.
        let mut touched = vec![false; self.partitions.len()];
        for &index in partitions {
            touched[index] = true;
        }
        let mut locked: Vec<_> = touched
            .iter()
            .enumerate()
            .map(|(index, &touched)| {
                touched.then(|| {
                    let queued = self.partitions[index]
                        .events
                        .lock()
                        .expect("queue lock is never poisoned");
                    let before = queued.len();
                    (queued, before, 0usize, 0usize)
                })
            })
            .collect();
        let mut fits = 0;
        for (event, &index) in events.iter_mut().zip(partitions) {
            let Some((.., count, bytes)) = &mut locked[index] else {
                unreachable!("every partition the events go to is locked");
            };
            let part = &self.partitions[index];
            if self.journal.is_some() {
                // Journaled in turn; the counts are taken as it is.
                if !self.make_room_for(index, event, Admission::IfRoom) {
                    break;
                }
            } else {
                let cost = event.cost();
                if !self.has_room_beyond(part, (*count, *bytes), cost) {
                    break;
                }
                *count += 1;
                *bytes += cost;
            }
            fits += 1;
        }
        for (event, &index) in events.drain(..fits).zip(partitions) {
            if let Some((queued, ..)) = &mut locked[index] {
                queued.push_back(event);
            }
        }
        for (index, slot) in locked.into_iter().enumerate() {
            let Some((queued, before, count, bytes)) = slot else {
                continue;
            };
            let part = &self.partitions[index];
            if count > 0 {
                part.pending.fetch_add(count, Ordering::Relaxed);
                part.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            let wake = self.wakes(before, queued.len());
            drop(queued);
            if wake {
                part.ready.notify_one();
            }
        }
        self.accounting
            .received
            .fetch_add(fits as u64, Ordering::Relaxed);
        fits
    }

    /// The partition of an event: keyed events always share one (their order is kept);
    /// others are spread by their run (an event without one is given the next here). As
    /// [`Queue::try_offer_prefix`] wants it for each event.
    pub(crate) fn partition_of_event(&self, event: &mut Event) -> usize {
        let run = *event.run.get_or_insert_with(|| self.next_run());
        self.partition_of(event.key.as_deref(), run)
    }

    /// The partition of an event whose run is set, if it is.
    fn partition_for_run(&self, event: &Event) -> Option<usize> {
        Some(self.partition_of(event.key.as_deref(), event.run?))
    }

    /// Applies the overflow policy to an event that found no room.
    fn overflow(&self) -> Offered {
        self.accounting.received.fetch_add(1, Ordering::Relaxed);
        match self.config.overflow {
            Overflow::Reject => {
                self.count_drop(DropReason::QueueFullRejected, 1);
                Offered::Rejected
            }
            Overflow::Drop => {
                self.count_drop(DropReason::QueueFull, 1);
                Offered::Dropped
            }
        }
    }

    /// Queues `event`, or applies the overflow policy at once when its partition is full.
    #[cfg(test)]
    pub(crate) fn offer(&self, event: Event) -> Offered {
        match self.try_offer(event) {
            Ok(()) => Offered::Queued,
            Err(_) => self.overflow(),
        }
    }

    /// Queues `event` if there is room now, without waiting; gives it back otherwise.
    #[allow(clippy::result_large_err)] // see try_queue
    pub(crate) fn try_offer(&self, event: Event) -> Result<(), Event> {
        self.try_queue(event)?;
        self.accounting.received.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the partition of an event with `key`, received in `run`, looks full for
    /// `cost` more (a hint taken without the lock: by the time the event is offered, room
    /// may have come or gone).
    pub(crate) fn looks_full_for(&self, key: Option<&str>, run: usize, cost: usize) -> bool {
        !self.has_room(&self.partitions[self.partition_of(key, run)], cost)
    }

    /// Counts an event dropped before it was offered: received, and dropped for `reason`.
    pub(crate) fn count_dropped_unoffered(&self, reason: DropReason) {
        self.accounting.received.fetch_add(1, Ordering::Relaxed);
        self.count_drop(reason, 1);
    }

    /// Queues `event` if there is room now; otherwise drops it, counted `queue_full`
    /// whatever the overflow policy (for a copy whose original was taken elsewhere, such
    /// as the federation's: nobody waits for it). True when queued.
    pub(crate) fn offer_or_drop(&self, event: Event) -> bool {
        let queued = self.try_queue(event).is_ok();
        self.accounting.received.fetch_add(1, Ordering::Relaxed);
        if !queued {
            self.count_drop(DropReason::QueueFull, 1);
        }
        queued
    }

    /// Queues `event`, waiting up to `overflow_wait` for room when the queue is full, then
    /// applies the overflow policy. The caller stops reading its client meanwhile, which is
    /// the backpressure: a client that can wait is slowed down rather than refused.
    pub(crate) async fn offer_waiting(&self, event: Event) -> Offered {
        // The common case, without registering for wake-ups.
        let mut event = match self.try_offer(event) {
            Ok(()) => return Offered::Queued,
            Err(back) => back,
        };
        let deadline = tokio::time::Instant::now() + self.config.overflow_wait;
        loop {
            // Registered before trying, so room made in between is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_offer(event) {
                Ok(()) => return Offered::Queued,
                Err(back) => event = back,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return self.overflow();
            }
        }
    }

    /// Waits for the next batch of `partition`: as soon as it holds `batch_size` events, or
    /// `flush_interval` after it became non-empty. Returns `None` once `closed` resolves
    /// and the partition is empty.
    pub(crate) async fn next_batch(
        &self,
        partition: usize,
        closed: &tokio::sync::watch::Receiver<bool>,
    ) -> Option<Batch> {
        let part = &self.partitions[partition];
        let mut closed = closed.clone();
        loop {
            let queued = part
                .events
                .lock()
                .expect("queue lock is never poisoned")
                .len();
            // Another sender of the partition may have taken the events meanwhile.
            if (queued >= self.config.batch_size || (queued > 0 && *closed.borrow()))
                && let Some(batch) = self.take(partition)
            {
                return Some(batch);
            }
            if queued == 0 && *closed.borrow() {
                return None;
            }
            if queued > 0 {
                // Something waits: flush at the interval unless the batch fills first.
                tokio::select! {
                    _ = tokio::time::sleep(self.config.flush_interval) => match self.take(partition) {
                        Some(batch) => return Some(batch),
                        None => continue,
                    },
                    _ = part.ready.notified() => continue,
                    _ = closed.changed() => continue,
                }
            }
            tokio::select! {
                _ = part.ready.notified() => {}
                _ = closed.changed() => {}
            }
        }
    }

    /// Up to a batch of the partition's events; `None` when it is empty.
    fn take(&self, partition: usize) -> Option<Batch> {
        let mut events = self.partitions[partition]
            .events
            .lock()
            .expect("queue lock is never poisoned");
        if events.is_empty() {
            return None;
        }
        let n = events.len().min(self.config.batch_size);
        let batch = Batch {
            partition,
            events: events.drain(..n).collect(),
        };
        // Another full batch waits: let another of the partition's senders take it.
        if events.len() >= self.config.batch_size {
            self.partitions[partition].ready.notify_one();
        }
        Some(batch)
    }

    fn release(&self, partition: usize, events: &[Event]) {
        if let Some(journal) = &self.journal {
            journal.done(partition, events.iter().filter_map(|e| e.seq));
        }
        let part = &self.partitions[partition];
        part.pending.fetch_sub(events.len(), Ordering::Relaxed);
        part.pending_bytes
            .fetch_sub(events.iter().map(Event::cost).sum(), Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// The batch reached an upstream that acknowledged it.
    pub fn forwarded(&self, batch: Batch) {
        self.release(batch.partition, &batch.events);
        self.accounting
            .forwarded
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
    }

    /// The batch could not be sent now: back to the front of its partition, in order, to be
    /// sent again. Room is guaranteed: its events never stopped being counted. `charged`:
    /// their delivery attempts grew, and the journal records them.
    pub(crate) fn put_back(&self, batch: Batch, charged: bool) {
        if charged && let Some(journal) = &self.journal {
            journal.attempted(
                batch.partition,
                batch
                    .events
                    .iter()
                    .filter_map(|e| Some((e.seq?, e.attempts))),
            );
        }
        let part = &self.partitions[batch.partition];
        let mut events = part.events.lock().expect("queue lock is never poisoned");
        for event in batch.events.into_iter().rev() {
            events.push_front(event);
        }
        drop(events);
        part.ready.notify_one();
    }

    /// The batch is given up on.
    pub fn dropped(&self, batch: Batch, reason: DropReason) {
        self.release(batch.partition, &batch.events);
        self.count_drop(reason, batch.events.len() as u64);
    }

    /// Gives up on everything still pending, once a shutdown's drain time ran out and the
    /// senders are stopped: counted as dropped for `reason`. Returns how many per protocol
    /// (events taken by a stopped sender are under `in_flight`).
    pub(crate) fn abandon(&self, reason: DropReason) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        for part in &self.partitions {
            let waiting: Vec<Event> = part
                .events
                .lock()
                .expect("queue lock is never poisoned")
                .drain(..)
                .collect();
            let pending = part.pending.swap(0, Ordering::Relaxed) as u64;
            part.pending_bytes.store(0, Ordering::Relaxed);
            for event in &waiting {
                match counts.iter_mut().find(|(p, _)| *p == event.route.protocol) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((event.route.protocol, 1)),
                }
            }
            let in_flight = pending.saturating_sub(waiting.len() as u64);
            if in_flight > 0 {
                match counts.iter_mut().find(|(p, _)| *p == "in_flight") {
                    Some((_, n)) => *n += in_flight,
                    None => counts.push(("in_flight", in_flight)),
                }
            }
            self.count_drop(reason, pending);
        }
        counts
    }

    fn count_drop(&self, reason: DropReason, n: u64) {
        self.accounting.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Events in or taken from `partition`.
    pub fn pending(&self, partition: usize) -> usize {
        self.partitions[partition].pending.load(Ordering::Relaxed)
    }

    pub fn totals(&self) -> Totals {
        let mut dropped = [0; DropReason::ALL.len()];
        for (i, counter) in self.accounting.dropped.iter().enumerate() {
            dropped[i] = counter.load(Ordering::Relaxed);
        }
        Totals {
            received: self.accounting.received.load(Ordering::Relaxed),
            forwarded: self.accounting.forwarded.load(Ordering::Relaxed),
            pending: self
                .partitions
                .iter()
                .map(|p| p.pending.load(Ordering::Relaxed) as u64)
                .sum(),
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn config(overflow: Overflow) -> QueueConfig {
        QueueConfig {
            partitions: 2,
            capacity: 3,
            max_bytes: 1 << 20,
            batch_size: 2,
            flush_interval: Duration::from_millis(100),
            overflow,
            overflow_wait: Duration::ZERO,
            in_flight: 1,
        }
    }

    fn event(key: Option<&str>) -> Event {
        Event {
            key: key.map(Into::into),
            ..Event::segment(Bytes::from_static(b"segment"))
        }
    }

    #[test]
    fn a_full_partition_rejects_or_drops_and_every_event_is_accounted_for() {
        for (overflow, outcome, reason) in [
            (
                Overflow::Reject,
                Offered::Rejected,
                DropReason::QueueFullRejected,
            ),
            (Overflow::Drop, Offered::Dropped, DropReason::QueueFull),
        ] {
            let queue = Queue::new(config(overflow));
            // Keyed events share a partition: three fit, the fourth overflows.
            let results: Vec<_> = (0..4).map(|_| queue.offer(event(Some("svc\0a")))).collect();
            assert_eq!(
                results,
                vec![Offered::Queued, Offered::Queued, Offered::Queued, outcome]
            );
            let totals = queue.totals();
            assert_eq!(
                (totals.received, totals.pending, totals.dropped(reason)),
                (4, 3, 1)
            );
            assert!(totals.balances());
        }
    }

    /// Events as a connection stages them, with their partitions.
    fn staged(queue: &Queue, names: &[(usize, &str)]) -> (Vec<Event>, Vec<usize>) {
        names
            .iter()
            .map(|(run, name)| {
                let mut event = Event {
                    run: Some(*run),
                    ..Event::segment(Bytes::copy_from_slice(name.as_bytes()))
                };
                let partition = queue.partition_of_event(&mut event);
                (event, partition)
            })
            .unzip()
    }

    fn taken(batch: &Batch) -> Vec<&[u8]> {
        batch.events.iter().map(|e| &e.framed[..]).collect()
    }

    #[tokio::test]
    async fn events_offered_together_are_queued_in_order_up_to_the_first_without_room() {
        let queue = Queue::new(QueueConfig {
            capacity: 4,
            batch_size: 3,
            ..config(Overflow::Reject)
        });
        let (_close, closed) = tokio::sync::watch::channel(false);
        let (mut events, partitions) =
            staged(&queue, &[(0, "a0"), (1, "b0"), (0, "a1"), (0, "a2")]);
        assert_eq!(queue.try_offer_prefix(&mut events, &partitions), 4);
        assert!(events.is_empty());
        assert_eq!((queue.totals().received, queue.totals().pending), (4, 4));
        // Partition 0 has room for one more: a3 is queued, a4 is not, and b1 after it is
        // not either although partition 1 has room (it came after the one refused).
        let (mut events, partitions) = staged(&queue, &[(0, "a3"), (0, "a4"), (1, "b1")]);
        assert_eq!(queue.try_offer_prefix(&mut events, &partitions), 1);
        let left: Vec<_> = events.iter().map(|e| &e.framed[..]).collect();
        assert_eq!(left, [b"a4", b"b1"]);
        assert_eq!((queue.totals().received, queue.totals().pending), (5, 5));
        // A sender takes them in the order offered.
        let batch = queue.next_batch(0, &closed).await.unwrap();
        assert_eq!(taken(&batch), [b"a0", b"a1", b"a2"]);
        queue.forwarded(batch);
        assert_eq!(queue.try_offer_prefix(&mut events, &partitions[1..]), 2);
        let batch = queue.next_batch(0, &closed).await.unwrap();
        assert_eq!(taken(&batch), [b"a3", b"a4"]);
        let batch = queue.next_batch(1, &closed).await.unwrap();
        assert_eq!(taken(&batch), [b"b0", b"b1"]);
        assert!(queue.totals().balances());
    }

    #[test]
    fn events_offered_together_find_no_room_past_the_partitions_bytes() {
        let queue = Queue::new(QueueConfig {
            capacity: 100,
            max_bytes: 3 * (64 + 2) + 1,
            ..config(Overflow::Reject)
        });
        let (mut four, partitions) = staged(&queue, &[(0, "e0"), (0, "e1"), (0, "e2"), (0, "e3")]);
        assert_eq!(queue.try_offer_prefix(&mut four, &partitions), 3);
        assert_eq!(four.len(), 1, "the fourth does not fit the bytes");
        assert_eq!(queue.totals().pending, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_waits_for_room_before_the_overflow_policy_applies() {
        let queue = std::sync::Arc::new(Queue::new(QueueConfig {
            partitions: 1,
            capacity: 2,
            overflow_wait: Duration::from_secs(1),
            ..config(Overflow::Reject)
        }));
        let (_close, closed) = tokio::sync::watch::channel(false);
        assert_eq!(queue.offer(event(None)), Offered::Queued);
        assert_eq!(queue.offer(event(None)), Offered::Queued);

        // Room made while the client waits: its event is queued, not refused.
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.offer_waiting(event(None)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a full queue holds the client back");
        let batch = queue.next_batch(0, &closed).await.unwrap();
        queue.forwarded(batch);
        assert_eq!(waiting.await.unwrap(), Offered::Queued);

        // No room within the wait: the policy applies, after exactly the wait.
        assert_eq!(queue.offer(event(None)), Offered::Queued);
        let started = tokio::time::Instant::now();
        assert_eq!(queue.offer_waiting(event(None)).await, Offered::Rejected);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let totals = queue.totals();
        assert_eq!(
            (
                totals.received,
                totals.forwarded,
                totals.pending,
                totals.dropped_total()
            ),
            (5, 2, 2, 1)
        );
        assert!(totals.balances());
    }

    #[test]
    fn the_byte_cap_applies_too() {
        let queue = Queue::new(QueueConfig {
            max_bytes: 150,
            ..config(Overflow::Drop)
        });
        let big = Event {
            framed: Bytes::from(vec![0; 60]),
            run: None,
            ..event(Some("k"))
        };
        assert_eq!(queue.offer(big.clone()), Offered::Queued);
        assert_eq!(queue.offer(big), Offered::Dropped);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_flush_at_size_or_interval_and_failed_ones_come_back_first() {
        let queue = Queue::new(QueueConfig {
            partitions: 1,
            capacity: 10,
            ..config(Overflow::Reject)
        });
        let (_close, closed) = tokio::sync::watch::channel(false);
        for _ in 0..3 {
            queue.offer(event(None));
        }
        let full = queue.next_batch(0, &closed).await.unwrap();
        assert_eq!(full.events.len(), 2, "a full batch goes at once");

        let started = tokio::time::Instant::now();
        let rest = queue.next_batch(0, &closed).await.unwrap();
        assert_eq!(rest.events.len(), 1);
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "a partial batch waits for the flush interval"
        );

        queue.put_back(rest, false);
        let totals = queue.totals();
        assert_eq!(
            totals.pending, 3,
            "in-flight and returned events are still pending"
        );
        assert!(totals.balances());
        queue.forwarded(full);
        let again = queue.next_batch(0, &closed).await.unwrap();
        queue.dropped(again, DropReason::UpstreamFailed);
        let totals = queue.totals();
        assert_eq!(
            (
                totals.forwarded,
                totals.pending,
                totals.dropped(DropReason::UpstreamFailed)
            ),
            (2, 0, 1)
        );
        assert!(totals.balances());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_sender_wakes_for_the_first_event_and_flushes_it_after_the_interval() {
        let queue = std::sync::Arc::new(Queue::new(QueueConfig {
            partitions: 1,
            ..config(Overflow::Reject)
        }));
        let (_close, closed) = tokio::sync::watch::channel(false);
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move {
                (
                    queue.next_batch(0, &closed).await,
                    tokio::time::Instant::now(),
                )
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        let offered_at = tokio::time::Instant::now();
        queue.offer(event(None));
        let (batch, flushed_at) = waiting.await.unwrap();
        assert_eq!(batch.unwrap().events.len(), 1);
        assert_eq!(
            flushed_at - offered_at,
            Duration::from_millis(100),
            "exactly one flush interval"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn senders_sharing_a_partition_never_get_an_empty_batch() {
        let queue = std::sync::Arc::new(Queue::new(QueueConfig {
            partitions: 1,
            ..config(Overflow::Reject)
        }));
        let (_close, closed) = tokio::sync::watch::channel(false);
        queue.offer(event(None));
        // Both senders see the event and wait out the flush interval; one takes it.
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let (queue, closed) = (queue.clone(), closed.clone());
                tokio::spawn(async move { queue.next_batch(0, &closed).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let finished: Vec<_> = senders.iter().filter(|s| s.is_finished()).collect();
        assert_eq!(finished.len(), 1, "the other sender keeps waiting");
        for sender in senders {
            if sender.is_finished() {
                assert_eq!(sender.await.unwrap().unwrap().events.len(), 1);
            } else {
                sender.abort();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_queue_hands_out_what_is_left_then_ends() {
        let queue = Queue::new(QueueConfig {
            partitions: 1,
            ..config(Overflow::Reject)
        });
        let (close, closed) = tokio::sync::watch::channel(false);
        queue.offer(event(None));
        close.send(true).unwrap();
        let last = queue.next_batch(0, &closed).await.unwrap();
        assert_eq!(last.events.len(), 1);
        queue.forwarded(last);
        assert!(queue.next_batch(0, &closed).await.is_none());
    }
}
