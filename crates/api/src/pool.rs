//! Pieces shared by the two proxy-pool resources, `Satellite` and `Proxy`.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::common::ServiceAddress;
use crate::endpoints::UpstreamEndpoint;

/// Upstream pods chosen by label, in the resource's namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSelectorUpstream {
    /// Labels the upstream pods carry (all must match).
    #[schemars(extend("minProperties" = 1))]
    pub match_labels: BTreeMap<String, String>,
    /// Port the upstream pods serve gRPC / HTTP/2 on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Per-replica connection limit.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionLimit {
    /// Client connections one replica accepts; more are closed as they arrive, so the
    /// client reconnects after its backoff (through the Service) to another replica.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,
}

/// Horizontal autoscaling of the pool on its open client connections.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas").reason(Reason::FieldValueInvalid))]
pub struct Autoscaling {
    /// Fewest replicas the autoscaler keeps.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas the autoscaler creates.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Open client connections per replica the autoscaler aims for.
    #[schemars(range(min = 1, max = 1000000))]
    pub target_connections_per_replica: i32,
    /// HPA scaling behavior (`autoscaling/v2`), passed through unchanged. Default: scale up
    /// after a 60 s stabilization window, choosing the smallest step (`selectPolicy: Min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn default_min_replicas() -> i32 {
    1
}

/// A second upstream pool that copies of some reports also go to: typically a central OAP
/// that watches every cluster a service runs in (SkyWalking's "OAP Federation Mode"
/// proposal, apache/skywalking#2773), fed by each cluster's pools without changing OAP.
/// The copies wait in a bounded queue of their own: an unreachable or slow federation OAP
/// never holds back delivery to the pool's own OAP; what its queue cannot hold is dropped
/// and counted (`skylift_proxy_federation_dropped_total`).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.oapServerRef) != has(self.addresses)").message("federation needs exactly one of oapServerRef or addresses").reason(Reason::FieldValueInvalid))]
pub struct Federation {
    /// An OAPServer of this cluster, in any namespace: reached at its gRPC Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oap_server_ref: Option<FederationOAPServerRef>,
    /// Fixed `host:port` addresses of the federation OAP (another cluster, over the WAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        inner(regex(
            pattern = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$"
        ))
    )]
    pub addresses: Option<Vec<String>>,
    /// The reports copied there. Default: `meter`, `jvm`, `clr` and `management`, what OAP
    /// makes service and instance overview metrics of; traces (`segment`) and logs (`log`)
    /// are opt-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub protocols: Option<Vec<FederationProtocol>>,
    /// TLS to the federation OAP (`serverName` default: the address's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// The token the federation OAP's `authentication` setting expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationSecret>,
    /// How many copies may wait per partition (default 20000), and how many bytes
    /// (default `16Mi`, compressed), before new copies are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<FederationQueue>,
    /// `gzip` (default: each message it makes smaller) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<FederationCompression>,
}

/// An OAPServer in any namespace of the cluster.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederationOAPServerRef {
    /// Name of the OAPServer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace. Default: the pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A report protocol a federation pool may take.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FederationProtocol {
    Meter,
    Jvm,
    Clr,
    Management,
    Segment,
    Log,
    Event,
    Browser,
    Mesh,
    SpanAttachedEvent,
}

impl FederationProtocol {
    /// The proxy's name for it (`--federation-protocols`).
    pub fn name(self) -> &'static str {
        match self {
            FederationProtocol::Meter => "meter",
            FederationProtocol::Jvm => "jvm",
            FederationProtocol::Clr => "clr",
            FederationProtocol::Management => "management",
            FederationProtocol::Segment => "segment",
            FederationProtocol::Log => "log",
            FederationProtocol::Event => "event",
            FederationProtocol::Browser => "browser",
            FederationProtocol::Mesh => "mesh",
            FederationProtocol::SpanAttachedEvent => "span_attached_event",
        }
    }
}

/// Bounds of the federation queue.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FederationQueue {
    /// Copies each partition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub capacity_per_partition: Option<i32>,
    /// Bytes each partition holds, e.g. `16Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub max_bytes_per_partition: Option<String>,
}

/// How copies travel to the federation OAP.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FederationCompression {
    Gzip,
    None,
}

