//! Sending queued reports: each partition takes a batch and groups it by method, routing
//! key and origin. A group of a streaming method goes as one client stream; every report
//! of a unary method goes as a unary call of its own (OAP's unary handlers take exactly
//! one message), many at once over the upstream connections. Groups go out concurrently.
//!
//! What an upstream answers decides what happens to the data ([`grpc::verdict`]):
//! - accepted: forwarded;
//! - refused (a status it would give that data anywhere): counted
//!   `dropped{reason="refused_by_upstream"}` and logged. A refusal never ejects the
//!   upstream: it answered. UNIMPLEMENTED refuses the method before any message is read,
//!   so it is asked of one more upstream first (another OAP version or receiver set may
//!   serve it). Any other refusal comes at a message, after OAP handled the ones before it:
//!   asking another upstream would repeat those, so a refused batch is instead sent again
//!   report by report, once, and only its refused reports are dropped (the reports before
//!   the refused one reach OAP twice: the price of not losing the ones after it);
//! - failed (unavailable, timed out, connection lost): the upstream is ejected and another
//!   tried (three attempts, with backoff); what still fails goes back to the front of its
//!   partition, so nothing acknowledged is lost while an upstream is up, and is sent again
//!   after a backoff that doubles up to 5 s. Each failed call that may have reached OAP
//!   counts against the events it carried ([`crate::upstream::delivery`]): past their
//!   budget they are dropped and counted `retries_exhausted`, so a slow OAP gets at most
//!   that many copies of a report. A call whose request OAP took waits for the answer
//!   (`answer_timeout`) rather than being sent again; one left unanswered makes that
//!   upstream the last choice for those events, and a second one there drops them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::balance::route;
use crate::balance::route::Upstream;
use crate::balance::upstream_set::untried;
use crate::grpc::{self, Verdict};
use crate::queue::Queue;
use crate::queue::{Batch, DropReason, Event};
use crate::upstream::Pool;
use crate::upstream::client::CallError;
use crate::upstream::delivery::{Failures, timeout_bit};
use crate::upstream::driven::Call;
use crate::upstream::payload::{Gathered, Payload, Progress};

/// Attempts on different upstreams that fail before the data is put back.
const FAILURE_ATTEMPTS: usize = 3;
/// Upstreams that must refuse a method before its reports are given up on.
const REFUSAL_ATTEMPTS: usize = 2;
/// Unary calls one sender keeps in flight.
const UNARY_IN_FLIGHT: usize = 64;

/// What one sender works with: the queue it empties and the upstreams it sends to.
#[derive(Clone)]
struct Sender {
    queue: Arc<Queue>,
    pool: Arc<Pool>,
}

/// Starts the senders: `in_flight` per partition, each sending one batch at a time, so a
/// partition keeps that many batches going. They end once `closed` turns true and the
/// queue is empty.
pub fn spawn_senders(
    queue: &Arc<Queue>,
    pool: &Arc<Pool>,
    closed: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let sender = Sender {
        queue: queue.clone(),
        pool: pool.clone(),
    };
    let in_flight = queue.config().in_flight.max(1);
    (0..queue.partitions())
        .flat_map(|partition| std::iter::repeat_n(partition, in_flight))
        .map(|partition| tokio::spawn(run_partition(sender.clone(), partition, closed.clone())))
        .collect()
}

