//! One journal record: a queued event as it lies on disk, and finding the records in a
//! segment's bytes again, past damage.
//!
//! ```text
//! magic "SKLJ" | body length u32 LE | CRC-32 of the body u32 LE | body
//! body: seq u64 | path (u16 length) | encoding (u8 length, 0 = none)
//!       | key (u32 length, u32::MAX = none) | origin (same) | the framed message (rest)
//! ```
//!
//! An event's failed delivery attempts (see [`crate::upstream::delivery`]) are recorded
//! beside it, without rewriting it, in records of their own:
//!
//! ```text
//! magic "SKLA" | body length u32 LE (10) | CRC-32 of the body u32 LE | seq u64 | attempts u16
//! ```
//!
//! The magic lets a reader find the next record after a damaged one; the checksum tells a
//! damaged record (bit rot, a torn write) from a good one.

use std::sync::Arc;

use bytes::Bytes;

pub(crate) const MAGIC: [u8; 4] = *b"SKLJ";
/// The magic of an attempts record.
pub(crate) const ATTEMPTS_MAGIC: [u8; 4] = *b"SKLA";
const HEADER: usize = 12;
const ATTEMPTS_BODY: usize = 10;
/// Bytes an attempts record takes on disk.
pub(crate) const ATTEMPTS_LEN: usize = HEADER + ATTEMPTS_BODY;
const NONE: u32 = u32::MAX;
/// A body longer than this is not believed (the proxy's messages are at most a few MiB).
const MAX_BODY: usize = 256 << 20;

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub seq: u64,
    pub path: String,
    pub encoding: Option<String>,
    pub key: Option<Arc<str>>,
    pub origin: Option<Bytes>,
    pub framed: Bytes,
}

impl Record {
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn parts(&self) -> Parts<'_> {
        Parts {
            path: &self.path,
            encoding: self.encoding.as_deref(),
            key: self.key.as_deref(),
            origin: self.origin.as_deref(),
            framed: &self.framed,
        }
    }
}

/// What a record is written from: a queued event's parts, or a record read back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parts<'a> {
    pub path: &'a str,
    pub encoding: Option<&'a str>,
    pub key: Option<&'a str>,
    pub origin: Option<&'a [u8]>,
    pub framed: &'a [u8],
}

