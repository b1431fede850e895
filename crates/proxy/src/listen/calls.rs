//! The proxy's side of a client connection ([`Handler`]): report streams received here,
//! message by message into the queue, with no task, channel or copy per stream; other
//! calls (sync, pass-through) handed to a task each, which talks back through
//! [`Signal`]s. gRPC's request rules are checked before either.

use std::sync::{Arc, LazyLock};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::AbortHandle;

use crate::grpc::protocol::{self, Policy};
use crate::grpc::{self, Code};
use crate::h2::body::{Chunk, RequestBody};
use crate::h2::connection::{Handler, Link, Wait};
use crate::h2::frame::Reason;
use crate::h2::headers;
use crate::h2::session::{Event, Flow, Outgoing, Session};
use crate::h2::signal::{self, RESPONSE_CREDIT, Signal};
use crate::h2::stream_ids::StreamIdMap;
use crate::ingest::stream::{self as ingest, ReportStream, StreamError};
use crate::listen::staged::Staged;
use crate::listen::state::State;
use crate::queue::journal::Fsync;
use crate::queue::{self, DropReason};
use crate::upstream::{affinity, forward};

/// The answer's header block to every report: status 200, gRPC content.
static REPORT_HEAD: LazyLock<Bytes> = LazyLock::new(|| {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut block = BytesMut::new();
    headers::encode_response(StatusCode::OK, &headers, &mut block);
    block.freeze()
});
/// The trailers of every accepted report: status OK.
static REPORT_TRAILERS: LazyLock<Bytes> = LazyLock::new(|| {
    let mut block = BytesMut::new();
    headers::encode_fields(&grpc::status_headers(Code::Ok, ""), &mut block);
    block.freeze()
});
/// One empty `Commands` message.
static EMPTY_COMMANDS: [u8; 5] = [0; 5];

/// What a stream is.
enum Kind {
    /// A report received here, message by message.
    Report {
        report: Box<ReportStream>,
        /// Bytes of the stream's data the report still holds (see
        /// [`ReportStream::buffered`]): not yet consumed from the connection's budget.
        held: usize,
        /// Answered (accepted or refused): what the client still sends is discarded.
        answered: bool,
    },
    /// A call a handler task answers.
    Handled {
        body: Option<UnboundedSender<Chunk>>,
        task: AbortHandle,
    },
    /// Answered at once with an error; the rest of the request is discarded.
    Refused,
}

/// Whether a report's data was all cut into events.
enum Pumped {
    All,
    /// The queue had no room for the staged events: the rest waits in the stream.
    Blocked,
}

/// The proxy's calls on one connection.
pub(crate) struct Calls {
    state: State,
    streams: StreamIdMap<Kind>,
    /// What the calls need once under way: made when first needed (boxed: every
    /// connection, idle ones included, holds this field), let go of when it rests.
    busy: Option<Box<Busy>>,
}

/// What a connection with calls under way holds besides their table.
#[derive(Default)]
struct Busy {
    /// What handler tasks share with the connection; made when the first handler is
    /// (reports need none of it).
    tasks: Option<Tasks>,
    /// Report events cut and not yet queued.
    staged: Staged,
}

/// The connection's side of its handler tasks.
struct Tasks {
    /// Their signals.
    signals: (UnboundedSender<Signal>, UnboundedReceiver<Signal>),
    /// Answer bytes handler tasks may have given the connection and not yet seen
    /// written: shared by the connection's calls, so a client that stops reading holds
    /// back at most this much.
    credits: Arc<Semaphore>,
}

impl Calls {
    pub fn new(state: State) -> Calls {
        Calls {
            state,
            streams: StreamIdMap::default(),
            busy: None,
        }
    }

