//! OTLP exports sent by affinity (`--otlp-affinity`): each export is taken apart (see
//! [`crate::grpc::otlp`]) and each part sent to the upstream its keys hash to among the
//! healthy ones (rendezvous hashing, so a collector added or lost moves only its share of
//! the keys), all parts at once. The client is answered once every part is: success when
//! every collector took its part, OTLP's `partial_success` counting what was refused or
//! could not be delivered when some did, and the first collector's status when none did
//! (so the client retries a request nothing took, and never one partly taken).
//!
//! A part whose collector cannot be reached is split again over the collectors not yet
//! tried (its keys move to their next choice, as they will for later exports while that
//! collector is ejected). A collector that answers with an error refused the data: that is
//! not a reason to eject it or to send the data elsewhere.
//!
//! An export the proxy cannot read (several messages, an unknown compression, not an
//! export request) is forwarded whole round-robin, as without affinity, and counted.

use std::time::Instant;

use http::{HeaderMap, Request, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::balance::route::{Upstream, rendezvous_bytes};
use crate::balance::upstream_set::untried;
use crate::grpc::message::{self, Decoded};
use crate::grpc::otlp::{self, Part, Signal};
use crate::grpc::{self, Body, Code};
use crate::h2::RequestBody;
use crate::upstream::Pool;
use crate::upstream::forward::{self, Attempt};
use crate::upstream::request::upstream_body;

/// How exports are routed with `--otlp-affinity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpAffinity {
    /// The resource attribute a metrics export's resources are routed by.
    pub metrics_attribute: String,
    pub logs: LogsRouting,
}

/// How logs exports are routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogsRouting {
    /// Whole, to the next upstream.
    RoundRobin,
    /// Split by their records' trace IDs, like spans.
    TraceId,
}

/// Rounds of sending: the first, and the retries of parts whose collector could not be
/// reached, each over the collectors not yet tried.
const ROUNDS: usize = 3;

/// The largest answer read from a collector (an export answer is a few bytes, more only
/// with a partial success's message).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// What one part's collector made of it.
enum Sent {
    /// Taken, with what its partial success says was rejected (count, message).
    Taken(u64, Option<String>),
    /// Refused with a gRPC status.
    Refused(u16, String),
    /// Could not be reached, or broke off before answering.
    Unreachable(String),
    /// The client's deadline passed first.
    Late,
}

/// What became of an export's items, and what the client is told.
#[derive(Default)]
struct Tally {
    taken_parts: usize,
    forwarded: u64,
    refused: u64,
    failed: u64,
    /// The first status a collector refused a part with.
    first_refusal: Option<(u16, String)>,
    /// The latest reason a collector could not be reached.
    unreachable: Option<String>,
    late: bool,
    /// What collectors' partial successes said.
    partial_messages: Vec<String>,
}

impl Tally {
    fn settle(&mut self, part_items: u64, upstream: &str, sent: Sent) {
        match sent {
            Sent::Taken(rejected, message) => {
                self.taken_parts += 1;
                let rejected = rejected.min(part_items);
                self.forwarded += part_items - rejected;
                self.refused += rejected;
                if let Some(message) = message {
                    self.partial_messages.push(format!("{upstream}: {message}"));
                }
            }
            Sent::Refused(code, message) => {
                self.refused += part_items;
                self.first_refusal
                    .get_or_insert((code, format!("{upstream}: {message}")));
            }
            Sent::Unreachable(reason) => {
                self.failed += part_items;
                self.unreachable = Some(reason);
            }
            Sent::Late => {
                self.failed += part_items;
                self.late = true;
            }
        }
    }

    /// The client's answer.
    fn answer(&self, signal: Signal) -> Response<Body> {
        let lost = self.refused + self.failed;
        if self.taken_parts == 0 {
            // Nothing was taken: the status lets the client retry it all, as it would
            // have without the proxy.
            if let Some((code, message)) = &self.first_refusal {
                return grpc::error(*code, message);
            }
            if self.late {
                return forward::deadline_exceeded();
            }
            let reason = self.unreachable.as_deref().unwrap_or("no upstream is available");
            return grpc::error(Code::Unavailable, &format!("skylift-proxy: {reason}"));
        }
        if lost == 0 && self.partial_messages.is_empty() {
            return grpc::answer(&[]);
        }
        let mut message = format!(
            "skylift-proxy: {lost} {} of {} not taken",
            signal.items(),
            self.forwarded + lost
        );
        let reasons = self
            .first_refusal
            .as_ref()
            .map(|(_, message)| message.clone())
            .into_iter()
            .chain(self.unreachable.clone())
            .chain(self.partial_messages.iter().cloned());
        for reason in reasons {
            message.push_str("; ");
            message.push_str(&reason);
        }
        grpc::answer(&otlp::response(lost, &message))
    }
}

