//! One partition's journal: an append-only run of segment files named by the sequence
//! number of their first record, and the acknowledgement mark (every record below it was
//! acknowledged by an upstream or given up on).
//!
//! Records are numbered in the order they are appended, one after another, so the mark
//! only has to remember the acknowledgements that arrived ahead of it (a few batches in
//! flight). A segment whose records are all below the mark is deleted; the mark itself is
//! written to disk at each sync, so a restart replays only what was not acknowledged, plus
//! at most the acknowledgements of one sync interval.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record;
use crate::queue::event::Event;

/// Why an event could not be appended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppendError {
    #[error("the journal holds its --queue-max-bytes already")]
    Full,
    #[error("writing the journal: {0}")]
    Io(#[from] io::Error),
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    first: u64,
    bytes: u64,
}

/// What one sync has to do for a partition, taken under its lock and done outside it.
pub(crate) struct SyncWork {
    pub files: Vec<Arc<File>>,
    /// The acknowledgement mark to record, when it moved.
    pub mark: Option<(PathBuf, u64)>,
}

/// One partition's journal.
pub(crate) struct PartitionLog {
    dir: PathBuf,
    segment_bytes: u64,
    max_bytes: u64,
    active: Segment,
    /// Full segments, oldest first.
    closed: VecDeque<Segment>,
    next_seq: u64,
    /// Every record below this is acknowledged.
    mark: u64,
    /// Acknowledged records above the mark.
    ahead: BTreeSet<u64>,
    mark_written: u64,
    disk_bytes: u64,
    /// Files written since the last sync.
    unsynced: Vec<Arc<File>>,
    /// Records appended but not yet written to the active segment: written in one go when
    /// a client is about to be acknowledged ([`PartitionLog::write_out`]), so a stream's
    /// messages cost one write, not one each. Kept until a write succeeds.
    buffer: Vec<u8>,
    /// Bytes of the active segment in its file (the rest is in `buffer`).
    written: u64,
}

