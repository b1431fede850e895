//! A driven connection's task: connects, then reads and writes for its [`ClientSession`]
//! by readiness, in one poll function. Callers hand it calls through [`Shared`] (a mutex
//! and the task's waker: no channel, no task per call); each call's answer goes back on
//! its own oneshot.
//!
//! Writes are gathered: everything the session has to say when the task runs (frames of
//! all its streams, up to [`WRITE_BUDGET`] bytes) goes out in vectored writes of frame
//! headers and the messages' own buffers. Calls handed over by many senders in one turn of
//! the scheduler wake the task once, so their frames share writes the way a coalescing
//! buffer would make them share, without the copy.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::h2::frame::{DEFAULT_MAX_FRAME, HEADER_LEN, Head, Reason};
use crate::upstream::client::describe;
use crate::upstream::connector::{DirectIo, UpstreamConnector};
use crate::upstream::driven::outgoing::Mark;
use crate::upstream::driven::session::{ClientSession, Ended, Submission};

/// Bytes queued for writing before the task writes them (and then queues more).
pub(crate) const WRITE_BUDGET: usize = 256 * 1024;
/// Buffers per vectored write (the kernel takes at most 1024).
const MAX_SLICES: usize = 512;
/// Bytes read from the socket at a time (answers, window updates: little).
const READ_CHUNK: usize = 16 * 1024;
/// A connection with no call this long is closed (the health checks, every 5 s by
/// default, keep a used upstream's connection open).
pub(crate) const IDLE: Duration = Duration::from_secs(90);

/// What the callers and the task share.
#[derive(Default)]
pub(crate) struct Shared {
    inbox: Mutex<Inbox>,
    /// Calls handed here whose callers still wait (to pick the least busy connection).
    active: AtomicUsize,
    /// [`Inbox::closed`], read without the lock when a connection is chosen.
    closed: AtomicBool,
}

#[derive(Default)]
struct Inbox {
    submissions: Vec<Submission>,
    cancelled: Vec<u64>,
    /// The task takes no more calls.
    closed: bool,
    waker: Option<Waker>,
}

