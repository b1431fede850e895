//! `Satellite`: a SkyWalking-aware balancing proxy pool in front of OAP.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{PodTemplateOverrides, ServiceOptions, default_replicas};
use crate::pool::{
    Autoscaling, ConnectionLimit, Federation, Listeners, PodSelectorUpstream, PoolHardening,
    PoolStatus, QueueSpec,
};

/// A pool of skylift-proxy replicas that SkyWalking agents and Envoy sidecars connect to;
/// every report is balanced across all ready OAP nodes.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "skylift.io",
    version = "v1alpha1",
    kind = "Satellite",
    plural = "satellites",
    singular = "satellite",
    shortname = "sat",
    category = "skylift",
    namespaced,
    status = "PoolStatus",
    doc = "A SkyWalking-aware balancing proxy pool in front of OAP, managed by skylift.",
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
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !has(self.connectionLimit) || self.autoscaling.targetConnectionsPerReplica <= self.connectionLimit.maxConnections").message("autoscaling.targetConnectionsPerReplica must not be greater than connectionLimit.maxConnections: a replica could never reach its target").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.listeners) || !has(self.listeners.http) || !has(self.upstreamTls)").message("listeners.http cannot be combined with upstreamTls yet: HTTP requests reach OAP in cleartext").reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct SatelliteSpec {
    /// Container image. Default: skylift's own image, which runs skylift-proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Number of proxy replicas (moved by the autoscaler through `/scale` when
    /// `autoscaling` is set).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// The OAP nodes to balance over.
    pub upstream: SatelliteUpstream,
    /// Connection limit per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<ConnectionLimit>,
    /// Autoscale the pool on open connections per replica (creates an HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// How reports are spread over the OAP nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<SatelliteRouting>,
    /// What the pool serves besides gRPC on its port: HTTP, for the browser agent and
    /// agents reporting to OAP's HTTP receivers (forwarded to OAP's REST port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Listeners>,
    /// Buffering of reports before they are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
    /// The proxy's self-telemetry, reported to OAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<SatelliteTelemetry>,
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

/// Exactly one way of naming the OAP nodes.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.oapServerRef), has(self.selector), has(self.addresses)].filter(x, x).size() == 1").message("upstream needs exactly one of oapServerRef, selector or addresses").reason(Reason::FieldValueInvalid))]
pub struct SatelliteUpstream {
    /// An OAPServer in the same namespace; its ready pods are the upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oap_server_ref: Option<OAPServerRef>,
    /// OAP pods selected by label in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PodSelectorUpstream>,
    /// Fixed `host:port` addresses (for OAP outside the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        inner(regex(
            pattern = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$"
        ))
    )]
    pub addresses: Option<Vec<String>>,
}

/// Reference to an OAPServer in the same namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OAPServerRef {
    /// Name of the OAPServer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Routing of Satellite traffic.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SatelliteRouting {
    /// Policy for every report except meters.
    #[serde(default)]
    pub default: BalancePolicy,
    /// Policy for meter data: `fixed` keeps each service instance's meters on one OAP node
    /// (OAP aggregates meters per node), `roundRobin` spreads them.
    #[serde(default)]
    pub meter: MeterRouting,
}

/// Per-message balancing policies.
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum BalancePolicy {
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin on the endpoints' `skylift.io/weight`.
    WeightedRoundRobin,
}

/// Meter routing policies.
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum MeterRouting {
    #[default]
    Fixed,
    RoundRobin,
}

/// Self-telemetry of a Satellite.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SatelliteTelemetry {
    /// Service name the proxies report as; OAP shows it as `satellite::<service>`.
    /// Default: `<namespace>-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub service: Option<String>,
}

impl Satellite {
    /// The service name the pool reports its telemetry as.
    pub fn telemetry_service(&self) -> String {
        self.spec
            .telemetry
            .as_ref()
            .and_then(|t| t.service.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    self.metadata.namespace.as_deref().unwrap_or("default"),
                    self.metadata.name.as_deref().unwrap_or_default()
                )
            })
    }
}
