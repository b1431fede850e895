//! Pieces every skylift resource shares: pod-template overrides, Service options and the
//! names of status conditions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, PodSecurityContext, SecurityContext, Toleration,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Overrides merged into the pod template of the generated Deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra pod labels. The operator's own selector labels always win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Pod-level security context. Default: non-root with the runtime's seccomp profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Security context of the main container. Default: no privilege escalation, all
    /// capabilities dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// How the generated Service is exposed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOptions {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the Service (load-balancer settings, for example).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Kubernetes Service types skylift can create.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Where clients reach a workload, as reported in `status.address`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAddress {
    /// gRPC endpoint, `host:port`.
    pub grpc: String,
    /// HTTP endpoint, `http://host:port` (OAP: GraphQL and REST; BanyanDB: its console).
    /// Proxies have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// Condition types written to `status.conditions`.
pub mod condition {
    /// All replicas are ready (and, for pools, at least one upstream is published).
    pub const READY: &str = "Ready";
    /// A rollout or scale is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something stops the resource from working as declared; the reason says what.
    pub const DEGRADED: &str = "Degraded";
}

pub(crate) fn default_replicas() -> i32 {
    1
}

/// Reference to an OAPServer, Satellite or other skylift resource in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalRef {
    /// Name of the resource.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where a component sends its data: exactly one of an OAPServer, a Satellite (the
/// balancing pool in front of OAP) or a fixed gRPC address.
#[derive(kube::KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.oapServerRef), has(self.satelliteRef), has(self.address)].filter(x, x).size() == 1").message("backend needs exactly one of oapServerRef, satelliteRef or address").reason(Reason::FieldValueInvalid))]
pub struct Backend {
    /// An OAPServer in the same namespace (its gRPC Service, port 11800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oap_server_ref: Option<LocalRef>,
    /// A Satellite in the same namespace (its Service, port 11800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satellite_ref: Option<LocalRef>,
    /// A fixed gRPC `host:port`, for a backend outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$"
    ))]
    pub address: Option<String>,
}

/// Observed state of a workload skylift runs for a resource (UI, BanyanDB, OTelCollector,
/// Rover).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Pods of the workload (the `/scale` status replicas; for a DaemonSet, the nodes it
    /// should run on).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for `/scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where clients reach it (BanyanDB: gRPC and HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<ServiceAddress>,
    /// Where a browser reaches it (UI: the Service, or the Ingress host when there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where it sends its data, as resolved from `spec.backend` (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
