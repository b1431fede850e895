//! One client connection's I/O loop: the socket (or TLS on it) read in large chunks into
//! the [`Session`], its events handed to a [`Handler`], its output written, and the
//! connection's timers (keep-alive, age, drain, stalls, idleness) kept. Protocol lives in
//! the session; what a request means lives in the handler.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use tokio::time::{Instant, Sleep};

use super::Shutdown;
use super::frame::Reason;
use super::session::{ConnectionError, Drain, Event, Parked, Session, Settings};
use super::transport::{Readiness, Transport};

/// How a connection is served.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    /// Ping a connection silent this long; `None`: never.
    pub keepalive: Option<Duration>,
    /// Close a pinged connection that stays silent this long.
    pub keepalive_timeout: Duration,
    /// Ask the client to reconnect (GOAWAY) once the connection is this old (less up to
    /// a tenth, so connections made together do not all go at once).
    pub max_age: Option<Duration>,
    /// How long streams may go on after a GOAWAY for age or shutdown.
    pub drain_grace: Duration,
    /// How long a client may take to send its preface and SETTINGS, to finish a header
    /// block, or to finish any frame it began: a client that trickles bytes holds a
    /// connection slot (slowloris) and is closed after this.
    pub header_timeout: Duration,
    /// Close a connection with no streams that sent nothing for this long.
    pub idle_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Settings::default(),
            keepalive: None,
            keepalive_timeout: Duration::from_secs(20),
            max_age: None,
            drain_grace: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// Bytes asked of a read when the last one filled what it was given: whole windows of
/// streamed reports arrive in few reads.
const READ_CHUNK: usize = 128 * 1024;

/// The least asked of a read. A read asks for what the last one brought and a quarter
/// more, rounded up to a power of two (see [`next_read_size`]), so a client whose reads
/// bring a few small calls reads into a buffer of the allocator's small size classes,
/// which its messages keep as they are, rather than into 128 KiB that
/// [`Session::fit_input`] copies them out of: a large allocation, its release and a copy
/// saved on every such read.
const READ_AT_LEAST: usize = 4 * 1024;

/// What the next read asks for, after one that brought `read` of the `room` it had.
fn next_read_size(read: usize, room: usize) -> usize {
    if read >= room {
        READ_CHUNK
    } else {
        (read + read / 4)
            .next_power_of_two()
            .clamp(READ_AT_LEAST, READ_CHUNK)
    }
}

/// How long a connection with nothing under way stays ready before it rests (see
/// [`serve`]): long enough that a client making calls one after another does not rest
/// between them, short beside agents' report intervals.
const REST_AFTER: Duration = Duration::from_secs(1);

/// The application behind the protocol: it is told what the client does and answers
/// through the session.
pub trait Handler: Send {
    /// Something the application wakes the connection for (an answer from a task).
    type Signal: Send;

    /// An event of the session, handled at once; when it must wait (for room in a queue,
    /// a journal's sync), the rest of the work comes back as a future to await: the
    /// connection reads nothing meanwhile, so its client is held back by flow control.
    /// (Boxed only then: the connection's task stays small, which is most of what an idle
    /// connection costs.)
    fn on_event<'a>(&'a mut self, event: Event, link: &'a mut Link<'_>) -> Option<Wait<'a>>;

    /// Every event of the input read so far was handed over (also before the connection
    /// closes for an error found in it): what the handler does once per read rather than
    /// per event is done now, and may wait as [`Handler::on_event`] may.
    fn on_input_done<'a>(&'a mut self, link: &'a mut Link<'_>) -> Option<Wait<'a>>;

    /// The next signal; pending for ever when there can be none.
    fn next_signal(&mut self) -> impl Future<Output = Option<Self::Signal>> + Send;

    /// A signal, or one taken without waiting after it.
    fn try_signal(&mut self) -> Option<Self::Signal>;

    fn on_signal(&mut self, signal: Self::Signal, session: &mut Session);

    /// Credit of answer data written (or dropped with its stream).
    fn on_returned_credit(&mut self, credit: usize);

    /// The connection is asked to reconnect for its age.
    fn on_aged_out(&mut self);

    /// Holds nothing a task could wake the connection for (no stream, no task answering
    /// one, no signal waiting): the connection may rest.
    fn can_rest(&self) -> bool;

    /// The connection rests: let go of what only served streams.
    fn rest(&mut self);

    /// The connection is served again after resting.
    fn woken(&mut self);

    /// The connection ends: every stream still open is let go of.
    fn on_close(&mut self, session: &Session);
}