impl<'a> Parts<'a> {
    pub(crate) fn of_event(event: &'a crate::queue::event::Event) -> Parts<'a> {
        Parts {
            path: &event.route.path,
            encoding: event.route.encoding.as_deref(),
            key: event.key.as_deref(),
            origin: event.origin.as_deref(),
            framed: &event.framed,
        }
    }

    /// Bytes the record takes on disk.
    pub(crate) fn encoded_len(&self) -> usize {
        HEADER
            + 8
            + 2
            + self.path.len()
            + 1
            + self.encoding.map_or(0, str::len)
            + 4
            + self.key.map_or(0, str::len)
            + 4
            + self.origin.map_or(0, <[u8]>::len)
            + self.framed.len()
    }

    /// Appends the record, numbered `seq`, to `out`. Parts too long for their length
    /// field are cut short (paths of 64 KiB or encodings of 256 bytes do not occur: HTTP/2
    /// header limits are far lower).
    pub fn encode(&self, seq: u64, out: &mut Vec<u8>) {
        let Parts {
            path,
            encoding,
            key,
            origin,
            framed,
        } = *self;
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&seq.to_le_bytes());
        let path = &path.as_bytes()[..path.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(path.len() as u16).to_le_bytes());
        out.extend_from_slice(path);
        let encoding = encoding.map_or(&[][..], |e| &e.as_bytes()[..e.len().min(255)]);
        out.push(encoding.len() as u8);
        out.extend_from_slice(encoding);
        for part in [key.map(str::as_bytes), origin] {
            match part {
                Some(bytes) => {
                    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    out.extend_from_slice(bytes);
                }
                None => out.extend_from_slice(&NONE.to_le_bytes()),
            }
        }
        out.extend_from_slice(framed);
        let body = start + HEADER;
        let len = (out.len() - body) as u32;
        let crc = crc32fast::hash(&out[body..]);
        out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
        out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Appends a record saying that the event numbered `seq` has `attempts` failed calls that
/// may have delivered it.
pub(crate) fn encode_attempts(seq: u64, attempts: u16, out: &mut Vec<u8>) {
    let mut body = [0u8; ATTEMPTS_BODY];
    body[..8].copy_from_slice(&seq.to_le_bytes());
    body[8..].copy_from_slice(&attempts.to_le_bytes());
    out.extend_from_slice(&ATTEMPTS_MAGIC);
    out.extend_from_slice(&(ATTEMPTS_BODY as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// A good record found in a segment.
enum Found {
    Event(Record),
    Attempts { seq: u64, attempts: u16 },
}

/// What reading a segment found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub records: Vec<Record>,
    /// Failed delivery attempts recorded for events, in the order written: (seq, attempts).
    pub attempts: Vec<(u64, u16)>,
    /// Damaged stretches skipped, each counted once.
    pub corrupt: u64,
    /// Bytes up to the end of the last good record; beyond it only a torn write was found
    /// (a record cut short by a crash), which the writer may cut off.
    pub good_len: usize,
}

/// Reads every good record of a segment's bytes.
pub(crate) fn scan(bytes: &Bytes) -> Scan {
    let mut scan = Scan::default();
    let mut at = 0;
    let mut damaged = false;
    while at < bytes.len() {
        match record_at(bytes, at) {
            Some((found, next)) => {
                match found {
                    Found::Event(record) => scan.records.push(record),
                    Found::Attempts { seq, attempts } => scan.attempts.push((seq, attempts)),
                }
                at = next;
                scan.good_len = at;
                damaged = false;
            }
            None => {
                // Not a good record here: look for the next one that is.
                match next_good(bytes, at + 1) {
                    Some(next) => {
                        if !damaged {
                            scan.corrupt += 1;
                        }
                        damaged = true;
                        at = next;
                    }
                    // Nothing good follows: a torn tail if it could be the start of a
                    // record cut short, else damage.
                    None => {
                        if !torn(&bytes[at..]) {
                            scan.corrupt += 1;
                        }
                        break;
                    }
                }
            }
        }
    }
    scan
}

/// Whether `rest` looks like the beginning of one record the crash cut short.
fn torn(rest: &[u8]) -> bool {
    let known = rest.len().min(4);
    if rest[..known] != MAGIC[..known] && rest[..known] != ATTEMPTS_MAGIC[..known] {
        return false;
    }
    if rest.len() < HEADER {
        return true;
    }
    let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
    rest.len() < HEADER + len && len <= MAX_BODY
}

fn next_good(bytes: &Bytes, from: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER <= bytes.len() {
        let found = bytes[at..]
            .windows(4)
            .position(|w| w == MAGIC || w == ATTEMPTS_MAGIC)?;
        at += found;
        if record_at(bytes, at).is_some() {
            return Some(at);
        }
        at += 1;
    }
    None
}

fn record_at(bytes: &Bytes, at: usize) -> Option<(Found, usize)> {
    let head = bytes.get(at..at + HEADER)?;
    let attempts = head[..4] == ATTEMPTS_MAGIC;
    if head[..4] != MAGIC && !attempts {
        return None;
    }
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[8..12].try_into().ok()?);
    if len > MAX_BODY {
        return None;
    }
    let body_start = at + HEADER;
    let body = bytes.get(body_start..body_start + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    if attempts {
        if len != ATTEMPTS_BODY {
            return None;
        }
        let found = Found::Attempts {
            seq: u64::from_le_bytes(body[..8].try_into().ok()?),
            attempts: u16::from_le_bytes(body[8..10].try_into().ok()?),
        };
        return Some((found, body_start + len));
    }
    let record = parse_body(&bytes.slice(body_start..body_start + len))?;
    Some((Found::Event(record), body_start + len))
}

fn parse_body(body: &Bytes) -> Option<Record> {
    let mut at = 0;
    let mut take = |n: usize| -> Option<Bytes> {
        if at + n > body.len() {
            return None;
        }
        let slice = body.slice(at..at + n);
        at += n;
        Some(slice)
    };
    let seq = u64::from_le_bytes(take(8)?.as_ref().try_into().ok()?);
    let path_len = u16::from_le_bytes(take(2)?.as_ref().try_into().ok()?);
    let path = String::from_utf8(take(usize::from(path_len))?.to_vec()).ok()?;
    let encoding_len = take(1)?[0];
    let encoding = match encoding_len {
        0 => None,
        n => Some(String::from_utf8(take(usize::from(n))?.to_vec()).ok()?),
    };
    let mut optional = || -> Option<Option<Bytes>> {
        let len = u32::from_le_bytes(take(4)?.as_ref().try_into().ok()?);
        Some(if len == NONE {
            None
        } else {
            Some(take(len as usize)?)
        })
    };
    let key = match optional()? {
        Some(key) => Some(Arc::from(std::str::from_utf8(&key).ok()?)),
        None => None,
    };
    let origin = optional()?;
    let framed = body.slice(at..);
    Some(Record {
        seq,
        path,
        encoding,
        key,
        origin,
        framed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, key: Option<&str>) -> Record {
        Record {
            seq,
            path: "/skywalking.v3.MeterReportService/collectBatch".into(),
            encoding: None,
            key: key.map(Arc::from),
            origin: Some(Bytes::from_static(b"\x0a\x03env")),
            framed: Bytes::from(vec![0, 0, 0, 0, 3, 1, 2, 3]),
        }
    }

    fn encoded(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            r.parts().encode(r.seq, &mut out);
        }
        out
    }

    #[test]
    fn records_read_back_as_written_and_their_size_is_known_beforehand() {
        let records = vec![
            record(1, Some("svc\0inst")),
            Record {
                encoding: Some("gzip".into()),
                origin: None,
                ..record(2, None)
            },
        ];
        let bytes = encoded(&records);
        assert_eq!(
            records[0].parts().encoded_len(),
            encoded(&records[..1]).len()
        );
        let scan = scan(&Bytes::from(bytes.clone()));
        assert_eq!(scan.records, records);
        assert_eq!((scan.corrupt, scan.good_len), (0, bytes.len()));
    }

    #[test]
    fn attempts_records_read_back_beside_the_events_they_count() {
        let records: Vec<_> = (1..=2).map(|seq| record(seq, None)).collect();
        let mut bytes = encoded(&records[..1]);
        encode_attempts(1, 2, &mut bytes);
        bytes.extend(encoded(&records[1..]));
        encode_attempts(1, 3, &mut bytes);
        let scan = scan(&Bytes::from(bytes.clone()));
        assert_eq!(scan.records, records);
        assert_eq!(scan.attempts, [(1, 2), (1, 3)]);
        assert_eq!((scan.corrupt, scan.good_len), (0, bytes.len()));
        // Torn in the last attempts record: the rest stands.
        let cut = bytes.len() - 3;
        let torn = super::scan(&Bytes::from(bytes[..cut].to_vec()));
        assert_eq!(torn.attempts, [(1, 2)]);
        assert_eq!(
            (torn.corrupt, torn.good_len),
            (0, bytes.len() - ATTEMPTS_LEN)
        );
    }

    #[test]
    fn a_damaged_record_is_skipped_and_counted_and_the_rest_is_read() {
        let records: Vec<_> = (1..=3).map(|seq| record(seq, Some("k"))).collect();
        let mut bytes = encoded(&records);
        let second = encoded(&records[..1]).len();
        bytes[second + 20] ^= 0xff; // a flipped byte inside the second record's body
        let scan = scan(&Bytes::from(bytes));
        assert_eq!(
            scan.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(scan.corrupt, 1);
    }

    #[test]
    fn a_torn_tail_is_not_damage_but_ends_the_good_part() {
        let records: Vec<_> = (1..=2).map(|seq| record(seq, None)).collect();
        let bytes = encoded(&records);
        let first = encoded(&records[..1]).len();
        for cut in [first + 2, first + 11, bytes.len() - 1] {
            let scan = scan(&Bytes::from(bytes[..cut].to_vec()));
            assert_eq!(scan.records.len(), 1, "cut at {cut}");
            assert_eq!((scan.corrupt, scan.good_len), (0, first), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_damage_never_a_panic() {
        let mut garbage = b"not a journal at all, SKLJ\xff\xff\xff\xff and more".to_vec();
        garbage.extend(encoded(&[record(7, None)]));
        garbage.extend_from_slice(b"trailing junk");
        let scan = scan(&Bytes::from(garbage));
        assert_eq!(
            scan.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![7]
        );
        assert_eq!(scan.corrupt, 2);
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = super::scan(&Bytes::from(bytes));
        }
    }
}
