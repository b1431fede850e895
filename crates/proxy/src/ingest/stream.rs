//! Receiving asynchronous reports: the client's stream is split into messages (framing
//! only), each is queued with its routing key, and the stream is answered with an empty
//! `Commands` when it ends. Streams whose messages depend on each other are made
//! self-contained first (see [`crate::ingest::reshape`]).

use std::sync::Arc;

use bytes::Bytes;
use http::Request;

use crate::balance::routing::Routing;
use crate::federation::Federation;
use crate::grpc::Code;
use crate::grpc::framing::{self, Decoder, Frame};
use crate::grpc::protocol::{Method, Shape};
use crate::grpc::wire::{self, WireError};
use crate::ingest::reshape::{Carried, MeterSet};
use crate::metrics::Metrics;
use crate::queue::{DropReason, Event, Offered, Queue, Route};

/// What taking report streams apart needs: the queue they go into and how they are keyed.
#[derive(Clone)]
pub struct Intake {
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub routing: Routing,
    /// The largest message a stream may carry (`--max-message-bytes`).
    pub max_message_bytes: usize,
    /// Where copies of the reports it takes also go, if anywhere.
    pub federation: Option<Arc<Federation>>,
}

impl Intake {
    /// Queues a connection's events from the first up to the first that does not fit (see
    /// [`Queue::try_offer_prefix`]); returns how many were queued. The queued events'
    /// copies go to the federation pool, if it takes their protocol.
    pub(crate) fn try_offer_prefix(&self, events: &mut Vec<Event>, partitions: &[usize]) -> usize {
        let Some(federation) = &self.federation else {
            return self.queue.try_offer_prefix(events, partitions);
        };
        // Copied once queued (a copy may be compressed: not for events that wait).
        let originals: Vec<Option<Event>> = events
            .iter()
            .map(|event| {
                federation
                    .takes(event.route.protocol)
                    .then(|| event.clone())
            })
            .collect();
        let queued = self.queue.try_offer_prefix(events, partitions);
        let copies = originals.iter().take(queued).flatten();
        for copy in copies.filter_map(|event| federation.copy(event)) {
            federation.offer(copy);
        }
        queued
    }
}

/// Whether a stream of `method` with these headers can be taken apart here. A compressed
/// stream of a shape whose messages must be read or rewritten cannot (no message can be
/// read), so it is forwarded whole instead, and OAP reads it as the client sent it.
pub(crate) fn can_reshape(method: &Method, headers: &http::HeaderMap) -> bool {
    method.shape == Shape::Independent
        || method.shape == Shape::MeterBatch
        || encoding(headers).is_none()
}

fn encoding(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("grpc-encoding")
        .map(|v| v.to_str().unwrap_or("?"))
        .filter(|e| *e != "identity")
}

/// grpc-java's default decompressors, so the only encodings OAP's gRPC server takes.
const OAP_ENCODINGS: [&str; 2] = ["gzip", "identity"];

/// What one stream keeps between its messages.
enum StreamState {
    Independent,
    Events,
    MeterBatch,
    MeterSet {
        set: MeterSet,
        key: Option<Arc<str>>,
    },
    Carried(Carried),
}

/// Where a stream's events go and what they carry in common.
struct Destination {
    route: Arc<Route>,
    /// With `--routing hash`, the request header decides for the whole stream.
    header_key: Option<Arc<str>>,
}

/// Why a stream is answered with an error.
#[derive(Debug)]
pub(crate) struct StreamError(pub Code, pub String);

/// One report stream being received: its messages become events as its data arrives.
pub(crate) struct ReportStream {
    method: &'static Method,
    destination: Destination,
    shape: StreamState,
    decoder: Decoder,
    /// Events made so far (a meter set counts once).
    pub received: u64,
    /// The run number the events of the data last received share: counted per stream
    /// from a number the queue hands out as it opens, not asked of the queue for each DATA
    /// frame (an atomic shared by every connection, and under agents' framing a frame is a
    /// message).
    run: usize,
    /// A unary report's one message, queued only once the call ends with no other.
    held: Option<Event>,
    /// Why the stream is refused before any of it is read.
    refused: Option<StreamError>,
}

