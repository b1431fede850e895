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
use crate::federation::Federation;
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
    /// A second upstream pool that copies of some reports also go to.
    pub federation: Option<FederationConfig>,
    /// HTTP requests served and forwarded to the upstreams at this port.
    pub upstream_http_port: Option<u16>,
    /// OTLP exports routed by trace ID and resource rather than call by call.
    pub otlp_affinity: Option<crate::upstream::affinity::OtlpAffinity>,
}

/// The federation pool: its upstreams, what it takes, its queue and how it is reached.
/// Balancing, health checks, ejection and delivery follow the local pool's flags.
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// A fixed list or a file (a ConfigMap mounted as one).
    pub upstreams: UpstreamSource,
    /// The protocols whose reports are copied (see [`crate::federation::protocols`]).
    pub protocols: Vec<&'static str>,
    /// Its own queue, with the local queue's partitions.
    pub queue: QueueConfig,
    /// With `--queue disk`: its own journal (in `federation/` of the queue folder).
    pub journal: Option<JournalConfig>,
    /// Messages gzip-compressed for the WAN (when that makes them smaller).
    pub compress: bool,
    pub tls: Option<crate::upstream::tls::UpstreamTlsFiles>,
    pub authentication_file: Option<PathBuf>,
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

/// What the journals read back at start, to forget once queued again and synced.
pub type Recoveries = Vec<(Arc<Journal>, Recovery)>;

/// The upstream set a source starts with (a ConfigMap's is filled once it is read).
fn upstream_set(source: &UpstreamSource) -> Result<UpstreamSet, RunError> {
    Ok(match source {
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
    })
}

/// A queue, journaled in `dir` when the configuration has a journal; what an earlier run
/// left in it is queued again.
fn open_queue(
    queue: &QueueConfig,
    journal: Option<&JournalConfig>,
    counters: crate::queue::journal::JournalCounters,
    recoveries: &mut Recoveries,
) -> Result<Arc<Queue>, RunError> {
    let Some(journal) = journal else {
        return Ok(Arc::new(Queue::new(queue.clone())));
    };
    let (opened, mut recovery) = Journal::open(journal, queue.partitions.max(1), counters)
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
    let opened = Arc::new(opened);
    let queue = Arc::new(Queue::with_journal(queue.clone(), opened.clone()));
    for event in std::mem::take(&mut recovery.events) {
        queue.restore(event);
    }
    recoveries.push((opened, recovery));
    Ok(queue)
}

/// How a pool reaches its upstreams and sends to them: `config`'s balancing, health and
/// delivery, with its own upstreams, TLS, token and metrics.
fn build_pool(
    config: &Config,
    upstreams: UpstreamSet,
    tls: Option<crate::upstream::tls::UpstreamTlsFiles>,
    authentication_file: Option<PathBuf>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Pool, RunError> {
    let authentication = authentication_file
        .map(crate::upstream::authentication::Authentication::load)
        .transpose()?
        .map(Arc::new);
    let origination = tls
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
    Ok(Pool {
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
        metrics,
        refusal_log: Default::default(),
        delivery: config.delivery,
    })
}

/// Builds the shared state from the configuration; with a journal, also what an earlier
/// run left in it (already queued again; see [`Journal::forget_old`]).
pub fn state(config: &Config) -> Result<(State, Recoveries), RunError> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let mut recoveries = Vec::new();
    let queue = open_queue(
        &config.queue,
        config.journal.as_ref(),
        metrics.journal.clone(),
        &mut recoveries,
    )?;
    let pool = Arc::new(build_pool(
        config,
        upstream_set(&config.upstreams)?,
        config.upstream_tls.clone(),
        config.authentication_file.clone(),
        metrics,
    )?);
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
    let mut state = Shared::new(queue, pool, config.limits.clone(), tls, turned_away);
    if let Some(affinity) = &config.otlp_affinity {
        state = state.with_otlp_affinity(affinity.clone());
    }
    if let Some(port) = config.upstream_http_port {
        state = state.with_http(port);
    }
    if let Some(federation) = &config.federation {
        let metrics = Arc::new(crate::metrics::Metrics::federation());
        let queue = open_queue(
            &federation.queue,
            federation.journal.as_ref(),
            metrics.journal.clone(),
            &mut recoveries,
        )?;
        let pool = build_pool(
            config,
            upstream_set(&federation.upstreams)?,
            federation.tls.clone(),
            federation.authentication_file.clone(),
            metrics,
        )?;
        state = state.with_federation(Arc::new(Federation::new(
            queue,
            Arc::new(pool),
            federation.protocols.clone(),
            federation.compress,
        )));
    }
    Ok((Arc::new(state), recoveries))
}

