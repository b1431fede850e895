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

pub fn router(state: State) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

fn upstream_health(state: &State) -> Vec<(String, bool)> {
    let now = Instant::now();
    state
        .pool
        .upstreams
        .snapshot()
        .iter()
        .map(|u| {
            (
                u.address.clone(),
                !state.pool.balancer.is_ejected(&u.address, now),
            )
        })
        .collect()
}

async fn metrics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    let m = &state.metrics;
    m.connections
        .set(i64::try_from(state.connections.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    m.turned_away
        .set(i64::try_from(state.turned_away.count(std::time::Instant::now())).unwrap_or(i64::MAX));
    let sizes: Vec<usize> = (0..state.queue.partitions())
        .map(|p| state.queue.pending(p))
        .collect();
    m.set_queue(&sizes, state.queue.config().capacity);
    if let Some(journal) = state.queue.journal() {
        m.set_journal_bytes(&journal.disk_bytes());
    }
    m.set_upstreams(&upstream_health(&state));
    m.upstreams_draining
        .set(i64::try_from(state.pool.upstreams.draining().len()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(AxumState(state): AxumState<State>) -> impl IntoResponse {
    if state.shutting_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    }
    let health = upstream_health(&state);
    let up = health.iter().filter(|(_, up)| *up).count();
    let upstreams = match (up, health.len()) {
        (_, 0) => "no upstream is known yet; reports are queued".to_string(),
        (0, known) => format!("all {known} upstreams are failing; reports are queued"),
        (up, known) => format!("{up} of {known} upstreams up"),
    };
    (StatusCode::OK, format!("ready: {upstreams}"))
}
