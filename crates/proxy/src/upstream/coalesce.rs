//! Write coalescing for upstream connections.
//!
//! The HTTP/2 client writes one DATA frame (at most the peer's frame size, 16 KiB for
//! OAP) and then flushes, so a batch of half a megabyte went out as thirty-odd `writev`
//! calls. Over loopback and on a busy node each call pays the whole TCP transmit path (and
//! on loopback the receiver's too), which was most of the proxy's kernel time per message.
//!
//! [`Coalescing`] gathers what is written and defers a flush by one turn of the task that
//! writes: a flush right after new bytes arrived wakes the task and returns at once, and the
//! bytes go out when the task flushes again with nothing new written in between (the
//! writer has nothing more to say for now), or when [`FLUSH_AT`] bytes are waiting, or
//! after [`MAX_DEFERRALS`] deferrals in a row. Because the task is woken, a deferred flush
//! always happens, after the other tasks ready at the time have run; a lone request is
//! delayed by one scheduler turn, not by a timer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::rt::{Read, ReadBufCursor, Write};

/// Bytes waiting that are written out without waiting for the writer to pause.
pub(crate) const FLUSH_AT: usize = 256 * 1024;

/// Flushes deferred in a row before one is done regardless.
pub(crate) const MAX_DEFERRALS: u32 = 16;

/// The buffer's size: [`FLUSH_AT`] and room for the write that crosses it (the HTTP/2
/// client writes a frame and its headers at a time), so it is allocated once and never
/// regrown while the connection lives.
const BUFFER: usize = FLUSH_AT + 64 * 1024;

/// A connection whose writes are gathered into large ones.
pub(crate) struct Coalescing<T> {
    inner: T,
    pending: Vec<u8>,
    /// Bytes of `pending` already written.
    written: usize,
    /// Bytes were added since the last flush.
    fresh: bool,
    deferrals: u32,
}