/// The tasks that keep a pool's view of its upstreams current: the upstream list, TLS
/// material and token followed, connections kept and health-checked, slow ones ejected.
async fn follow_pool(
    pool: &Arc<Pool>,
    upstreams: &UpstreamSource,
    config: &Config,
    background: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), RunError> {
    match upstreams {
        UpstreamSource::Static(_) => {}
        UpstreamSource::File(path) => background.push(tokio::spawn(follow_file(
            pool.upstreams.clone(),
            path.clone(),
            Duration::from_millis(250),
            |err| tracing::warn!(error = %err, "upstreams file unusable; keeping the last good list"),
        ))),
        UpstreamSource::ConfigMap { namespace, name } => {
            let client = kube::Client::try_default().await?;
            background.push(tokio::spawn(configmap::follow(
                client,
                namespace.clone(),
                name.clone(),
                pool.upstreams.clone(),
            )));
        }
    }
    if let Some(origination) = pool.client.origination() {
        background.push(tokio::spawn(
            origination.clone().follow(Duration::from_secs(1)),
        ));
    }
    if let Some(authentication) = pool.client.authentication() {
        background.push(tokio::spawn(
            authentication.clone().follow(Duration::from_secs(1)),
        ));
    }
    background.push(tokio::spawn(crate::upstream::health::keep_connected(
        pool.clone(),
        Duration::from_secs(1),
        config.health_checks,
    )));
    background.push(tokio::spawn(eject_outliers(
        pool.clone(),
        Duration::from_secs(1),
    )));
    Ok(())
}

/// Runs until `shutdown` resolves, then stops accepting, lets the queues drain for at most
/// `drain_timeout`, and returns.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let (state, recoveries) = state(&config)?;
    for (journal, recovery) in recoveries {
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
    follow_pool(&state.pool, &config.upstreams, &config, &mut background).await?;
    if let (Some(federation), Some(settings)) = (&state.federation, &config.federation) {
        tracing::info!(upstreams = ?settings.upstreams, protocols = ?settings.protocols, "federation pool: copies of these reports also go to its upstreams");
        follow_pool(
            &federation.pool,
            &settings.upstreams,
            &config,
            &mut background,
        )
        .await?;
    }
    if let Some(tls) = &state.tls {
        background.push(tokio::spawn(tls.clone().follow(Duration::from_secs(1))));
    }
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
    let syncers: Vec<_> = state
        .journals()
        .map(|journal| tokio::spawn(journal.clone().run_syncer(syncer_stopped.clone())))
        .collect();
    let server = tokio::spawn(listen::serve(listener, state.clone(), stopped));
    let senders = send::spawn_senders(&state.queue, &state.pool, &closed);
    let federation_senders = state
        .federation
        .as_ref()
        .map(|federation| send::spawn_senders(&federation.queue, &federation.pool, &closed));

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
    // Both queues drain at once, by the same deadline: a federation upstream out of reach
    // keeps its own copies only.
    let local = drain(
        &state.queue,
        &state.pool.metrics,
        senders,
        deadline,
        "local",
    );
    match (&state.federation, federation_senders) {
        (Some(federation), Some(senders)) => {
            let remote = drain(
                &federation.queue,
                &federation.pool.metrics,
                senders,
                deadline,
                "federation",
            );
            futures::future::join(local, remote).await;
        }
        _ => local.await,
    }
    let _ = stop_syncer.send(true);
    for syncer in syncers {
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

/// Waits for `senders` to empty `queue` until `deadline`; then stops them, and drops what is
/// left (counted `shutdown_timeout`) unless it is journaled for the next start.
async fn drain(
    queue: &Queue,
    metrics: &crate::metrics::Metrics,
    senders: Vec<tokio::task::JoinHandle<()>>,
    deadline: tokio::time::Instant,
    which: &'static str,
) {
    let stop: Vec<_> = senders.iter().map(|s| s.abort_handle()).collect();
    if tokio::time::timeout_at(deadline, futures::future::join_all(senders))
        .await
        .is_ok()
    {
        return;
    }
    for sender in stop {
        sender.abort();
    }
    let pending = queue.totals().pending;
    if queue.journal().is_some() {
        tracing::warn!(
            queue = which,
            pending,
            "drain timeout reached; the unsent messages stay in the journal for the next start"
        );
    } else {
        for (protocol, n) in queue.abandon(DropReason::ShutdownTimeout) {
            metrics.dropped(protocol, DropReason::ShutdownTimeout, n);
        }
        tracing::warn!(
            queue = which,
            dropped = pending,
            "drain timeout reached; the messages still queued are dropped"
        );
    }
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
