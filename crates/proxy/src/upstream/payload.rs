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
        let parts: Arc<[Bytes]> = parts.into_iter().filter(|p| !p.is_empty()).collect();
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
    /// The next `n` bytes, as slices of the parts (no copy), handed to `part` in order.
    fn take_parts(&mut self, mut n: usize, part: &mut impl FnMut(Bytes)) {
        assert!(n <= self.remaining, "took past the end");
        self.remaining -= n;
        while n > 0 {
            let current = &self.parts[self.index];
            let end = current.len().min(self.offset + n);
            part(current.slice(self.offset..end));
            n -= end - self.offset;
            if end == current.len() {
                self.index += 1;
                self.offset = 0;
            } else {
                self.offset = end;
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
    /// The next `n` bytes as slices of the buffers they are in (no copy), handed to `part`
    /// in order.
    pub(crate) fn take_parts(&mut self, n: usize, mut part: impl FnMut(Bytes)) {
        match self {
            Payload::Contiguous(b) => {
                if n > 0 {
                    part(b.split_to(n));
                }
            }
            Payload::Gathered(g) => g.take_parts(n, &mut part),
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

    #[test]
    fn taking_slices_reads_the_parts_in_order_across_any_steps() {
        for step in 1..=8 {
            let mut payload = Payload::Gathered(Gathered::new(parts()));
            let mut read = Vec::new();
            while payload.has_remaining() {
                let n = step.min(payload.remaining());
                let mut slices = 0;
                payload.take_parts(n, |bytes| {
                    assert!(!bytes.is_empty());
                    slices += 1;
                    read.extend_from_slice(&bytes);
                });
                assert!(slices >= 1);
            }
            assert_eq!(read, b"abcdefgh", "step {step}");
        }
        let mut one = Payload::Contiguous(Bytes::from_static(b"xyz"));
        let mut read = Vec::new();
        one.take_parts(2, |b| read.push(b));
        one.take_parts(1, |b| read.push(b));
        assert_eq!(read, [&b"xy"[..], b"z"]);
        assert_eq!(one.remaining(), 0);
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
