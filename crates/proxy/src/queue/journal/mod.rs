//! The durable queue (`--queue disk`): every event the queue takes is first appended to its
//! partition's journal on disk, and leaves the journal only once an upstream acknowledged
//! it (or it was given up on and counted). On start, what the last run left unacknowledged
//! is read back and queued again.
//!
//! - [`record`]: the checksummed record format, and reading records back past damage;
//! - [`log`]: one partition's segment files and its acknowledgement mark.
//!
//! Durability follows `--fsync`: `interval` syncs the journal every `--fsync-interval`, so
//! a crash of the machine loses at most that interval's events (a crash of the process
//! alone loses nothing: written data is in the kernel's page cache); `always` makes each
//! client wait for the sync covering its events before it is acknowledged, with one sync
//! shared by everyone waiting at the time.

pub mod log;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, watch};

use self::log::{AppendError, PartitionLog};
use crate::queue::event::{Event, Route};

/// When the journal is synced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Every interval, in the background.
    Interval(Duration),
    /// Before each client is acknowledged.
    Always,
}

/// Where and how the journal is kept.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// Bytes one partition's journal may take on disk.
    pub max_bytes: u64,
}

/// Up to where appends are synced, and whether the last sync failed.
#[derive(Clone, Copy, Debug, Default)]
struct Synced {
    upto: u64,
    failed: bool,
}

/// The sync covering a client's events failed: the client must not be acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("the journal could not be written or synced to disk")]
pub struct SyncFailed;

/// What the last run left behind, read back on start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Unacknowledged events, oldest first within each old partition.
    pub events: Vec<Event>,
    /// Damaged stretches skipped.
    pub corrupt: u64,
    /// The old segment files, and the folders of partitions beyond the current count,
    /// removed once the events are journaled again.
    old_files: Vec<PathBuf>,
    old_dirs: Vec<PathBuf>,
}

/// What the journal counts, exported as metrics (shared with [`crate::metrics::Metrics`]).
#[derive(Clone, Debug, Default)]
pub struct JournalCounters {
    /// Damaged stretches skipped when reading the journal back.
    pub corrupt: Counter,
    /// Unacknowledged events read back at start.
    pub recovered: Counter,
    /// Appends and writes refused (out of room, or the disk failing).
    pub refused: Counter,
}

/// The journals of all partitions.
pub struct Journal {
    logs: Vec<Mutex<PartitionLog>>,
    fsync: Fsync,
    /// Appends made (all partitions); a sync covers those counted when it started.
    appended: AtomicU64,
    synced: watch::Sender<Synced>,
    wanted: Notify,
    counters: JournalCounters,
}

fn partition_dir(dir: &Path, partition: usize) -> PathBuf {
    dir.join(format!("partition-{partition}"))
}

/// Segments of one size roll over: a few per partition, so space comes back in steps.
fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(64 << 10, 64 << 20)
}

