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

pub(crate) mod grpc;
pub(crate) mod http;

use std::time::Instant;

use ::http::HeaderMap;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::balance::route::{Rendezvous, Upstream};
use crate::balance::upstream_set::untried;
use crate::grpc::otlp::{self, Part, Signal};
use crate::upstream::Pool;

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
pub(crate) const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Why a collector's answer could not be read whole.
pub(crate) enum AnswerError {
    /// Over [`MAX_ANSWER_BYTES`].
    TooLarge,
    /// The connection broke off, and why.
    BrokeOff(String),
}

/// A collector's whole answer (gRPC or HTTP): its data, at most [`MAX_ANSWER_BYTES`], and
/// its trailers.
pub(crate) async fn read_answer<B>(body: B) -> Result<(Bytes, Option<HeaderMap>), AnswerError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| AnswerError::BrokeOff(err.to_string()))?;
        match frame.into_data() {
            Ok(chunk) if data.len() + chunk.len() > MAX_ANSWER_BYTES => {
                return Err(AnswerError::TooLarge);
            }
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((data.freeze(), trailers))
}

/// What one part's collector made of it.
pub(crate) enum Sent {
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
pub(crate) struct Tally {
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

    /// What the client is told, whatever the transport.
    pub(crate) fn outcome(&self, signal: Signal) -> Outcome {
        let lost = self.refused + self.failed;
        if self.taken_parts == 0 {
            // Nothing was taken: a failure lets the client retry it all, as it would
            // have without the proxy.
            if let Some((code, message)) = &self.first_refusal {
                return Outcome::Refused(*code, message.clone());
            }
            if self.late {
                return Outcome::Late;
            }
            let reason = self
                .unreachable
                .as_deref()
                .unwrap_or("no upstream is available");
            return Outcome::Unreachable(format!("skylift-proxy: {reason}"));
        }
        if lost == 0 && self.partial_messages.is_empty() {
            return Outcome::Taken;
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
        Outcome::Partial(lost, message)
    }
}

/// What an export sent by affinity comes to.
pub(crate) enum Outcome {
    /// Every item taken.
    Taken,
    /// Some taken: OTLP's partial success, with the count of the rest and why.
    Partial(u64, String),
    /// Nothing taken: the first collector's refusal (a gRPC code, or an HTTP status over
    /// HTTP) and its message.
    Refused(u16, String),
    /// Nothing taken before the client's deadline.
    Late,
    /// No collector could be reached.
    Unreachable(String),
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
    let rendezvous = Rendezvous::new(candidates);
    let by_trace = |trace_id: &[u8]| {
        if trace_id.is_empty() {
            unkeyed
        } else {
            rendezvous.pick_trace(trace_id).unwrap_or(unkeyed)
        }
    };
    let by_value = |value: &[u8]| {
        if value.is_empty() {
            unkeyed
        } else {
            rendezvous.pick(value).unwrap_or(unkeyed)
        }
    };
    match signal {
        Signal::Traces => otlp::split_traces(message, by_trace),
        Signal::Logs if affinity.logs == LogsRouting::TraceId => {
            otlp::split_logs(message, by_trace)
        }
        Signal::Logs => otlp::split_logs(message, |_| unkeyed),
        Signal::Metrics => otlp::split_metrics(message, &affinity.metrics_attribute, |value| {
            by_value(value.unwrap_or_default().as_bytes())
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

/// Why an export was not sent by affinity.
pub(crate) enum NotSplit {
    /// No upstream can be tried.
    NoUpstream,
    /// It is not an export request the proxy can take apart: sent whole instead.
    Malformed,
}

/// Sends `message`'s parts by affinity, each with `send` (upstream, the part framed as a
/// gRPC message: [`Part::framed`]), all at once,
/// and the parts of collectors that could not be reached again over the others; the
/// items' fate is counted in the proxy's metrics.
pub(crate) async fn deliver<F, Fut>(
    pool: &Pool,
    affinity: &OtlpAffinity,
    signal: Signal,
    message: &[u8],
    send: F,
) -> Result<Tally, NotSplit>
where
    F: Fn(String, Bytes) -> Fut,
    Fut: std::future::Future<Output = Sent>,
{
    let Some((candidates, unkeyed)) = choose_candidates(pool, &[]) else {
        return Err(NotSplit::NoUpstream);
    };
    let Ok(first) = split(affinity, signal, message, &candidates, unkeyed) else {
        return Err(NotSplit::Malformed);
    };
    let mut tally = Tally::default();
    let mut tried: Vec<String> = Vec::new();
    let mut round: Vec<(String, Part)> = first
        .into_iter()
        .map(|part| (candidates[part.target].address.clone(), part))
        .collect();
    for attempt in 1..=ROUNDS {
        let mut sends = Vec::with_capacity(round.len());
        for (upstream, part) in &round {
            sends.push(send(upstream.clone(), part.framed.clone()));
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
            match split(affinity, signal, &part.request(), &candidates, unkeyed) {
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
    Ok(tally)
}
