//! skylift-proxy's command line, defined once: the proxy parses it, the operator renders
//! it for each pool's Deployment ([`ProxyArgs::to_args`]). Every flag also reads a
//! `SKYLIFT_PROXY_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::{Serialize, Serializer};

use crate::duration;
use crate::logging::LogFormat;

/// Balances every SkyWalking message (and any gRPC call) across all upstreams.
///
/// skylift-proxy's command line, parsed by the proxy and rendered by the operator.
#[derive(Parser, Clone, Debug, PartialEq, Serialize)]
#[command(name = "skylift-proxy", version)]
pub struct ProxyArgs {
    /// Client-facing gRPC address (HTTP/2: cleartext, or TLS with --tls-cert-file).
    #[arg(long, env = "SKYLIFT_PROXY_LISTEN", default_value = "0.0.0.0:11800")]
    pub listen: SocketAddr,
    /// Serve clients over TLS with this certificate chain (PEM); read again when it changes.
    #[arg(long, env = "SKYLIFT_PROXY_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, env = "SKYLIFT_PROXY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Require client certificates that chain to this CA bundle (PEM): mutual TLS.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_TLS_CLIENT_CA_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_client_ca_file: Option<PathBuf>,
    /// A file holding the token OAP's `authentication` setting expects (a mounted Secret):
    /// sent as `authentication` metadata on every call upstream, read again when it changes.
    #[arg(long, env = "SKYLIFT_PROXY_AUTHENTICATION_FILE")]
    pub authentication_file: Option<PathBuf>,
    /// Connect to upstreams over TLS, verifying their certificates against this CA
    /// bundle (PEM); read again when it changes.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAM_TLS_CA_FILE")]
    pub upstream_tls_ca_file: Option<PathBuf>,
    /// The name upstream certificates are verified against (and sent as SNI), e.g. the
    /// OAP Service's DNS name; default: each upstream's own host or IP.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_UPSTREAM_TLS_SERVER_NAME",
        requires = "upstream_tls_ca_file"
    )]
    pub upstream_tls_server_name: Option<String>,
    /// A client certificate chain (PEM) presented to upstreams: mutual TLS.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_UPSTREAM_TLS_CERT_FILE",
        requires_all = ["upstream_tls_ca_file", "upstream_tls_key_file"]
    )]
    pub upstream_tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "SKYLIFT_PROXY_UPSTREAM_TLS_KEY_FILE",
        requires = "upstream_tls_cert_file"
    )]
    pub upstream_tls_key_file: Option<PathBuf>,
    /// Admin address: /metrics, /healthz, /readyz.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_ADMIN_LISTEN",
        default_value = "0.0.0.0:1234"
    )]
    pub admin_listen: SocketAddr,
    /// An upstream HOST:PORT (repeatable).
    #[arg(
        long = "upstream",
        env = "SKYLIFT_PROXY_UPSTREAM",
        value_delimiter = ','
    )]
    pub upstreams: Vec<String>,
    /// A file in the operator's endpoints.json format, followed for changes.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAMS_FILE")]
    pub upstreams_file: Option<PathBuf>,
    /// The operator's upstreams ConfigMap, NAMESPACE/NAME (key endpoints.json).
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAMS_CONFIGMAP")]
    pub upstreams_configmap: Option<String>,
    /// A federation upstream HOST:PORT (repeatable): copies of the reports of
    /// --federation-protocols also go there, e.g. a central OAP in another cluster. They
    /// wait in a queue of their own, so a slow or unreachable federation upstream never
    /// holds back local delivery.
    #[arg(
        long = "federation-upstream",
        env = "SKYLIFT_PROXY_FEDERATION_UPSTREAM",
        value_delimiter = ','
    )]
    pub federation_upstreams: Vec<String>,
    /// The federation upstreams in the operator's endpoints.json format (a mounted
    /// ConfigMap, say), followed for changes.
    #[arg(long, env = "SKYLIFT_PROXY_FEDERATION_UPSTREAMS_FILE")]
    pub federation_upstreams_file: Option<PathBuf>,
    /// The report protocols copied to the federation upstreams (segment, log, meter, jvm,
    /// clr, management, event, browser, mesh, ...). Default: what OAP makes service and
    /// instance overview metrics of.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_FEDERATION_PROTOCOLS",
        value_delimiter = ',',
        default_value = "meter,jvm,clr,management"
    )]
    pub federation_protocols: Vec<String>,
    /// Messages each partition of the federation queue holds; copies beyond are dropped
    /// (counted skylift_proxy_federation_dropped_total{reason="queue_full"}).
    #[arg(
        long,
        env = "SKYLIFT_PROXY_FEDERATION_QUEUE_CAPACITY",
        default_value_t = 20_000
    )]
    pub federation_queue_capacity: usize,
    /// Bytes each partition of the federation queue holds (compressed copies).
    #[arg(
        long,
        env = "SKYLIFT_PROXY_FEDERATION_QUEUE_MAX_BYTES",
        default_value_t = 16 << 20
    )]
    pub federation_queue_max_bytes: usize,
    /// Messages per federation upstream call: large, for the WAN.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_FEDERATION_BATCH_SIZE",
        default_value_t = 1000
    )]
    pub federation_batch_size: usize,
    /// Longest a copy waits for its federation batch to fill.
    #[arg(long, env = "SKYLIFT_PROXY_FEDERATION_FLUSH_INTERVAL", default_value = "1s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub federation_flush_interval: Duration,
    /// How messages travel to the federation upstreams: gzip (each message that it makes
    /// smaller; OAP's gRPC server reads gzip) or none.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_FEDERATION_COMPRESSION",
        value_enum,
        default_value = "gzip"
    )]
    pub federation_compression: CompressionArg,
    /// Connect to the federation upstreams over TLS, verifying their certificates against
    /// this CA bundle (PEM); read again when it changes.
    #[arg(long, env = "SKYLIFT_PROXY_FEDERATION_TLS_CA_FILE")]
    pub federation_tls_ca_file: Option<PathBuf>,
    /// The name federation upstream certificates are verified against (and sent as SNI).
    #[arg(
        long,
        env = "SKYLIFT_PROXY_FEDERATION_TLS_SERVER_NAME",
        requires = "federation_tls_ca_file"
    )]
    pub federation_tls_server_name: Option<String>,
    /// A client certificate chain (PEM) presented to the federation upstreams: mutual TLS.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_FEDERATION_TLS_CERT_FILE",
        requires_all = ["federation_tls_ca_file", "federation_tls_key_file"]
    )]
    pub federation_tls_cert_file: Option<PathBuf>,
    /// The federation client certificate's private key (PEM).
    #[arg(
        long,
        env = "SKYLIFT_PROXY_FEDERATION_TLS_KEY_FILE",
        requires = "federation_tls_cert_file"
    )]
    pub federation_tls_key_file: Option<PathBuf>,
    /// A file holding the federation OAP's `authentication` token, sent on every call to it.
    #[arg(long, env = "SKYLIFT_PROXY_FEDERATION_AUTHENTICATION_FILE")]
    pub federation_authentication_file: Option<PathBuf>,
    /// Client connections accepted at once; more are sent away with a GOAWAY that tells
    /// them to reconnect (through the Service, to another replica). The first line of
    /// defence of a replica's memory: each connection holds at most its budget (see
    /// docs/proxy.md). 0: no limit.
    #[arg(long, env = "SKYLIFT_PROXY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// How often idle client connections are pinged; one that does not answer within the
    /// same time (at most 20 s) is closed, so dead clients stop counting. 0s: never.
    #[arg(long, env = "SKYLIFT_PROXY_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub keepalive_interval: Duration,
    /// Ask clients to reconnect (GOAWAY) once their connection is this old, so that
    /// long-lived connections spread onto replicas added since (e.g. 10m). 0s: never.
    #[arg(long, env = "SKYLIFT_PROXY_MAX_CONNECTION_AGE", default_value = "0s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub max_connection_age: Duration,
    /// How long streams may go on after that GOAWAY before the connection is closed.
    #[arg(long, env = "SKYLIFT_PROXY_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub max_connection_age_grace: Duration,
    /// How long a client may take to send its HTTP/2 preface and SETTINGS, to finish a
    /// header block, or to finish any frame it began; slower ones are closed (slowloris).
    #[arg(long, env = "SKYLIFT_PROXY_HEADER_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub header_timeout: Duration,
    /// Close a client connection with no calls that sent nothing for this long. 0s: never.
    #[arg(long, env = "SKYLIFT_PROXY_IDLE_TIMEOUT", default_value = "5m", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub idle_timeout: Duration,
    /// Largest gRPC message accepted. Each client connection may hold this much of
    /// messages not yet whole, plus 64 KiB (its flow-control window).
    #[arg(long, env = "SKYLIFT_PROXY_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,
    /// Queue partitions (parallel senders). Default: one per core.
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE_PARTITIONS")]
    pub queue_partitions: Option<usize>,
    /// Messages one partition holds.
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE_CAPACITY", default_value_t = 5000)]
    pub queue_capacity: usize,
    /// Bytes one partition holds (in memory, and on disk with --queue disk).
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE_MAX_BYTES", default_value_t = 64 << 20)]
    pub queue_max_bytes: usize,
    /// Where queued messages are kept: memory, or disk (journaled in --queue-dir before
    /// they are acknowledged, replayed after a restart).
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE", value_enum, default_value_t = QueueArg::Memory)]
    pub queue: QueueArg,
    /// The journal's folder, with --queue disk (a volume of its own in production).
    #[arg(long, env = "SKYLIFT_PROXY_QUEUE_DIR")]
    pub queue_dir: Option<PathBuf>,
    /// Bytes the whole journal may take (the volume's size, less a margin): shared among
    /// the partitions, each also capped by --queue-max-bytes.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_QUEUE_MAX_DISK_BYTES",
        requires = "queue_dir"
    )]
    pub queue_max_disk_bytes: Option<u64>,
    /// When the journal is synced to disk: every --fsync-interval, or always before a
    /// client is acknowledged.
    #[arg(long, env = "SKYLIFT_PROXY_FSYNC", value_enum, default_value_t = FsyncArg::Interval)]
    pub fsync: FsyncArg,
    /// How often the journal is synced with --fsync interval.
    #[arg(long, env = "SKYLIFT_PROXY_FSYNC_INTERVAL", default_value = "1s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub fsync_interval: Duration,
    /// Messages sent upstream in one stream.
    #[arg(long, env = "SKYLIFT_PROXY_BATCH_SIZE", default_value_t = 200)]
    pub batch_size: usize,
    /// Longest a message waits for its batch (e.g. 500ms, 1s).
    #[arg(long, env = "SKYLIFT_PROXY_FLUSH_INTERVAL", default_value = "1s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub flush_interval: Duration,
    /// What a full partition does: reject (client told RESOURCE_EXHAUSTED) or drop.
    #[arg(long, env = "SKYLIFT_PROXY_OVERFLOW", value_enum, default_value_t = OverflowArg::Reject)]
    pub overflow: OverflowArg,
    /// How long a client is held back (its stream not read) waiting for room in a full
    /// queue before --overflow applies.
    #[arg(long, env = "SKYLIFT_PROXY_OVERFLOW_WAIT", default_value = "1s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub overflow_wait: Duration,
    /// Batches each partition sends at once, each on its own upstream stream.
    #[arg(long, env = "SKYLIFT_PROXY_SEND_CONCURRENCY", default_value_t = 4)]
    pub send_concurrency: usize,
    /// Most HTTP/2 connections the proxy opens to one upstream.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAM_CONNECTIONS", default_value_t = 4)]
    pub upstream_connections: usize,
    /// Streams one upstream connection carries at once before the next connection opens.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAM_STREAMS", default_value_t = 100)]
    pub upstream_streams: usize,
    /// Balancing of messages without a routing key.
    #[arg(long, env = "SKYLIFT_PROXY_ROUTING", value_enum, default_value_t = RoutingArg::RoundRobin)]
    pub routing: RoutingArg,
    /// Request header hashed to pick the upstream, with --routing hash.
    #[arg(long, env = "SKYLIFT_PROXY_HASH_HEADER")]
    pub hash_header: Option<String>,
    /// Meter data: fixed (one upstream per service instance) or round-robin.
    #[arg(long, env = "SKYLIFT_PROXY_METER_ROUTING", value_enum, default_value_t = MeterRoutingArg::Fixed)]
    pub meter_routing: MeterRoutingArg,
    /// Serve HTTP/1.1 on the listen port beside gRPC (told apart by the first bytes, or by
    /// ALPN over TLS), and HTTP/2 requests that are not gRPC: each request is forwarded to
    /// an upstream's host at this port (OAP's REST port 12800, where the browser agent
    /// and OAP's HTTP receivers are; an OpenTelemetry collector's OTLP/HTTP port 4318),
    /// balanced per request with the same health and ejection as gRPC.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAM_HTTP_PORT")]
    pub upstream_http_port: Option<u16>,
    /// OTLP exports balanced by affinity rather than call by call: a trace export is split
    /// by trace ID and each part sent to the upstream its trace IDs hash to (every span of
    /// a trace at one collector, for tail sampling); a metrics export by a resource
    /// attribute (--otlp-metrics-attribute); logs as --otlp-logs-routing says. The client
    /// is answered once every part is; parts refused are counted in OTLP's partial success.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_OTLP_AFFINITY",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true"
    )]
    pub otlp_affinity: bool,
    /// With --otlp-affinity: the resource attribute whose value picks the upstream of a
    /// metrics export's resources (one service's series at one collector).
    #[arg(
        long,
        env = "SKYLIFT_PROXY_OTLP_METRICS_ATTRIBUTE",
        default_value = "service.name"
    )]
    pub otlp_metrics_attribute: String,
    /// With --otlp-affinity: logs exports round-robin (whole), or split by their records'
    /// trace IDs like spans (records outside a trace go together, round-robin).
    #[arg(long, env = "SKYLIFT_PROXY_OTLP_LOGS_ROUTING", value_enum, default_value_t = OtlpLogsArg::RoundRobin)]
    pub otlp_logs_routing: OtlpLogsArg,
    /// Service name the proxy reports its telemetry as (OAP shows satellite::<service>).
    #[arg(long, env = "SKYLIFT_PROXY_TELEMETRY_SERVICE")]
    pub telemetry_service: Option<String>,
    /// Instance name in the telemetry. Default: the host name.
    #[arg(long, env = "SKYLIFT_PROXY_TELEMETRY_INSTANCE")]
    pub telemetry_instance: Option<String>,
    /// How often telemetry is reported.
    #[arg(long, env = "SKYLIFT_PROXY_TELEMETRY_INTERVAL", default_value = "10s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub telemetry_interval: Duration,
    /// OAP address for telemetry. Default: through the upstreams.
    #[arg(long, env = "SKYLIFT_PROXY_TELEMETRY_UPSTREAM")]
    pub telemetry_upstream: Option<String>,
    /// How long OAP may take to take in a batch (its flow-control windows open for all of
    /// it) before the call counts as failed: a call whose data does not move is stuck
    /// behind a stalled or dead node.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAM_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub upstream_timeout: Duration,
    /// How long a call whose batch OAP has taken waits for OAP's answer. OAP handles the
    /// data as it arrives; sending it again before this would have OAP count it twice.
    #[arg(long, env = "SKYLIFT_PROXY_UPSTREAM_ANSWER_TIMEOUT", default_value = "30s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub upstream_answer_timeout: Duration,
    /// Upstream calls that may have delivered a report (timed out, broken off once
    /// connected, or answered with a failing status) before it is dropped and counted
    /// `retries_exhausted`: each may have delivered it, so this bounds the copies OAP can
    /// count. Calls that never connected do not count. 0: no bound.
    #[arg(long, env = "SKYLIFT_PROXY_DELIVERY_ATTEMPTS", default_value_t = 5)]
    pub delivery_attempts: u16,
    /// Longest a shutdown (SIGTERM) takes: clients are sent GOAWAY and finish their open
    /// streams, then the queues are sent upstream; what is left after this is dropped
    /// (counted) with the memory queue, or kept in the journal with --queue disk.
    #[arg(long, env = "SKYLIFT_PROXY_DRAIN_TIMEOUT", default_value = "20s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub drain_timeout: Duration,
    /// How often each upstream in use is health-checked (grpc.health.v1). 0s: only new
    /// and ejected upstreams are.
    #[arg(long, env = "SKYLIFT_PROXY_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub health_check_interval: Duration,
    /// How long a health check may take before it counts as failed.
    #[arg(long, env = "SKYLIFT_PROXY_HEALTH_CHECK_TIMEOUT", default_value = "3s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub health_check_timeout: Duration,
    /// Health checks in a row that must fail before an upstream in use is ejected.
    #[arg(long, env = "SKYLIFT_PROXY_HEALTH_CHECK_FAILURES", default_value_t = 2)]
    pub health_check_failures: u32,
    /// Eject an upstream whose batches take this many times longer than the median of the
    /// others' (moving averages; needs 3 upstreams, ejects at most a third). 0: never.
    #[arg(
        long,
        env = "SKYLIFT_PROXY_OUTLIER_LATENCY_FACTOR",
        default_value_t = 3.0
    )]
    pub outlier_latency_factor: f64,
    /// ... and longer than this, so a pool of fast upstreams is left alone.
    #[arg(long, env = "SKYLIFT_PROXY_OUTLIER_MIN_LATENCY", default_value = "100ms", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub outlier_min_latency: Duration,
    /// How long a slow upstream is ejected; doubled while it stays slow (at most 5m).
    #[arg(long, env = "SKYLIFT_PROXY_OUTLIER_EJECTION", default_value = "10s", value_parser = duration::parse)]
    #[serde(serialize_with = "flag_duration")]
    pub outlier_ejection: Duration,
    /// The most of the pool, in percent, ejected at once for connection failures and
    /// latency (at least one upstream always may be); failed health checks eject whatever
    /// the share.
    #[arg(long, env = "SKYLIFT_PROXY_MAX_EJECTION_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_ejection_percent: u32,
    /// Log format.
    #[arg(long, env = "SKYLIFT_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowArg {
    Reject,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueArg {
    Memory,
    Disk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncArg {
    Interval,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingArg {
    RoundRobin,
    WeightedRoundRobin,
    Hash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionArg {
    Gzip,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtlpLogsArg {
    RoundRobin,
    TraceId,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeterRoutingArg {
    Fixed,
    RoundRobin,
}

impl From<crate::pool::OverflowPolicy> for OverflowArg {
    fn from(policy: crate::pool::OverflowPolicy) -> Self {
        match policy {
            crate::pool::OverflowPolicy::Reject => OverflowArg::Reject,
            crate::pool::OverflowPolicy::Drop => OverflowArg::Drop,
        }
    }
}

impl From<crate::pool::FederationCompression> for CompressionArg {
    fn from(compression: crate::pool::FederationCompression) -> Self {
        match compression {
            crate::pool::FederationCompression::Gzip => CompressionArg::Gzip,
            crate::pool::FederationCompression::None => CompressionArg::None,
        }
    }
}

impl From<crate::pool::FsyncPolicy> for FsyncArg {
    fn from(policy: crate::pool::FsyncPolicy) -> Self {
        match policy {
            crate::pool::FsyncPolicy::Interval => FsyncArg::Interval,
            crate::pool::FsyncPolicy::Always => FsyncArg::Always,
        }
    }
}

impl From<crate::satellite::BalancePolicy> for RoutingArg {
    fn from(policy: crate::satellite::BalancePolicy) -> Self {
        match policy {
            crate::satellite::BalancePolicy::RoundRobin => RoutingArg::RoundRobin,
            crate::satellite::BalancePolicy::WeightedRoundRobin => RoutingArg::WeightedRoundRobin,
        }
    }
}

impl From<crate::proxy::ProxyBalancePolicy> for RoutingArg {
    fn from(policy: crate::proxy::ProxyBalancePolicy) -> Self {
        match policy {
            crate::proxy::ProxyBalancePolicy::RoundRobin => RoutingArg::RoundRobin,
            crate::proxy::ProxyBalancePolicy::WeightedRoundRobin => RoutingArg::WeightedRoundRobin,
            crate::proxy::ProxyBalancePolicy::Hash => RoutingArg::Hash,
        }
    }
}

impl From<crate::satellite::MeterRouting> for MeterRoutingArg {
    fn from(routing: crate::satellite::MeterRouting) -> Self {
        match routing {
            crate::satellite::MeterRouting::Fixed => MeterRoutingArg::Fixed,
            crate::satellite::MeterRouting::RoundRobin => MeterRoutingArg::RoundRobin,
        }
    }
}

/// A duration as the flags spell it, so that it parses back to the same value.
fn flag_duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&duration::format(*value))
}

impl ProxyArgs {
    /// The proxy's defaults: what it runs with when given no flag (and no environment).
    pub fn defaults() -> ProxyArgs {
        DEFAULTS.0.clone()
    }

    /// What the proxy refuses to start with beyond what the parser checks, said as the
    /// error the proxy exits with. The operator's tests run it on every pool it renders.
    pub fn check(&self) -> Result<(), String> {
        let sources = usize::from(!self.upstreams.is_empty())
            + usize::from(self.upstreams_file.is_some())
            + usize::from(self.upstreams_configmap.is_some());
        if sources != 1 {
            return Err("give exactly one upstream source: --upstream, --upstreams-file or --upstreams-configmap".into());
        }
        if let Some(reference) = &self.upstreams_configmap
            && !reference
                .split_once('/')
                .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty())
        {
            return Err("--upstreams-configmap must be NAMESPACE/NAME".into());
        }
        match (&self.routing, &self.hash_header) {
            (RoutingArg::Hash, None) => return Err("--routing hash needs --hash-header".into()),
            // RFC 9110's token: what an HTTP header name may be made of.
            (RoutingArg::Hash, Some(header))
                if header.is_empty()
                    || !header
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)) =>
            {
                return Err(format!("--hash-header: {header:?} is not a header name"));
            }
            _ => {}
        }
        if !self.federation_upstreams.is_empty() && self.federation_upstreams_file.is_some() {
            return Err(
                "give at most one federation upstream source: --federation-upstream or --federation-upstreams-file"
                    .into(),
            );
        }
        if self.federation_batch_size == 0 || self.federation_queue_capacity == 0 {
            return Err(
                "--federation-batch-size and --federation-queue-capacity must be at least 1".into(),
            );
        }
        if self.upstream_http_port.is_some() && self.upstream_tls_ca_file.is_some() {
            return Err(
                "--upstream-http-port: HTTP requests go to upstreams in cleartext; it cannot be combined with --upstream-tls-ca-file yet"
                    .into(),
            );
        }
        if self.otlp_metrics_attribute.is_empty() {
            return Err("--otlp-metrics-attribute must name an attribute".into());
        }
        if self.header_timeout.is_zero() {
            return Err("--header-timeout must be above 0".into());
        }
        if self.batch_size == 0
            || self.queue_capacity == 0
            || self.queue_partitions == Some(0)
            || self.send_concurrency == 0
            || self.upstream_connections == 0
            || self.upstream_streams == 0
        {
            return Err("--batch-size, --queue-capacity, --queue-partitions, --send-concurrency, --upstream-connections and --upstream-streams must be at least 1".into());
        }
        match (self.queue, &self.queue_dir) {
            (QueueArg::Memory, Some(_)) => return Err("--queue-dir needs --queue disk".into()),
            (QueueArg::Disk, None) => return Err("--queue disk needs --queue-dir".into()),
            (QueueArg::Disk, Some(_))
                if self.fsync == FsyncArg::Interval && self.fsync_interval.is_zero() =>
            {
                return Err("--fsync-interval must be above 0 (or use --fsync always)".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// The command line that makes these arguments: one `--flag=value` for each flag
    /// whose value differs from the proxy's default, in the order the flags are declared
    /// (a list flag once per value). [`ProxyArgs::try_parse_from`] reads it back as `self`.
    pub fn to_args(&self) -> Vec<String> {
        let values = flag_values(self);
        let defaults = &DEFAULTS.1;
        let mut args = Vec::new();
        for arg in ProxyArgs::command().get_arguments() {
            let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
                continue;
            };
            let Some(value) = values.get(id) else {
                continue;
            };
            if defaults.get(id) == Some(value) {
                continue;
            }
            match value {
                serde_json::Value::Null => {}
                serde_json::Value::Array(items) => {
                    for item in items {
                        args.push(format!("--{long}={}", scalar(item)));
                    }
                }
                other => args.push(format!("--{long}={}", scalar(other))),
            }
        }
        args
    }
}

/// The defaults and their flag values, parsed once (the operator renders every pool with them).
static DEFAULTS: LazyLock<(ProxyArgs, serde_json::Map<String, serde_json::Value>)> =
    LazyLock::new(|| {
        // The environment is ignored: the defaults are the proxy's, not this process's.
        let command = ProxyArgs::command().mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["skylift-proxy"])
            .expect("the proxy's flags all have defaults or are optional");
        let defaults =
            ProxyArgs::from_arg_matches(&matches).expect("matches of the proxy's own command");
        let values = flag_values(&defaults);
        (defaults, values)
    });

/// Each field's value by its flag's id (the field's name).
fn flag_values(args: &ProxyArgs) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(args).expect("the arguments serialize") {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a struct serializes as an object"),
    }
}

fn scalar(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        // A whole factor reads as `4`, as a person would write it.
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{}", f as i64)
            } else {
                f.to_string()
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_proxy_refuses_is_said() {
        let parse = |argv: &[&str]| {
            ProxyArgs::try_parse_from(std::iter::once("skylift-proxy").chain(argv.iter().copied()))
                .unwrap()
                .check()
        };
        assert_eq!(parse(&["--upstream=a:1"]), Ok(()));
        for (argv, said) in [
            (&[][..], "exactly one upstream source"),
            (
                &["--upstream=a:1", "--upstreams-file=/x"][..],
                "exactly one upstream source",
            ),
            (&["--upstreams-configmap=name"][..], "NAMESPACE/NAME"),
            (&["--upstream=a:1", "--routing=hash"][..], "--hash-header"),
            (
                &["--upstream=a:1", "--routing=hash", "--hash-header=x y"][..],
                "not a header name",
            ),
            (
                &["--upstream=a:1", "--header-timeout=0s"][..],
                "--header-timeout",
            ),
            (&["--upstream=a:1", "--batch-size=0"][..], "at least 1"),
            (
                &["--upstream=a:1", "--queue-dir=/q"][..],
                "needs --queue disk",
            ),
            (&["--upstream=a:1", "--queue=disk"][..], "needs --queue-dir"),
            (
                &[
                    "--upstream=a:1",
                    "--queue=disk",
                    "--queue-dir=/q",
                    "--fsync-interval=0s",
                ][..],
                "--fsync-interval",
            ),
        ] {
            let err = parse(argv).unwrap_err();
            assert!(err.contains(said), "{argv:?}: {err}");
        }
    }

    #[test]
    fn the_defaults_render_as_no_flag_and_parse_back() {
        let defaults = ProxyArgs::defaults();
        assert_eq!(defaults.to_args(), Vec::<String>::new());
        assert_eq!(
            ProxyArgs::try_parse_from(["skylift-proxy"]).unwrap(),
            defaults
        );
        ProxyArgs::command().debug_assert();
    }

    /// Every flag set away from its default renders, and parses back to the same value: a
    /// flag the renderer missed would come back as its default.
    #[test]
    fn every_flag_round_trips() {
        let path = |p: &str| Some(PathBuf::from(p));
        let args = ProxyArgs {
            listen: "127.0.0.1:11900".parse().unwrap(),
            tls_cert_file: path("/tls/tls.crt"),
            tls_key_file: path("/tls/tls.key"),
            tls_client_ca_file: path("/tls/ca.crt"),
            authentication_file: path("/auth/token"),
            upstream_tls_ca_file: path("/up/ca.crt"),
            upstream_tls_server_name: Some("oap.obs.svc".into()),
            upstream_tls_cert_file: path("/up/tls.crt"),
            upstream_tls_key_file: path("/up/tls.key"),
            admin_listen: "127.0.0.1:1300".parse().unwrap(),
            upstreams: vec!["10.0.0.1:11800".into(), "10.0.0.2:11800".into()],
            upstreams_file: path("/etc/endpoints.json"),
            upstreams_configmap: Some("obs/ingest-upstreams".into()),
            federation_upstreams: vec!["central-oap.example.com:11800".into()],
            federation_upstreams_file: path("/etc/federation/endpoints.json"),
            federation_protocols: vec!["meter".into(), "segment".into()],
            federation_queue_capacity: 500,
            federation_queue_max_bytes: 1 << 22,
            federation_batch_size: 2000,
            federation_flush_interval: Duration::from_secs(3),
            federation_compression: CompressionArg::None,
            federation_tls_ca_file: path("/fed/ca.crt"),
            federation_tls_server_name: Some("oap.central".into()),
            federation_tls_cert_file: path("/fed/tls.crt"),
            federation_tls_key_file: path("/fed/tls.key"),
            federation_authentication_file: path("/fed/token"),
            max_connections: 11,
            keepalive_interval: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(600),
            max_connection_age_grace: Duration::from_millis(1500),
            header_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(7200),
            max_message_bytes: 1 << 20,
            queue_partitions: Some(3),
            queue_capacity: 7,
            queue_max_bytes: 1 << 24,
            queue: QueueArg::Disk,
            queue_dir: path("/var/lib/skylift/queue"),
            queue_max_disk_bytes: Some(966_367_638),
            fsync: FsyncArg::Always,
            fsync_interval: Duration::from_millis(250),
            batch_size: 50,
            flush_interval: Duration::from_millis(500),
            overflow: OverflowArg::Drop,
            overflow_wait: Duration::ZERO,
            send_concurrency: 2,
            upstream_connections: 8,
            upstream_streams: 50,
            routing: RoutingArg::Hash,
            hash_header: Some("x-tenant".into()),
            meter_routing: MeterRoutingArg::RoundRobin,
            upstream_http_port: Some(4318),
            otlp_affinity: true,
            otlp_metrics_attribute: "k8s.deployment.name".into(),
            otlp_logs_routing: OtlpLogsArg::TraceId,
            telemetry_service: Some("obs-ingest".into()),
            telemetry_instance: Some("$(POD_NAME)".into()),
            telemetry_interval: Duration::from_secs(90),
            telemetry_upstream: Some("oap.obs:11800".into()),
            drain_timeout: Duration::from_secs(45),
            upstream_timeout: Duration::from_secs(25),
            upstream_answer_timeout: Duration::from_secs(90),
            delivery_attempts: 3,
            health_check_interval: Duration::from_secs(2),
            health_check_timeout: Duration::from_millis(800),
            health_check_failures: 3,
            outlier_latency_factor: 4.5,
            outlier_min_latency: Duration::from_millis(20),
            outlier_ejection: Duration::from_secs(30),
            max_ejection_percent: 34,
            log_format: LogFormat::Json,
        };
        let rendered = args.to_args();
        let parsed = ProxyArgs::try_parse_from(
            std::iter::once("skylift-proxy".to_string()).chain(rendered.iter().cloned()),
        )
        .unwrap();
        assert_eq!(parsed, args, "{rendered:#?}");
        // Each field of the struct came out as a flag of its own (two for two lists).
        let fields = ProxyArgs::command()
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .count();
        assert_eq!(rendered.len(), fields + 2, "{rendered:#?}");
    }
}
