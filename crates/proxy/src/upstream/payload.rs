//! What the proxy sends upstream: one buffer, or a batch of messages gathered from the
//! buffers they arrived in. A gathered batch is never copied into one buffer: the HTTP/2
//! client writes its parts with vectored writes straight from the clients' read buffers.

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

/// Pieces of received chunks, joining neighbours: a piece of `chunk` that starts where the
/// previous piece of the same chunk ends extends it, so messages that arrived side by side
/// go out as one slice (and a vectored write carries whole frames of them).
#[derive(Default)]
pub(crate) struct Joiner {
    parts: Vec<Bytes>,
    /// The chunk being extended and the byte range taken from it so far.
    open: Option<(Bytes, usize, usize)>,
}

impl Joiner {
    /// Adds `piece`, a slice of `chunk` (or `chunk` itself).
    pub fn push(&mut self, piece: &Bytes, chunk: &Bytes) {
        let start = (piece.as_ptr() as usize).wrapping_sub(chunk.as_ptr() as usize);
        let inside = start <= chunk.len() && piece.len() <= chunk.len() - start;
        if !inside {
            self.close();
            self.parts.push(piece.clone());
            return;
        }
        if let Some((open, _, end)) = &mut self.open
            && open.as_ptr() == chunk.as_ptr()
            && open.len() == chunk.len()
            && *end == start
        {
            *end += piece.len();
            return;
        }
        self.close();
        self.open = Some((chunk.clone(), start, start + piece.len()));
    }

    fn close(&mut self) {
        if let Some((chunk, start, end)) = self.open.take() {
            self.parts.push(chunk.slice(start..end));
        }
    }

    pub fn finish(mut self) -> Gathered {
        self.close();
        Gathered::new(self.parts)
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
    fn neighbours_from_one_chunk_are_joined_and_others_kept_apart() {
        let chunk = Bytes::from_static(b"aaabbbcccddd");
        let other = Bytes::from_static(b"xyz");
        let mut joiner = Joiner::default();
        joiner.push(&chunk.slice(0..3), &chunk);
        joiner.push(&chunk.slice(3..6), &chunk);
        // A gap: a new piece.
        joiner.push(&chunk.slice(9..12), &chunk);
        joiner.push(&other, &other);
        joiner.push(&chunk.slice(6..9), &chunk);
        let gathered = joiner.finish();
        let parts: Vec<&[u8]> = gathered.parts.iter().map(|p| &p[..]).collect();
        assert_eq!(parts, [&b"aaabbb"[..], b"ddd", b"xyz", b"ccc"]);
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
