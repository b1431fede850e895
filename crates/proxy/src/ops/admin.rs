//! The admin server: `/metrics`, `/healthz`, `/readyz`.
//!
//! Readiness is the proxy's own: ready while it takes clients, that is until a shutdown
//! begins, whatever its upstreams do. During an OAP outage the pool stays in its Service, so
//! agents keep a proxy that queues their reports (or refuses them with a status once the
//! queue is full) rather than finding no endpoint at all, as Envoy and Satellite do. How
//! the upstreams are doing is in `/metrics` (`skylift_proxy_upstream_up`), in the logs, and
//! in the text of `/readyz`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::listen::state::State;
use crate::queue::Queue;
use crate::upstream::Pool;

pub fn router(state: State) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

fn upstream_health(pool: &Pool) -> Vec<(String, bool)> {
    let now = Instant::now();
    pool.upstreams
        .snapshot()
        .iter()
        .map(|u| {
            (
                u.address.clone(),
                !pool.balancer.is_ejected(&u.address, now),
            )
        })
        .collect()
}

/// The gauges of a queue and its pool, read at scrape time.
fn set_gauges(queue: &Queue, pool: &Pool) {
    let m = &pool.metrics;
    let sizes: Vec<usize> = (0..queue.partitions()).map(|p| queue.pending(p)).collect();
    m.set_queue(&sizes, queue.config().capacity);
    if let Some(journal) = queue.journal() {
        m.set_journal_bytes(&journal.disk_bytes());
    }
    m.set_upstreams(&upstream_health(pool));
    m.upstreams_draining
        .set(i64::try_from(pool.upstreams.draining().len()).unwrap_or(i64::MAX));
}

async fn metrics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    let m = &state.metrics;
    m.connections
        .set(i64::try_from(state.connections.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    m.turned_away
        .set(i64::try_from(state.turned_away.count(std::time::Instant::now())).unwrap_or(i64::MAX));
    set_gauges(&state.queue, &state.pool);
    let mut text = m.encode();
    if let Some(federation) = &state.federation {
        set_gauges(&federation.queue, &federation.pool);
        // One exposition: the first one's `# EOF` goes, the second one's ends it.
        if let Some(body) = text.strip_suffix("# EOF\n") {
            text = body.to_string();
        }
        text.push_str(&federation.pool.metrics.encode());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn readyz(AxumState(state): AxumState<State>) -> impl IntoResponse {
    if state.shutting_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    }
    let health = upstream_health(&state.pool);
    let up = health.iter().filter(|(_, up)| *up).count();
    let upstreams = match (up, health.len()) {
        (_, 0) => "no upstream is known yet; reports are queued".to_string(),
        (0, known) => format!("all {known} upstreams are failing; reports are queued"),
        (up, known) => format!("{up} of {known} upstreams up"),
    };
    // The federation pool never makes the proxy unready: its copies wait in their queue.
    let federation = match &state.federation {
        Some(federation) => {
            let health = upstream_health(&federation.pool);
            let up = health.iter().filter(|(_, up)| *up).count();
            format!("; federation: {up} of {} upstreams up", health.len())
        }
        None => String::new(),
    };
    (StatusCode::OK, format!("ready: {upstreams}{federation}"))
}
