use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use skylift_api::logging::LogFormat;
use skylift_proxy::balance::balancer::Policy;
use skylift_proxy::listen::state::Limits;
use skylift_proxy::ops::telemetry::TelemetryConfig;
use skylift_proxy::queue::journal::{Fsync, JournalConfig};
use skylift_proxy::queue::{Overflow, QueueConfig};
use skylift_proxy::run::{Config, UpstreamSource, run};

// Every message passes through short-lived buffers of a few KiB: glibc's per-thread arenas
// grow and trim their heaps for them (mprotect and page faults per buffer); jemalloc keeps
// freed pages for reuse.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Balances every SkyWalking message (and any gRPC call) across all upstreams.
#[derive(Parser, Debug)]
#[command(name = "skylift-proxy", version)]
struct Args {
    /// Client-facing gRPC address (HTTP/2: cleartext, or TLS with --tls-cert-file).
    #[arg(long, env = "SKYLIFT_PROXY_LISTEN", default_value = "0.0.0.0:11800")]
    listen: SocketAddr,
    /// Serve clients over TLS with this certificate chain (PEM); read again when it changes.
    #[arg(long, env = "SKYLIFT_PROXY_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, env = "SKYLIFT_PROXY_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Require client certificates that chain to this CA bundle (PEM): mutual TLS.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_TLS_CLIENT_CA_FILE",
        requires = "tls_cert_file"
    )]
    tls_client_ca_file: Option<PathBuf>,
    /// A file holding the token OAP's `authentication` setting expects (a mounted Secret):
    /// sent as `authentication` metadata on every call upstream, read again when it changes.
    #[arg(long, env = "SKYLIFT_PROXY_AUTHENTICATION_FILE")]
    authentication_file: Option<PathBuf>,
    /// Connect to upstreams over TLS, verifying their certificates against this CA
    /// bundle (PEM); read again when it changes.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAM_TLS_CA_FILE")]
    upstream_tls_ca_file: Option<PathBuf>,
    /// The name upstream certificates are verified against (and sent as SNI), e.g. the
    /// OAP Service's DNS name; default: each upstream's own host or IP.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_UPSTREAM_TLS_SERVER_NAME",
        requires = "upstream_tls_ca_file"
    )]
    upstream_tls_server_name: Option<String>,
    /// A client certificate chain (PEM) presented to upstreams: mutual TLS.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_UPSTREAM_TLS_CERT_FILE",
        requires_all = ["upstream_tls_ca_file", "upstream_tls_key_file"]
    )]
    upstream_tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "SKYLIFT_PROXY_UPSTREAM_TLS_KEY_FILE",
        requires = "upstream_tls_cert_file"
    )]
    upstream_tls_key_file: Option<PathBuf>,
    /// Admin address: /metrics, /healthz, /readyz.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_ADMIN_LISTEN",
        default_value = "0.0.0.0:1234"
    )]
    admin_listen: SocketAddr,
    /// An upstream HOST:PORT (repeatable).
    #[arg(
        long = "upstream",
        env = "SKYLIFT_PROXY_UPSTREAM",
        value_delimiter = ','
    )]
    upstreams: Vec<String>,
    /// A file in the operator's endpoints.json format, followed for changes.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAMS_FILE")]
    upstreams_file: Option<PathBuf>,
    /// The operator's upstreams ConfigMap, NAMESPACE/NAME (key endpoints.json).
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAMS_CONFIGMAP")]
    upstreams_configmap: Option<String>,
    /// Client connections accepted at once; more are sent away with a GOAWAY that tells
    /// them to reconnect (through the Service, to another replica). The first line of
    /// defence of a replica's memory: each connection holds at most its budget (see
    /// docs/proxy.md). 0: no limit.
    #[arg(long, env = "SKYLIFT_PROXY_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// How often idle client connections are pinged; one that does not answer within the
    /// same time (at most 20 s) is closed, so dead clients stop counting. 0s: never.
    #[arg(long, env = "SKYLIFT_PROXY_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = skylift_api::duration::parse)]
    keepalive_interval: Duration,
    /// Ask clients to reconnect (GOAWAY) once their connection is this old, so that
    /// long-lived connections spread onto replicas added since (e.g. 10m). 0s: never.
    #[arg(long, env = "SKYLIFT_PROXY_MAX_CONNECTION_AGE", default_value = "0s", value_parser = skylift_api::duration::parse)]
    max_connection_age: Duration,
    /// How long streams may go on after that GOAWAY before the connection is closed.
    #[arg(long, env = "SKYLIFT_PROXY_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = skylift_api::duration::parse)]
    max_connection_age_grace: Duration,
    /// How long a client may take to send its HTTP/2 preface and SETTINGS, to finish a
    /// header block, or to finish any frame it began; slower ones are closed (slowloris).
    #[arg(long, env = "SKYLIFT_PROXY_HEADER_TIMEOUT", default_value = "10s", value_parser = skylift_api::duration::parse)]
    header_timeout: Duration,
    /// Close a client connection with no calls that sent nothing for this long. 0s: never.
    #[arg(long, env = "SKYLIFT_PROXY_IDLE_TIMEOUT", default_value = "5m", value_parser = skylift_api::duration::parse)]
    idle_timeout: Duration,
    /// Largest gRPC message accepted. Each client connection may hold this much of
    /// messages not yet whole, plus 64 KiB (its flow-control window).
    #[arg(long, env = "SKYLIFT_PROXY_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    max_message_bytes: usize,
    /// Queue partitions (parallel senders). Default: one per core.
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE_PARTITIONS")]
    queue_partitions: Option<usize>,
    /// Messages one partition holds.
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE_CAPACITY", default_value_t = 5000)]
    queue_capacity: usize,
    /// Bytes one partition holds (in memory, and on disk with --queue disk).
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE_MAX_BYTES", default_value_t = 64 << 20)]
    queue_max_bytes: usize,
    /// Where queued messages are kept: memory, or disk (journaled in --queue-dir before
    /// they are acknowledged, replayed after a restart).
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE", value_enum, default_value_t = QueueArg::Memory)]
    queue: QueueArg,
    /// The journal's folder, with --queue disk (a volume of its own in production).
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE_DIR")]
    queue_dir: Option<PathBuf>,
    /// Bytes the whole journal may take (the volume's size, less a margin): shared among
    /// the partitions, each also capped by --queue-max-bytes.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_QUEUE_MAX_DISK_BYTES",
        requires = "queue_dir"
    )]
    queue_max_disk_bytes: Option<u64>,
    /// When the journal is synced to disk: every --fsync-interval, or always before a
    /// client is acknowledged.
    #[arg(long, env = "SKYLIFT_PROXY_FSYNC", value_enum, default_value_t = FsyncArg::Interval)]
    fsync: FsyncArg,
    /// How often the journal is synced with --fsync interval.
    #[arg(long, env = "SKYLIFT_PROXY_FSYNC_INTERVAL", default_value = "1s", value_parser = skylift_api::duration::parse)]
    fsync_interval: Duration,
    /// Messages sent upstream in one stream.
    #[arg(long, env = "SKYLIFT_PROXY_BATCH_SIZE", default_value_t = 200)]
    batch_size: usize,
    /// Longest a message waits for its batch (e.g. 500ms, 1s).
    #[arg(long, env = "SKYLIFT_PROXY_FLUSH_INTERVAL", default_value = "1s", value_parser = skylift_api::duration::parse)]
    flush_interval: Duration,
    /// What a full partition does: reject (client told RESOURCE_EXHAUSTED) or drop.
    #[arg(long, env = "SKYLIFT_PROXY_OVERFLOW", value_enum, default_value_t = OverflowArg::Reject)]
    overflow: OverflowArg,
    /// How long a client is held back (its stream not read) waiting for room in a full
    /// queue before --overflow applies.
    #[arg(long, env = "SKYLIFT_PROXY_OVERFLOW_WAIT", default_value = "1s", value_parser = skylift_api::duration::parse)]
    overflow_wait: Duration,
    /// Batches each partition sends at once, each on its own upstream stream.
    #[arg(long, env = "SKYLIFT_PROXY_SEND_CONCURRENCY", default_value_t = 4)]
    send_concurrency: usize,
    /// Most HTTP/2 connections the proxy opens to one upstream.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAM_CONNECTIONS", default_value_t = 4)]
    upstream_connections: usize,
    /// Streams one upstream connection carries at once before the next connection opens.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAM_STREAMS", default_value_t = 100)]
    upstream_streams: usize,
    /// Balancing of messages without a routing key.
    #[arg(long, env = "SKYLIFT_PROXY_ROUTING", value_enum, default_value_t = RoutingArg::RoundRobin)]
    routing: RoutingArg,
    /// Request header hashed to pick the upstream, with --routing hash.
    #[arg(long, env = "SKYLIFT_PROXY_HASH_HEADER")]
    hash_header: Option<String>,
    /// Meter data: fixed (one upstream per service instance) or round-robin.
    #[arg(long, env = "SKYLIFT_PROXY_METER_ROUTING", value_enum, default_value_t = MeterRoutingArg::Fixed)]
    meter_routing: MeterRoutingArg,
    /// Service name the proxy reports its telemetry as (OAP shows satellite::<service>).
    #[arg(long, env = "SKYLIFT_PROXY_TELEMETRY_SERVICE")]
    telemetry_service: Option<String>,
    /// Instance name in the telemetry. Default: the host name.
    #[arg(long, env = "SKYLIFT_PROXY_TELEMETRY_INSTANCE")]
    telemetry_instance: Option<String>,
    /// How often telemetry is reported.
    #[arg(long, env = "SKYLIFT_PROXY_TELEMETRY_INTERVAL", default_value = "10s", value_parser = skylift_api::duration::parse)]
    telemetry_interval: Duration,
    /// OAP address for telemetry. Default: through the upstreams.
    #[arg(long, env = "SKYLIFT_PROXY_TELEMETRY_UPSTREAM")]
    telemetry_upstream: Option<String>,
    /// Longest a shutdown (SIGTERM) takes: clients are sent GOAWAY and finish their open
    /// streams, then the queues are sent upstream; what is left after this is dropped
    /// (counted) with the memory queue, or kept in the journal with --queue disk.
    #[arg(long, env = "SKYLIFT_PROXY_DRAIN_TIMEOUT", default_value = "20s", value_parser = skylift_api::duration::parse)]
    drain_timeout: Duration,
    /// How often each upstream in use is health-checked (grpc.health.v1). 0s: only new
    /// and ejected upstreams are.
    #[arg(long, env = "SKYLIFT_PROXY_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = skylift_api::duration::parse)]
    health_check_interval: Duration,
    /// How long a health check may take before it counts as failed.
    #[arg(long, env = "SKYLIFT_PROXY_HEALTH_CHECK_TIMEOUT", default_value = "3s", value_parser = skylift_api::duration::parse)]
    health_check_timeout: Duration,
    /// Health checks in a row that must fail before an upstream in use is ejected.
    #[arg(long, env = "SKYLIFT_PROXY_HEALTH_CHECK_FAILURES", default_value_t = 2)]
    health_check_failures: u32,
    /// Eject an upstream whose batches take this many times longer than the median of the
    /// others' (moving averages; needs 3 upstreams, ejects at most a third). 0: never.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_OUTLIER_LATENCY_FACTOR",
        default_value_t = 3.0
    )]
    outlier_latency_factor: f64,
    /// ... and longer than this, so a pool of fast upstreams is left alone.
    #[arg(long, env = "SKYLIFT_PROXY_OUTLIER_MIN_LATENCY", default_value = "100ms", value_parser = skylift_api::duration::parse)]
    outlier_min_latency: Duration,
    /// How long a slow upstream is ejected; doubled while it stays slow (at most 5m).
    #[arg(long, env = "SKYLIFT_PROXY_OUTLIER_EJECTION", default_value = "10s", value_parser = skylift_api::duration::parse)]
    outlier_ejection: Duration,
    /// Log format.
    #[arg(long, env = "SKYLIFT_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OverflowArg {
    Reject,
    Drop,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum QueueArg {
    Memory,
    Disk,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FsyncArg {
    Interval,
    Always,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoutingArg {
    RoundRobin,
    WeightedRoundRobin,
    Hash,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MeterRoutingArg {
    Fixed,
    RoundRobin,
}

fn config(args: Args) -> anyhow::Result<(Config, LogFormat)> {
    let upstreams = match (
        args.upstreams.is_empty(),
        &args.upstreams_file,
        &args.upstreams_configmap,
    ) {
        (false, None, None) => UpstreamSource::Static(args.upstreams),
        (true, Some(path), None) => UpstreamSource::File(path.clone()),
        (true, None, Some(reference)) => {
            let (namespace, name) = reference
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                .context("--upstreams-configmap must be NAMESPACE/NAME")?;
            UpstreamSource::ConfigMap {
                namespace: namespace.into(),
                name: name.into(),
            }
        }
        _ => bail!(
            "give exactly one upstream source: --upstream, --upstreams-file or --upstreams-configmap"
        ),
    };
    let policy = match args.routing {
        RoutingArg::RoundRobin | RoutingArg::Hash => Policy::RoundRobin,
        RoutingArg::WeightedRoundRobin => Policy::WeightedRoundRobin,
    };
    let hash_header = match (args.routing, args.hash_header) {
        (RoutingArg::Hash, Some(header)) => {
            Some(http::HeaderName::try_from(header.as_str()).context("--hash-header")?)
        }
        (RoutingArg::Hash, None) => bail!("--routing hash needs --hash-header"),
        (_, _) => None,
    };
    if args.header_timeout.is_zero() {
        bail!("--header-timeout must be above 0");
    }
    let partitions = args
        .queue_partitions
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if args.batch_size == 0
        || args.queue_capacity == 0
        || partitions == 0
        || args.send_concurrency == 0
        || args.upstream_connections == 0
        || args.upstream_streams == 0
    {
        bail!(
            "--batch-size, --queue-capacity, --queue-partitions, --send-concurrency, --upstream-connections and --upstream-streams must be at least 1"
        );
    }
    let journal = match (args.queue, args.queue_dir) {
        (QueueArg::Memory, None) => None,
        (QueueArg::Memory, Some(_)) => bail!("--queue-dir needs --queue disk"),
        (QueueArg::Disk, None) => bail!("--queue disk needs --queue-dir"),
        (QueueArg::Disk, Some(dir)) => Some(JournalConfig {
            dir,
            fsync: match args.fsync {
                FsyncArg::Interval if args.fsync_interval.is_zero() => {
                    bail!("--fsync-interval must be above 0 (or use --fsync always)")
                }
                FsyncArg::Interval => Fsync::Interval(args.fsync_interval),
                FsyncArg::Always => Fsync::Always,
            },
            // Each partition's share of the volume, when its size is given.
            max_bytes: match args.queue_max_disk_bytes {
                Some(total) => (total / partitions as u64).min(args.queue_max_bytes as u64),
                None => args.queue_max_bytes as u64,
            },
        }),
    };
    let telemetry = args.telemetry_service.map(|service| TelemetryConfig {
        service,
        instance: args
            .telemetry_instance
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "skylift-proxy".into()),
        interval: args.telemetry_interval,
        upstream: args.telemetry_upstream,
    });
    Ok((
        Config {
            listen: args.listen,
            admin_listen: args.admin_listen,
            upstreams,
            limits: Limits {
                max_connections: (args.max_connections > 0).then_some(args.max_connections),
                max_message_bytes: args.max_message_bytes,
                keepalive: (!args.keepalive_interval.is_zero()).then_some(args.keepalive_interval),
                max_connection_age: (!args.max_connection_age.is_zero())
                    .then_some(args.max_connection_age),
                max_connection_age_grace: args.max_connection_age_grace,
                header_timeout: args.header_timeout,
                idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
            },
            queue: QueueConfig {
                partitions,
                capacity: args.queue_capacity,
                max_bytes: args.queue_max_bytes,
                batch_size: args.batch_size,
                flush_interval: args.flush_interval,
                overflow: match args.overflow {
                    OverflowArg::Reject => Overflow::Reject,
                    OverflowArg::Drop => Overflow::Drop,
                },
                overflow_wait: args.overflow_wait,
                in_flight: args.send_concurrency,
            },
            policy,
            fixed_meter_routing: matches!(args.meter_routing, MeterRoutingArg::Fixed),
            hash_header,
            sticky_keys: 5000,
            upstream_connections: args.upstream_connections,
            upstream_streams: args.upstream_streams,
            sticky_ttl: Duration::from_secs(180),
            drain_timeout: args.drain_timeout,
            authentication_file: args.authentication_file,
            upstream_tls: args.upstream_tls_ca_file.map(|ca| {
                skylift_proxy::upstream::tls::UpstreamTlsFiles {
                    ca,
                    client_cert: args.upstream_tls_cert_file.zip(args.upstream_tls_key_file),
                    server_name: args.upstream_tls_server_name,
                }
            }),
            tls: match (args.tls_cert_file, args.tls_key_file) {
                (Some(cert), Some(key)) => Some(skylift_proxy::listen::tls::TlsFiles {
                    cert,
                    key,
                    client_ca: args.tls_client_ca_file,
                }),
                _ => None,
            },
            health_checks: skylift_proxy::upstream::health::HealthChecks {
                interval: (!args.health_check_interval.is_zero())
                    .then_some(args.health_check_interval),
                timeout: args.health_check_timeout,
                failures: args.health_check_failures.max(1),
            },
            outlier_detection: skylift_proxy::balance::outlier::OutlierDetection {
                factor: args.outlier_latency_factor,
                min_latency: args.outlier_min_latency,
                ejection: args.outlier_ejection,
            },
            journal,
            telemetry,
        },
        args.log_format,
    ))
}

fn main() -> anyhow::Result<()> {
    let (config, log_format) = config(Args::parse())?;
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    skylift_api::logging::init(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        run(config, shutdown).await.context("skylift-proxy")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_arguments_are_accepted() {
        let args = Args::try_parse_from([
            "skylift-proxy",
            "--listen=0.0.0.0:11800",
            "--admin-listen=0.0.0.0:1234",
            "--upstreams-configmap=observability/ingest-upstreams",
            "--max-connections=11",
            "--queue-partitions=4",
            "--queue-capacity=5000",
            "--batch-size=200",
            "--flush-interval=500ms",
            "--overflow=reject",
            "--routing=weighted-round-robin",
            "--meter-routing=fixed",
            "--telemetry-service=obs-ingest",
            "--telemetry-instance=ingest-satellite-7c9f-x2",
            "--log-format=json",
            // What a hardened Satellite adds (the operator's test pins the same list).
            "--queue-max-bytes=33554432",
            "--queue=disk",
            "--queue-dir=/var/lib/skylift/queue",
            "--queue-max-disk-bytes=966367638",
            "--fsync=always",
            "--tls-cert-file=/etc/skylift/tls/tls.crt",
            "--tls-key-file=/etc/skylift/tls/tls.key",
            "--tls-client-ca-file=/etc/skylift/tls/ca.crt",
            "--upstream-tls-ca-file=/etc/skylift/upstream-tls/ca.crt",
            "--upstream-tls-server-name=skywalking-oap.obs.svc",
            "--upstream-tls-cert-file=/etc/skylift/upstream-tls/tls.crt",
            "--upstream-tls-key-file=/etc/skylift/upstream-tls/tls.key",
            "--authentication-file=/etc/skylift/authentication/token",
            "--max-connection-age=10m",
            "--health-check-interval=2s",
            "--health-check-failures=3",
            "--outlier-latency-factor=4",
            "--outlier-ejection=30s",
        ])
        .unwrap();
        let (config, _) = config(args).unwrap();
        assert!(
            matches!(config.upstreams, UpstreamSource::ConfigMap { ref namespace, ref name } if namespace == "observability" && name == "ingest-upstreams")
        );
        assert_eq!(config.limits.max_connections, Some(11));
        assert_eq!(config.policy, Policy::WeightedRoundRobin);
        assert_eq!(config.telemetry.unwrap().service, "obs-ingest");
        // The journal's share of the volume: 90 % of 1 GiB over 4 partitions, capped by
        // what a partition holds in memory (32 MiB).
        assert_eq!(config.journal.unwrap().max_bytes, 32 << 20);
        assert_eq!(config.health_checks.failures, 3);
        assert_eq!(config.outlier_detection.factor, 4.0);
        assert_eq!(
            config.limits.max_connection_age,
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn upstream_tls_needs_its_ca_and_a_client_certificate_needs_its_key() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let args = Args::try_parse_from([
            "skylift-proxy",
            "--upstream=10.0.0.7:11800",
            "--upstream-tls-ca-file=/etc/skylift/upstream-tls/ca.crt",
            "--upstream-tls-server-name=oap.obs.svc",
            "--upstream-tls-cert-file=/etc/skylift/upstream-tls/tls.crt",
            "--upstream-tls-key-file=/etc/skylift/upstream-tls/tls.key",
        ])
        .unwrap();
        let tls = config(args).unwrap().0.upstream_tls.unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("oap.obs.svc"));
        assert!(tls.client_cert.is_some());
        for incomplete in [
            &["--upstream-tls-server-name=oap"][..],
            &["--upstream-tls-ca-file=ca", "--upstream-tls-cert-file=c"][..],
            &["--upstream-tls-ca-file=ca", "--upstream-tls-key-file=k"][..],
        ] {
            let argv = ["skylift-proxy", "--upstream=a:1"].iter().chain(incomplete);
            assert!(Args::try_parse_from(argv).is_err(), "{incomplete:?}");
        }
    }

    #[test]
    fn contradictory_upstream_sources_and_hash_without_header_are_refused() {
        let both =
            Args::try_parse_from(["skylift-proxy", "--upstream=a:1", "--upstreams-file=/tmp/x"])
                .unwrap();
        assert!(
            config(both)
                .unwrap_err()
                .to_string()
                .contains("exactly one upstream source")
        );
        let hash =
            Args::try_parse_from(["skylift-proxy", "--upstream=a:1", "--routing=hash"]).unwrap();
        assert!(
            config(hash)
                .unwrap_err()
                .to_string()
                .contains("--hash-header")
        );
    }
}