/// Runs one of a partition's senders until the queue is closed and empty.
async fn run_partition(
    sender: Sender,
    partition: usize,
    closed: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    while let Some(batch) = sender.queue.next_batch(partition, &closed).await {
        if send_batch(&sender, batch).await {
            backoff = Duration::from_millis(100);
        } else {
            // Nothing could be sent: wait before taking the same events again.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Whether two events can go in the same upstream stream: same method, encoding, routing
/// key and origin. Consecutive events nearly always share the method, so comparing with
/// the groups found so far (a handful) is cheaper than hashing every event's path.
fn same_stream(a: &Event, b: &Event) -> bool {
    (std::sync::Arc::ptr_eq(&a.route, &b.route) || a.route == b.route)
        && a.key == b.key
        && a.origin == b.origin
}

/// Sends a batch; false when some of it had to be put back.
async fn send_batch(sender: &Sender, batch: Batch) -> bool {
    let partition = batch.partition;
    // Usually the whole batch is one group: no regrouping then.
    if batch
        .events
        .iter()
        .all(|e| same_stream(&batch.events[0], e))
    {
        return send_group(sender, partition, batch.events).await;
    }
    let mut groups: Vec<Vec<Event>> = Vec::new();
    for event in batch.events {
        match groups.iter_mut().rev().find(|g| same_stream(&g[0], &event)) {
            Some(group) => group.push(event),
            None => groups.push(vec![event]),
        }
    }
    let sent = futures::future::join_all(
        groups
            .into_iter()
            .map(|events| send_group(sender, partition, events)),
    )
    .await;
    sent.into_iter().all(|sent| sent)
}

/// Sends one group: as one stream, or call by call (see [`crate::queue::Route::alone`]).
async fn send_group(sender: &Sender, partition: usize, mut events: Vec<Event>) -> bool {
    if events[0].route.alone {
        return each_alone(sender, partition, events).await;
    }
    match deliver(sender, partition, &mut events).await {
        Delivery::Refused { code, message }
            if events.len() > 1 && !grpc::refuses_the_method(code) =>
        {
            // Which of them? Each alone: one call per report, and only on this path.
            sender
                .pool
                .metrics
                .upstream_refused(events[0].route.protocol, code);
            tracing::debug!(code, %message, events = events.len(), "a batch was refused; sending its reports one by one");
            each_alone(sender, partition, events).await
        }
        delivery => settle(sender, partition, events, delivery),
    }
}

/// Sends every event as a call of its own, many at once, and settles them together.
async fn each_alone(sender: &Sender, partition: usize, events: Vec<Event>) -> bool {
    let deliveries: Vec<(Event, Delivery)> =
        futures::stream::iter(events.into_iter().map(|mut event| async move {
            let delivery = deliver(sender, partition, std::slice::from_mut(&mut event)).await;
            (event, delivery)
        }))
        .buffer_unordered(UNARY_IN_FLIGHT)
        .collect()
        .await;
    let mut sent = Vec::new();
    // By what their failed calls did (reached OAP, left unanswered where).
    let mut failed: Vec<(Failures, Vec<Event>)> = Vec::new();
    let mut refused: Vec<(u16, String, Vec<Event>)> = Vec::new();
    for (event, delivery) in deliveries {
        match delivery {
            Delivery::Sent => sent.push(event),
            Delivery::Failed(failures) => match failed.iter_mut().find(|(f, _)| *f == failures) {
                Some((_, events)) => events.push(event),
                None => failed.push((failures, vec![event])),
            },
            Delivery::Refused { code, message } => {
                match refused.iter_mut().find(|(c, ..)| *c == code) {
                    Some((.., events)) => events.push(event),
                    None => refused.push((code, message, vec![event])),
                }
            }
        }
    }
    if !sent.is_empty() {
        settle(sender, partition, sent, Delivery::Sent);
    }
    for (code, message, events) in refused {
        settle(
            sender,
            partition,
            events,
            Delivery::Refused { code, message },
        );
    }
    let mut all_settled = true;
    for (failures, events) in failed {
        all_settled &= settle(sender, partition, events, Delivery::Failed(failures));
    }
    all_settled
}

/// What became of one call's events.
enum Delivery {
    Sent,
    /// The data was refused (a method by `REFUSAL_ATTEMPTS` upstreams or every one
    /// reachable; messages by the first upstream that read them).
    Refused {
        code: u16,
        message: String,
    },
    /// Every try failed; what that spends of the events' budget (see
    /// [`crate::upstream::delivery`]).
    Failed(Failures),
}

/// Accounts for a delivery; false when some events were put back.
fn settle(sender: &Sender, partition: usize, events: Vec<Event>, delivery: Delivery) -> bool {
    let protocol = events[0].route.protocol;
    let n = events.len() as u64;
    match delivery {
        Delivery::Sent => {
            sender.pool.metrics.forwarded(protocol, n);
            sender.queue.forwarded(Batch { partition, events });
            true
        }
        Delivery::Refused { code, message } => {
            sender.pool.metrics.upstream_refused(protocol, code);
            sender
                .pool
                .metrics
                .dropped(protocol, DropReason::RefusedByUpstream, n);
            sender
                .pool
                .refusal_log
                .refused(&events[0].route.path, code, &message, n);
            sender
                .queue
                .dropped(Batch { partition, events }, DropReason::RefusedByUpstream);
            true
        }
        Delivery::Failed(failures) => {
            let (exhausted, again) = sender.pool.delivery.charge(events, failures);
            if !exhausted.is_empty() {
                let n = exhausted.len() as u64;
                sender
                    .pool
                    .metrics
                    .dropped(protocol, DropReason::RetriesExhausted, n);
                sender.pool.refusal_log.exhausted(
                    &exhausted[0].route.path,
                    n,
                    sender.pool.delivery.attempts,
                );
                sender.queue.dropped(
                    Batch {
                        partition,
                        events: exhausted,
                    },
                    DropReason::RetriesExhausted,
                );
            }
            if again.is_empty() {
                return true;
            }
            sender.queue.put_back(
                Batch {
                    partition,
                    events: again,
                },
                failures.reached > 0,
            );
            false
        }
    }
}

/// Sends `events` as one call, trying other upstreams while it fails, or while the
/// method is refused.
async fn deliver(sender: &Sender, partition: usize, events: &mut [Event]) -> Delivery {
    if let [one] = events {
        let body = Payload::Contiguous(one.framed.clone());
        return deliver_body(sender, partition, events, body).await;
    }
    // Gathered, not copied: each message is written from the buffer it arrived in. The
    // messages are lent to the batch for the delivery (a reference count apiece saved)
    // and given back to their events after it.
    let lent = Gathered::lend(events.iter_mut().map(|e| std::mem::take(&mut e.framed)));
    let delivery = deliver_body(sender, partition, events, Payload::Gathered(lent.clone())).await;
    lent.give_back(events.iter_mut().map(|e| &mut e.framed));
    delivery
}

/// Sends `body`, the messages of `events`, as [`deliver`] says.
async fn deliver_body(
    sender: &Sender,
    partition: usize,
    events: &[Event],
    body: Payload,
) -> Delivery {
    let (route, key) = (&events[0].route, events[0].key.as_deref());
    let mut tried: Vec<Upstream> = Vec::new();
    let (mut failures, mut refusal) = (0, None::<(u16, String)>);
    let (mut refusals, mut reached) = (0, 0u16);
    // Upstreams that left a call with these events unanswered, before and in this delivery.
    let mut unanswered = 0u32;
    let unanswered_before = events.iter().fold(0, |mask, e| mask | e.unanswered_at);
    let mut unanswered_again = 0u32;
    // This delivery's own, by address: two upstreams sharing a bit are told apart here
    // (across deliveries only the mask is left, and a shared bit errs on the side of fewer
    // copies).
    let mut unanswered_here: Vec<String> = Vec::new();
    // Tries that may deliver stop where the events' budget ends, not at the end of a round.
    let budget_left = sender
        .pool
        .delivery
        .left(events.iter().map(|e| e.attempts).max().unwrap_or(0));
    while failures < FAILURE_ATTEMPTS && refusals < REFUSAL_ATTEMPTS && reached < budget_left {
        let upstreams = sender.pool.upstreams.snapshot();
        let remaining: Vec<Upstream> = if tried.is_empty() {
            Vec::new()
        } else {
            untried(&upstreams, &tried)
        };
        let candidates = match (tried.is_empty(), remaining.is_empty(), &refusal) {
            // The first attempt: every upstream, uncopied.
            (true, ..) => &upstreams[..],
            (false, false, _) => &remaining[..],
            // A refusal is asked of another upstream only; with none left, it stands.
            (false, true, Some(_)) => break,
            // With fewer upstreams than attempts, those tried are tried again.
            (false, true, None) => &upstreams[..],
        };
        // Those that left these events unanswered go last: another upstream first.
        let answering: Vec<Upstream>;
        let candidates = match unanswered_before | unanswered {
            0 => candidates,
            avoided => {
                answering = candidates
                    .iter()
                    .filter(|u| timeout_bit(&u.address) & avoided == 0)
                    .cloned()
                    .collect();
                if answering.is_empty() {
                    candidates
                } else {
                    &answering[..]
                }
            }
        };
        let Some(upstream) = sender.pool.balancer.pick_in_lane(
            route::lane(partition, &route.path),
            key,
            candidates,
            Instant::now(),
        ) else {
            break;
        };
        tried.push(upstream);
        let upstream = tried.last().expect("just tried");
        let started = Instant::now();
        let outcome = call(sender, &upstream.address, route, body.clone()).await;
        let took = started.elapsed();
        sender
            .pool
            .metrics
            .sent(&upstream.address, took.as_secs_f64());
        match outcome {
            Outcome::Answered(Verdict::Accepted, ..) => {
                sender.pool.balancer.succeeded(&upstream.address);
                sender.pool.outliers.observe(&upstream.address, took);
                return Delivery::Sent;
            }
            // It answered: healthy, whatever it thinks of the data.
            Outcome::Answered(Verdict::Refused, code, message) => {
                sender.pool.balancer.succeeded(&upstream.address);
                tracing::debug!(upstream = %upstream.address, path = %route.path, code, %message, "upstream refused the data");
                refusals += 1;
                let of_the_method = grpc::refuses_the_method(code);
                refusal = Some((code, message));
                if !of_the_method {
                    break;
                }
            }
            Outcome::Answered(Verdict::Failed, code, message) => {
                tracing::debug!(upstream = %upstream.address, path = %route.path, code, %message, "upstream failed the call");
                // Failing after it may have handled the data is a slow or struggling node,
                // judged against its peers; failing before, it cannot take calls.
                let after_handling = grpc::may_have_processed(code);
                reached += u16::from(after_handling);
                let failure = if after_handling {
                    Failure::Slow(took)
                } else {
                    Failure::Connection
                };
                failed(sender, &upstream.address, failure, &mut failures).await;
            }
            Outcome::Broken {
                reason,
                sent,
                timed_out,
                taken,
            } => {
                tracing::debug!(upstream = %upstream.address, path = %route.path, %reason, sent, taken, "the call broke off");
                reached += u16::from(sent);
                // OAP took the data and never answered: sent there again at most once.
                let mut again_there = false;
                if timed_out && taken {
                    let bit = timeout_bit(&upstream.address);
                    if unanswered_before & bit != 0 || unanswered_here.contains(&upstream.address) {
                        unanswered_again |= bit;
                        again_there = true;
                    } else {
                        unanswered |= bit;
                        unanswered_here.push(upstream.address.clone());
                    }
                }
                let failure = if timed_out {
                    Failure::Slow(took)
                } else {
                    Failure::Connection
                };
                failed(sender, &upstream.address, failure, &mut failures).await;
                if again_there {
                    break;
                }
            }
        }
    }
    // A healthy upstream judged the data; the others failing says nothing about it.
    match refusal {
        Some((code, message)) => Delivery::Refused { code, message },
        None => Delivery::Failed(Failures {
            reached,
            unanswered,
            unanswered_again,
        }),
    }
}

/// Why a try failed, for ejection.
enum Failure {
    /// Not connected, reset, or a status given before any handler ran: the upstream
    /// cannot take calls now. Ejected, within the pool's ejection share.
    Connection,
    /// No answer in time, or a failure after handling began: the upstream is slow or
    /// struggling. Not ejected for it, but its time counts toward latency outlier
    /// detection, which ejects only a node slower than its peers (never a pool that is
    /// slow as a whole).
    Slow(Duration),
}

async fn failed(sender: &Sender, upstream: &str, failure: Failure, failures: &mut usize) {
    match failure {
        Failure::Connection => {
            let pool = sender.pool.upstreams.snapshot();
            if sender
                .pool
                .balancer
                .failed_in(upstream, &pool, Instant::now())
            {
                sender.pool.metrics.ejected("failure");
            }
        }
        Failure::Slow(took) => sender.pool.outliers.observe(upstream, took),
    }
    tokio::time::sleep(Duration::from_millis(50 << *failures)).await;
    *failures += 1;
}

/// How one upstream call ended.
enum Outcome {
    /// With a gRPC status (from the trailers, or the HTTP status when there were none).
    Answered(Verdict, u16, String),
    /// Without one: not connected, reset, timed out. `sent`: the request had left for the
    /// upstream (its body was being sent), so OAP may have processed it; `taken`: OAP took
    /// all of it.
    Broken {
        reason: String,
        sent: bool,
        timed_out: bool,
        taken: bool,
    },
}

async fn call(
    sender: &Sender,
    upstream: &str,
    route: &crate::queue::Route,
    body: Payload,
) -> Outcome {
    let progress = Arc::new(Progress::default());
    let delivery = sender.pool.delivery;
    let deadline = || delivery.deadline(progress.moved(), progress.taken());
    let call = Call {
        upstream,
        path: &route.path,
        encoding: route.encoding.as_deref(),
        payload: body,
    };
    match sender
        .pool
        .client
        .call_by(call, Some(progress.clone()), deadline)
        .await
    {
        Ok(answer) => Outcome::Answered(
            grpc::verdict(answer.code, &answer.message),
            answer.code,
            answer.message,
        ),
        Err(reason) => {
            // A call that failed before its request left (no connection, or none in time)
            // reached nobody.
            let sent = progress.sent();
            Outcome::Broken {
                sent,
                timed_out: sent && matches!(reason, CallError::TimedOut),
                taken: progress.taken().is_some(),
                reason: reason.to_string(),
            }
        }
    }
}