/// Buffering between receiving a report and sending it upstream.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.batchSize) || !has(self.capacityPerPartition) || self.batchSize <= self.capacityPerPartition").message("queue.batchSize must not be greater than queue.capacityPerPartition").reason(Reason::FieldValueInvalid))]
pub struct QueueSpec {
    /// Independent queues, each sending in parallel. Default: the proxy's (one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub partitions: Option<i32>,
    /// Events each partition holds before the overflow policy applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub capacity_per_partition: Option<i32>,
    /// Longest time an event waits for its batch, e.g. `500ms`, `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub flush_interval: Option<String>,
    /// Bytes each partition holds (in memory, and in the journal with `disk`), e.g.
    /// `32Mi`. Default: the proxy's (64Mi). Size the container's memory limit above
    /// partitions × this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub max_bytes_per_partition: Option<String>,
    /// Events sent upstream in one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: Option<i32>,
    /// What happens when a partition is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<OverflowPolicy>,
    /// Upstream calls that may have delivered a report (timed out, broken off once
    /// connected, or failed after OAP may have handled it) before the report is dropped
    /// and counted `retries_exhausted` (default 5; `0`: no bound). It bounds the copies
    /// of a report OAP counts while it is slow; calls that never connected do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub delivery_attempts: Option<i32>,
    /// Journal the queue on disk: reports are written down before clients are
    /// acknowledged and replayed when the proxy restarts. Default: in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskQueue>,
}

/// A queue journaled on a volume of the pod (an `emptyDir`): it survives the proxy
/// process being killed or restarted in its pod (OOM, crash, failed liveness probe); a
/// pod that is deleted first drains its queue (graceful shutdown).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.fsyncInterval) || !has(self.fsync) || self.fsync == 'interval'").message("queue.disk.fsyncInterval applies only with fsync: interval").reason(Reason::FieldValueInvalid))]
pub struct DiskQueue {
    /// Size of the journal volume (the `emptyDir`'s `sizeLimit`), e.g. `1Gi`; the
    /// journal keeps within 90 % of it, beyond which the overflow policy applies.
    #[schemars(regex(pattern = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub size_limit: String,
    /// When the journal is synced: `interval` (every `fsyncInterval`; a killed node can
    /// lose that much) or `always` (before each client is acknowledged; slower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync: Option<FsyncPolicy>,
    /// How often the journal is synced with `fsync: interval`, e.g. `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub fsync_interval: Option<String>,
}

/// When a disk queue is synced.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FsyncPolicy {
    Interval,
    Always,
}

/// Bytes in a Kubernetes quantity of the form `DiskQueue::size_limit` allows (`512Mi`,
/// `2G`, `1000000`).
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let digits = quantity.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let factor: u64 = match &quantity[digits.len()..] {
        "" => 1,
        "k" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "T" => 1000_u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(factor)
}

/// TLS for the pool's clients, from a `kubernetes.io/tls` Secret (as cert-manager writes
/// it); renewals are picked up without a restart.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    /// Secret in the pool's namespace with `tls.crt` and `tls.key` (and `ca.crt` with
    /// `requireClientCertificates`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Accept only clients presenting a certificate signed by the Secret's `ca.crt`
    /// (mutual TLS).
    #[serde(default)]
    pub require_client_certificates: bool,
}

/// TLS to the upstreams.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// Secret in the pool's namespace whose `ca.crt` upstream certificates must chain to
    /// (and whose `tls.crt` / `tls.key` are presented with `clientCertificate`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// The name upstream certificates are verified against, e.g. the OAP Service's DNS
    /// name. Default: each upstream's own address (pod IPs then need IP SANs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
    /// Present the Secret's `tls.crt` / `tls.key` to the upstreams (mutual TLS).
    #[serde(default)]
    pub client_certificate: bool,
}

/// The token OAP's `authentication` setting expects, sent with every call upstream.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationSecret {
    /// Secret in the pool's namespace holding the token.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the token in the Secret.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".into()
}

/// Asking long-lived client connections to reconnect, so they spread over replicas added
/// since they connected (an HTTP/2 GOAWAY; clients reconnect through the Service).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rebalancing {
    /// Age at which a client connection is asked to reconnect (less up to 10 % jitter),
    /// e.g. `10m`.
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub max_connection_age: String,
    /// How long its open streams may go on after that, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub grace: Option<String>,
}

