//! The proxy's side of a client connection ([`Handler`]): report streams received here,
//! message by message into the queue, with no task, channel or copy per stream; other
//! calls (sync, pass-through) handed to a task each, which talks back through
//! [`Signal`]s. gRPC's request rules are checked before either.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::AbortHandle;

use super::body::{Chunk, RequestBody};
use super::connection::{Handler, Link};
use super::frame::Reason;
use super::headers;
use super::session::{Event, Flow, Outgoing, Session};
use super::signal::{self, RESPONSE_CREDIT, Signal};
use crate::grpc::{self, Code};
use crate::ingest::{self, Refusal, ReportStream};
use crate::journal::Fsync;
use crate::protocol::{self, Policy};
use crate::server;
use crate::state::State;

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

/// The proxy's calls on one connection.
pub struct Calls {
    state: State,
    streams: HashMap<u32, Kind>,
    /// Handler tasks' signals; made when the first handler is.
    signals: Option<(UnboundedSender<Signal>, UnboundedReceiver<Signal>)>,
    /// Answer bytes handler tasks may have given the connection and not yet seen
    /// written: shared by the connection's calls, so a client that stops reading holds
    /// back at most this much.
    credits: Option<Arc<Semaphore>>,
}

impl Calls {
    pub fn new(state: State) -> Calls {
        Calls {
            state,
            streams: HashMap::new(),
            signals: None,
            credits: None,
        }
    }