/// The rest of an event's work, when it had to wait.
pub(crate) type Wait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The session, and the socket for a handler that must get output out before it waits.
pub struct Link<'a> {
    pub session: &'a mut Session,
    io: &'a mut Transport,
}

impl Link<'_> {
    /// Writes what can be written now, without waiting.
    pub fn flush(&mut self) {
        let _ = flush(self.io, self.session);
    }
}

/// Why a connection closed, as the `reason` label of
/// `skylift_proxy_connections_closed_total`.
pub(crate) type Cause = &'static str;

/// Serves one connection until the client leaves, breaks the protocol or abuses it, then
/// calls `closed` with why.
///
/// A connection with nothing under way for [`REST_AFTER`] rests: its session parks into
/// the little that differs from a fresh one ([`Parked`]), the loop's state is let go of,
/// and the task only waits for the client's next bytes, a timer or shutdown, then is
/// served again. The task's own future is therefore small (the serving loop lives in a
/// box while it runs): agents' connections are idle most of their lives, and what an idle
/// one keeps is what many clients cost. It is meant to be spawned as it is (awaiting it
/// inside another future would hold it twice).
pub fn serve<H: Handler>(
    io: Transport,
    handler: H,
    config: Arc<Config>,
    shutdown: Arc<Shutdown>,
    closed: impl FnOnce(Cause) + Send,
) -> impl Future<Output = ()> + Send {
    let first = Box::pin(serve_until_rest(Connection::new(
        io, handler, config, shutdown,
    )));
    async move {
        let mut running = first;
        loop {
            let mut resting = match running.await {
                Turn::Closed(cause) => return closed(cause),
                Turn::Rest(resting) => resting,
            };
            resting.wait().await;
            running = Box::pin(serve_until_rest(Connection::woken(resting)));
        }
    }
}

/// How a stretch of serving ended.
enum Turn<H> {
    Closed(Cause),
    Rest(Resting<H>),
}

/// Serves the connection until it closes or rests.
async fn serve_until_rest<H: Handler>(mut connection: Connection<H>) -> Turn<H> {
    let outcome = match connection.run().await {
        Ok(Ran::Rested) => return Turn::Rest(connection.rest()),
        Ok(Ran::Closed(cause)) => Ok(cause),
        Err(error) => Err(error),
    };
    Turn::Closed(connection.close(outcome).await)
}

/// When a connection being served last heard from its client, and the deadlines it
/// starts with (its age limit, and the client's preface when new).
struct Heard {
    at: Instant,
    drain: Option<Instant>,
    stall: Option<Instant>,
}

/// How the serving loop ended without an error.
enum Ran {
    Closed(Cause),
    Rested,
}

/// What a resting connection keeps: the socket, the handler, the parked session, and
/// what its timers are reckoned from.
struct Resting<H> {
    io: Transport,
    handler: H,
    session: Parked,
    config: Arc<Config>,
    shutdown: Arc<Shutdown>,
    last_heard: Instant,
    /// The age limit's deadline (the drain timer before any drain).
    drain: Option<Instant>,
}

impl<H> Resting<H> {
    /// Waits until the client sends something, a timer is due (keep-alive, age, idleness)
    /// or shutdown begins; what it was is handled once serving again.
    async fn wait(&mut self) {
        let Resting {
            io,
            config,
            shutdown,
            last_heard,
            drain,
            ..
        } = self;
        let due = [
            *drain,
            config.keepalive.map(|interval| *last_heard + interval),
            config.idle_timeout.map(|idle| *last_heard + idle),
        ]
        .into_iter()
        .flatten()
        .min();
        let timed = due.is_some();
        let timer = tokio::time::sleep_until(due.unwrap_or(*last_heard));
        tokio::select! {
            biased;
            _ = poll_fn(|cx| io.poll_ready(cx, true, false)) => {}
            () = shutdown.begins() => {}
            () = timer, if timed => {}
        }
    }
}

enum Wake<S> {
    Signal(Option<S>),
    Rest,
    Readable(io::Result<()>),
    Writable(io::Result<()>),
    Keepalive,
    Shutdown,
    Drain,
    Stalled,
    Idle,
}

struct Connection<H: Handler> {
    io: Transport,
    session: Session,
    handler: H,
    config: Arc<Config>,
    eof: bool,
    /// Bytes the next read asks for (see [`next_read_size`]).
    read_size: u32,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    shutdown: Arc<Shutdown>,
    timers: Timers,
    /// The drain state the drain timer was set for.
    drain_armed: Drain,
    stall_frames: u64,
}

