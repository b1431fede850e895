//! `Proxy`: a generic gRPC / HTTP/2 balancing pool in front of any upstream pods.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{PodTemplateOverrides, ServiceOptions, default_replicas};
use crate::pool::{
    Autoscaling, ConnectionLimit, Federation, Listeners, PodSelectorUpstream, PoolHardening,
    PoolStatus, QueueSpec,
};

/// A pool of skylift-proxy replicas balancing every gRPC / HTTP/2 request over upstream
/// pods (OTLP collectors, any gRPC service).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "skylift.io",
    version = "v1alpha1",
    kind = "Proxy",
    plural = "proxies",
    singular = "proxy",
    shortname = "skyproxy",
    category = "skylift",
    namespaced,
    status = "PoolStatus",
    doc = "A gRPC / HTTP/2 balancing proxy pool managed by skylift.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Upstreams",
        type_ = "integer",
        json_path = ".status.upstreamCount"
    ),
    printcolumn(
        name = "Max Conns",
        type_ = "integer",
        json_path = ".spec.connectionLimit.maxConnections"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || has(self.telemetry)").message("autoscaling needs telemetry: the autoscaler scales on the connection count the proxies report to OAP").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !has(self.connectionLimit) || self.autoscaling.targetConnectionsPerReplica <= self.connectionLimit.maxConnections").message("autoscaling.targetConnectionsPerReplica must not be greater than connectionLimit.maxConnections: a replica could never reach its target").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.listeners) || !has(self.listeners.http) || has(self.listeners.http.upstreamPort)").message("listeners.http.upstreamPort is required: the upstreams' HTTP port (4318 for OpenTelemetry collectors' OTLP/HTTP)").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.listeners) || !has(self.listeners.http) || !has(self.upstreamTls)").message("listeners.http cannot be combined with upstreamTls yet: HTTP requests reach the upstreams in cleartext").reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Container image. Default: skylift's own image, which runs skylift-proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Number of proxy replicas.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// The upstreams to balance over.
    pub upstream: ProxyUpstream,
    /// Connection limit per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<ConnectionLimit>,
    /// Autoscale the pool on open connections per replica (creates an HPA; needs
    /// `telemetry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// How requests are spread over the upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<ProxyRouting>,
    /// What the pool serves besides gRPC on its port (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Listeners>,
    /// Buffering of SkyWalking reports before they are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
    /// Self-telemetry to a SkyWalking OAP. Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<ProxyTelemetry>,
    /// A second upstream pool, such as a central OAP of several clusters, that copies of
    /// some reports (by default the meters and JVM/CLR/management reports) also go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<Federation>,
    /// TLS both ways, the OAP token, rebalancing and upstream health: the same fields on
    /// `Satellite` and `Proxy`.
    #[serde(flatten)]
    pub hardening: PoolHardening,
    /// How the pool's Service is exposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceOptions>,
    /// Compute resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides for the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}

/// Exactly one way of naming the upstreams.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.selector), has(self.addresses)].filter(x, x).size() == 1").message("upstream needs exactly one of selector or addresses").reason(Reason::FieldValueInvalid))]
pub struct ProxyUpstream {
    /// Upstream pods selected by label in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PodSelectorUpstream>,
    /// Fixed `host:port` addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        inner(regex(
            pattern = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$"
        ))
    )]
    pub addresses: Option<Vec<String>>,
}

/// Routing of Proxy traffic.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.default != 'hash' || has(self.hashHeader)").message("routing.hashHeader is required when routing.default is hash").reason(Reason::FieldValueRequired))]
pub struct ProxyRouting {
    /// Balancing policy for every request.
    #[serde(default)]
    pub default: ProxyBalancePolicy,
    /// Request header whose value is consistently hashed to pick the upstream (with
    /// `default: hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub hash_header: Option<String>,
    /// OTLP exports balanced by affinity rather than request by request (for pools of
    /// OpenTelemetry collectors with tail sampling or other stateful processors): a trace
    /// export is split by trace ID so every span of a trace reaches one collector, a
    /// metrics export by a resource attribute. Over gRPC and, with `listeners.http`,
    /// OTLP/HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpRouting>,
}

/// How OTLP exports are routed by affinity.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtlpRouting {
    /// The resource attribute whose value picks a metrics resource's collector (default
    /// `service.name`: one service's series at one collector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub metrics_attribute: Option<String>,
    /// Logs: `roundRobin` (whole exports, default) or `traceID` (split by their records'
    /// trace IDs, each trace's logs with its spans).
    #[serde(default)]
    pub logs: OtlpLogsRouting,
}

/// How OTLP logs are routed.
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub enum OtlpLogsRouting {
    #[default]
    #[serde(rename = "roundRobin")]
    RoundRobin,
    #[serde(rename = "traceID")]
    TraceId,
}

/// Per-request balancing policies of a Proxy.
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum ProxyBalancePolicy {
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin on the endpoints' `skylift.io/weight`.
    WeightedRoundRobin,
    /// Consistent hashing on `hashHeader`.
    Hash,
}

/// Self-telemetry of a Proxy, reported as SkyWalking native meters.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTelemetry {
    /// Service name the proxies report as; OAP shows it as `satellite::<service>`.
    #[schemars(length(min = 1, max = 200))]
    pub service: String,
    /// OAP gRPC address (`host:port`) the telemetry goes to. Default: through the pool's
    /// own upstreams (when they are OAP nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$"
    ))]
    pub oap_address: Option<String>,
}