/// The name of a segment starting at `first`.
pub(crate) fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// The first sequence number a file name says its segment starts at.
pub(crate) fn segment_first(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

pub(crate) const MARK_FILE: &str = "acknowledged";

/// Reads a partition's acknowledgement mark; 0 when there is none or it is damaged.
pub(crate) fn read_mark(dir: &Path) -> u64 {
    let Ok(bytes) = std::fs::read(dir.join(MARK_FILE)) else {
        return 0;
    };
    if bytes.len() != 12 || crc32fast::hash(&bytes[..8]).to_le_bytes() != bytes[8..] {
        return 0;
    }
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// Records the mark durably: written beside, synced, renamed over the old one.
pub(crate) fn write_mark(dir: &Path, mark: u64) -> io::Result<()> {
    let mut bytes = mark.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    let temporary = dir.join(format!("{MARK_FILE}.new"));
    let mut file = File::create(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_data()?;
    std::fs::rename(&temporary, dir.join(MARK_FILE))
}

fn open_segment(dir: &Path, first: u64) -> io::Result<Segment> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let bytes = file.metadata()?.len();
    Ok(Segment {
        path,
        file: Arc::new(file),
        first,
        bytes,
    })
}

impl PartitionLog {
    /// A journal in `dir` (created if missing) whose first record will be `first_seq`.
    /// `dir` holds no segments of its own yet (recovery moved them out).
    pub(crate) fn create(
        dir: PathBuf,
        first_seq: u64,
        segment_bytes: u64,
        max_bytes: u64,
    ) -> io::Result<PartitionLog> {
        std::fs::create_dir_all(&dir)?;
        let active = open_segment(&dir, first_seq)?;
        Ok(PartitionLog {
            disk_bytes: active.bytes,
            unsynced: vec![active.file.clone()],
            dir,
            segment_bytes,
            max_bytes,
            active,
            closed: VecDeque::new(),
            next_seq: first_seq,
            mark: first_seq,
            ahead: BTreeSet::new(),
            mark_written: 0,
            buffer: Vec::new(),
            written: 0,
        })
    }

    /// Appends `event` and returns its sequence number.
    pub(crate) fn append(&mut self, event: &Event) -> Result<u64, AppendError> {
        let parts = record::Parts::of_event(event);
        let len = parts.encoded_len() as u64;
        if self.disk_bytes + len > self.max_bytes {
            return Err(AppendError::Full);
        }
        if self.active.bytes > 0 && self.active.bytes + len > self.segment_bytes {
            self.write_out()?;
            self.rotate()?;
        }
        let seq = self.next_seq;
        parts.encode(seq, &mut self.buffer);
        self.active.bytes += len;
        self.disk_bytes += len;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Records that the event numbered `seq` has `attempts` failed calls that may have
    /// delivered it. It goes in the active segment, however full (a segment is named by
    /// its first event, and no event may have come since the last one), and counts
    /// against the journal's room like any record.
    pub(crate) fn append_attempts(&mut self, seq: u64, attempts: u16) -> Result<(), AppendError> {
        let len = record::ATTEMPTS_LEN as u64;
        if self.disk_bytes + len > self.max_bytes {
            return Err(AppendError::Full);
        }
        record::encode_attempts(seq, attempts, &mut self.buffer);
        self.active.bytes += len;
        self.disk_bytes += len;
        Ok(())
    }

    /// Writes the appended records to the active segment's file (the kernel's page cache:
    /// from there they survive a crash of the process). On failure (a full or failing
    /// disk) a part-written tail is cut off again and the records stay to be written by
    /// the next call.
    pub(crate) fn write_out(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Err(err) = (&*self.active.file).write_all(&self.buffer) {
            let _ = self.active.file.set_len(self.written);
            return Err(err);
        }
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        if !self
            .unsynced
            .last()
            .is_some_and(|f| Arc::ptr_eq(f, &self.active.file))
        {
            self.unsynced.push(self.active.file.clone());
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = open_segment(&self.dir, self.next_seq)?;
        self.written = next.bytes;
        let full = std::mem::replace(&mut self.active, next);
        self.closed.push_back(full);
        Ok(())
    }

    /// The record `seq` needs keeping no longer: the mark moves past every record
    /// acknowledged so far in one run, and segments wholly below it are deleted.
    pub fn done(&mut self, seq: u64) {
        if seq < self.mark || seq >= self.next_seq {
            return;
        }
        if seq == self.mark {
            self.mark += 1;
            while self.ahead.remove(&self.mark) {
                self.mark += 1;
            }
        } else {
            self.ahead.insert(seq);
        }
        while let Some(oldest) = self.closed.front() {
            let end = self.closed.get(1).map_or(self.active.first, |s| s.first);
            if end > self.mark {
                break;
            }
            let _ = std::fs::remove_file(&oldest.path);
            self.disk_bytes -= oldest.bytes;
            self.closed.pop_front();
        }
    }

    /// Bytes the journal's segments take.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// What a sync has to do now (the records not yet written are written first).
    pub(crate) fn take_sync_work(&mut self) -> io::Result<SyncWork> {
        self.write_out()?;
        let mark = (self.mark != self.mark_written).then(|| {
            self.mark_written = self.mark;
            (self.dir.clone(), self.mark)
        });
        Ok(SyncWork {
            files: std::mem::take(&mut self.unsynced),
            mark,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(size: usize) -> Event {
        Event::segment(Bytes::from(vec![7; size]))
    }

    fn segments(dir: &Path) -> Vec<u64> {
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| segment_first(&e.unwrap().path()))
            .collect();
        firsts.sort();
        firsts
    }

    #[test]
    fn segments_roll_over_and_go_once_every_record_in_them_is_acknowledged() {
        let dir = tempdir("roll");
        let record = record::Parts::of_event(&event(100)).encoded_len();
        let mut log = PartitionLog::create(dir.clone(), 10, 3 * record as u64, 1 << 20).unwrap();
        let seqs: Vec<u64> = (0..7).map(|_| log.append(&event(100)).unwrap()).collect();
        log.write_out().unwrap();
        assert_eq!(seqs, (10..17).collect::<Vec<_>>());
        assert_eq!(
            segments(&dir),
            vec![10, 13, 16],
            "three records per segment"
        );

        // Acknowledged out of order: nothing goes until the first segment is complete.
        for seq in [11, 12, 14] {
            log.done(seq);
        }
        assert_eq!(segments(&dir), vec![10, 13, 16]);
        log.done(10);
        assert_eq!(segments(&dir), vec![13, 16]);
        log.done(13);
        log.done(15);
        assert_eq!(segments(&dir), vec![16], "the active segment stays");
        assert_eq!(log.disk_bytes(), record as u64);
        let work = log.take_sync_work().unwrap();
        assert_eq!(work.mark.map(|(_, m)| m), Some(16));
        write_mark(&dir, 16).unwrap();
        assert_eq!(read_mark(&dir), 16);
    }

    #[test]
    fn the_byte_cap_refuses_what_does_not_fit() {
        let dir = tempdir("cap");
        let record = record::Parts::of_event(&event(100)).encoded_len();
        let mut log = PartitionLog::create(dir, 0, 1 << 20, 2 * record as u64).unwrap();
        log.append(&event(100)).unwrap();
        log.append(&event(100)).unwrap();
        assert!(matches!(log.append(&event(100)), Err(AppendError::Full)));
        log.done(0);
        assert!(
            matches!(log.append(&event(100)), Err(AppendError::Full)),
            "the active segment's space comes back only when it is deleted"
        );
    }

    pub(crate) fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "skylift-journal-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
