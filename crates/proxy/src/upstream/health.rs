//! Upstream connections opened before data needs them, and failed upstreams probed back.
//!
//! Each upstream that appears is called once at once with `grpc.health.v1.Health/Check`:
//! that opens the upstream's driven HTTP/2 connection ([`crate::upstream::driven`]), which
//! batches and reports use too, so the first batch does not pay for it, and an
//! upstream that cannot be reached is ejected before any data is sent its way. An ejected
//! upstream is probed the same way when its ejection runs out, so it comes back as soon as
//! it answers (and the ejection grows while it does not: reconnecting with backoff).
//!
//! Upstreams in use are checked the same way every `--health-check-interval`, so one that
//! stops serving (an OAP node shutting down answers `NOT_SERVING`, a hung one does not
//! answer) is ejected before data fails on it: after `--health-check-failures` checks in a
//! row fail, as one slow answer should not empty a small pool.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::upstream::client::CallError;
use bytes::Bytes;

use crate::upstream::Pool;
use crate::upstream::driven::Call;

/// Active health checking of upstreams in use.
#[derive(Clone, Copy, Debug)]
pub struct HealthChecks {
    /// How often an upstream in use is checked; `None`: only new and ejected ones are.
    pub interval: Option<Duration>,
    /// How long a check may take before it counts as failed.
    pub timeout: Duration,
    /// Checks in a row that must fail before an upstream in use is ejected.
    pub failures: u32,
}

impl Default for HealthChecks {
    fn default() -> Self {
        HealthChecks {
            interval: Some(Duration::from_secs(5)),
            timeout: Duration::from_secs(3),
            failures: 2,
        }
    }
}

/// Why a check is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// New, or its ejection ran out: one answer decides.
    Probe,
    /// In use: ejected only after `failures` failed checks in a row.
    Routine,
}

/// Probes new upstreams when the set changes and ejected ones when their ejection ends,
/// and checks those in use every `checks.interval`, looking every `tick`. Runs until
/// aborted.
pub async fn keep_connected(pool: std::sync::Arc<Pool>, tick: Duration, checks: HealthChecks) {
    let mut changes = pool.upstreams.subscribe();
    let mut known: HashSet<String> = HashSet::new();
    let mut last_checked: HashMap<String, Instant> = HashMap::new();
    let mut failed_in_a_row: HashMap<String, u32> = HashMap::new();
    let mut any_up = true;
    loop {
        let upstreams = pool.upstreams.snapshot();
        let now = Instant::now();
        let due: Vec<(String, Check)> = upstreams
            .iter()
            .filter_map(|u| {
                let address = &u.address;
                if !known.contains(address) || pool.balancer.due_for_probe(address, now) {
                    Some((address.clone(), Check::Probe))
                } else {
                    let interval = checks.interval?;
                    let due = last_checked
                        .get(address)
                        .is_none_or(|last| now.duration_since(*last) >= interval);
                    (due && !pool.balancer.is_ejected(address, now))
                        .then(|| (address.clone(), Check::Routine))
                }
            })
            .collect();
        let outcomes = futures::future::join_all(
            due.iter()
                .map(|(address, _)| check(&pool, address, checks.timeout)),
        )
        .await;
        for ((address, kind), down) in due.into_iter().zip(outcomes) {
            last_checked.insert(address.clone(), now);
            let in_a_row = failed_in_a_row.entry(address.clone()).or_default();
            match down {
                None => {
                    // A probe of one already known: it had failed, and answers again.
                    if kind == Check::Probe && known.contains(&address) {
                        tracing::info!(upstream = %address, "upstream back");
                    }
                    *in_a_row = 0;
                    pool.balancer.succeeded(&address);
                }
                Some(reason) => {
                    *in_a_row += 1;
                    if kind == Check::Probe || *in_a_row >= checks.failures.max(1) {
                        let ejected = pool.balancer.failed(&address, Instant::now());
                        pool.metrics.ejected("health_check");
                        tracing::warn!(upstream = %address, %reason, failed_in_a_row = *in_a_row, ?ejected, "upstream down");
                    } else {
                        tracing::info!(upstream = %address, %reason, failed_in_a_row = *in_a_row, "health check failed");
                    }
                }
            }
        }
        // The pool as a whole, in the log when it changes: clients are still served.
        let at = Instant::now();
        let now_up = upstreams.iter().any(|u| {
            !pool.balancer.is_ejected(&u.address, at)
                && !pool.balancer.due_for_probe(&u.address, at)
        });
        if any_up && !now_up && !upstreams.is_empty() {
            tracing::warn!(
                upstreams = upstreams.len(),
                "every upstream is down; reports are queued until one is back"
            );
        } else if !any_up && now_up {
            tracing::info!("an upstream is up again; sending what was queued");
        }
        any_up = now_up || upstreams.is_empty();
        known = upstreams.iter().map(|u| u.address.clone()).collect();
        last_checked.retain(|address, _| known.contains(address));
        failed_in_a_row.retain(|address, _| known.contains(address));
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// One health call: `None` when the upstream is up, else why it is down. Up means it
/// answers, whether its health service says `SERVING` or it has none (`UNIMPLEMENTED`);
/// `UNAVAILABLE`, `NOT_SERVING`, a broken connection or no answer in time count as down.
async fn check(pool: &Pool, address: &str, timeout: Duration) -> Option<String> {
    // An empty HealthCheckRequest (the server as a whole), framed.
    let empty = Bytes::from_static(&[0, 0, 0, 0, 0]);
    let call = Call {
        upstream: address,
        path: "/grpc.health.v1.Health/Check",
        encoding: None,
        payload: empty.into(),
    };
    match pool.client.call(call, timeout).await {
        Err(CallError::TimedOut) => Some("no answer to a health check in time".to_string()),
        Err(reason) => Some(reason.to_string()),
        Ok(answer) if answer.code == 14 => Some("health check answered UNAVAILABLE".into()),
        // HealthCheckResponse{status = NOT_SERVING (2)}.
        Ok(answer) if answer.code == 0 && answer.body[..] == [0, 0, 0, 0, 2, 0x08, 0x02] => {
            Some("health check answered NOT_SERVING".into())
        }
        Ok(_) => None,
    }
}
