//! Write coalescing for client connections. Answers to many concurrent calls on one
//! connection (each an acknowledgement of a few dozen bytes) would each cost a write
//! syscall and a trip through the TCP stack; instead a flush yields once to the scheduler
//! so that the connection's other streams can add their answers, and they all go out in
//! one write (as Netty's flush consolidation does).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered before a write goes out without waiting for the flush.
const MAX_PENDING: usize = 64 * 1024;
/// A buffer larger than this is released once written, so idle connections hold none.
const KEEP_CAPACITY: usize = 4 * 1024;

/// An I/O stream whose writes are gathered until a flush, and whose flush first lets
/// other ready tasks run once.
#[derive(Debug)]
pub struct Coalescing<T> {
    inner: T,
    pending: Vec<u8>,
    /// Whether this flush already yielded once.
    yielded: bool,
}

impl<T> Coalescing<T> {
    pub fn new(inner: T) -> Self {
        Coalescing {
            inner,
            pending: Vec::new(),
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalescing<T> {
    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..written);
        }
        if self.pending.capacity() > KEEP_CAPACITY {
            self.pending = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() + data.len() > MAX_PENDING {
            ready!(self.poll_drain(cx))?;
            if data.len() > MAX_PENDING {
                return Pin::new(&mut self.inner).poll_write(cx, data);
            }
        }
        self.pending.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() && !self.yielded {
            // Let the other streams of this connection add their answers first; a task
            // that wakes itself is put behind the tasks already ready to run.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_drain(cx))?;
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_go_out_together_at_the_flush_and_reads_pass_through() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut stream = Coalescing::new(near);
        stream.write_all(b"first ").await.unwrap();
        stream.write_all(b"second").await.unwrap();
        let mut got = [0u8; 12];
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(50),
                far.read_exact(&mut got)
            )
            .await
            .is_err(),
            "nothing is written before the flush"
        );
        stream.flush().await.unwrap();
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first second");

        far.write_all(b"reply").await.unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }

    #[tokio::test]
    async fn large_writes_are_not_held_back_and_nothing_is_reordered() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut stream = Coalescing::new(near);
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        stream.write_all(b"head").await.unwrap();
        stream.write_all(&big).await.unwrap();
        stream.write_all(b"tail").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 4 + big.len() + 4);
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..4 + big.len()], &big[..]);
        assert_eq!(&got[4 + big.len()..], b"tail");
    }
}
