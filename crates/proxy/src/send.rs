//! Sending queued reports: each partition takes a batch, groups it by method and target
//! upstream, and sends each group as one client stream of that method. A group that fails
//! is tried on another upstream (three attempts, with backoff); one that still fails goes
//! back to the front of its partition, so nothing acknowledged is lost while an upstream is
//! up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::grpc;
use crate::payload::{Joiner, Payload};
use crate::queue::{Batch, DropReason, Event};
use crate::route;
use crate::state::State;
use crate::upstreams::untried;

/// Attempts on different upstreams before a group is put back.
const ATTEMPTS: usize = 3;

/// Starts the senders: `in_flight` per partition, each sending one batch at a time, so a
/// partition keeps that many upstream streams busy. They end once `closed` turns true and
/// the queue is empty.
pub fn spawn_senders(
    state: &State,
    closed: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let in_flight = state.queue.config().in_flight.max(1);
    (0..state.queue.partitions())
        .flat_map(|partition| std::iter::repeat_n(partition, in_flight))
        .map(|partition| tokio::spawn(run_partition(state.clone(), partition, closed.clone())))
        .collect()
}

/// Runs one of a partition's senders until the queue is closed and empty.
async fn run_partition(state: State, partition: usize, closed: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    while let Some(batch) = state.queue.next_batch(partition, &closed).await {
        if send_batch(&state, batch).await {
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
    (Arc::ptr_eq(&a.route, &b.route) || a.route == b.route)
        && a.key == b.key
        && a.origin == b.origin
}

/// Sends a batch; false when some of it had to be put back.
async fn send_batch(state: &State, batch: Batch) -> bool {
    let partition = batch.partition;
    // Usually the whole batch is one stream: no regrouping then.
    if batch
        .events
        .iter()
        .all(|e| same_stream(&batch.events[0], e))
    {
        return send_group(state, batch).await;
    }
    let mut groups: Vec<Vec<Event>> = Vec::new();
    for event in batch.events {
        match groups.iter_mut().rev().find(|g| same_stream(&g[0], &event)) {
            Some(group) => group.push(event),
            None => groups.push(vec![event]),
        }
    }
    let mut all_sent = true;
    for events in groups {
        all_sent &= send_group(state, Batch { partition, events }).await;
    }
    all_sent
}

enum Outcome {
    Sent,
    /// The upstream refused the data itself (it would refuse it anywhere).
    Refused(u16),
    Failed,
}

async fn send_group(state: &State, group: Batch) -> bool {
    let (route, key) = (group.events[0].route.clone(), group.events[0].key.clone());
    let (path, encoding, protocol) = (&route.path, route.encoding.as_deref(), route.protocol);
    // Gathered, not copied: each message is written from the buffer it arrived in.
    let mut joiner = Joiner::default();
    for event in &group.events {
        joiner.push(&event.framed, &event.chunk);
    }
    let body = Payload::Gathered(joiner.finish());
    let mut tried: Vec<String> = Vec::new();
    for attempt in 0..ATTEMPTS {
        let upstreams = state.upstreams.snapshot();
        let remaining = untried(&upstreams, &tried);
        // With fewer upstreams than attempts, those tried are tried again.
        let candidates = if remaining.is_empty() {
            upstreams.to_vec()
        } else {
            remaining
        };
        let Some(upstream) = state.balancer.pick_in_lane(
            route::lane(group.partition, path),
            key.as_deref(),
            &candidates,
            Instant::now(),
        ) else {
            break;
        };
        tried.push(upstream.address.clone());
        let started = Instant::now();
        let outcome = send_stream(state, &upstream.address, path, encoding, body.clone()).await;
        let took = started.elapsed();
        state.metrics.sent(&upstream.address, took.as_secs_f64());
        match outcome {
            Outcome::Sent => {
                state.balancer.succeeded(&upstream.address);
                state.outliers.observe(&upstream.address, took);
                state.metrics.forwarded(protocol, group.events.len() as u64);
                state.queue.forwarded(group);
                return true;
            }
            Outcome::Refused(code) => {
                tracing::warn!(upstream = %upstream.address, %path, code, events = group.events.len(), "upstream refused the data; dropping it");
                state.metrics.dropped(
                    protocol,
                    DropReason::UpstreamFailed,
                    group.events.len() as u64,
                );
                state.queue.dropped(group, DropReason::UpstreamFailed);
                return true;
            }
            Outcome::Failed => {
                state.balancer.failed(&upstream.address, Instant::now());
                state.metrics.ejected("failure");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
    state.queue.put_back(group);
    false
}

async fn send_stream(
    state: &State,
    upstream: &str,
    path: &str,
    encoding: Option<&str>,
    body: Payload,
) -> Outcome {
    let Some(request) = grpc::request(upstream, path, encoding, body) else {
        return Outcome::Failed;
    };
    let response = match tokio::time::timeout(
        Duration::from_secs(10),
        state.client.request(request),
    )
    .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            tracing::debug!(%upstream, error = %crate::client::describe(&err), "sending a batch failed");
            return Outcome::Failed;
        }
        Err(_) => return Outcome::Failed,
    };
    let (parts, body) = response.into_parts();
    let collected = match tokio::time::timeout(Duration::from_secs(10), body.collect()).await {
        Ok(Ok(collected)) => collected,
        _ => return Outcome::Failed,
    };
    match grpc::status_of(&parts.headers, collected.trailers()) {
        Some(0) => Outcome::Sent,
        // Bad data is refused by every upstream alike: retrying elsewhere cannot help.
        Some(code @ (3 | 12)) => Outcome::Refused(code),
        _ => Outcome::Failed,
    }
}
