//! The harness the proxy's integration tests share: skylift-proxy started in-process on
//! loopback in front of strict OAP doubles, a gRPC client, and waiting for conditions.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use skylift_proxy::balance::balancer::{Balancer, Policy};
use skylift_proxy::balance::route::{StickyKeys, Upstream};
use skylift_proxy::balance::routing::Routing;
use skylift_proxy::balance::upstream_set::UpstreamSet;
use skylift_proxy::grpc::framing;
use skylift_proxy::listen as server;
use skylift_proxy::listen::state::{Limits, Shared, State};
use skylift_proxy::queue::{Overflow, Queue, QueueConfig};
use skylift_proxy::upstream::Pool;
use skylift_proxy::upstream::client::UpstreamClient;
use skylift_proxy::upstream::delivery::Delivery;
use skylift_proxy::upstream::send;
use skylift_testkit::sink::Sink;

pub use skylift_testkit::protobuf as pb;

pub const SEGMENTS: &str = "/skywalking.v3.TraceSegmentReportService/collect";
pub const METERS: &str = "/skywalking.v3.MeterReportService/collectBatch";

pub struct Proxy {
    pub address: SocketAddr,
    pub state: State,
    pub _close: tokio::sync::watch::Sender<bool>,
}

/// Latency ejection in tests: as in production, but over 50 ms rather than 100.
pub const OUTLIERS: skylift_proxy::balance::outlier::OutlierDetection =
    skylift_proxy::balance::outlier::OutlierDetection {
        factor: 3.0,
        min_latency: Duration::from_millis(50),
        ejection: Duration::from_secs(10),
    };

pub fn queue_config() -> QueueConfig {
    QueueConfig {
        partitions: 2,
        capacity: 10_000,
        max_bytes: 64 << 20,
        batch_size: 50,
        flush_interval: Duration::from_millis(20),
        overflow: Overflow::Reject,
        overflow_wait: Duration::ZERO,
        in_flight: 2,
    }
}

pub async fn proxy(upstreams: &[&Sink], max_connections: Option<usize>) -> Proxy {
    proxy_with(upstreams, max_connections, queue_config()).await
}

pub async fn proxy_with(
    upstreams: &[&Sink],
    max_connections: Option<usize>,
    queue: QueueConfig,
) -> Proxy {
    proxy_with_client(
        upstreams,
        max_connections,
        queue,
        UpstreamClient::new(4, 100),
    )
    .await
}

pub async fn proxy_with_client(
    upstreams: &[&Sink],
    max_connections: Option<usize>,
    queue: QueueConfig,
    client: UpstreamClient,
) -> Proxy {
    let limits = Limits {
        max_connections,
        ..limits()
    };
    proxy_with_limits(upstreams, queue, client, limits, None).await
}

/// The tests' limits: small messages, quick keep-alive pings and header timeout.
pub fn limits() -> Limits {
    Limits {
        max_connections: None,
        max_message_bytes: 64 * 1024,
        keepalive: Some(Duration::from_millis(300)),
        max_connection_age: None,
        max_connection_age_grace: Duration::from_secs(5),
        header_timeout: Duration::from_millis(500),
        idle_timeout: None,
    }
}

pub async fn proxy_with_limits(
    upstreams: &[&Sink],
    queue: QueueConfig,
    client: UpstreamClient,
    limits: Limits,
    tls: Option<Arc<skylift_proxy::listen::tls::Termination>>,
) -> Proxy {
    proxy_with_delivery(upstreams, queue, client, limits, tls, Delivery::default()).await
}

/// A proxy in front of `upstreams` with the tests' queue, client and limits, delivering
/// by `delivery`.
pub async fn proxy_delivering(upstreams: &[&Sink], delivery: Delivery) -> Proxy {
    proxy_with_delivery(
        upstreams,
        queue_config(),
        UpstreamClient::new(4, 100),
        limits(),
        None,
        delivery,
    )
    .await
}

/// Reports the proxy dropped for `reason`.
pub fn dropped(proxy: &Proxy, reason: skylift_proxy::queue::DropReason) -> u64 {
    proxy.state.queue.totals().dropped(reason)
}

/// Upstream ejections the proxy counted for `reason` (`failure`, `latency`, ...).
pub fn ejections(proxy: &Proxy, reason: &str) -> u64 {
    let line = format!("skylift_proxy_upstream_ejections_total{{reason=\"{reason}\"}} ");
    proxy
        .state
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.parse::<u64>().unwrap())
}