    /// Starts a stream: a report is received here, anything else goes to a handler task.
    fn open<'a>(
        &'a mut self,
        id: u32,
        request: Request<()>,
        end_stream: bool,
        link: &'a mut Link<'_>,
    ) -> Option<Wait<'a>> {
        // With --upstream-http-port, HTTP/2 requests that are not gRPC are HTTP requests.
        if self.state.http.is_some() && !is_grpc(&request) {
            let kind = self.spawn_handler(id, request, None, end_stream);
            self.streams.insert(id, kind);
            return None;
        }
        if let Some((status, code, message)) = grpc_request_error(&request) {
            let block = http_error_block(status, code, message);
            link.session
                .send(id, Outgoing::Headers { block, end: true });
            self.streams.insert(id, Kind::Refused);
            return None;
        }
        let method = protocol::lookup(request.uri().path());
        let report = method.filter(|method| {
            matches!(method.policy, Policy::AsyncStream | Policy::AsyncUnary)
                && ingest::can_reshape(method, request.headers())
        });
        let Some(method) = report else {
            let kind = self.spawn_handler(id, request, method, end_stream);
            self.streams.insert(id, kind);
            return None;
        };
        let mut report = ReportStream::open(&self.state.intake, method, &request);
        let refused = report.refusal_at_open();
        link.session.set_flow(id, Flow::Messages);
        self.streams.insert(
            id,
            Kind::Report {
                report: Box::new(report),
                held: 0,
                answered: false,
            },
        );
        if let Some(refusal) = refused {
            self.refuse(id, refusal, link.session);
            None
        } else if end_stream {
            self.end_report(id, link)
        } else {
            None
        }
    }

    fn tasks(&mut self) -> &Tasks {
        let busy = self.busy.get_or_insert_with(Box::default);
        busy.tasks.get_or_insert_with(|| Tasks {
            signals: mpsc::unbounded_channel(),
            credits: Arc::new(Semaphore::new(RESPONSE_CREDIT)),
        })
    }

    fn spawn_handler(
        &mut self,
        id: u32,
        request: Request<()>,
        method: Option<&'static protocol::Method>,
        end_stream: bool,
    ) -> Kind {
        let tasks = self.tasks();
        let (signals, credits) = (tasks.signals.0.clone(), tasks.credits.clone());
        // The channel holds only what the connection's window let the client send.
        let (body, chunks) = if end_stream {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        };
        let request = request.map(|()| RequestBody::new(id, chunks, signals.clone()));
        let response = Box::pin(dispatch(self.state.clone(), method, request));
        let task = tokio::spawn(signal::respond(id, response, signals, credits));
        Kind::Handled {
            body,
            task: task.abort_handle(),
        }
    }

    fn on_data<'a>(
        &'a mut self,
        id: u32,
        data: Bytes,
        end: bool,
        link: &'a mut Link<'_>,
    ) -> Option<Wait<'a>> {
        let len = u32::try_from(data.len()).expect("frames are small");
        match self.streams.get_mut(&id) {
            Some(Kind::Report {
                report,
                held,
                answered: false,
            }) => {
                *held += data.len();
                report.push(data);
                match self.pump(id) {
                    Err(refusal) => {
                        self.refuse(id, refusal, link.session);
                        None
                    }
                    Ok(Pumped::Blocked) => Some(Box::pin(self.on_data_waiting(id, end, link))),
                    Ok(Pumped::All) => {
                        self.release(id, link.session);
                        self.break_budget_deadlock(link.session);
                        if end { self.end_report(id, link) } else { None }
                    }
                }
            }
            Some(Kind::Handled { body, .. }) => {
                if !data.is_empty()
                    && let Some(sender) = body.as_ref()
                {
                    // Consumed (and the window given back) when the handler takes it.
                    if sender.send(Chunk::Data(data)).is_err() {
                        link.session.consumed(id, len);
                    }
                }
                if end {
                    *body = None;
                }
                None
            }
            // Answered already, or unknown: discarded.
            _ => {
                link.session.consumed(id, len);
                None
            }
        }
    }

    /// The rest of [`Calls::on_data`] once the queue was full: this connection waits for
    /// room (flow control holds its client back meanwhile), after sending what is answered.
    async fn on_data_waiting(&mut self, id: u32, end: bool, link: &mut Link<'_>) {
        loop {
            if self.queue_staged_waiting(link).await.contains(&id) {
                return;
            }
            match self.pump(id) {
                Err(refusal) => return self.refuse(id, refusal, link.session),
                Ok(Pumped::Blocked) => continue,
                Ok(Pumped::All) => break,
            }
        }
        self.release(id, link.session);
        if end && let Some(wait) = self.end_report(id, link) {
            wait.await;
        }
    }

    /// Gives back to the connection's budget what a report no longer holds.
    fn release(&mut self, id: u32, session: &mut Session) {
        if let Some(Kind::Report { report, held, .. }) = self.streams.get_mut(&id) {
            let now = report.buffered();
            if now < *held {
                let freed = u32::try_from(*held - now).unwrap_or(u32::MAX);
                *held = now;
                session.consumed(id, freed);
            }
        }
    }

    /// Several report streams' partly received messages can fill the connection's budget
    /// between them (the budget holds one largest message, and the client chooses which
    /// stream to send on): then the client may send nothing more, no message can finish,
    /// and nothing would be consumed until the client's deadline. Seen here as the window
    /// spent with every held byte in such messages: the stream holding the most is kept
    /// (what it still needs fits the budget once the others are gone) and the others are
    /// refused with RESOURCE_EXHAUSTED, their bytes given back. Their events already
    /// queued stay queued; the partial messages were never acknowledged.
    fn break_budget_deadlock(&mut self, session: &mut Session) {
        if !session.window_spent() {
            return;
        }
        let mut partial: Vec<(usize, u32)> = self
            .streams
            .iter()
            .filter_map(|(id, kind)| match kind {
                Kind::Report {
                    held,
                    answered: false,
                    ..
                } if *held > 0 => Some((*held, *id)),
                _ => None,
            })
            .collect();
        let in_partial_messages: usize = partial.iter().map(|(held, _)| held).sum();
        // Data a handler or the queue will still consume frees the window on its own.
        if partial.len() < 2 || session.held() != in_partial_messages as u64 {
            return;
        }
        partial.sort_by_key(|&(held, id)| (std::cmp::Reverse(held), id));
        let streams = partial.len();
        for &(_, id) in &partial[1..] {
            self.state.metrics.call_refused("connection_budget");
            let message = format!(
                "the connection's budget ({in_partial_messages} bytes) is held by partly received                  messages of {streams} streams; this one gives way so another can finish: send it again"
            );
            self.refuse(id, StreamError(Code::ResourceExhausted, message), session);
        }
    }

    /// Stages the events a report's data makes (queued together later, see [`Staged`]);
    /// when as many wait as a connection stages, they are queued then, and if the queue
    /// has no room for them all, the rest of the data waits in the stream.
    fn pump(&mut self, id: u32) -> Result<Pumped, StreamError> {
        let Some(Kind::Report { report, .. }) = self.streams.get_mut(&id) else {
            return Ok(Pumped::All);
        };
        let intake = &self.state.intake;
        let staged = &mut self.busy.get_or_insert_with(Box::default).staged;
        while let Some(event) = report.next_event(intake)? {
            staged.push(&intake.queue, id, event);
            if staged.is_full() && !staged.try_queue(intake) {
                return Ok(Pumped::Blocked);
            }
        }
        Ok(Pumped::All)
    }

    /// Queues every staged event there is room for now; true when all were.
    fn try_queue_staged(&mut self) -> bool {
        let intake = &self.state.intake;
        self.busy
            .as_mut()
            .is_none_or(|busy| busy.staged.try_queue(intake))
    }

    /// Queues the staged events one by one in the order received, once they did not all
    /// fit: each waits for room up to `--overflow-wait` (the connection reads nothing
    /// meanwhile, so flow control holds its client back), then the overflow policy applies.
    /// A stream whose event is rejected is refused with RESOURCE_EXHAUSTED, and its
    /// staged events after that one go with the rest of its data (see
    /// [`Calls::discard_refused`]). Returns the streams refused.
    async fn queue_staged_waiting(&mut self, link: &mut Link<'_>) -> Vec<u32> {
        let mut refused = Vec::new();
        let Some(busy) = self.busy.as_mut() else {
            return refused;
        };
        let staged = busy.staged.take_in_order();
        let intake = self.state.intake.clone();
        for (id, event) in staged {
            if refused.contains(&id) {
                self.discard_refused(id, event);
                continue;
            }
            link.flush();
            if let Err(refusal) = ingest::queue_waiting(&intake, event).await {
                self.refuse(id, refusal, link.session);
                refused.push(id);
            }
        }
        refused
    }

    /// A staged event of a stream refused for want of room after an earlier one: not
    /// taken, as the data still in the stream is not (the call's status tells the client
    /// none of it need be). Its stream's count of events goes down; only if the stream was
    /// retired meanwhile (its count published) it is counted as dropped instead, so the
    /// accounting still holds.
    fn discard_refused(&mut self, id: u32, event: queue::Event) {
        if let Some(Kind::Report { report, .. }) = self.streams.get_mut(&id) {
            report.received -= 1;
            return;
        }
        let intake = &self.state.intake;
        intake
            .queue
            .count_dropped_unoffered(DropReason::QueueFullRejected);
        intake
            .metrics
            .dropped(event.route.protocol, DropReason::QueueFullRejected, 1);
    }

    /// The client ended a report stream: the last event is queued and the stream answered,
    /// here when nothing needs waiting for.
    fn end_report<'a>(&'a mut self, id: u32, link: &'a mut Link<'_>) -> Option<Wait<'a>> {
        let Some(Kind::Report {
            report,
            answered: answered @ false,
            ..
        }) = self.streams.get_mut(&id)
        else {
            return None;
        };
        *answered = true;
        let last = match report.finish() {
            Ok(last) => last,
            Err(refusal) => {
                self.refuse(id, refusal, link.session);
                return None;
            }
        };
        let queued_any = report.received > 0;
        if let Some(last) = last {
            let queue = &self.state.intake.queue;
            let busy = self.busy.get_or_insert_with(Box::default);
            busy.staged.push(queue, id, last);
        }
        // This stream's events, and those staged before them, are queued before it is
        // acknowledged.
        let blocked = !self.try_queue_staged();
        let must_sync = queued_any
            && self
                .state
                .journals()
                .any(|journal| matches!(journal.fsync(), Fsync::Always));
        if blocked || must_sync {
            return Some(Box::pin(
                self.end_report_waiting(id, blocked, queued_any, link),
            ));
        }
        if queued_any
            && self
                .state
                .journals()
                .any(|journal| journal.write_out().is_err())
        {
            self.refuse(id, journal_refusal(), link.session);
            return None;
        }
        acknowledge(id, link.session);
        None
    }

    /// The rest of [`Calls::end_report`] when the queue was full or the journal must be
    /// synced first. With the disk queue the client hears its data was taken only once it
    /// is written to the journal (and with `--fsync always`, synced: one sync serves every
    /// client waiting at the time).
    async fn end_report_waiting(
        &mut self,
        id: u32,
        blocked: bool,
        queued_any: bool,
        link: &mut Link<'_>,
    ) {
        if blocked && self.queue_staged_waiting(link).await.contains(&id) {
            return;
        }
        // The federation queue's journal too: its copy was acknowledged with the report.
        if queued_any {
            let state = self.state.clone();
            for journal in state.journals() {
                let durable = match (journal.write_out(), journal.fsync()) {
                    (Err(failed), _) => Err(failed),
                    (Ok(()), Fsync::Always) => {
                        link.flush();
                        journal.durable().await
                    }
                    (Ok(()), Fsync::Interval(_)) => Ok(()),
                };
                if durable.is_err() {
                    return self.refuse(id, journal_refusal(), link.session);
                }
            }
        }
        acknowledge(id, link.session);
    }

    /// Answers a report with a gRPC error (trailers-only).
    fn refuse(&mut self, id: u32, StreamError(code, message): StreamError, session: &mut Session) {
        if let Some(Kind::Report { answered, .. }) = self.streams.get_mut(&id) {
            *answered = true;
        }
        let block = error_block(code, &message);
        session.send(id, Outgoing::Headers { block, end: true });
    }

    /// What a stream leaves behind: a report's count, a handler's task.
    fn retire(&self, kind: Kind) {
        match kind {
            Kind::Report { report, .. } => {
                if report.received > 0 {
                    self.state
                        .metrics
                        .received_many(report.protocol(), report.received);
                }
            }
            Kind::Handled { task, .. } => task.abort(),
            Kind::Refused => {}
        }
    }
}

