//! What the proxy sends upstream: one buffer, or a batch of messages gathered from the
//! buffers they arrived in. A gathered batch is not joined into one buffer: the driven
//! connections ([`crate::upstream::driven`]) write its parts, sliced into DATA frames,
//! straight from the clients' read buffers.

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

/// A request body's data sent upstream.
#[derive(Clone, Debug)]
pub enum Payload {
    Contiguous(Bytes),
    Gathered(Gathered),
}

/// How far an upstream call's request got: it left for the upstream (the stream was opened
/// on a connection and its body began), when its bytes last moved (the upstream's
/// flow-control windows let some out), and when the upstream took the whole of it. A call
/// that failed before it left reached nobody; one whose data keeps moving is progressing
/// however slowly; one whose request was taken is in OAP's hands.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    sent: AtomicBool,
    /// Nanoseconds from `started` to the last time bytes were written.
    moved: AtomicU64,
    taken: OnceLock<Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            sent: AtomicBool::new(false),
            moved: AtomicU64::new(0),
            taken: OnceLock::new(),
        }
    }
}

impl Progress {
    pub fn sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }

    pub(crate) fn set_sent(&self) {
        self.sent.store(true, Ordering::Relaxed);
    }

    /// When the call began, or its data last moved.
    pub fn moved(&self) -> Instant {
        self.started + Duration::from_nanos(self.moved.load(Ordering::Relaxed))
    }

    /// The call was refused unprocessed (a stream the upstream refused, or beyond its
    /// GOAWAY): it reached nobody after all.
    pub(crate) fn set_unsent(&self) {
        self.sent.store(false, Ordering::Relaxed);
    }

    /// The upstream was handed the whole request.
    pub(crate) fn set_taken(&self) {
        let _ = self.taken.set(Instant::now());
    }

    pub(crate) fn set_moved(&self) {
        let since = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.moved.store(since, Ordering::Relaxed);
    }

    /// When the upstream took the whole request.
    pub fn taken(&self) -> Option<Instant> {
        self.taken.get().copied()
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Payload::Contiguous(bytes)
    }
}

/// Parts read in order, shared: a retry of the same batch clones a pointer.
#[derive(Clone, Debug)]
pub struct Gathered {
    parts: Arc<[Bytes]>,
    /// The part being read and how far into it.
    index: usize,
    offset: usize,
    remaining: usize,
}

impl Gathered {
    pub fn new(parts: Vec<Bytes>) -> Gathered {
        Gathered::of(parts.into_iter().filter(|p| !p.is_empty()).collect())
    }

    fn of(parts: Arc<[Bytes]>) -> Gathered {
        let remaining = parts.iter().map(Bytes::len).sum();
        Gathered {
            parts,
            index: 0,
            offset: 0,
            remaining,
        }
    }
}

impl Gathered {
    /// Parts lent, in order (none empty), to be given back with [`Gathered::give_back`].
    pub(crate) fn lend(parts: impl Iterator<Item = Bytes>) -> Gathered {
        let lent = Gathered::of(parts.collect());
        debug_assert!(
            lent.parts.iter().all(|p| !p.is_empty()),
            "lent parts are messages"
        );
        lent
    }

    /// Gives the parts back to where they were lent from: moved when no copy of this
    /// batch is left anywhere (a connection may still hold one for a moment), else
    /// shared.
    pub(crate) fn give_back<'a>(mut self, owners: impl Iterator<Item = &'a mut Bytes>) {
        match Arc::get_mut(&mut self.parts) {
            Some(parts) => {
                for (owner, part) in owners.zip(parts.iter_mut()) {
                    *owner = std::mem::take(part);
                }
            }
            None => {
                for (owner, part) in owners.zip(self.parts.iter()) {
                    *owner = part.clone();
                }
            }
        }
    }

    /// The next `n` bytes, as a span of the parts (one pointer to them, no copy).
    fn take_span(&mut self, n: usize) -> Span {
        let span = Span::Parts {
            parts: self.parts.clone(),
            index: self.index,
            offset: self.offset,
            len: n,
        };
        self.advance(n);
        span
    }
}

/// Bytes taken from a payload for one DATA frame: a buffer, or a run of a gathered batch's
/// parts held by one pointer to the batch (not a reference count per message).
#[derive(Clone, Debug)]
pub(crate) enum Span {
    One(Bytes),
    Parts {
        parts: Arc<[Bytes]>,
        /// Where the run starts: a part, and an offset into it.
        index: usize,
        offset: usize,
        len: usize,
    },
}