    /// Starts a stream: a report is received here, anything else goes to a handler task.
    async fn open(&mut self, id: u32, request: Request<()>, end_stream: bool, link: &mut Link<'_>) {
        if let Some(refusal) = grpc_request_error(&request) {
            let (status, code, message) = refusal;
            let block = http_error_block(status, code, message);
            link.session
                .send(id, Outgoing::Headers { block, end: true });
            self.streams.insert(id, Kind::Refused);
            return;
        }
        let method = protocol::lookup(request.uri().path());
        let report = method.filter(|method| {
            matches!(method.policy, Policy::AsyncStream | Policy::AsyncUnary)
                && ingest::can_reshape(method, request.headers())
        });
        match report {
            Some(method) => {
                let mut report = ReportStream::open(&self.state, method, &request);
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
                } else if end_stream {
                    self.end_report(id, link).await;
                }
            }
            None => {
                let kind = self.spawn_handler(id, request, method, end_stream);
                self.streams.insert(id, kind);
            }
        }
    }

    fn signal_sender(&mut self) -> UnboundedSender<Signal> {
        self.signals
            .get_or_insert_with(mpsc::unbounded_channel)
            .0
            .clone()
    }

    fn spawn_handler(
        &mut self,
        id: u32,
        request: Request<()>,
        method: Option<&'static protocol::Method>,
        end_stream: bool,
    ) -> Kind {
        let signals = self.signal_sender();
        // The channel holds only what the connection's window let the client send.
        let (body, chunks) = if end_stream {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        };
        let request = request.map(|()| RequestBody::new(id, chunks, signals.clone()));
        let credits = self
            .credits
            .get_or_insert_with(|| Arc::new(Semaphore::new(RESPONSE_CREDIT)))
            .clone();
        let response = Box::pin(server::dispatch(self.state.clone(), method, request));
        let task = tokio::spawn(signal::respond(id, response, signals, credits));
        Kind::Handled {
            body,
            task: task.abort_handle(),
        }
    }

    async fn on_data(&mut self, id: u32, data: Bytes, end: bool, link: &mut Link<'_>) {
        let len = u32::try_from(data.len()).expect("frames are small");
        match self.streams.get_mut(&id) {
            Some(Kind::Report {
                report,
                held,
                answered: false,
            }) => {
                *held += data.len();
                report.push(&self.state, data);
                if let Err(refusal) = self.pump(id, link).await {
                    self.refuse(id, refusal, link.session);
                    return;
                }
                self.release(id, link.session);
                if end {
                    self.end_report(id, link).await;
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
            }
            // Answered already, or unknown: discarded.
            _ => link.session.consumed(id, len),
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

    /// Queues the events a report's data makes; waits for room when the queue is full.
    async fn pump(&mut self, id: u32, link: &mut Link<'_>) -> Result<(), Refusal> {
        loop {
            let Some(Kind::Report { report, .. }) = self.streams.get_mut(&id) else {
                return Ok(());
            };
            let Some(event) = report.next_event(&self.state)? else {
                return Ok(());
            };
            if let Err(event) = self.state.queue.try_offer(event) {
                // Rare: the queue is full. What is already answered goes out first; this
                // connection then waits, and flow control holds its client back.
                link.flush();
                Box::pin(ingest::queue_waiting(&self.state, event)).await?;
            }
        }
    }

    /// The client ended a report stream: the last event is queued and the stream answered.
    async fn end_report(&mut self, id: u32, link: &mut Link<'_>) {
        let Some(Kind::Report {
            report,
            answered: answered @ false,
            ..
        }) = self.streams.get_mut(&id)
        else {
            return;
        };
        *answered = true;
        let last = match report.finish() {
            Ok(last) => last,
            Err(refusal) => return self.refuse(id, refusal, link.session),
        };
        let queued_any = report.received > 0;
        if let Some(event) = last
            && let Err(event) = self.state.queue.try_offer(event)
        {
            link.flush();
            if let Err(refusal) = Box::pin(ingest::queue_waiting(&self.state, event)).await {
                return self.refuse(id, refusal, link.session);
            }
        }
        // With the disk queue the client hears its data was taken only once it is written
        // to the journal (and with `--fsync always`, synced: one sync serves every client
        // waiting at the time).
        if queued_any && let Some(journal) = self.state.queue.journal() {
            let journal = journal.clone();
            let written = journal.write_out();
            let durable = match (written, journal.fsync()) {
                (Err(failed), _) => Err(failed),
                (Ok(()), Fsync::Always) => {
                    link.flush();
                    Box::pin(journal.durable()).await
                }
                (Ok(()), Fsync::Interval(_)) => Ok(()),
            };
            if durable.is_err() {
                return self.refuse(
                    id,
                    Refusal(
                        Code::Unavailable,
                        "skylift-proxy: the queue journal could not be written to disk; retry"
                            .into(),
                    ),
                    link.session,
                );
            }
        }
        let session = &mut *link.session;
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

    /// Answers a report with a gRPC error (trailers-only).
    fn refuse(&mut self, id: u32, Refusal(code, message): Refusal, session: &mut Session) {
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

    async fn on_event(&mut self, event: Event, link: &mut Link<'_>) {
        match event {
            Event::Open {
                stream,
                request,
                end_stream,
            } => self.open(stream, request, end_stream, link).await,
            Event::Data {
                stream,
                data,
                end_stream,
            } => self.on_data(stream, data, end_stream, link).await,
            Event::Trailers { stream, trailers } => match self.streams.get_mut(&stream) {
                Some(Kind::Handled { body, .. }) => {
                    if let Some(body) = body.take() {
                        let _ = body.send(Chunk::Trailers(trailers));
                    }
                }
                Some(Kind::Report { .. }) => self.end_report(stream, link).await,
                _ => {}
            },
            Event::Closed { stream } => {
                if let Some(kind) = self.streams.remove(&stream) {
                    self.retire(kind);
                }
            }
        }
    }

    async fn next_signal(&mut self) -> Option<Signal> {
        match &mut self.signals {
            Some((_, rx)) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    fn try_signal(&mut self) -> Option<Signal> {
        self.signals.as_mut().and_then(|(_, rx)| rx.try_recv().ok())
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
        if let Some(credits) = &self.credits {
            credits.add_permits(credit);
        }
    }

    fn on_aged_out(&mut self) {
        self.state.metrics.aged_out();
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
    let grpc_content = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        });
    if !grpc_content {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::Internal,
            "skylift-proxy: content-type must be application/grpc",
        ));
    }
    None
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
