//! What a client connection's bytes travel over: the TCP socket itself, or TLS on it. The
//! connection loop works by readiness (wait until readable, then read what is there
//! without blocking); TLS keeps to that by driving rustls's connection directly over the
//! socket: ciphertext is read and written with non-blocking calls, and plaintext that
//! rustls already decrypted counts as readable even when the socket is not.

use std::io::{self, Read, Write};
use std::task::{Context, Poll};

use bytes::BytesMut;
use rustls::ServerConnection;
use tokio::net::TcpStream;

/// What the socket is ready for.
pub(crate) enum Readiness {
    Readable(io::Result<()>),
    Writable(io::Result<()>),
}

/// A client connection's transport.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

pub struct Tls {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Decrypted bytes wait in rustls.
    plaintext_waiting: bool,
}

/// Non-blocking reads and writes of the socket, as rustls's `read_tls` / `write_tls`
/// want them.
struct Socket<'a>(&'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn invalid(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl Transport {
    /// A connection whose TLS handshake is done (what rustls read past the handshake is
    /// still inside it, to be read first).
    pub fn tls(tcp: TcpStream, tls: ServerConnection) -> Transport {
        Transport::Tls(Box::new(Tls {
            tcp,
            tls,
            plaintext_waiting: true,
        }))
    }

    /// Polls for what the connection loop waits on, writable first. Polled in place: the
    /// futures of `TcpStream::readable` and `writable` would sit in the loop's state,
    /// about 170 bytes each in every connection, idle ones included.
    pub(crate) fn poll_ready(
        &self,
        cx: &mut Context<'_>,
        read: bool,
        write: bool,
    ) -> Poll<Readiness> {
        if write && let Poll::Ready(ready) = self.poll_writable(cx) {
            return Poll::Ready(Readiness::Writable(ready));
        }
        if read {
            let ready = match self {
                Transport::Plain(tcp) => tcp.poll_read_ready(cx),
                Transport::Tls(t) if t.plaintext_waiting => Poll::Ready(Ok(())),
                Transport::Tls(t) => t.tcp.poll_read_ready(cx),
            };
            if let Poll::Ready(ready) = ready {
                return Poll::Ready(Readiness::Readable(ready));
            }
        }
        Poll::Pending
    }

    pub(crate) fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(tcp) => tcp.poll_write_ready(cx),
            Transport::Tls(t) => t.tcp.poll_write_ready(cx),
        }
    }

    /// Bytes already taken from the socket wait to be read (decrypted by rustls).
    pub(crate) fn holds_input(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.plaintext_waiting,
        }
    }

    /// Encrypted bytes wait to be written (the socket was full).
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Reads what is there into `buf`: `Ok(0)` at the end, `WouldBlock` when nothing is.
    pub(crate) fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.try_read_buf(buf),
            Transport::Tls(t) => t.try_read_buf(buf),
        }
    }

    /// Writes what it can of `data` without waiting.
    pub(crate) fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.try_write(data),
            Transport::Tls(t) => t.try_write(data),
        }
    }

    /// Writes encrypted bytes still waiting; `WouldBlock` while the socket is full.
    pub(crate) fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush_pending(),
        }
    }
}

impl Tls {
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            let start = buf.len();
            buf.resize(start + 16 * 1024, 0);
            let read = self.tls.reader().read(&mut buf[start..]);
            buf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(n) => {
                    // More may wait; the next call finds out.
                    self.plaintext_waiting = n > 0;
                    return Ok(n);
                }
                // The peer closed without close_notify: the end, as for a plain socket.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            self.plaintext_waiting = false;
            // Nothing decrypted waits: read ciphertext from the socket.
            if self.tls.read_tls(&mut Socket(&self.tcp))? == 0 {
                return Ok(0);
            }
            self.tls.process_new_packets().map_err(invalid)?;
            // Alerts, key updates and session tickets want writing too.
            let _ = self.flush_pending();
        }
    }

    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        // No more plaintext while the socket cannot take the ciphertext already made.
        self.flush_pending()?;
        let n = self.tls.writer().write(data)?;
        match self.flush_pending() {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            other => other?,
        }
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut Socket(&self.tcp))?;
        }
        Ok(())
    }
}
