//! Receiving asynchronous reports: the client's stream is split into messages (framing
//! only), each is queued with its routing key, and the stream is answered with an empty
//! `Commands` when it ends.

use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::framing::Decoder;
use crate::grpc::{self, Body, Code};
use crate::protocol::{KeyPolicy, Method};
use crate::queue::{DropReason, Event, Offered};
use crate::state::State;
use crate::wire;

async fn read_stream(
    state: &State,
    method: &'static Method,
    request: Request<Incoming>,
    received: &mut u64,
) -> http::Response<Body> {
    let path: Arc<str> = request.uri().path().into();
    let encoding: Option<Arc<str>> = request
        .headers()
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .filter(|e| *e != "identity")
        .map(Into::into);
    // With --routing hash, the request header decides for the whole stream.
    let header_key: Option<Arc<str>> = state.hash_key(request.headers()).map(Into::into);
    let mut body = request.into_body();
    let mut decoder = Decoder::new(state.limits.max_message_bytes);
    let mut stream_key: Option<Arc<str>> = None;
    let mut first = true;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            // The client went away mid-stream: nothing more to answer.
            Some(Err(err)) => {
                return grpc::error(
                    Code::Internal,
                    &format!("skylift-proxy: reading the stream: {err}"),
                );
            }
        };
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
                    return grpc::error(code, &format!("skylift-proxy: {err}"));
                }
            };
            // A compressed message cannot be read for its key, and with round-robin meter
            // routing no key is wanted: either way it is balanced like any other.
            let key = if message.compressed || !state.fixed_meter_routing {
                None
            } else {
                let read = match method.key {
                    KeyPolicy::None => Ok(None),
                    KeyPolicy::MeterStream if first => {
                        wire::meter_key(&message.message).map(|k| k.map(Arc::<str>::from))
                    }
                    KeyPolicy::MeterStream => Ok(stream_key.clone()),
                    KeyPolicy::MeterBatch => {
                        wire::meter_batch_key(&message.message).map(|k| k.map(Arc::<str>::from))
                    }
                };
                match read {
                    Ok(key) => key,
                    Err(err) => {
                        return grpc::error(
                            Code::InvalidArgument,
                            &format!(
                                "skylift-proxy: malformed {} message: {err}",
                                method.protocol
                            ),
                        );
                    }
                }
            };
            if first && method.key == KeyPolicy::MeterStream {
                stream_key = key.clone();
            }
            first = false;
            let key = header_key.clone().or(key);
            let event = Event {
                path: path.clone(),
                protocol: method.protocol,
                encoding: encoding.clone(),
                key,
                message: message.message,
            };
            *received += 1;
            match state.queue.offer_waiting(event).await {
                Offered::Queued => {}
                Offered::Dropped => {
                    state
                        .metrics
                        .dropped(method.protocol, DropReason::QueueFull, 1)
                }
                Offered::Rejected => {
                    state
                        .metrics
                        .dropped(method.protocol, DropReason::QueueFullRejected, 1);
                    return grpc::error(
                        Code::ResourceExhausted,
                        "skylift-proxy: queue full; retry later",
                    );
                }
            }
        }
    }
    if let Err(err) = decoder.finish() {
        return grpc::error(Code::Internal, &format!("skylift-proxy: {err}"));
    }
    grpc::empty_commands()
}

/// Receives one report stream; the messages received are counted once per stream (a
/// metrics lookup per message would cost more than the rest of handling it).
pub async fn report(
    state: &State,
    method: &'static Method,
    request: Request<Incoming>,
) -> http::Response<Body> {
    let mut received = 0;
    let response = read_stream(state, method, request, &mut received).await;
    state.metrics.received_many(method.protocol, received);
    response
}