impl ReportStream {
    pub fn open<B>(intake: &Intake, method: &'static Method, request: &Request<B>) -> ReportStream {
        let encoding = encoding(request.headers());
        // ServerImpl refuses other encodings with UNIMPLEMENTED: so does the proxy, before
        // acknowledging data no OAP would take.
        let refused = encoding.filter(|e| !OAP_ENCODINGS.contains(e)).map(|e| {
            StreamError(
                Code::Unimplemented,
                format!("skylift-proxy: grpc-encoding {e} is not supported (gzip, identity)"),
            )
        });
        let destination = Destination {
            route: Arc::new(Route {
                path: method.upstream_path(),
                protocol: method.protocol,
                encoding: encoding.map(Into::into),
                alone: method.sends_alone(),
            }),
            header_key: intake.routing.hash_key(request.headers()).map(Into::into),
        };
        let shape = match method.shape {
            Shape::Independent => StreamState::Independent,
            Shape::Events => StreamState::Events,
            Shape::MeterBatch => StreamState::MeterBatch,
            Shape::MeterSet => StreamState::MeterSet {
                set: MeterSet::new(intake.max_message_bytes),
                key: None,
            },
            shape => StreamState::Carried(
                Carried::for_shape(shape).expect("every other shape carries a fact"),
            ),
        };
        ReportStream {
            method,
            destination,
            shape,
            decoder: Decoder::new(intake.max_message_bytes),
            received: 0,
            run: intake.queue.next_run(),
            held: None,
            refused,
        }
    }

    pub fn protocol(&self) -> &'static str {
        self.method.protocol
    }

    /// Why the stream is refused as it opens (an encoding OAP cannot read), if it is.
    pub(crate) fn refusal_at_open(&mut self) -> Option<StreamError> {
        self.refused.take()
    }

    /// Bytes received and held here: a message not yet whole, a unary report waiting for
    /// the call's end, a meter set being gathered. The connection's budget counts them.
    pub(crate) fn buffered(&self) -> usize {
        let set = match &self.shape {
            StreamState::MeterSet { set, .. } => set.buffered(),
            _ => 0,
        };
        self.decoder.buffered() + self.held.as_ref().map_or(0, |e| e.framed.len()) + set
    }

    /// Data received on the stream.
    pub fn push(&mut self, data: Bytes) {
        self.run = self.run.wrapping_add(1);
        self.decoder.push_bytes(data);
    }

    /// The next event the data received so far makes, if any.
    pub(crate) fn next_event(&mut self, intake: &Intake) -> Result<Option<Event>, StreamError> {
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(err) => {
                    let code = if err.grpc_code() == 8 {
                        Code::ResourceExhausted
                    } else {
                        Code::Internal
                    };
                    return Err(StreamError(code, format!("skylift-proxy: {err}")));
                }
            };
            // MessageDeframer: a compressed message needs the stream's grpc-encoding.
            if frame.compressed && self.destination.route.encoding.is_none() {
                return Err(StreamError(
                    Code::Internal,
                    "skylift-proxy: a compressed message without grpc-encoding".into(),
                ));
            }
            // OAP's server parses every message before its handler sees it and closes the
            // stream at one that does not parse, after handling those before it: such a
            // message is refused to its client here rather than queued beside others.
            if !frame.compressed {
                wire::check(frame.message())
                    .map_err(|err| malformed(&self.destination.route, err))?;
            }
            let made = next_event(intake, &self.destination, &mut self.shape, frame)?;
            let Some(mut event) = made else { continue };
            event.run = Some(self.run);
            if self.method.is_unary() {
                // UnaryServerCallHandler: a second message closes the call.
                if self.held.is_some() {
                    return Err(StreamError(Code::Internal, "Too many requests".into()));
                }
                self.held = Some(event);
                continue;
            }
            self.received += 1;
            return Ok(Some(event));
        }
    }

    /// The stream ended: the last event, if one was still being gathered.
    pub fn finish(&mut self) -> Result<Option<Event>, StreamError> {
        if let Err(err) = self.decoder.finish() {
            return Err(StreamError(Code::Internal, format!("skylift-proxy: {err}")));
        }
        if self.method.is_unary() {
            return match self.held.take() {
                Some(event) => {
                    self.received += 1;
                    Ok(Some(event))
                }
                None => Err(StreamError(
                    Code::Internal,
                    "Half-closed without a request".into(),
                )),
            };
        }
        if let StreamState::MeterSet { set, key } = &mut self.shape
            && let Some(collection) = set.finish()
        {
            self.received += 1;
            return Ok(Some(event(
                &self.destination,
                key.clone(),
                None,
                framing::frame(&collection),
            )));
        }
        Ok(None)
    }
}

