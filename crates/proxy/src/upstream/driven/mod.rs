//! The proxy's own calls to the upstreams — batches of reports, each unary report, health
//! checks, its telemetry — on HTTP/2 connections it drives itself.
//!
//! These calls have a body known in full when they start and a small answer, and there
//! are a great many of them: hyper's client spent a task, a pool checkout and
//! kilobyte-sized futures on each, and wrote each 16 KiB DATA frame by itself, so that
//! gathering the frames into large writes took a copy of every byte. Here a call is handed
//! to its connection's task under a mutex and answered on a oneshot; the task writes the
//! frames of all its calls in vectored writes from the buffers the messages arrived in.
//! Forwarded calls (answers streamed back to a client) and HTTP stay on hyper's client.
//!
//! - [`session`]: the client's HTTP/2 state, no I/O;
//! - [`outgoing`]: what it has to write, frames and message buffers in order;
//! - [`connection`]: the task that connects and reads and writes for a session.

pub(crate) mod connection;
pub(crate) mod outgoing;
pub(crate) mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::HeaderValue;

use crate::upstream::client::{Answer, CallError};
use crate::upstream::connector::UpstreamConnector;
use crate::upstream::payload::{Payload, Progress};
use connection::Shared;
use session::{Ended, Submission};

/// Times a call refused unprocessed (or sent away unopened) is handed to a fresh
/// connection before it fails.
const REHANDED: usize = 2;

/// A call the proxy makes itself: `POST` of `payload` (already framed) to `path` on
/// `upstream`, `grpc-encoding` set when the messages are compressed.
pub struct Call<'a> {
    pub upstream: &'a str,
    pub path: &'a str,
    pub encoding: Option<&'a str>,
    pub payload: Payload,
}

/// An upstream's connections: `None` where one may still be opened.
type Slots = Vec<Option<Arc<Shared>>>;

/// The driven connections, up to `per_upstream` to each upstream, each carrying up to
/// `streams_per_connection` calls at once before the next is opened.
pub(crate) struct Connections {
    connector: UpstreamConnector,
    per_upstream: usize,
    streams_per_connection: usize,
    open: Mutex<HashMap<Arc<str>, Slots>>,
    next_call: AtomicU64,
}

impl Connections {
    pub fn new(
        connector: UpstreamConnector,
        per_upstream: usize,
        streams_per_connection: usize,
    ) -> Connections {
        Connections {
            connector,
            per_upstream: per_upstream.max(1),
            streams_per_connection: streams_per_connection.max(1),
            open: Mutex::default(),
            next_call: AtomicU64::new(0),
        }
    }

    /// The connection a new call to `upstream` goes on: the first open one with room,
    /// else a new one while fewer than `per_upstream` are open, else the least busy.
    fn connection(&self, upstream: &str) -> Arc<Shared> {
        let mut open = self.open.lock().expect("never poisoned");
        if !open.contains_key(upstream) {
            // A new upstream (a pod replaced, say): forget those whose connections have
            // all closed.
            open.retain(|_, slots| {
                forget_closed(slots);
                slots.iter().any(Option::is_some)
            });
            open.insert(Arc::from(upstream), vec![None; self.per_upstream]);
        }
        let slots = open.get_mut(upstream).expect("present");
        forget_closed(slots);
        let with_room = slots
            .iter()
            .flatten()
            .position(|c| c.active() < self.streams_per_connection);
        if let Some(at) = with_room {
            return slots.iter().flatten().nth(at).expect("found").clone();
        }
        if let Some(free) = slots.iter_mut().find(|slot| slot.is_none()) {
            let shared = Arc::new(Shared::default());
            *free = Some(shared.clone());
            tokio::spawn(connection::run(
                shared.clone(),
                self.connector.clone(),
                Arc::from(upstream),
                self.streams_per_connection,
            ));
            return shared;
        }
        slots
            .iter()
            .flatten()
            .min_by_key(|c| c.active())
            .expect("every slot is taken")
            .clone()
    }

    /// Calls open per connection to `upstream` (for tests and metrics).
    pub fn in_flight(&self, upstream: &str) -> Vec<usize> {
        let open = self.open.lock().expect("never poisoned");
        let counts: Vec<usize> = open
            .get(upstream)
            .map(|slots| slots.iter().flatten().map(|c| c.active()).collect())
            .unwrap_or_default();
        if counts.iter().all(|&n| n == 0) {
            Vec::new()
        } else {
            counts
        }
    }

    /// Makes `call` and waits for its whole answer by a deadline that may move while the
    /// call runs: `deadline` is asked again whenever the one it gave passes, and the call
    /// times out only when it says a time already past (the stream is then reset).
    pub async fn call_by(
        &self,
        call: Call<'_>,
        fields: Vec<(&'static str, HeaderValue)>,
        progress: Option<Arc<Progress>>,
        deadline: impl Fn() -> Instant,
    ) -> Result<Answer, CallError> {
        let path: Arc<str> = Arc::from(call.path);
        let mut handed = 0;
        loop {
            let connection = self.connection(call.upstream);
            let (answer, answered) = tokio::sync::oneshot::channel();
            let id = self.next_call.fetch_add(1, Ordering::Relaxed);
            let mut waiting = Waiting::new(connection.clone(), id);
            let submission = Submission {
                id,
                path: path.clone(),
                fields: fields.clone(),
                payload: call.payload.clone(),
                progress: progress.clone(),
                answer,
            };
            let ended = if connection.submit(submission).is_err() {
                // It closed after it was chosen: as if it had sent the call away unopened.
                waiting.done = true;
                Ended::Unopened
            } else {
                tokio::pin!(answered);
                loop {
                    let at = deadline();
                    if at <= Instant::now() {
                        // `waiting` resets the stream as it drops.
                        return Err(CallError::TimedOut);
                    }
                    tokio::select! {
                        answered = &mut answered => {
                            waiting.done = true;
                            match answered {
                                Ok(Ok(answer)) => return Ok(answer),
                                Ok(Err(ended)) => break ended,
                                Err(_) => break Ended::Broken("the connection's task ended".into()),
                            }
                        }
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
            };
            match ended {
                Ended::Unopened | Ended::Refused(_) if handed < REHANDED => {
                    // Processed by no one: the same call on a fresh connection.
                    if let Some(progress) = &progress {
                        progress.set_unsent();
                    }
                    handed += 1;
                }
                Ended::Unopened => {
                    return Err(CallError::Broken(
                        "the upstream sent the connections away".into(),
                    ));
                }
                Ended::Refused(why) => {
                    if let Some(progress) = &progress {
                        progress.set_unsent();
                    }
                    return Err(CallError::Broken(why));
                }
                Ended::Broken(why) => return Err(CallError::Broken(why)),
            }
        }
    }
}

/// Frees the slots of connections that closed.
fn forget_closed(slots: &mut Slots) {
    for slot in slots.iter_mut() {
        if slot.as_ref().is_some_and(|c| c.is_closed()) {
            *slot = None;
        }
    }
}

/// A call its caller waits for: counted against its connection, and given up (the stream
/// reset) when the caller stops waiting before the answer.
struct Waiting {
    connection: Arc<Shared>,
    id: u64,
    done: bool,
}

impl Waiting {
    fn new(connection: Arc<Shared>, id: u64) -> Waiting {
        connection.enter();
        Waiting {
            connection,
            id,
            done: false,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.done {
            self.connection.cancel(self.id);
        }
        self.connection.leave();
    }
}
