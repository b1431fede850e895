//! Receiving asynchronous reports: the client's stream is split into messages (framing
//! only), each is queued with its routing key, and the stream is answered with an empty
//! `Commands` when it ends. Streams whose messages depend on each other are made
//! self-contained first (see [`crate::reshape`]).

use std::sync::Arc;

use bytes::Bytes;
use http::Request;

use crate::framing::{self, Decoder, Frame};
use crate::grpc::Code;
use crate::protocol::{Method, Shape};
use crate::queue::{DropReason, Event, Offered, Route};
use crate::reshape::{Identified, MeterSet};
use crate::state::State;
use crate::wire::{self, WireError};

/// Whether a stream of `method` with these headers can be taken apart here. A compressed
/// stream of a shape whose messages must be rewritten cannot (no message can be read), so
/// it is forwarded whole instead.
pub fn can_reshape(method: &Method, headers: &http::HeaderMap) -> bool {
    method.shape == Shape::Independent
        || method.shape == Shape::MeterBatch
        || encoding(headers).is_none()
}

fn encoding(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .filter(|e| *e != "identity")
}

/// What one stream keeps between its messages.
enum StreamState {
    Independent,
    MeterBatch,
    MeterSet {
        set: MeterSet,
        key: Option<Arc<str>>,
    },
    Identified(Identified),
}

/// Where a stream's events go and what they carry in common.
struct Destination {
    route: Arc<Route>,
    /// With `--routing hash`, the request header decides for the whole stream.
    header_key: Option<Arc<str>>,
}

/// Why a stream is answered with an error.
#[derive(Debug)]
pub struct Refusal(pub Code, pub String);

/// One report stream being received: its messages become events as its data arrives.
pub struct ReportStream {
    method: &'static Method,
    destination: Destination,
    shape: StreamState,
    decoder: Decoder,
    /// Events made so far (a meter set counts once).
    pub received: u64,
    /// The chunk last received, and the run number its events share.
    chunk: Bytes,
    run: usize,
}

impl ReportStream {
    pub fn open<B>(state: &State, method: &'static Method, request: &Request<B>) -> ReportStream {
        let path = request.uri().path();
        let destination = Destination {
            route: Arc::new(Route {
                path: match method.shape {
                    // A meter set goes upstream as one collectBatch message.
                    Shape::MeterSet => format!("{path}Batch"),
                    _ => path.to_string(),
                },
                protocol: method.protocol,
                encoding: encoding(request.headers()).map(Into::into),
            }),
            header_key: state.hash_key(request.headers()).map(Into::into),
        };
        let shape = match method.shape {
            Shape::Independent => StreamState::Independent,
            Shape::MeterBatch => StreamState::MeterBatch,
            Shape::MeterSet => StreamState::MeterSet {
                set: MeterSet::new(state.limits.max_message_bytes),
                key: None,
            },
            Shape::Identified => StreamState::Identified(Identified::default()),
        };
        ReportStream {
            method,
            destination,
            shape,
            decoder: Decoder::new(state.limits.max_message_bytes),
            received: 0,
            chunk: Bytes::new(),
            run: 0,
        }
    }

    pub fn protocol(&self) -> &'static str {
        self.method.protocol
    }

    /// Data received on the stream.
    pub fn push(&mut self, state: &State, data: Bytes) {
        self.chunk = data.clone();
        self.run = state.queue.next_run();
        self.decoder.push_bytes(data);
    }

    /// Ties an event to the chunk being received (whether its message is a slice of it
    /// is for the batch that joins them to find out, see [`crate::payload::Joiner`]).
    fn tie_to_chunk(&self, mut event: Event) -> Event {
        event.run = Some(self.run);
        event.chunk = self.chunk.clone();
        event
    }

    /// The next event the data received so far makes, if any.
    pub fn next_event(&mut self, state: &State) -> Result<Option<Event>, Refusal> {
        loop {
            let message = match self.decoder.next_frame() {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(None),
                Err(err) => {
                    let code = if err.grpc_code() == 8 {
                        Code::ResourceExhausted
                    } else {
                        Code::Internal
                    };
                    return Err(Refusal(code, format!("skylift-proxy: {err}")));
                }
            };
            let made =
                next_event(state, &self.destination, &mut self.shape, message).map_err(|err| {
                    Refusal(
                        Code::InvalidArgument,
                        format!(
                            "skylift-proxy: malformed {} message: {err}",
                            self.method.protocol
                        ),
                    )
                })?;
            if let Some(event) = made {
                self.received += 1;
                return Ok(Some(self.tie_to_chunk(event)));
            }
        }
    }

    /// The stream ended: the last event, if one was still being gathered.
    pub fn finish(&mut self) -> Result<Option<Event>, Refusal> {
        if let Err(err) = self.decoder.finish() {
            return Err(Refusal(Code::Internal, format!("skylift-proxy: {err}")));
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
        chunk: framed.clone(),
        framed,
        run: None,
        seq: None,
    }
}

/// The event a received message makes, if any yet (a meter set is queued in parts).
fn next_event(
    state: &State,
    destination: &Destination,
    stream: &mut StreamState,
    frame: Frame,
) -> Result<Option<Event>, WireError> {
    let Frame {
        message, framed, ..
    } = frame;
    // With round-robin meter routing no key is wanted; a compressed message cannot be read.
    let keyed = state.fixed_meter_routing && !frame.compressed;
    Ok(match stream {
        StreamState::Independent => Some(event(destination, None, None, framed)),
        StreamState::MeterBatch => {
            let key = if keyed {
                wire::meter_batch_key(&message)?.map(Arc::<str>::from)
            } else {
                None
            };
            Some(event(destination, key, None, framed))
        }
        StreamState::MeterSet { set, key } => {
            if keyed && key.is_none() {
                *key = wire::meter_key(&message)?.map(Arc::<str>::from);
            }
            set.add(&message)?.map(|collection| {
                event(destination, key.clone(), None, framing::frame(&collection))
            })
        }
        StreamState::Identified(identified) => {
            let (queued, origin) = identified.message(message.clone())?;
            // Only messages that had the identifier written in are new.
            let framed = if queued == message {
                framed
            } else {
                framing::frame(&queued)
            };
            Some(event(destination, None, origin, framed))
        }
    })
}

/// Queues an event that did not fit at once: waits for room up to `--overflow-wait`, then
/// applies the overflow policy.
pub async fn queue_waiting(state: &State, event: Event) -> Result<(), Refusal> {
    let protocol = event.route.protocol;
    match state.queue.offer_waiting(event).await {
        Offered::Queued => Ok(()),
        Offered::Dropped => {
            state.metrics.dropped(protocol, DropReason::QueueFull, 1);
            Ok(())
        }
        Offered::Rejected => {
            state
                .metrics
                .dropped(protocol, DropReason::QueueFullRejected, 1);
            Err(Refusal(
                Code::ResourceExhausted,
                "skylift-proxy: queue full; retry later".into(),
            ))
        }
    }
}
