//! Upstream connections opened before data needs them, and failed upstreams probed back.
//!
//! Each upstream that appears is called once at once with `grpc.health.v1.Health/Check`:
//! that opens the pooled HTTP/2 connection, so the first batch does not pay for it, and an
//! upstream that cannot be reached is ejected before any data is sent its way. An ejected
//! upstream is probed the same way when its ejection runs out, so it comes back as soon as
//! it answers (and the ejection grows while it does not: reconnecting with backoff).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::grpc;
use crate::state::State;

/// How long a probe may take before the upstream counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Probes new upstreams when the set changes and ejected ones when their ejection ends,
/// checking every `interval`. Runs until aborted.
pub async fn keep_connected(state: State, interval: Duration) {
    let mut changes = state.upstreams.subscribe();
    let mut known: HashSet<String> = HashSet::new();
    loop {
        let upstreams = state.upstreams.snapshot();
        let now = Instant::now();
        let due: Vec<String> = upstreams
            .iter()
            .filter(|u| {
                !known.contains(&u.address) || state.balancer.due_for_probe(&u.address, now)
            })
            .map(|u| u.address.clone())
            .collect();
        futures::future::join_all(due.iter().map(|address| probe(&state, address))).await;
        known = upstreams.iter().map(|u| u.address.clone()).collect();
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One health call. An upstream is up when it answers, whether its health service says
/// `SERVING` or it has none (`UNIMPLEMENTED`); `UNAVAILABLE`, `NOT_SERVING`, a broken
/// connection or no answer in time count as down.
async fn probe(state: &State, address: &str) {
    // An empty HealthCheckRequest (the server as a whole), framed.
    let empty = Bytes::from_static(&[0, 0, 0, 0, 0]);
    let Some(request) = grpc::request(address, "/grpc.health.v1.Health/Check", None, empty) else {
        return;
    };
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        let response = state
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((
            grpc::status_of(&parts.headers, body.trailers()),
            body.to_bytes(),
        ))
    })
    .await;
    let down = match answer {
        Err(_) => Some("no answer to a health check in time".to_string()),
        Ok(Err(err)) => Some(err),
        Ok(Ok((Some(14), _))) => Some("health check answered UNAVAILABLE".into()),
        // HealthCheckResponse{status = NOT_SERVING (2)}.
        Ok(Ok((Some(0), body))) if body[..] == [0, 0, 0, 0, 2, 0x08, 0x02] => {
            Some("health check answered NOT_SERVING".into())
        }
        Ok(Ok(_)) => None,
    };
    match down {
        None => state.balancer.succeeded(address),
        Some(reason) => {
            let ejected = state.balancer.failed(address, Instant::now());
            tracing::warn!(upstream = %address, %reason, ?ejected, "upstream down");
        }
    }
}