impl Handler for Calls {
    type Signal = Signal;

    fn on_event<'a>(&'a mut self, event: Event, link: &'a mut Link<'_>) -> Option<Wait<'a>> {
        match event {
            Event::Open {
                stream,
                request,
                end_stream,
            } => self.open(stream, *request, end_stream, link),
            Event::Data {
                stream,
                data,
                end_stream,
            } => self.on_data(stream, data, end_stream, link),
            Event::Trailers { stream, trailers } => match self.streams.get_mut(&stream) {
                Some(Kind::Handled { body, .. }) => {
                    if let Some(body) = body.take() {
                        let _ = body.send(Chunk::Trailers(*trailers));
                    }
                    None
                }
                Some(Kind::Report { .. }) => self.end_report(stream, link),
                _ => None,
            },
            Event::Closed { stream } => {
                if let Some(kind) = self.streams.remove(&stream) {
                    self.retire(kind);
                }
                if self.streams.is_empty() {
                    // Idle between reports: the table's room goes (as the session's does).
                    self.streams = StreamIdMap::default();
                }
                None
            }
        }
    }

    async fn next_signal(&mut self) -> Option<Signal> {
        match self.busy.as_mut().and_then(|busy| busy.tasks.as_mut()) {
            Some(tasks) => tasks.signals.1.recv().await,
            None => std::future::pending().await,
        }
    }

    fn try_signal(&mut self) -> Option<Signal> {
        self.busy
            .as_mut()
            .and_then(|busy| busy.tasks.as_mut())
            .and_then(|tasks| tasks.signals.1.try_recv().ok())
    }

    fn on_signal(&mut self, signal: Signal, session: &mut Session) {
        match signal {
            Signal::Head { stream, block, end } => {
                session.send(stream, Outgoing::Headers { block, end });
            }
            Signal::Data {
                stream,
                data,
                end,
                credit,
            } => session.send(stream, Outgoing::Data { data, end, credit }),
            Signal::Trailers { stream, block } => {
                session.send(stream, Outgoing::Headers { block, end: true });
            }
            Signal::Reset { stream, reason } => session.reset(stream, reason),
            Signal::Consumed { stream, bytes } => session.consumed(stream, bytes),
            Signal::Finished { stream } => {
                if !session.answered(stream) {
                    session.reset(stream, Reason::Internal);
                }
            }
        }
    }

    fn on_returned_credit(&mut self, credit: usize) {
        if let Some(tasks) = self.busy.as_ref().and_then(|busy| busy.tasks.as_ref()) {
            tasks.credits.add_permits(credit);
        }
    }

    fn on_aged_out(&mut self) {
        self.state.metrics.aged_out();
    }

    fn can_rest(&self) -> bool {
        self.streams.is_empty()
            && self
                .busy
                .as_ref()
                .and_then(|busy| busy.tasks.as_ref())
                .is_none_or(|tasks| {
                    let (tx, rx) = &tasks.signals;
                    tx.strong_count() == 1 && rx.is_empty()
                })
    }

    fn on_input_done<'a>(&'a mut self, link: &'a mut Link<'_>) -> Option<Wait<'a>> {
        if self.try_queue_staged() {
            return None;
        }
        Some(Box::pin(async move {
            self.queue_staged_waiting(link).await;
        }))
    }

    fn rest(&mut self) {
        self.streams = StreamIdMap::default();
        self.busy = None;
        self.state.metrics.resting(true);
    }

    fn woken(&mut self) {
        self.state.metrics.resting(false);
    }

    fn on_close(&mut self, _session: &Session) {
        for (_, kind) in std::mem::take(&mut self.streams) {
            self.retire(kind);
        }
    }
}