/// Takes `message` apart for `candidates`: each part's target is an index into them.
/// Items without a key (spans or records outside a trace, resources without the
/// attribute, all logs with round-robin) go to `unkeyed`.
fn split(
    affinity: &OtlpAffinity,
    signal: Signal,
    message: &[u8],
    candidates: &[Upstream],
    unkeyed: usize,
) -> Result<Vec<Part>, crate::grpc::wire::WireError> {
    let by_key = |key: &[u8]| {
        if key.is_empty() {
            unkeyed
        } else {
            rendezvous_bytes(key, candidates).unwrap_or(unkeyed)
        }
    };
    match signal {
        Signal::Traces => otlp::split_traces(message, by_key),
        Signal::Logs if affinity.logs == LogsRouting::TraceId => otlp::split_logs(message, by_key),
        Signal::Logs => otlp::split_logs(message, |_| unkeyed),
        Signal::Metrics => otlp::split_metrics(message, &affinity.metrics_attribute, |value| {
            by_key(value.unwrap_or_default().as_bytes())
        }),
    }
}

/// The upstreams a round may use: healthy, not yet tried, and the round-robin pick among
/// them for unkeyed items; `None` when there is none.
fn choose_candidates(pool: &Pool, tried: &[String]) -> Option<(Vec<Upstream>, usize)> {
    let now = Instant::now();
    let upstreams = pool.upstreams.snapshot();
    let healthy = pool.balancer.healthy(&upstreams, now);
    let candidates = untried(&healthy, tried);
    let next = pool.balancer.pick(None, &candidates, now)?;
    let unkeyed = candidates
        .iter()
        .position(|c| c.address == next.address)
        .unwrap_or(0);
    Some((candidates, unkeyed))
}

/// Answers an OTLP export of `signal`, sent by affinity.
pub(crate) async fn export(
    pool: &Pool,
    affinity: &OtlpAffinity,
    signal: Signal,
    request: Request<RequestBody>,
) -> Response<Body> {
    let deadline = grpc::timeout(request.headers()).map(|d| tokio::time::Instant::now() + d);
    let (parts, body) = request.into_parts();
    let body = match forward::read_body(pool, body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let encoding = parts
        .headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok());
    let whole = |reason: &'static str| {
        pool.metrics.otlp_forwarded_whole(signal.name(), reason);
        forward::send_whole(pool, None, None, &parts, body.clone(), deadline)
    };
    let message = match message::single(&body, encoding, pool.max_message_bytes) {
        Decoded::Message(message) => message,
        Decoded::TooLarge => {
            return grpc::error(
                Code::ResourceExhausted,
                "skylift-proxy: request larger than --max-message-bytes once decompressed",
            );
        }
        Decoded::Unreadable(reason) => return whole(reason).await,
    };
    let Some((candidates, unkeyed)) = choose_candidates(pool, &[]) else {
        return grpc::error(Code::Unavailable, "skylift-proxy: no upstream is available");
    };
    let Ok(first) = split(affinity, signal, &message, &candidates, unkeyed) else {
        return whole("malformed").await;
    };
    let headers = part_headers(&parts.headers);
    let path = parts.uri.path();
    // Parts are sent within the client's deadline, else within the pool's call and answer
    // timeouts: a collector that never answers must not hold the client forever.
    let deadline = deadline.unwrap_or_else(|| {
        tokio::time::Instant::now() + pool.delivery.call_timeout + pool.delivery.answer_timeout
    });
    let mut tally = Tally::default();
    let mut tried: Vec<String> = Vec::new();
    let mut round: Vec<(String, Part)> = first
        .into_iter()
        .map(|part| (candidates[part.target].address.clone(), part))
        .collect();
    for attempt in 1..=ROUNDS {
        let mut sends = Vec::with_capacity(round.len());
        for (upstream, part) in &round {
            sends.push(send_part(
                pool,
                upstream,
                path,
                &headers,
                &part.request,
                deadline,
            ));
        }
        let results = futures::future::join_all(sends).await;
        let mut again: Vec<Part> = Vec::new();
        for ((upstream, part), sent) in round.drain(..).zip(results) {
            match sent {
                Sent::Unreachable(reason) if attempt < ROUNDS => {
                    tried.push(upstream);
                    tally.unreachable = Some(reason);
                    again.push(part);
                }
                sent => tally.settle(part.items, &upstream, sent),
            }
        }
        if again.is_empty() {
            break;
        }
        let Some((candidates, unkeyed)) = choose_candidates(pool, &tried) else {
            for part in again {
                tally.failed += part.items;
            }
            break;
        };
        for part in again {
            // Each part parsed once already; it parses again.
            match split(affinity, signal, &part.request, &candidates, unkeyed) {
                Ok(parts) => round.extend(
                    parts
                        .into_iter()
                        .map(|p| (candidates[p.target].address.clone(), p)),
                ),
                Err(_) => tally.failed += part.items,
            }
        }
    }
    let metrics = &pool.metrics;
    metrics.otlp_items(signal.name(), "forwarded", tally.forwarded);
    metrics.otlp_items(signal.name(), "refused", tally.refused);
    metrics.otlp_items(signal.name(), "failed", tally.failed);
    tally.answer(signal)
}