impl Span {
    pub fn len(&self) -> usize {
        match self {
            Span::One(bytes) => bytes.len(),
            Span::Parts { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the span's buffers after its first `skip` bytes to `out`, while `out` has
    /// fewer than `max`.
    pub fn slices<'a>(&'a self, mut skip: usize, out: &mut Vec<IoSlice<'a>>, max: usize) {
        match self {
            Span::One(bytes) => {
                if skip < bytes.len() && out.len() < max {
                    out.push(IoSlice::new(&bytes[skip..]));
                }
            }
            Span::Parts {
                parts,
                index,
                offset,
                len,
            } => {
                let mut left = *len;
                let mut offset = *offset;
                for part in &parts[*index..] {
                    if left == 0 || out.len() == max {
                        return;
                    }
                    let take = (part.len() - offset).min(left);
                    left -= take;
                    if skip >= take {
                        skip -= take;
                    } else {
                        out.push(IoSlice::new(&part[offset + skip..offset + take]));
                        skip = 0;
                    }
                    offset = 0;
                }
            }
        }
    }
}

impl Buf for Gathered {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts
            .get(self.index)
            .map_or(&[], |part| &part[self.offset..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advanced past the end");
        self.remaining -= cnt;
        while cnt > 0 {
            let left = self.parts[self.index].len() - self.offset;
            if cnt < left {
                self.offset += cnt;
                return;
            }
            cnt -= left;
            self.index += 1;
            self.offset = 0;
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        let mut offset = self.offset;
        for part in self.parts.iter().skip(self.index) {
            if filled == dst.len() {
                break;
            }
            dst[filled] = IoSlice::new(&part[offset..]);
            offset = 0;
            filled += 1;
        }
        filled
    }
}

impl Payload {
    /// The next `n` bytes, from the buffers they are in (no copy).
    pub(crate) fn take_span(&mut self, n: usize) -> Span {
        match self {
            Payload::Contiguous(b) => Span::One(b.split_to(n)),
            Payload::Gathered(g) => g.take_span(n),
        }
    }
}

impl Buf for Payload {
    fn remaining(&self) -> usize {
        match self {
            Payload::Contiguous(b) => b.remaining(),
            Payload::Gathered(g) => g.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Payload::Contiguous(b) => b.chunk(),
            Payload::Gathered(g) => g.chunk(),
        }
    }

    fn advance(&mut self, cnt: usize) {
        match self {
            Payload::Contiguous(b) => b.advance(cnt),
            Payload::Gathered(g) => g.advance(cnt),
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        match self {
            Payload::Contiguous(b) => b.chunks_vectored(dst),
            Payload::Gathered(g) => g.chunks_vectored(dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"defg"),
            Bytes::from_static(b"h"),
        ]
    }

    #[test]
    fn reads_back_the_parts_in_order_across_any_advances() {
        for step in 1..=8 {
            let mut gathered = Gathered::new(parts());
            let mut read = Vec::new();
            while gathered.has_remaining() {
                let n = step.min(gathered.chunk().len());
                read.extend_from_slice(&gathered.chunk()[..n]);
                gathered.advance(n);
            }
            assert_eq!(read, b"abcdefgh", "step {step}");
        }
    }

    /// What a span's slices read, after `skip` bytes, `max` slices at a time.
    fn spanned(span: &Span, skip: usize, max: usize) -> Vec<u8> {
        let mut read = Vec::new();
        let mut at = skip;
        while at < span.len() {
            let mut slices = Vec::new();
            span.slices(at, &mut slices, max);
            assert!(!slices.is_empty() && slices.len() <= max);
            for slice in &slices {
                assert!(!slice.is_empty());
                read.extend_from_slice(slice);
                at += slice.len();
            }
        }
        read
    }

    #[test]
    fn spans_read_the_parts_in_order_across_any_steps_skips_and_room() {
        for step in 1..=8 {
            for max in [1, 2, 8] {
                let mut payload = Payload::Gathered(Gathered::new(parts()));
                let mut read = Vec::new();
                while payload.has_remaining() {
                    let n = step.min(payload.remaining());
                    let span = payload.take_span(n);
                    assert_eq!(span.len(), n);
                    for skip in 0..n {
                        let tail = spanned(&span, skip, max);
                        assert_eq!(tail, spanned(&span, 0, max)[skip..]);
                    }
                    read.extend(spanned(&span, 0, max));
                }
                assert_eq!(read, b"abcdefgh", "step {step}, {max} slices");
            }
        }
        let mut one = Payload::Contiguous(Bytes::from_static(b"xyz"));
        assert_eq!(spanned(&one.take_span(2), 0, 1), b"xy");
        assert_eq!(spanned(&one.take_span(1), 0, 1), b"z");
        assert_eq!(one.remaining(), 0);
    }

    #[test]
    fn lent_parts_come_back_moved_or_shared() {
        let mut owners: Vec<Bytes> = parts().into_iter().filter(|p| !p.is_empty()).collect();
        let original = owners.clone();
        let lent = Gathered::lend(owners.iter_mut().map(std::mem::take));
        assert!(owners.iter().all(Bytes::is_empty));
        lent.give_back(owners.iter_mut());
        assert_eq!(owners, original);
        // A copy still held elsewhere (a connection's): the parts are shared back.
        let lent = Gathered::lend(owners.iter_mut().map(std::mem::take));
        let held = Payload::Gathered(lent.clone());
        lent.give_back(owners.iter_mut());
        assert_eq!(owners, original);
        assert_eq!(held.remaining(), 8);
    }

    #[test]
    fn vectored_reads_start_where_the_reader_is_and_respect_the_room_given() {
        let mut gathered = Gathered::new(parts());
        gathered.advance(4);
        let mut slices = [IoSlice::new(&[]); 8];
        let n = gathered.chunks_vectored(&mut slices);
        let seen: Vec<&[u8]> = slices[..n].iter().map(|s| &s[..]).collect();
        assert_eq!(seen, [&b"efg"[..], b"h"]);
        let mut one = [IoSlice::new(&[]); 1];
        assert_eq!(gathered.chunks_vectored(&mut one), 1);
        assert_eq!(&one[0][..], b"efg");
        // A retry starts from the beginning: clones share the parts, not the position.
        let fresh = Gathered::new(parts());
        assert_eq!(fresh.remaining(), 8);
        assert_eq!(gathered.remaining(), 4);
    }
}