/// When each of a connection's timers is due (`None`: not running). One sleep runs to
/// the earliest of them: a sleep is a hundred-odd bytes on the heap, and an idle
/// connection would otherwise keep two.
struct Timers {
    keepalive: Option<Instant>,
    drain: Option<Instant>,
    /// Set while the client owes the rest of something it began (see
    /// [`Session::incomplete`]); reset whenever a frame completes.
    stall: Option<Instant>,
    idle: Option<Instant>,
    /// Set while the connection could rest: when it may (see [`REST_AFTER`]).
    rest: Option<Instant>,
    /// The one sleep, and the deadline it is set to.
    sleep: Option<Pin<Box<Sleep>>>,
    sleep_at: Option<Instant>,
}

impl Timers {
    /// The first timer due (keep-alive, drain, stall, idle when `idle`, rest), in that
    /// order, once the sleep set to the earliest deadline ends. The clock is read only
    /// then: this is polled on every turn of the connection's loop.
    fn poll<S>(&mut self, cx: &mut Context<'_>, idle: bool) -> Poll<Wake<S>> {
        let idle_at = self.idle.filter(|_| idle);
        let Some(next) = [self.keepalive, self.drain, self.stall, idle_at, self.rest]
            .into_iter()
            .flatten()
            .min()
        else {
            self.sleep = None;
            self.sleep_at = None;
            return Poll::Pending;
        };
        if self.sleep_at != Some(next) {
            self.sleep_at = Some(next);
            match self.sleep.as_mut() {
                Some(sleep) => sleep.as_mut().reset(next),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(next))),
            }
        }
        let sleep = self.sleep.as_mut().expect("set just above");
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The earliest deadline passed; which timers does that make due?
        let now = Instant::now().max(next);
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        Poll::Ready(if due(self.keepalive) {
            Wake::Keepalive
        } else if due(self.drain) {
            Wake::Drain
        } else if due(self.stall) {
            Wake::Stalled
        } else if due(idle_at) {
            Wake::Idle
        } else {
            Wake::Rest
        })
    }
}

impl<H: Handler> Connection<H> {
    fn new(
        io: Transport,
        handler: H,
        config: Arc<Config>,
        shutdown: Arc<Shutdown>,
    ) -> Connection<H> {
        let now = Instant::now();
        let session = Session::new(config.settings.clone());
        let drain = config.max_age.map(|age| now + jittered(age));
        let stall = Some(now + config.header_timeout);
        let heard = Heard {
            at: now,
            drain,
            stall,
        };
        Connection::serving(io, handler, session, config, shutdown, heard)
    }

    /// A resting connection served again.
    fn woken(resting: Resting<H>) -> Connection<H> {
        let Resting {
            io,
            mut handler,
            session,
            config,
            shutdown,
            last_heard,
            drain,
        } = resting;
        handler.woken();
        let session = Session::unpark(config.settings.clone(), session);
        let heard = Heard {
            at: last_heard,
            drain,
            stall: None,
        };
        Connection::serving(io, handler, session, config, shutdown, heard)
    }

    fn serving(
        io: Transport,
        handler: H,
        session: Session,
        config: Arc<Config>,
        shutdown: Arc<Shutdown>,
        heard: Heard,
    ) -> Connection<H> {
        Connection {
            io,
            session,
            handler,
            eof: false,
            read_size: READ_CHUNK as u32,
            last_heard: heard.at,
            ping_sent: None,
            shutdown,
            timers: Timers {
                keepalive: config.keepalive.map(|interval| heard.at + interval),
                drain: heard.drain,
                stall: heard.stall,
                idle: config.idle_timeout.map(|idle| heard.at + idle),
                rest: None,
                sleep: None,
                sleep_at: None,
            },
            drain_armed: Drain::No,
            stall_frames: 0,
            config,
        }
    }

    /// Nothing is under way on either side, and no keep-alive ping is unanswered.
    fn can_rest(&self) -> bool {
        !self.eof
            && self.session.can_park()
            && !self.io.wants_write()
            && !self.io.holds_input()
            && self.ping_sent.is_none_or(|sent| self.last_heard >= sent)
            && self.handler.can_rest()
    }

    fn rest(self) -> Resting<H> {
        let Connection {
            io,
            session,
            mut handler,
            config,
            shutdown,
            last_heard,
            timers,
            ..
        } = self;
        handler.rest();
        Resting {
            io,
            handler,
            session: session.park(),
            config,
            shutdown,
            last_heard,
            drain: timers.drain,
        }
    }