impl Journal {
    /// Opens the journal in `config.dir`, reading back what an earlier run left
    /// unacknowledged. The caller queues the recovered events again (they are journaled
    /// anew) and then calls [`Journal::forget_old`].
    pub fn open(
        config: &JournalConfig,
        partitions: usize,
        counters: JournalCounters,
    ) -> std::io::Result<(Journal, Recovery)> {
        std::fs::create_dir_all(&config.dir)?;
        let (recovery, next_seq) = recover(&config.dir, partitions)?;
        let logs = (0..partitions)
            .map(|p| {
                PartitionLog::create(
                    partition_dir(&config.dir, p),
                    next_seq,
                    segment_bytes(config.max_bytes),
                    config.max_bytes,
                )
                .map(Mutex::new)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        counters.corrupt.inc_by(recovery.corrupt);
        counters.recovered.inc_by(recovery.events.len() as u64);
        let journal = Journal {
            logs,
            fsync: config.fsync,
            appended: AtomicU64::new(0),
            synced: watch::Sender::new(Synced::default()),
            wanted: Notify::new(),
            counters,
        };
        Ok((journal, recovery))
    }

    /// Once the recovered events are journaled again and synced, the old files go.
    pub(crate) async fn forget_old(&self, recovery: Recovery) -> Result<(), SyncFailed> {
        if recovery.old_files.is_empty() && recovery.old_dirs.is_empty() {
            return Ok(());
        }
        self.sync().await?;
        for file in recovery.old_files {
            let _ = std::fs::remove_file(file);
        }
        for dir in recovery.old_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }

    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// Appends `event` to `partition`'s journal; its sequence number there.
    pub(crate) fn append(&self, partition: usize, event: &Event) -> Result<u64, AppendError> {
        let mut log = self.logs[partition]
            .lock()
            .expect("journal lock is never poisoned");
        let appended = log.append(event);
        match &appended {
            Ok(_) => {
                self.appended.fetch_add(1, Ordering::SeqCst);
            }
            Err(err) => {
                // Counted, and said once in a while: the overflow policy answers the client.
                if self.counters.refused.inc().is_multiple_of(1000) {
                    tracing::warn!(partition, error = %err, "journal refused an event");
                }
            }
        }
        appended
    }

    /// Records the failed delivery attempts of events of `partition` (by sequence number),
    /// so that their budget survives a restart. Best effort: without room the count is
    /// kept in memory only (counted as refused).
    pub(crate) fn attempted(&self, partition: usize, events: impl Iterator<Item = (u64, u16)>) {
        let mut log = self.logs[partition]
            .lock()
            .expect("journal lock is never poisoned");
        for (seq, attempts) in events {
            if let Err(err) = log.append_attempts(seq, attempts)
                && self.counters.refused.inc().is_multiple_of(1000)
            {
                tracing::warn!(partition, error = %err, "journal refused an attempts record");
            }
        }
    }

    /// Record `seq` of `partition` is no longer needed.
    pub fn done(&self, partition: usize, seqs: impl Iterator<Item = u64>) {
        let mut log = self.logs[partition]
            .lock()
            .expect("journal lock is never poisoned");
        for seq in seqs {
            log.done(seq);
        }
    }

    /// Writes every partition's appended records to its file: before a client is
    /// acknowledged, so that its messages survive a crash of the process.
    pub(crate) fn write_out(&self) -> Result<(), SyncFailed> {
        let mut failed = false;
        for (partition, log) in self.logs.iter().enumerate() {
            let mut log = log.lock().expect("journal lock is never poisoned");
            if let Err(err) = log.write_out() {
                failed = true;
                if self.counters.refused.inc().is_multiple_of(1000) {
                    tracing::warn!(partition, error = %err, "writing the journal failed");
                }
            }
        }
        if failed { Err(SyncFailed) } else { Ok(()) }
    }

    /// Waits until everything appended so far is on disk (with `--fsync always`, before a
    /// client is acknowledged).
    pub(crate) async fn durable(&self) -> Result<(), SyncFailed> {
        let target = self.appended.load(Ordering::SeqCst);
        let mut synced = self.synced.subscribe();
        if synced.borrow().upto >= target && !synced.borrow().failed {
            return Ok(());
        }
        self.wanted.notify_one();
        let state = synced
            .wait_for(|s| s.upto >= target)
            .await
            .map_err(|_| SyncFailed)?;
        if state.failed {
            Err(SyncFailed)
        } else {
            Ok(())
        }
    }

    /// Syncs every partition's new writes and acknowledgement mark now.
    pub async fn sync(&self) -> Result<(), SyncFailed> {
        let target = self.appended.load(Ordering::SeqCst);
        let work: std::io::Result<Vec<_>> = self
            .logs
            .iter()
            .map(|log| {
                log.lock()
                    .expect("journal lock is never poisoned")
                    .take_sync_work()
            })
            .collect();
        let outcome = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let work = work?;
            for work in &work {
                for file in &work.files {
                    file.sync_data()?;
                }
            }
            // Marks after data: a mark never runs ahead of the records it follows.
            for work in work {
                if let Some((dir, mark)) = work.mark {
                    log::write_mark(&dir, mark)?;
                }
            }
            Ok(())
        })
        .await;
        let failed = !matches!(outcome, Ok(Ok(())));
        if failed {
            tracing::error!(outcome = ?outcome, "syncing the journal failed");
        }
        self.synced.send_modify(|s| {
            s.upto = s.upto.max(target);
            s.failed = failed;
        });
        if failed { Err(SyncFailed) } else { Ok(()) }
    }