/// How upstreams are checked and when they are ejected. Every field defaults to the
/// proxy's own default.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamHealth {
    /// How often each upstream is checked with `grpc.health.v1` (default `5s`; `0s`:
    /// only new and ejected ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub check_interval: Option<String>,
    /// How long a check may take (default `3s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub check_timeout: Option<String>,
    /// Checks in a row that must fail before an upstream is ejected (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub check_failures: Option<i32>,
    /// Eject an upstream whose batches take this many times longer than the median of
    /// the others' (default 3; `0`: never). A pool slow as a whole keeps its nodes; at
    /// most `maxEjectionPercent` of the pool is ejected at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub slow_factor: Option<i32>,
    /// ... and longer than this (default `100ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub slow_min_latency: Option<String>,
    /// How long a slow upstream is ejected, doubled while it stays slow (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub slow_ejection: Option<String>,
    /// The most of the pool, in percent, ejected at once for connection failures and
    /// latency (default 50; at least one upstream always may be). Failed health checks
    /// eject whatever the share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<i32>,
    /// How long OAP may take to take in a batch sent upstream before the call counts as
    /// failed (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub call_timeout: Option<String>,
    /// How long a call whose batch OAP has taken waits for its answer before the batch may
    /// be sent again (default `30s`). Set it above OAP's slowest answers under load: each
    /// batch sent again may be counted twice by OAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub answer_timeout: Option<String>,
}

/// What a pool serves besides gRPC on its port.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    /// Serve HTTP/1.1 (and HTTP/2 requests that are not gRPC) on the pool's port beside
    /// gRPC, each request balanced on its own over the upstreams' HTTP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpListener>,
}

/// HTTP beside gRPC.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpListener {
    /// The upstreams' HTTP port requests are forwarded to (on each upstream's host).
    /// Default for a Satellite: OAP's REST port 12800 (the browser agent's and OAP's HTTP
    /// receivers); a Proxy must say (4318 for OpenTelemetry collectors' OTLP/HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub upstream_port: Option<i32>,
    /// The Service port HTTP clients use (to the same pods' port as gRPC). Default: the
    /// upstream port, so clients keep the port they know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub service_port: Option<i32>,
}

/// What a pool's proxies are hardened with; the same fields on `Satellite` and `Proxy`
/// (flattened into their specs).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolHardening {
    /// Serve clients over TLS (optionally mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    /// Reach the upstreams over TLS (optionally mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
    /// The token sent as `authentication` metadata on every call upstream (OAP's
    /// `authentication` setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationSecret>,
    /// Ask long-lived client connections to reconnect, so they spread onto new replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalancing: Option<Rebalancing>,
    /// Health checks of the upstreams and ejection of failing or slow ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_health: Option<UpstreamHealth>,
}

/// What a full queue does with a new event.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OverflowPolicy {
    /// Answer the client `RESOURCE_EXHAUSTED`, so it keeps (and retries) the data.
    Reject,
    /// Acknowledge and drop, counting the drop.
    Drop,
}

/// The pool's HorizontalPodAutoscaler as last observed.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaStatus {
    /// Name of the HorizontalPodAutoscaler.
    pub name: String,
    #[serde(default)]
    pub current_replicas: i32,
    #[serde(default)]
    pub desired_replicas: i32,
    /// Last metric value the autoscaler read (a Quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// Observed state of a Satellite or Proxy pool.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Pods of the Deployment (the `/scale` status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pool's pods, for `/scale` and the HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where clients reach the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<ServiceAddress>,
    /// The upstream endpoints currently published to the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamEndpoint>,
    /// Number of published upstream endpoints that take new work (draining ones excluded).
    #[serde(default)]
    pub upstream_count: i32,
    /// The autoscaler, when `spec.autoscaling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa: Option<HpaStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_read_in_binary_and_decimal_units() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("512Mi"), Some(512 << 20));
        assert_eq!(quantity_bytes("2G"), Some(2_000_000_000));
        assert_eq!(quantity_bytes("1000000"), Some(1_000_000));
        assert_eq!(quantity_bytes("3k"), Some(3000));
        for bad in ["", "Gi", "1.5Gi", "1Ei", "1gi", "99999999999999999999Ti"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }
}