    async fn run(&mut self) -> Result<Ran, ConnectionError> {
        loop {
            self.process().await?;
            self.flush()?;
            if self.eof {
                return Ok(Ran::Closed("client_closed"));
            }
            if self.session.finished() && !self.io.wants_write() {
                return Ok(Ran::Closed(if self.session.drain() == Drain::No {
                    "client_goaway"
                } else {
                    "drained"
                }));
            }
            self.session.compact();
            self.watch_stalls();
            self.arm_drain_timer();
            let reading = !self.session.output_full();
            let writing = !self.session.output().is_empty() || self.io.wants_write();
            let draining = self.session.drain() != Drain::No;
            let idle = !self.session.has_streams();
            self.timers.rest = (idle && self.can_rest()).then(|| self.last_heard + REST_AFTER);
            let wake = tokio::select! {
                biased;
                signal = self.handler.next_signal() => Wake::Signal(signal),
                ready = poll_fn(|cx| self.io.poll_ready(cx, reading, writing)),
                    if reading || writing => match ready {
                    Readiness::Writable(ready) => Wake::Writable(ready),
                    Readiness::Readable(ready) => Wake::Readable(ready),
                },
                () = self.shutdown.begins(), if !draining => Wake::Shutdown,
                // The timers polled in place, by one future (one future each was a few
                // dozen bytes more in every connection's state).
                wake = poll_fn(|cx| self.timers.poll(cx, idle)) => wake,
            };
            match wake {
                Wake::Signal(Some(signal)) => {
                    self.handler.on_signal(signal, &mut self.session);
                    while let Some(signal) = self.handler.try_signal() {
                        self.handler.on_signal(signal, &mut self.session);
                    }
                }
                Wake::Signal(None) => {}
                // Checked again: the timer may have been set on a turn before this one.
                Wake::Rest if self.can_rest() => return Ok(Ran::Rested),
                Wake::Rest => self.timers.rest = None,
                Wake::Readable(ready) => {
                    ready.map_err(io_error)?;
                    self.read()?;
                }
                Wake::Writable(ready) => ready.map_err(io_error)?,
                Wake::Keepalive => self.on_keepalive()?,
                Wake::Shutdown => self
                    .session
                    .start_drain("skylift-proxy: shutting down; reconnect"),
                Wake::Drain => self.on_drain_timer()?,
                Wake::Stalled => return Err(self.stalled()),
                Wake::Idle => {
                    if let Some(idle) = self.config.idle_timeout {
                        if self.last_heard + idle <= Instant::now() {
                            return Err(ConnectionError::new(
                                Reason::NoError,
                                "idle",
                                format!("skylift-proxy: idle for {idle:?}"),
                            ));
                        }
                        self.timers.idle = Some(self.last_heard + idle);
                    }
                }
            }
        }
    }

    /// Hands every event the input makes to the handler.
    async fn process(&mut self) -> Result<(), ConnectionError> {
        let now = std::time::Instant::now();
        let found = loop {
            // Not `while let`: its scrutinee would stay in the future's state across the
            // await below, an event's worth of bytes in every connection.
            let event = match self.session.poll_event(now) {
                Ok(Some(event)) => event,
                Ok(None) => break Ok(()),
                Err(err) => break Err(err),
            };
            let mut link = Link {
                session: &mut self.session,
                io: &mut self.io,
            };
            if let Some(wait) = self.handler.on_event(event, &mut link) {
                wait.await;
            }
        };
        let mut link = Link {
            session: &mut self.session,
            io: &mut self.io,
        };
        if let Some(wait) = self.handler.on_input_done(&mut link) {
            wait.await;
        }
        found?;
        let credit = self.session.take_returned_credit();
        if credit > 0 {
            self.handler.on_returned_credit(credit);
        }
        Ok(())
    }

    /// Arms the stall timer while the client owes bytes, from the last frame it finished.
    fn watch_stalls(&mut self) {
        if !self.session.incomplete() {
            self.timers.stall = None;
            return;
        }
        let frames = self.session.frames();
        if self.timers.stall.is_none() || frames != self.stall_frames {
            self.stall_frames = frames;
            self.timers.stall = Some(Instant::now() + self.config.header_timeout);
        }
    }

    fn stalled(&mut self) -> ConnectionError {
        let what = if !self.session.started() {
            "the HTTP/2 preface and SETTINGS"
        } else {
            "a header block or frame it began"
        };
        ConnectionError::new(
            Reason::EnhanceYourCalm,
            "stalled",
            format!(
                "{what} not complete within {:?}",
                self.config.header_timeout
            ),
        )
    }

