//! Running the proxy: wiring the queue, upstream sources, server, senders and admin server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::balance::balancer::{Balancer, Policy};
use crate::balance::configmap;
use crate::balance::outlier::LatencyOutliers;
use crate::balance::route::{StickyKeys, Upstream};
use crate::balance::routing::Routing;
use crate::balance::upstream_set::{UpstreamSet, UpstreamsError, follow_file, parse_address};
use crate::listen;
use crate::listen::state::{Limits, Shared, State};
use crate::listen::turned_away::TurnedAway;
use crate::ops::admin;
use crate::queue::journal::{Journal, JournalConfig, Recovery};
use crate::queue::{DropReason, Queue, QueueConfig};
use crate::upstream::client::UpstreamClient;
use crate::upstream::{Pool, send};

/// Where the upstream list comes from.
#[derive(Clone, Debug)]
pub enum UpstreamSource {
    Static(Vec<String>),
    File(PathBuf),
    ConfigMap { namespace: String, name: String },
}

/// Everything the proxy runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstreams: UpstreamSource,
    pub limits: Limits,
    pub queue: QueueConfig,
    pub policy: Policy,
    /// Fixed routing of meter data by service and instance.
    pub fixed_meter_routing: bool,
    /// With hash routing: the request header hashed to pick the upstream.
    pub hash_header: Option<http::HeaderName>,
    pub sticky_keys: usize,
    /// Most connections per upstream, and streams per connection before the next opens.
    pub upstream_connections: usize,
    pub upstream_streams: usize,
    pub sticky_ttl: Duration,
    /// How long a shutdown waits for the queues to drain.
    pub drain_timeout: Duration,
    /// TLS termination for clients.
    pub tls: Option<crate::listen::tls::TlsFiles>,
    /// The file holding the `authentication` token sent upstream.
    pub authentication_file: Option<PathBuf>,
    /// TLS (mutual TLS) to the upstreams.
    pub upstream_tls: Option<crate::upstream::tls::UpstreamTlsFiles>,
    /// Active health checks of the upstreams.
    pub health_checks: crate::upstream::health::HealthChecks,
    /// Passive ejection of slow upstreams.
    pub outlier_detection: crate::balance::outlier::OutlierDetection,
    /// The most of the pool, in percent, ejected at once by failures and latency.
    pub max_ejection_percent: u32,
    /// The upstream call's deadline and each event's delivery budget.
    pub delivery: crate::upstream::delivery::Delivery,
    /// With `--queue disk`: where and how the queue is journaled.
    pub journal: Option<JournalConfig>,
    /// Self-telemetry to OAP, when a service name is given.
    pub telemetry: Option<crate::ops::telemetry::TelemetryConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Upstreams(#[from] UpstreamsError),
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the Kubernetes API for the upstreams ConfigMap: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error("opening the queue journal in {dir}: {source}")]
    Journal {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Authentication(#[from] crate::upstream::authentication::AuthenticationError),
    #[error("client TLS: {0}")]
    Tls(#[from] crate::listen::tls::TlsError),
    #[error("upstream TLS: {0}")]
    UpstreamTls(#[source] crate::listen::tls::TlsError),
    #[error("the recovered journal could not be synced to disk")]
    JournalSync(#[from] crate::queue::journal::SyncFailed),
}

/// Builds the shared state from the configuration; with a journal, also what an earlier
/// run left in it (already queued again; see [`Journal::forget_old`]).
pub fn state(config: &Config) -> Result<(State, Option<Recovery>), RunError> {
    let upstreams = match &config.upstreams {
        UpstreamSource::Static(addresses) => UpstreamSet::new(
            addresses
                .iter()
                .map(|a| parse_address(a).map(|address| Upstream { address, weight: 1 }))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        UpstreamSource::File(path) => {
            UpstreamSet::of_document(&crate::balance::upstream_set::read_file(path)?)
        }
        UpstreamSource::ConfigMap { .. } => UpstreamSet::new(Vec::new()),
    };
    let metrics = crate::metrics::Metrics::default();
    let (queue, recovery) = match &config.journal {
        None => (Queue::new(config.queue.clone()), None),
        Some(journal) => {
            let (opened, recovery) = Journal::open(
                journal,
                config.queue.partitions.max(1),
                metrics.journal.clone(),
            )
            .map_err(|source| RunError::Journal {
                dir: journal.dir.clone(),
                source,
            })?;
            tracing::info!(
                dir = %journal.dir.display(),
                events = recovery.events.len(),
                corrupt = recovery.corrupt,
                "queue journal opened; unacknowledged events of the last run are queued again"
            );
            (
                Queue::with_journal(config.queue.clone(), Arc::new(opened)),
                Some(recovery),
            )
        }
    };
    let authentication = config
        .authentication_file
        .clone()
        .map(crate::upstream::authentication::Authentication::load)
        .transpose()?
        .map(Arc::new);
    let origination = config
        .upstream_tls
        .clone()
        .map(crate::upstream::tls::Origination::load)
        .transpose()
        .map_err(RunError::UpstreamTls)?
        .map(Arc::new);
    let mut client = UpstreamClient::with_tls(
        config.upstream_connections,
        config.upstream_streams,
        origination,
    );
    if let Some(authentication) = &authentication {
        client = client.with_authentication(authentication.clone());
    }
    let pool = Arc::new(Pool {
        upstreams,
        balancer: Balancer::new(
            config.policy,
            StickyKeys::new(config.sticky_keys, config.sticky_ttl),
        )
        .with_max_ejection_percent(config.max_ejection_percent),
        outliers: LatencyOutliers::new(config.outlier_detection),
        client,
        routing: Routing {
            fixed_meter_routing: config.fixed_meter_routing,
            hash_header: config.hash_header.clone(),
        },
        max_message_bytes: config.limits.max_message_bytes,
        metrics: Arc::new(metrics),
        refusal_log: Default::default(),
        delivery: config.delivery,
    });
    let tls = config
        .tls
        .clone()
        .map(crate::listen::tls::Termination::load)
        .transpose()?
        .map(Arc::new);
    // Refused clients count until the next report or two has carried them to OAP.
    let turned_away = TurnedAway::new(
        config
            .telemetry
            .as_ref()
            .map_or(Duration::ZERO, |t| t.interval * 2),
    );
    let state = Arc::new(Shared::new(
        Arc::new(queue),
        pool,
        config.limits.clone(),
        tls,
        turned_away,
    ));
    let recovery = recovery.map(|mut recovery| {
        for event in std::mem::take(&mut recovery.events) {
            state.queue.restore(event);
        }
        recovery
    });
    Ok((state, recovery))
}

/// Runs until `shutdown` resolves, then stops accepting, lets the queues drain for at most
/// `drain_timeout`, and returns.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let (state, recovery) = state(&config)?;
    if let (Some(journal), Some(recovery)) = (state.queue.journal(), recovery) {
        journal.forget_old(recovery).await?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen {
            address: config.listen,
            source,
        })?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| RunError::Listen {
            address: config.admin_listen,
            source,
        })?;
    tracing::info!(listen = %config.listen, admin = %config.admin_listen, upstreams = ?config.upstreams, "skylift-proxy listening");

    let mut background = Vec::new();
    match &config.upstreams {
        UpstreamSource::Static(_) => {}
        UpstreamSource::File(path) => background.push(tokio::spawn(follow_file(
            state.pool.upstreams.clone(),
            path.clone(),
            Duration::from_millis(250),
            |err| tracing::warn!(error = %err, "upstreams file unusable; keeping the last good list"),
        ))),
        UpstreamSource::ConfigMap { namespace, name } => {
            let client = kube::Client::try_default().await?;
            background.push(tokio::spawn(configmap::follow(client, namespace.clone(), name.clone(), state.pool.upstreams.clone())));
        }
    }
    if let Some(tls) = &state.tls {
        background.push(tokio::spawn(tls.clone().follow(Duration::from_secs(1))));
    }
    if let Some(origination) = state.pool.client.origination() {
        background.push(tokio::spawn(
            origination.clone().follow(Duration::from_secs(1)),
        ));
    }
    if let Some(authentication) = state.pool.client.authentication() {
        background.push(tokio::spawn(
            authentication.clone().follow(Duration::from_secs(1)),
        ));
    }
    background.push(tokio::spawn(crate::upstream::health::keep_connected(
        state.pool.clone(),
        Duration::from_secs(1),
        config.health_checks,
    )));
    background.push(tokio::spawn(eject_outliers(
        state.pool.clone(),
        Duration::from_secs(1),
    )));
    if let Some(telemetry) = config.telemetry.clone() {
        background.push(tokio::spawn(crate::ops::telemetry::report(
            state.clone(),
            telemetry,
        )));
    }
    let admin = admin::router(state.clone());
    background.push(tokio::spawn(async move {
        if let Err(err) = axum::serve(admin_listener, admin).await {
            tracing::error!(error = %err, "admin server stopped");
        }
    }));

    // Two steps: clients are told to go away first, the queues close once they have.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (close, closed) = tokio::sync::watch::channel(false);
    // The journal keeps syncing while the queues drain.
    let (stop_syncer, syncer_stopped) = tokio::sync::watch::channel(false);
    let syncer = state
        .queue
        .journal()
        .map(|journal| tokio::spawn(journal.clone().run_syncer(syncer_stopped)));
    let server = tokio::spawn(listen::serve(listener, state.clone(), stopped));
    let senders = send::spawn_senders(&state.queue, &state.pool, &closed);
    let stop_senders: Vec<_> = senders.iter().map(|s| s.abort_handle()).collect();

    shutdown.await;
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    state.shutting_down.store(true, Ordering::Relaxed);
    tracing::info!(
        connections = state.connections.load(Ordering::Relaxed),
        "shutting down: no new connections; clients are sent GOAWAY"
    );
    let _ = stop.send(true);
    let _ = server.await;
    // Clients finish the streams they have open (and are answered) before the queues
    // close: whatever they still send is queued and sent too.
    while state.connections.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        pending = state.queue.totals().pending,
        connections = state.connections.load(Ordering::Relaxed),
        "draining the queues"
    );
    let _ = close.send(true);
    let drained = tokio::time::timeout_at(deadline, futures::future::join_all(senders)).await;
    if drained.is_err() {
        for sender in stop_senders {
            sender.abort();
        }
        let pending = state.queue.totals().pending;
        if state.queue.journal().is_some() {
            tracing::warn!(
                pending,
                "drain timeout reached; the unsent messages stay in the journal for the next start"
            );
        } else {
            for (protocol, n) in state.queue.abandon(DropReason::ShutdownTimeout) {
                state
                    .metrics
                    .dropped(protocol, DropReason::ShutdownTimeout, n);
            }
            tracing::warn!(
                dropped = pending,
                "drain timeout reached; the messages still queued are dropped"
            );
        }
    }
    let _ = stop_syncer.send(true);
    if let Some(syncer) = syncer {
        let _ = syncer.await;
    }
    let totals = state.queue.totals();
    tracing::info!(
        received = totals.received,
        forwarded = totals.forwarded,
        dropped = totals.dropped_total(),
        pending = totals.pending,
        "stopped"
    );
    for task in background {
        task.abort();
    }
    Ok(())
}

/// Runs [`LatencyOutliers::sweep`] over the current upstreams every `every`, ejecting
/// in the pool's balancer. Runs until aborted.
pub async fn eject_outliers(pool: Arc<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let now = Instant::now();
        let upstreams = pool.upstreams.snapshot();
        let in_use: Vec<(String, bool)> = upstreams
            .iter()
            .map(|u| (u.address.clone(), pool.balancer.is_ejected(&u.address, now)))
            .collect();
        let room = pool.balancer.ejection_room(&upstreams, now);
        for ejection in pool.outliers.sweep(&in_use, room) {
            pool.balancer
                .eject(&ejection.address, now + ejection.duration);
            pool.metrics.ejected("latency");
            tracing::warn!(
                upstream = %ejection.address,
                average = ?ejection.average,
                ejected = ?ejection.duration,
                "upstream much slower than the rest of the pool; ejected"
            );
        }
    }
}