/// Upstream ejections the proxy counted, for every reason.
pub fn ejections_total(proxy: &Proxy) -> u64 {
    proxy
        .state
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("skylift_proxy_upstream_ejections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The proxy with its call deadline and delivery budget as given.
pub async fn proxy_with_delivery(
    upstreams: &[&Sink],
    queue: QueueConfig,
    client: UpstreamClient,
    limits: Limits,
    tls: Option<Arc<skylift_proxy::listen::tls::Termination>>,
    delivery: Delivery,
) -> Proxy {
    let addresses = upstreams.iter().map(|s| s.address()).collect();
    proxy_over(addresses, queue, client, limits, tls, delivery, |s| s).await
}

/// The proxy over upstreams at `addresses`, its state changed by `configure` before it
/// starts (OTLP affinity, say).
pub async fn proxy_over(
    addresses: Vec<String>,
    queue: QueueConfig,
    client: UpstreamClient,
    limits: Limits,
    tls: Option<Arc<skylift_proxy::listen::tls::Termination>>,
    delivery: Delivery,
    configure: impl FnOnce(Shared) -> Shared,
) -> Proxy {
    let pool = Arc::new(pool_of(
        addresses,
        client,
        limits.max_message_bytes,
        delivery,
        Default::default(),
    ));
    let state: State = Arc::new(configure(Shared::new(
        Arc::new(Queue::new(queue)),
        pool,
        limits,
        tls,
        skylift_proxy::listen::turned_away::TurnedAway::new(Duration::ZERO),
    )));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (close, closed) = tokio::sync::watch::channel(false);
    tokio::spawn(server::serve(listener, state.clone(), closed.clone()));
    send::spawn_senders(&state.queue, &state.pool, &closed);
    follow_pool(&state.pool);
    Proxy {
        address,
        state,
        _close: close,
    }
}

/// A pool over `addresses`, balanced and keyed as the tests' proxies are.
pub fn pool_of(
    addresses: Vec<String>,
    client: UpstreamClient,
    max_message_bytes: usize,
    delivery: Delivery,
    metrics: Arc<skylift_proxy::metrics::Metrics>,
) -> Pool {
    let set = addresses
        .into_iter()
        .map(|address| Upstream { address, weight: 1 })
        .collect();
    Pool {
        upstreams: UpstreamSet::new(set),
        balancer: Balancer::new(
            Policy::RoundRobin,
            StickyKeys::new(5000, Duration::from_secs(180)),
        ),
        outliers: skylift_proxy::balance::outlier::LatencyOutliers::new(OUTLIERS),
        client,
        routing: Routing {
            fixed_meter_routing: true,
            hash_header: None,
        },
        max_message_bytes,
        metrics,
        refusal_log: Default::default(),
        delivery,
    }
}

/// Keeps a pool's connections and health checks going, and ejects its slow upstreams, as
/// the proxy does (faster).
pub fn follow_pool(pool: &Arc<Pool>) {
    tokio::spawn(skylift_proxy::run::eject_outliers(
        pool.clone(),
        Duration::from_millis(100),
    ));
    tokio::spawn(skylift_proxy::upstream::health::keep_connected(
        pool.clone(),
        Duration::from_millis(100),
        skylift_proxy::upstream::health::HealthChecks {
            interval: Some(Duration::from_millis(200)),
            timeout: Duration::from_millis(500),
            failures: 2,
        },
    ));
}

/// A proxy in front of `local` that also copies the reports of `protocols` into a
/// federation queue (`queue`) for `federation` (addresses: one may have no listener yet),
/// reached with `federation_client`.
pub async fn proxy_federating(
    local: &[&Sink],
    federation: Vec<String>,
    protocols: Vec<&'static str>,
    queue: QueueConfig,
    delivery: Delivery,
    federation_client: UpstreamClient,
) -> Proxy {
    let limits = limits();
    let addresses = local.iter().map(|s| s.address()).collect();
    let pool = Arc::new(pool_of(
        addresses,
        UpstreamClient::new(4, 100),
        limits.max_message_bytes,
        delivery,
        Default::default(),
    ));
    let federation_pool = Arc::new(pool_of(
        federation,
        federation_client,
        limits.max_message_bytes,
        delivery,
        Arc::new(skylift_proxy::metrics::Metrics::federation()),
    ));
    let federation = Arc::new(skylift_proxy::federation::Federation::new(
        Arc::new(Queue::new(queue)),
        federation_pool,
        protocols,
        true,
    ));
    let state: State = Arc::new(
        Shared::new(
            Arc::new(Queue::new(queue_config())),
            pool,
            limits,
            None,
            skylift_proxy::listen::turned_away::TurnedAway::new(Duration::ZERO),
        )
        .with_federation(federation.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (close, closed) = tokio::sync::watch::channel(false);
    tokio::spawn(server::serve(listener, state.clone(), closed.clone()));
    send::spawn_senders(&state.queue, &state.pool, &closed);
    send::spawn_senders(&federation.queue, &federation.pool, &closed);
    follow_pool(&state.pool);
    follow_pool(&federation.pool);
    Proxy {
        address,
        state,
        _close: close,
    }
}

/// A sink serving TLS with a certificate for `names` from `server_ca`, requiring client
/// certificates from `client_ca`.
pub async fn mutual_tls_sink(
    server_ca: &skylift_testkit::pki::TestCa,
    names: &[&str],
    client_ca: &skylift_testkit::pki::TestCa,
) -> Sink {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = server_ca.server_identity(names);
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    Sink::start_tls(Arc::new(config)).await.unwrap()
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A client with Nagle off, as gRPC's own clients have it (grpc-go, grpc-java's Netty):
/// no 40 ms between a call's HEADERS and its DATA, for tests making many calls in turn.
pub fn nodelay_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

pub fn framed(messages: &[Vec<u8>]) -> Bytes {
    let mut out = BytesMut::new();
    for m in messages {
        framing::encode(false, m, &mut out);
    }
    out.freeze()
}

/// One call: (grpc-status, response messages, trailers).
pub async fn call(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    path: &str,
    body: Bytes,
    headers: &[(&str, &str)],
) -> (u16, Bytes, http::HeaderMap) {
    let mut request = Request::post(format!("http://{proxy}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    // A trailers-only answer carries its status in the headers.
    let trailers = collected
        .trailers()
        .cloned()
        .unwrap_or_else(|| parts.headers.clone());
    let status = trailers
        .get("grpc-status")
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap();
    (status, collected.to_bytes(), trailers)
}

/// A report of `messages` on the segment method, which the proxy must acknowledge.
pub async fn report(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    messages: &[Vec<u8>],
) {
    let (status, _, trailers) = call(client, proxy, SEGMENTS, framed(messages), &[]).await;
    assert_eq!(status, 0, "the report was not acknowledged: {trailers:?}");
}

/// `streams` report streams of ten segments each, named `s<stream>-<i>`, one after another.
pub async fn report_streams(proxy: SocketAddr, streams: usize) {
    let client = client();
    for stream in 0..streams {
        let messages: Vec<Vec<u8>> = (0..10)
            .map(|i| segment(&format!("s{stream}-{i}")))
            .collect();
        report(&client, proxy, &messages).await;
    }
}

pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    eventually_within(what, Duration::from_secs(5), check).await;
}

/// [`eventually`], for conditions that take up to `limit` to come about.
pub async fn eventually_within(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(check(), "timed out waiting for {what}");
}

/// A `SegmentObject` whose trace and segment ids are `id`, from service `svc` instance
/// `svc-1`.
pub fn segment(id: &str) -> Vec<u8> {
    skylift_testkit::reports::segment(id, "svc", "svc-1")
}

/// A segment of about `size` bytes: [`segment`] with its spans (field 3) padded out.
pub fn large_segment(id: &str, size: usize) -> Vec<u8> {
    let mut message = segment(id);
    let padding = size.saturating_sub(message.len() + 4);
    message.extend(pb::Pb::new().bytes(3, &vec![b'x'; padding]).done());
    message
}

/// An address nothing listens on (yet): a port free on 127.0.0.77, a loopback address no
/// test listens on otherwise. (A port taken on 127.0.0.1 and let go could be handed to
/// the next listener a test starts there, another test's proxy or OAP stand-in, which would
/// then be sent what was meant for nobody.)
#[allow(dead_code)] // not every test binary using this module needs it
pub fn address_nobody_listens_on() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.77:0").unwrap();
    listener.local_addr().unwrap()
}