/// gRPC's rules for a request, as grpc-java's `NettyServerHandler.onHeadersRead` applies
/// them before any service sees the call: the HTTP status, gRPC code and message of the
/// answer to a request that breaks one.
fn grpc_request_error(request: &Request<()>) -> Option<(StatusCode, Code, &'static str)> {
    if request.method() != Method::POST {
        return Some((
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Internal,
            "skylift-proxy: gRPC calls use POST",
        ));
    }
    if !is_grpc(request) {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::Internal,
            "skylift-proxy: content-type must be application/grpc",
        ));
    }
    None
}

/// Whether a request is a gRPC call: its content type is gRPC's.
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// Answers an accepted report: status 200, an empty `Commands`, status OK.
fn acknowledge(id: u32, session: &mut Session) {
    session.send(
        id,
        Outgoing::Headers {
            block: REPORT_HEAD.clone(),
            end: false,
        },
    );
    session.send(
        id,
        Outgoing::Data {
            data: Bytes::from_static(&EMPTY_COMMANDS),
            end: false,
            credit: 0,
        },
    );
    session.send(
        id,
        Outgoing::Headers {
            block: REPORT_TRAILERS.clone(),
            end: true,
        },
    );
}

fn journal_refusal() -> StreamError {
    StreamError(
        Code::Unavailable,
        "skylift-proxy: the queue journal could not be written to disk; retry".into(),
    )
}