/// The client's headers for a part: its body is re-encoded uncompressed, so neither its
/// length nor its encoding carry over, and the collector is asked for a plain answer.
fn part_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove("grpc-encoding");
    headers.remove("grpc-accept-encoding");
    headers
}

/// A collector's whole answer: its data (at most [`MAX_ANSWER_BYTES`]) and trailers.
async fn read_answer(mut body: Body) -> Result<(Bytes, Option<HeaderMap>), String> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| format!("broke off: {err}"))?;
        match frame.into_data() {
            Ok(chunk) if data.len() + chunk.len() > MAX_ANSWER_BYTES => {
                return Err("answer larger than 64 KiB".into());
            }
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((data.freeze(), trailers))
}

/// Sends one part to `upstream` and reads what it made of it.
async fn send_part(
    pool: &Pool,
    upstream: &str,
    path: &str,
    headers: &HeaderMap,
    part: &[u8],
    deadline: tokio::time::Instant,
) -> Sent {
    let Ok(uri) = format!("http://{upstream}{path}").parse() else {
        return Sent::Unreachable(format!("cannot address upstream {upstream}"));
    };
    let mut request = Request::new(upstream_body(message::frame(part)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers.clone();
    let response = match forward::attempt(pool, upstream, request, Some(deadline)).await {
        Attempt::Answered(response) => response,
        Attempt::DeadlineExceeded => return Sent::Late,
        Attempt::Failed(reason) => return Sent::Unreachable(reason),
    };
    let (head, body) = response.into_parts();
    let (answer, trailers) = match tokio::time::timeout_at(deadline, read_answer(body)).await {
        Ok(Ok(read)) => read,
        Ok(Err(reason)) => return Sent::Unreachable(format!("upstream {upstream}: {reason}")),
        Err(_) => return Sent::Late,
    };
    let code = grpc::status_of(&head.headers, trailers.as_ref());
    let message = grpc::message_of(&head.headers, trailers.as_ref());
    match code {
        Some(0) => {}
        Some(code) => return Sent::Refused(code, message),
        None => {
            return Sent::Refused(
                grpc::status_of_http(head.status),
                format!("answered HTTP {} without a gRPC status", head.status),
            );
        }
    }
    let encoding = head
        .headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok());
    // An empty body is an answer of defaults: full success.
    if answer.is_empty() {
        return Sent::Taken(0, None);
    }
    match message::single(&answer, encoding, MAX_ANSWER_BYTES) {
        Decoded::Message(bytes) => match otlp::rejected(&bytes) {
            Ok((rejected, message)) => Sent::Taken(rejected, message),
            // The status said OK: the data was taken, whatever else the answer holds.
            Err(_) => Sent::Taken(0, None),
        },
        _ => Sent::Taken(0, None),
    }
}
