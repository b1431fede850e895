//! What the proxy sends upstream: one buffer, or a batch of messages gathered from the
//! buffers they arrived in. A gathered batch is not joined into one buffer: the HTTP/2
//! client hands its parts to vectored writes straight from the clients' read buffers (and
//! [`crate::upstream::coalesce`] gathers those writes into large ones).

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
    /// Data that says when it has all been written ([`Tracked`]).
    Tracked(Box<Tracked>),
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

    fn set_moved(&self) {
        let since = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.moved.store(since, Ordering::Relaxed);
    }

    /// When the upstream took the whole request.
    pub fn taken(&self) -> Option<Instant> {
        self.taken.get().copied()
    }
}

/// A payload that tells a call's [`Progress`]: its bytes moved whenever the HTTP/2 client
/// writes some (h2 keeps a DATA payload queued until the upstream's flow-control windows
/// let its bytes out, writes what they allow and puts the rest back), and it was all taken
/// when the client lets go of it with nothing left (once the last byte went to the
/// connection).
#[derive(Debug)]
pub struct Tracked {
    payload: Payload,
    progress: Option<Arc<Progress>>,
}

impl Tracked {
    pub(crate) fn new(payload: Payload, progress: Arc<Progress>) -> Tracked {
        Tracked {
            payload,
            progress: Some(progress),
        }
    }

    fn advance(&mut self, cnt: usize) {
        self.payload.advance(cnt);
        if let Some(progress) = &self.progress {
            progress.set_moved();
        }
    }
}

impl Clone for Tracked {
    /// A copy reads the same data but does not speak for the call.
    fn clone(&self) -> Self {
        Tracked {
            payload: self.payload.clone(),
            progress: None,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(progress) = self.progress.take()
            && !self.payload.has_remaining()
        {
            let _ = progress.taken.set(Instant::now());
        }
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

impl Buf for Payload {
    fn remaining(&self) -> usize {
        match self {
            Payload::Contiguous(b) => b.remaining(),
            Payload::Gathered(g) => g.remaining(),
            Payload::Tracked(t) => t.payload.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Payload::Contiguous(b) => b.chunk(),
            Payload::Gathered(g) => g.chunk(),
            Payload::Tracked(t) => t.payload.chunk(),
        }
    }

    fn advance(&mut self, cnt: usize) {
        match self {
            Payload::Contiguous(b) => b.advance(cnt),
            Payload::Gathered(g) => g.advance(cnt),
            Payload::Tracked(t) => t.advance(cnt),
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        match self {
            Payload::Contiguous(b) => b.chunks_vectored(dst),
            Payload::Gathered(g) => g.chunks_vectored(dst),
            Payload::Tracked(t) => t.payload.chunks_vectored(dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracked_payload_tells_when_its_bytes_move_and_when_all_were_taken() {
        let progress = Arc::new(Progress::default());
        let mut tracked = Payload::Tracked(Box::new(Tracked::new(
            Payload::Gathered(Gathered::new(parts())),
            progress.clone(),
        )));
        // A copy (a retry's) says nothing, written or not.
        let mut copy = tracked.clone();
        copy.advance(8);
        drop(copy);
        assert_eq!(progress.moved(), progress.started);
        assert!(progress.taken().is_none());
        std::thread::sleep(Duration::from_millis(2));
        tracked.advance(7);
        let moved = progress.moved();
        assert!(moved > progress.started);
        assert_eq!(tracked.chunk(), b"h");
        assert!(progress.taken().is_none());
        tracked.advance(1);
        drop(tracked);
        assert!(progress.taken().is_some_and(|taken| taken >= moved));
        // Dropped with data unwritten (the stream was reset): not taken.
        let cut = Arc::new(Progress::default());
        drop(Payload::Tracked(Box::new(Tracked::new(
            Payload::Contiguous(Bytes::from_static(b"abc")),
            cut.clone(),
        ))));
        assert!(cut.taken().is_none());
    }

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