impl Shared {
    /// Hands a call to the task; back when the connection has closed.
    pub fn submit(&self, submission: Submission) -> Result<(), Submission> {
        let waker = {
            let mut inbox = self.inbox.lock().expect("never poisoned");
            if inbox.closed {
                return Err(submission);
            }
            inbox.submissions.push(submission);
            inbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The caller of `call` stopped waiting.
    pub fn cancel(&self, call: u64) {
        let waker = {
            let mut inbox = self.inbox.lock().expect("never poisoned");
            if let Some(at) = inbox.submissions.iter().position(|s| s.id == call) {
                inbox.submissions.swap_remove(at);
                return;
            }
            if inbox.closed {
                return;
            }
            inbox.cancelled.push(call);
            inbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The connection takes no more calls (a call handed over may still find it closed:
    /// [`Shared::submit`] says so).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn enter(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes what callers handed over and leaves the task's waker for the next.
    fn take(&self, waker: &Waker) -> (Vec<Submission>, Vec<u64>) {
        let mut inbox = self.inbox.lock().expect("never poisoned");
        match &inbox.waker {
            Some(known) if known.will_wake(waker) => {}
            _ => inbox.waker = Some(waker.clone()),
        }
        (
            std::mem::take(&mut inbox.submissions),
            std::mem::take(&mut inbox.cancelled),
        )
    }

    /// Takes no more calls; those handed over and not taken end as `ended` says.
    fn close(&self, ended: impl Fn() -> Ended) {
        let left = {
            let mut inbox = self.inbox.lock().expect("never poisoned");
            inbox.closed = true;
            self.closed.store(true, Ordering::Relaxed);
            inbox.waker = None;
            inbox.cancelled.clear();
            std::mem::take(&mut inbox.submissions)
        };
        for submission in left {
            let _ = submission.answer.send(Err(ended()));
        }
    }
}

/// Connects to `upstream` and serves the calls handed to `shared` until the connection
/// fails, the upstream sends it away, or it idles for [`IDLE`].
pub(crate) async fn run(
    shared: Arc<Shared>,
    connector: UpstreamConnector,
    upstream: Arc<str>,
    stream_cap: usize,
) {
    let io = match format!("http://{upstream}").parse::<http::Uri>() {
        Ok(uri) => connector.open(uri).await.map_err(|err| describe(&*err)),
        Err(_) => Err(format!("{upstream} is not an address")),
    };
    let io = match io {
        Ok(io) => io,
        Err(why) => {
            let why = format!("connecting to {upstream}: {why}");
            tracing::debug!(%why, "a driven upstream connection failed");
            shared.close(|| Ended::Broken(why.clone()));
            return;
        }
    };
    let mut driver = Driver {
        io,
        session: ClientSession::new(connector.is_tls(), &upstream, stream_cap),
        shared: shared.clone(),
        read_buf: vec![0; READ_CHUNK],
        input: BytesMut::new(),
        marks: Vec::new(),
        unflushed: false,
        idle: Box::pin(tokio::time::sleep(IDLE)),
        idle_armed: false,
        draining: false,
    };
    let why = std::future::poll_fn(|cx| driver.poll(cx)).await;
    tracing::debug!(%upstream, %why, "a driven upstream connection ended");
    driver.session.fail_all(&why);
    shared.close(|| Ended::Unopened);
}

struct Driver {
    io: DirectIo,
    session: ClientSession,
    shared: Arc<Shared>,
    read_buf: Vec<u8>,
    /// Read and not yet a whole frame.
    input: BytesMut,
    marks: Vec<Mark>,
    /// Written since the last flush (TLS keeps records until flushed).
    unflushed: bool,
    idle: Pin<Box<tokio::time::Sleep>>,
    /// `idle` runs: the connection has no call.
    idle_armed: bool,
    /// No new calls are taken.
    draining: bool,
}

impl Driver {
    /// Ready with why the connection ended.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<String> {
        loop {
            let (submissions, cancelled) = self.shared.take(cx.waker());
            for submission in submissions {
                self.session.submit(submission);
            }
            for call in cancelled {
                self.session.cancel(call);
            }
            let read_any = match self.read(cx) {
                Ok(read_any) => read_any,
                Err(why) => {
                    self.write_last(cx);
                    return Poll::Ready(why);
                }
            };
            if self.session.draining() && !self.draining {
                // Sent away: new calls go to another connection.
                self.draining = true;
                self.shared.close(|| Ended::Unopened);
            }
            if let Err(err) = self.write(cx) {
                return Poll::Ready(format!("writing to the upstream: {err}"));
            }
            if self.session.draining() && self.session.calls() == 0 {
                self.write_last(cx);
                return Poll::Ready("the upstream sent the connection away".into());
            }
            if self.session.calls() > 0 {
                self.idle_armed = false;
            } else {
                if !self.idle_armed {
                    self.idle_armed = true;
                    self.idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
                }
                if self.idle.as_mut().poll(cx).is_ready() {
                    self.shared.close(|| Ended::Unopened);
                    // Calls handed over meanwhile were answered `Unopened` by `close`.
                    self.session.goodbye(Reason::NoError, "idle");
                    self.write_last(cx);
                    return Poll::Ready("idle".into());
                }
            }
            if !read_any {
                return Poll::Pending;
            }
        }
    }

    /// Reads and handles whole frames until the socket has nothing more; whether anything
    /// was read. `Err`: the connection is over (closed, failed, or broke the protocol —
    /// then with a GOAWAY queued).
    fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, String> {
        let mut read_any = false;
        loop {
            let mut buf = ReadBuf::new(&mut self.read_buf);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Ok(read_any),
                Poll::Ready(Err(err)) => return Err(format!("reading from the upstream: {err}")),
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        return Err("the upstream closed the connection".into());
                    }
                    self.input.extend_from_slice(&self.read_buf[..n]);
                    read_any = true;
                    self.frames()?;
                }
            }
        }
    }

    /// Hands the whole frames read to the session.
    fn frames(&mut self) -> Result<(), String> {
        while self.input.len() >= HEADER_LEN {
            let head = Head::parse(&self.input);
            // This client never raises SETTINGS_MAX_FRAME_SIZE.
            if head.len > DEFAULT_MAX_FRAME {
                self.session
                    .goodbye(Reason::FrameSize, "a frame past SETTINGS_MAX_FRAME_SIZE");
                return Err(format!("the upstream sent a {}-byte frame", head.len));
            }
            if self.input.len() < HEADER_LEN + head.len {
                break;
            }
            let payload = self
                .input
                .split_to(HEADER_LEN + head.len)
                .freeze()
                .slice(HEADER_LEN..);
            if let Err(err) = self.session.receive(head, payload) {
                self.session.goodbye(err.reason, &err.message);
                return Err(format!("the upstream broke HTTP/2: {}", err.message));
            }
        }
        Ok(())
    }

    /// Queues what the session has to send and writes it, until everything is written or
    /// the socket is full.
    fn write(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        loop {
            self.session.fill(WRITE_BUDGET);
            if self.session.out.is_empty() {
                break;
            }
            match self.write_out(cx) {
                Poll::Ready(result) => result?,
                Poll::Pending => return Ok(()),
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(result) => {
                    result?;
                    self.unflushed = false;
                }
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Writes what is queued; ready once all of it is written.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.session.out.is_empty() {
            let slices = self.session.out.slices(MAX_SLICES);
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices))?;
            drop(slices);
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.unflushed = true;
            let marks = &mut self.marks;
            self.session.out.advance(written, |mark| marks.push(mark));
            for mark in self.marks.drain(..) {
                self.session.written(mark);
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what it can of the last frames (a GOAWAY) without waiting, and shuts the
    /// socket.
    fn write_last(&mut self, cx: &mut Context<'_>) {
        if self.write_out(cx).is_ready() {
            let _ = Pin::new(&mut self.io).poll_shutdown(cx);
        }
    }
}