    /// Syncs in the background until `closed` turns true, then once more.
    pub(crate) async fn run_syncer(self: Arc<Self>, mut closed: watch::Receiver<bool>) {
        // With `always`, clients ask for syncs; marks are still written once a second.
        let every = match self.fsync {
            Fsync::Interval(interval) => interval,
            Fsync::Always => Duration::from_secs(1),
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.wanted.notified(), if self.fsync == Fsync::Always => {}
                _ = closed.changed() => break,
            }
            let _ = self.sync().await;
        }
        let _ = self.sync().await;
    }

    /// Bytes each partition's journal takes on disk.
    pub(crate) fn disk_bytes(&self) -> Vec<u64> {
        self.logs
            .iter()
            .map(|log| {
                log.lock()
                    .expect("journal lock is never poisoned")
                    .disk_bytes()
            })
            .collect()
    }
}

/// Reads every partition folder an earlier run left (whatever the partition count was
/// then); returns what is unacknowledged and the first sequence number the new journal
/// may use (above every old one, so old and new segment names never meet).
fn recover(dir: &Path, partitions: usize) -> std::io::Result<(Recovery, u64)> {
    let mut recovery = Recovery::default();
    let mut next_seq = 1;
    let mut dirs: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let partition = name.strip_prefix("partition-")?.parse().ok()?;
            Some((partition, entry.path()))
        })
        .collect();
    dirs.sort();
    let mut routes: Vec<Arc<Route>> = Vec::new();
    for (index, partition) in dirs {
        let mark = log::read_mark(&partition);
        let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(&partition)?
            .filter_map(Result::ok)
            .filter_map(|entry| Some((log::segment_first(&entry.path())?, entry.path())))
            .collect();
        segments.sort();
        let mut recovered_seqs = Vec::new();
        let mut attempts: std::collections::HashMap<u64, u16> = std::collections::HashMap::new();
        for (first, path) in segments {
            next_seq = next_seq.max(first + 1);
            let scan = record::scan(&Bytes::from(std::fs::read(&path)?));
            recovery.corrupt += scan.corrupt;
            for record in scan.records {
                next_seq = next_seq.max(record.seq + 1);
                if record.seq >= mark {
                    recovered_seqs.push(record.seq);
                    recovery.events.push(event(record, &mut routes));
                }
            }
            for (seq, count) in scan.attempts {
                let known = attempts.entry(seq).or_default();
                *known = (*known).max(count);
            }
            recovery.old_files.push(path);
        }
        // The delivery budget spent before the restart stays spent.
        let recovered = recovery.events.len() - recovered_seqs.len();
        for (event, seq) in recovery.events[recovered..].iter_mut().zip(&recovered_seqs) {
            if let Some(&count) = attempts.get(seq) {
                event.attempts = count;
            }
        }
        // A folder the new partition count has no use for goes as a whole.
        if index >= partitions {
            recovery.old_dirs.push(partition);
        }
    }
    Ok((recovery, next_seq))
}