/// A trailers-only gRPC error's header block.
fn error_block(code: Code, message: &str) -> Bytes {
    http_error_block(StatusCode::OK, code, message)
}

fn http_error_block(status: StatusCode, code: Code, message: &str) -> Bytes {
    let mut block = BytesMut::new();
    headers::encode_response(status, &grpc::error_headers(code, message), &mut block);
    block.freeze()
}

/// Answers a call that is not a report taken apart on its connection (see
/// [`Calls`]): sync calls, streams forwarded whole (bidirectional uploads, Go
/// profiles, compressed streams that cannot be reshaped), and every method the proxy does
/// not know (`method` None), which is passed through on the path the client used. Known
/// methods are called upstream on the name OAP registers, whatever the client's spelling.
pub(crate) async fn dispatch(
    state: State,
    method: Option<&'static protocol::Method>,
    request: Request<RequestBody>,
) -> http::Response<grpc::Body> {
    if state.http.is_some() && !is_grpc(&request) {
        let tls = state.tls.is_some();
        return crate::listen::http::handle(&state, None, tls, request).await;
    }
    let path = method.map(|m| m.path);
    if method.is_none()
        && let Some(affinity) = &state.otlp_affinity
        && let Some(signal) = grpc::otlp::Signal::of_path(request.uri().path())
    {
        return affinity::grpc::export(&state.pool, affinity, signal, request).await;
    }
    match method.map(|m| m.policy) {
        Some(Policy::Sync) => forward::sync_call(&state.pool, path, request).await,
        _ => forward::pass_through(&state.pool, path, request).await,
    }
}
