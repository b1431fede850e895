//! Receiving asynchronous reports: the client's stream is split into messages (framing
//! only), each is queued with its routing key, and the stream is answered with an empty
//! `Commands` when it ends. Streams whose messages depend on each other are made
//! self-contained first (see [`crate::reshape`]).

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::framing::{Decoder, Frame};
use crate::grpc::{self, Body, Code};
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
struct Refusal(Code, String);

async fn read_stream(
    state: &State,
    method: &'static Method,
    request: Request<Incoming>,
    received: &mut u64,
) -> Result<(), Refusal> {
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
    let mut stream = match method.shape {
        Shape::Independent => StreamState::Independent,
        Shape::MeterBatch => StreamState::MeterBatch,
        Shape::MeterSet => StreamState::MeterSet {
            set: MeterSet::new(state.limits.max_message_bytes),
            key: None,
        },
        Shape::Identified => StreamState::Identified(Identified::default()),
    };
    let malformed = |err: WireError| {
        Refusal(
            Code::InvalidArgument,
            format!(
                "skylift-proxy: malformed {} message: {err}",
                method.protocol
            ),
        )
    };
    let mut body = request.into_body();
    let mut decoder = Decoder::new(state.limits.max_message_bytes);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            Refusal(
                Code::Internal,
                format!("skylift-proxy: reading the stream: {err}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.push_bytes(data);
        loop {
            let message = match decoder.next_frame() {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(err) => {
                    let code = if err.grpc_code() == 8 {
                        Code::ResourceExhausted
                    } else {
                        Code::Internal
                    };
                    return Err(Refusal(code, format!("skylift-proxy: {err}")));
                }
            };
            if let Some(event) =
                next_event(state, &destination, &mut stream, message).map_err(malformed)?
            {
                *received += 1;
                queue(state, event).await?;
            }
        }
    }
    if let Err(err) = decoder.finish() {
        return Err(Refusal(Code::Internal, format!("skylift-proxy: {err}")));
    }
    if let StreamState::MeterSet { set, key } = &mut stream
        && let Some(collection) = set.finish()
    {
        *received += 1;
        queue(state, event(&destination, key.clone(), None, collection)).await?;
    }
    Ok(())
}

fn event(
    destination: &Destination,
    key: Option<Arc<str>>,
    origin: Option<Bytes>,
    message: Bytes,
) -> Event {
    Event {
        route: destination.route.clone(),
        key: destination.header_key.clone().or(key),
        origin,
        message,
    }
}

/// The event a received message makes, if any yet (a meter set is queued in parts).
fn next_event(
    state: &State,
    destination: &Destination,
    stream: &mut StreamState,
    frame: Frame,
) -> Result<Option<Event>, WireError> {
    let message = frame.message;
    // With round-robin meter routing no key is wanted; a compressed message cannot be read.
    let keyed = state.fixed_meter_routing && !frame.compressed;
    Ok(match stream {
        StreamState::Independent => Some(event(destination, None, None, message)),
        StreamState::MeterBatch => {
            let key = if keyed {
                wire::meter_batch_key(&message)?.map(Arc::<str>::from)
            } else {
                None
            };
            Some(event(destination, key, None, message))
        }
        StreamState::MeterSet { set, key } => {
            if keyed && key.is_none() {
                *key = wire::meter_key(&message)?.map(Arc::<str>::from);
            }
            set.add(&message)?
                .map(|collection| event(destination, key.clone(), None, collection))
        }
        StreamState::Identified(identified) => {
            let (message, origin) = identified.message(message)?;
            Some(event(destination, None, origin, message))
        }
    })
}

async fn queue(state: &State, event: Event) -> Result<(), Refusal> {
    let protocol = event.route.protocol;
    // The wait for room is the rare path; boxed, its timer and wake-up registration do not
    // weigh on every stream's future.
    let event = match state.queue.try_offer(event) {
        Ok(()) => return Ok(()),
        Err(event) => event,
    };
    match Box::pin(state.queue.offer_waiting(event)).await {
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

/// Receives one report stream; the events queued are counted once per stream (a metrics
/// lookup per message would cost more than the rest of handling it). A meter `collect`
/// stream counts as the sets it was queued as.
pub async fn report(
    state: &State,
    method: &'static Method,
    request: Request<Incoming>,
) -> http::Response<Body> {
    let mut received = 0;
    let outcome = read_stream(state, method, request, &mut received).await;
    state.metrics.received_many(method.protocol, received);
    match outcome {
        Ok(()) => grpc::empty_commands(),
        Err(Refusal(code, message)) => grpc::error(code, &message),
    }
}