/// The queued event a record was made from (its routing shared with the other records of
/// the same method and encoding, as a client stream's events share theirs).
fn event(record: record::Record, routes: &mut Vec<Arc<Route>>) -> Event {
    let route = match routes
        .iter()
        .find(|r| r.path == record.path && r.encoding == record.encoding)
    {
        Some(route) => route.clone(),
        None => {
            let method = crate::grpc::protocol::lookup(&record.path);
            let route = Arc::new(Route {
                protocol: method.map_or("other", |m| m.protocol),
                alone: method.is_some_and(|m| m.sends_alone()),
                path: record.path,
                encoding: record.encoding,
            });
            routes.push(route.clone());
            route
        }
    };
    Event {
        route,
        key: record.key,
        origin: record.origin,
        framed: record.framed,
        run: None,
        seq: None,
        attempts: 0,
        unanswered_at: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Overflow, Queue, QueueConfig};

    fn queue_config(partitions: usize) -> QueueConfig {
        QueueConfig {
            partitions,
            capacity: 1000,
            max_bytes: 1 << 20,
            batch_size: 4,
            flush_interval: Duration::from_millis(10),
            overflow: Overflow::Reject,
            overflow_wait: Duration::ZERO,
            in_flight: 1,
        }
    }

    fn journal_config(dir: &Path) -> JournalConfig {
        JournalConfig {
            dir: dir.to_path_buf(),
            fsync: Fsync::Interval(Duration::from_secs(1)),
            max_bytes: 1 << 20,
        }
    }

    fn event(n: u32, key: Option<&str>) -> Event {
        let message = format!("segment-{n}");
        let mut framed = vec![0];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message.as_bytes());
        Event {
            key: key.map(Arc::from),
            ..Event::segment(Bytes::from(framed))
        }
    }

    fn messages(events: &[Event]) -> Vec<String> {
        let mut names: Vec<String> = events
            .iter()
            .map(|e| String::from_utf8(e.framed[5..].to_vec()).unwrap())
            .collect();
        names.sort();
        names
    }

    async fn open(dir: &Path, partitions: usize) -> (Arc<Queue>, Vec<String>, u64) {
        let (journal, mut recovery) =
            Journal::open(&journal_config(dir), partitions, JournalCounters::default()).unwrap();
        let queue = Arc::new(Queue::with_journal(
            queue_config(partitions),
            Arc::new(journal),
        ));
        let recovered = messages(&recovery.events);
        let corrupt = recovery.corrupt;
        for event in std::mem::take(&mut recovery.events) {
            queue.restore(event);
        }
        queue.journal().unwrap().forget_old(recovery).await.unwrap();
        (queue, recovered, corrupt)
    }

    #[tokio::test]
    async fn what_was_not_acknowledged_comes_back_after_a_restart_whatever_the_partitions() {
        let dir = log::tests::tempdir("restart");
        let (queue, recovered, _) = open(&dir, 2).await;
        assert!(recovered.is_empty());
        for n in 0..10 {
            queue.offer(event(n, None));
        }
        // One batch per partition reaches an upstream; the rest is still queued.
        let (_close, closed) = tokio::sync::watch::channel(false);
        let mut sent = Vec::new();
        for partition in 0..2 {
            let batch = queue.next_batch(partition, &closed).await.unwrap();
            sent.extend(messages(&batch.events));
            queue.forwarded(batch);
        }
        queue.journal().unwrap().sync().await.unwrap();
        drop(queue);

        // A crash and a start with three partitions.
        let (queue, recovered, corrupt) = open(&dir, 3).await;
        let mut expected: Vec<String> = (0..10).map(|n| format!("segment-{n}")).collect();
        expected.retain(|m| !sent.contains(m));
        expected.sort();
        assert_eq!(recovered, expected);
        assert_eq!(corrupt, 0);
        assert_eq!(queue.totals().pending, expected.len() as u64);

        // Journaled again: a second crash brings back the same, once.
        drop(queue);
        let (_, again, _) = open(&dir, 1).await;
        assert_eq!(again, expected);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("partition-0")],
            "old partitions are gone"
        );
    }

    #[tokio::test]
    async fn the_delivery_budget_spent_before_a_restart_stays_spent() {
        let dir = log::tests::tempdir("attempts");
        let (queue, _, _) = open(&dir, 1).await;
        for n in 0..4 {
            queue.offer(event(n, None));
        }
        let (_close, closed) = tokio::sync::watch::channel(false);
        // Two calls that may have delivered the batch failed, one after the other.
        for _ in 0..2 {
            let mut batch = queue.next_batch(0, &closed).await.unwrap();
            for event in &mut batch.events {
                event.attempts += 1;
            }
            queue.put_back(batch, true);
        }
        queue.journal().unwrap().sync().await.unwrap();
        drop(queue);

        async fn attempts(queue: &Queue) -> Vec<u16> {
            let (_close, closed) = tokio::sync::watch::channel(false);
            let batch = queue.next_batch(0, &closed).await.unwrap();
            let attempts: Vec<u16> = batch.events.iter().map(|e| e.attempts).collect();
            queue.put_back(batch, false);
            attempts
        }
        let (queue, recovered, _) = open(&dir, 1).await;
        assert_eq!(recovered.len(), 4);
        assert_eq!(attempts(&queue).await, [2, 2, 2, 2]);
        // Journaled again with the event: a second restart keeps the count too.
        queue.journal().unwrap().sync().await.unwrap();
        drop(queue);
        let (queue, _, _) = open(&dir, 1).await;
        assert_eq!(attempts(&queue).await, [2, 2, 2, 2]);
    }

    #[tokio::test]
    async fn a_damaged_record_is_skipped_and_counted_and_the_rest_recovered() {
        let dir = log::tests::tempdir("damaged");
        let (queue, _, _) = open(&dir, 1).await;
        for n in 0..3 {
            queue.offer(event(n, Some("svc")));
        }
        queue.journal().unwrap().sync().await.unwrap();
        drop(queue);
        let segment = std::fs::read_dir(dir.join("partition-0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| log::segment_first(p).is_some())
            .unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let at = bytes.windows(9).position(|w| w == b"segment-1").unwrap();
        bytes[at] ^= 0x55;
        std::fs::write(&segment, bytes).unwrap();

        let (_, recovered, corrupt) = open(&dir, 1).await;
        assert_eq!(recovered, vec!["segment-0", "segment-2"]);
        assert_eq!(corrupt, 1);
    }

    /// A one-partition queue whose journal has room for three records of [`event`].
    fn queue_with_room_for_three(name: &str) -> (Queue, JournalCounters) {
        let dir = log::tests::tempdir(name);
        let record = record::Parts::of_event(&event(0, None)).encoded_len() as u64;
        let counters = JournalCounters::default();
        let (journal, _) = Journal::open(
            &JournalConfig {
                max_bytes: 3 * record,
                ..journal_config(&dir)
            },
            1,
            counters.clone(),
        )
        .unwrap();
        (
            Queue::with_journal(queue_config(1), Arc::new(journal)),
            counters,
        )
    }

    #[tokio::test]
    async fn a_full_journal_is_a_full_queue() {
        let (queue, counters) = queue_with_room_for_three("full");
        let outcomes: Vec<_> = (0..4).map(|n| queue.offer(event(n, None))).collect();
        use crate::queue::Offered::{Queued, Rejected};
        assert_eq!(outcomes, vec![Queued, Queued, Queued, Rejected]);
        assert!(queue.totals().balances());
        assert_eq!(counters.refused.get(), 1);
    }

    #[tokio::test]
    async fn events_offered_together_are_each_journaled_and_a_full_journal_stops_them() {
        let (queue, counters) = queue_with_room_for_three("together");
        let mut events: Vec<Event> = (0..4)
            .map(|n| Event {
                run: Some(0),
                ..event(n, None)
            })
            .collect();
        assert_eq!(queue.try_offer_prefix(&mut events, &[0; 4]), 3);
        assert_eq!(events.len(), 1, "the one the journal had no room for stays");
        assert_eq!(counters.refused.get(), 1);
        let (_close, closed) = tokio::sync::watch::channel(true);
        let batch = queue.next_batch(0, &closed).await.unwrap();
        let seqs: Vec<_> = batch.events.iter().map(|e| e.seq).collect();
        assert!(seqs.iter().all(Option::is_some), "{seqs:?}");
        assert!(queue.totals().balances());
    }
}