impl<T> Coalescing<T> {
    pub fn new(inner: T) -> Coalescing<T> {
        Coalescing {
            inner,
            pending: Vec::new(),
            written: 0,
            fresh: false,
            deferrals: 0,
        }
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    fn waiting(&self) -> usize {
        self.pending.len() - self.written
    }
}

impl<T: Write + Unpin> Coalescing<T> {
    /// Writes out what is waiting; ready once all of it is written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        // Keep a buffer for the next burst, not the largest one ever seen.
        if self.pending.capacity() > BUFFER {
            self.pending = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `incoming` more bytes: writes out when [`FLUSH_AT`] bytes are
    /// waiting.
    fn poll_room(&mut self, cx: &mut Context<'_>, incoming: usize) -> Poll<io::Result<()>> {
        if self.waiting() >= FLUSH_AT {
            ready!(self.poll_write_out(cx))?;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(BUFFER.max(incoming));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for Coalescing<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx, buf.len()))?;
        this.pending.extend_from_slice(buf);
        this.fresh |= !buf.is_empty();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let incoming = bufs.iter().map(|b| b.len()).sum();
        ready!(this.poll_room(cx, incoming))?;
        let mut total = 0;
        for buf in bufs {
            this.pending.extend_from_slice(buf);
            total += buf.len();
        }
        this.fresh |= total > 0;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fresh && this.waiting() < FLUSH_AT && this.deferrals < MAX_DEFERRALS {
            // The writer may have more to say in this turn: come back once the other ready
            // tasks have run, and write everything then.
            this.fresh = false;
            this.deferrals += 1;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        this.fresh = false;
        this.deferrals = 0;
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: Read + Unpin> Read for Coalescing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Records each write call; accepts at most `limit` bytes per call.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        limit: Option<usize>,
        blocked: bool,
    }

    impl Write for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.blocked {
                return Poll::Pending;
            }
            let n = self.limit.map_or(buf.len(), |limit| limit.min(buf.len()));
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A task's waker that counts how often it is woken.
    fn task() -> (Arc<CountingWaker>, std::task::Waker) {
        let waker = Arc::new(CountingWaker::default());
        (waker.clone(), std::task::Waker::from(waker))
    }

    fn write(io: &mut Coalescing<Recorder>, cx: &mut Context<'_>, bytes: &[u8]) {
        assert!(matches!(
            Pin::new(io).poll_write_vectored(cx, &[io::IoSlice::new(bytes)]),
            Poll::Ready(Ok(n)) if n == bytes.len()
        ));
    }

    fn flush(io: &mut Coalescing<Recorder>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(io).poll_flush(cx)
    }

    fn written(io: &Coalescing<Recorder>) -> Vec<u8> {
        io.inner.writes.concat()
    }

    #[test]
    fn frames_flushed_one_by_one_go_out_in_one_write_when_the_writer_pauses() {
        let (waker, task) = task();
        let mut cx = Context::from_waker(&task);
        let mut io = Coalescing::new(Recorder::default());
        for frame in 0..10u8 {
            write(&mut io, &mut cx, &[frame; 1000]);
            assert!(flush(&mut io, &mut cx).is_ready());
        }
        // Each flush after new bytes was deferred, and the task woken to come back.
        assert!(io.inner.writes.is_empty());
        assert_eq!(waker.0.load(Ordering::SeqCst), 10);
        // Woken, the writer has nothing new: the flush writes everything at once.
        assert!(flush(&mut io, &mut cx).is_ready());
        assert_eq!(io.inner.writes.len(), 1);
        assert_eq!(io.inner.flushes, 1);
        let expected: Vec<u8> = (0..10u8).flat_map(|f| [f; 1000]).collect();
        assert_eq!(written(&io), expected);
        // Nothing waits now, and nothing is woken again.
        assert!(flush(&mut io, &mut cx).is_ready());
        assert_eq!(io.inner.writes.len(), 1);
        assert_eq!(waker.0.load(Ordering::SeqCst), 10);
    }

    #[test]
    fn a_large_backlog_is_written_without_waiting_for_a_pause() {
        let (_, task) = task();
        let mut cx = Context::from_waker(&task);
        let mut io = Coalescing::new(Recorder::default());
        let frame = vec![7u8; 16 * 1024];
        let mut sent = 0;
        while sent < FLUSH_AT {
            write(&mut io, &mut cx, &frame);
            sent += frame.len();
        }
        assert!(flush(&mut io, &mut cx).is_ready());
        assert_eq!(io.inner.writes.len(), 1);
        assert_eq!(io.inner.writes[0].len(), FLUSH_AT);
        // Burst after burst, the buffer is the one allocated first.
        for _ in 0..3 {
            for _ in 0..20 {
                write(&mut io, &mut cx, &frame);
            }
            assert!(flush(&mut io, &mut cx).is_ready());
            assert!(flush(&mut io, &mut cx).is_ready());
            assert_eq!(io.pending.capacity(), BUFFER);
        }
        assert_eq!(written(&io).len(), FLUSH_AT + 3 * 20 * frame.len());
    }

    #[test]
    fn a_writer_that_never_pauses_is_flushed_after_the_deferral_limit() {
        let (_, task) = task();
        let mut cx = Context::from_waker(&task);
        let mut io = Coalescing::new(Recorder::default());
        for _ in 0..MAX_DEFERRALS {
            write(&mut io, &mut cx, b"ping");
            assert!(flush(&mut io, &mut cx).is_ready());
        }
        assert!(io.inner.writes.is_empty());
        write(&mut io, &mut cx, b"ping");
        assert!(flush(&mut io, &mut cx).is_ready());
        assert_eq!(written(&io), b"ping".repeat(MAX_DEFERRALS as usize + 1));
    }

    #[test]
    fn partial_writes_keep_order_and_a_blocked_socket_holds_the_flush() {
        let (_, task) = task();
        let mut cx = Context::from_waker(&task);
        let mut io = Coalescing::new(Recorder {
            limit: Some(7),
            ..Recorder::default()
        });
        write(&mut io, &mut cx, b"hello, ");
        write(&mut io, &mut cx, b"upstream world");
        io.inner.blocked = true;
        assert!(flush(&mut io, &mut cx).is_ready()); // deferred
        assert!(flush(&mut io, &mut cx).is_pending()); // the socket is full
        io.inner.blocked = false;
        assert!(flush(&mut io, &mut cx).is_ready());
        assert_eq!(written(&io), b"hello, upstream world");
        assert_eq!(io.inner.writes.len(), 3);
    }

    #[test]
    fn shutdown_writes_what_waits_first() {
        let (_, task) = task();
        let mut cx = Context::from_waker(&task);
        let mut io = Coalescing::new(Recorder::default());
        write(&mut io, &mut cx, b"GOAWAY");
        assert!(Pin::new(&mut io).poll_shutdown(&mut cx).is_ready());
        assert_eq!(written(&io), b"GOAWAY");
    }
}