fn event(
    destination: &Destination,
    key: Option<Arc<str>>,
    origin: Option<Bytes>,
    framed: Bytes,
) -> Event {
    Event {
        route: destination.route.clone(),
        key: destination.header_key.clone().or(key),
        origin,
        framed,
        run: None,
        seq: None,
        attempts: 0,
        unanswered_at: 0,
    }
}

fn malformed(method: &Route, err: WireError) -> StreamError {
    StreamError(
        Code::InvalidArgument,
        format!(
            "skylift-proxy: malformed {} message: {err}",
            method.protocol
        ),
    )
}

/// The event a received message makes, if any yet (a meter set is queued in parts).
fn next_event(
    intake: &Intake,
    destination: &Destination,
    stream: &mut StreamState,
    frame: Frame,
) -> Result<Option<Event>, StreamError> {
    let message = frame.message();
    let route = &destination.route;
    // With round-robin meter routing no key is wanted; a compressed message cannot be read.
    let keyed = intake.routing.fixed_meter_routing && !frame.compressed;
    Ok(match stream {
        StreamState::Independent => Some(event(destination, None, None, frame.framed)),
        StreamState::Events => {
            // EventGrpcServiceHandler closes the whole stream at an event without a layer,
            // losing the events after it: refused here, to its own client only.
            let layer = wire::string_field(message, wire::EVENT_LAYER)
                .map_err(|err| malformed(route, err))?;
            if layer.unwrap_or_default().is_empty() {
                return Err(StreamError(
                    Code::InvalidArgument,
                    "skylift-proxy: Layer field is required since v9.0.0, please upgrade your event report tools".into(),
                ));
            }
            Some(event(destination, None, None, frame.framed))
        }
        StreamState::MeterBatch => {
            let key = if keyed {
                wire::meter_batch_key(message)
                    .map_err(|err| malformed(route, err))?
                    .map(Arc::<str>::from)
            } else {
                None
            };
            Some(event(destination, key, None, frame.framed))
        }
        StreamState::MeterSet { set, key } => {
            if keyed && key.is_none() {
                *key = wire::meter_key(message)
                    .map_err(|err| malformed(route, err))?
                    .map(Arc::<str>::from);
            }
            set.add(message)
                .map_err(|err| malformed(route, err))?
                .map(|collection| {
                    event(destination, key.clone(), None, framing::frame(&collection))
                })
        }
        StreamState::Carried(carried) => {
            let message = frame.framed.slice(framing::HEADER_LEN..);
            let (queued, origin) = carried
                .message(message.clone())
                .map_err(|err| malformed(route, err))?;
            // Only messages that had something written in are new.
            let framed = if queued.as_ptr() == message.as_ptr() && queued.len() == message.len() {
                frame.framed
            } else {
                framing::frame(&queued)
            };
            Some(event(destination, None, origin, framed))
        }
    })
}

/// Queues an event that did not fit at once: waits for room up to `--overflow-wait`, then
/// applies the overflow policy.
pub(crate) async fn queue_waiting(intake: &Intake, event: Event) -> Result<(), StreamError> {
    let protocol = event.route.protocol;
    let copy = intake.federation.as_ref().and_then(|f| f.copy(&event));
    match intake.queue.offer_waiting(event).await {
        Offered::Queued => {
            if let (Some(federation), Some(copy)) = (&intake.federation, copy) {
                federation.offer(copy);
            }
            Ok(())
        }
        Offered::Dropped => {
            intake.metrics.dropped(protocol, DropReason::QueueFull, 1);
            Ok(())
        }
        Offered::Rejected => {
            intake
                .metrics
                .dropped(protocol, DropReason::QueueFullRejected, 1);
            Err(StreamError(
                Code::ResourceExhausted,
                "skylift-proxy: queue full; retry later".into(),
            ))
        }
    }
}