    fn read(&mut self) -> Result<(), ConnectionError> {
        let input = self.session.input();
        input.reserve(self.read_size as usize);
        let room = input.capacity() - input.len();
        match self.io.try_read_buf(input) {
            Ok(0) => self.eof = true,
            Ok(read) => {
                self.read_size = next_read_size(read, room) as u32;
                self.last_heard = Instant::now();
                self.session.fit_input();
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(io_error(err)),
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectionError> {
        flush(&mut self.io, &mut self.session).map_err(io_error)
    }

    fn on_keepalive(&mut self) -> Result<(), ConnectionError> {
        let Some(interval) = self.config.keepalive else {
            return Ok(());
        };
        let now = Instant::now();
        let next = match self.ping_sent {
            Some(sent) if self.last_heard < sent => {
                if now >= sent + self.config.keepalive_timeout {
                    return Err(ConnectionError::new(
                        Reason::NoError,
                        "keepalive_timeout",
                        "keep-alive ping not answered",
                    ));
                }
                sent + self.config.keepalive_timeout
            }
            _ if now >= self.last_heard + interval => {
                self.ping_sent = Some(now);
                self.session.ping(*b"skylift!");
                now + self.config.keepalive_timeout
            }
            _ => {
                self.ping_sent = None;
                self.last_heard + interval
            }
        };
        self.timers.keepalive = Some(next);
        Ok(())
    }

    /// The drain timer follows the session's drain: the age limit while serving, the
    /// wait for the PING's answer once announced, the grace period after the final GOAWAY.
    fn arm_drain_timer(&mut self) {
        let drain = self.session.drain();
        if drain == self.drain_armed {
            return;
        }
        self.drain_armed = drain;
        let after = match drain {
            Drain::No => return,
            Drain::Announced => Duration::from_secs(1),
            Drain::Final => self.config.drain_grace,
        };
        self.timers.drain = Some(Instant::now() + after);
    }

    fn on_drain_timer(&mut self) -> Result<(), ConnectionError> {
        match self.session.drain() {
            Drain::No => {
                self.timers.drain = None;
                self.handler.on_aged_out();
                self.session
                    .start_drain("skylift-proxy: max connection age reached; reconnect");
            }
            Drain::Announced => self.session.final_goaway(),
            Drain::Final => {
                return Err(ConnectionError::new(
                    Reason::NoError,
                    "drained",
                    "streams still open when the grace period ended",
                ));
            }
        }
        Ok(())
    }

    /// Ends the connection: a GOAWAY saying why when the client broke the protocol, then
    /// every stream let go of.
    async fn close(&mut self, outcome: Result<Cause, ConnectionError>) -> Cause {
        let cause = match outcome {
            Ok(cause) => cause,
            Err(error) => {
                tracing::debug!(reason = ?error.reason, message = %error.message, "closing a client connection");
                self.session.close(&error);
                // Boxed: only a closing connection carries the wait.
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), async {
                    while !self.session.output().is_empty() || self.io.wants_write() {
                        let writable = poll_fn(|cx| self.io.poll_writable(cx)).await;
                        if writable.is_err() || self.flush().is_err() {
                            break;
                        }
                    }
                }))
                .await;
                error.cause
            }
        };
        self.handler.on_close(&self.session);
        cause
    }
}

/// Writes what it can of the session's output without waiting.
fn flush(io: &mut Transport, session: &mut Session) -> io::Result<()> {
    match io.flush_pending() {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
        Err(err) => return Err(err),
    }
    let output = session.output();
    while !output.is_empty() {
        match io.try_write(output) {
            Ok(n) => output.advance(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// `age` less up to a tenth, different for every connection.
fn jittered(age: Duration) -> Duration {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    age - age.mul_f64((random % 1000) as f64 / 10_000.0)
}

fn io_error(err: io::Error) -> ConnectionError {
    ConnectionError::new(
        Reason::NoError,
        "io_error",
        format!("connection failed: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ask_for_about_what_the_last_brought_and_all_after_a_full_one() {
        // Four unary calls per read: 8 KiB (a small size class), with room for more.
        assert_eq!(next_read_size(4364, READ_CHUNK), 8 * 1024);
        assert_eq!(next_read_size(4364, 8 * 1024), 8 * 1024);
        // A quarter more than came, at least.
        assert_eq!(next_read_size(7000, 8 * 1024), 16 * 1024);
        assert_eq!(next_read_size(90, READ_CHUNK), READ_AT_LEAST);
        // A read that filled what it had may have left more behind: all of it next.
        assert_eq!(next_read_size(8 * 1024, 8 * 1024), READ_CHUNK);
        assert_eq!(next_read_size(READ_CHUNK, READ_CHUNK), READ_CHUNK);
        // Never past the chunk however much came.
        assert_eq!(next_read_size(100_000, READ_CHUNK), READ_CHUNK);
    }
}
