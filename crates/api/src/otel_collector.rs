//! `OTelCollector`: an OpenTelemetry collector scraping Prometheus targets for OAP.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Backend, PodTemplateOverrides, WorkloadStatus, default_replicas};

/// An OpenTelemetry collector that finds Prometheus targets through Kubernetes service
/// discovery in its own namespace, scrapes them, and exports the metrics over OTLP to OAP
/// (whose MAL rules turn them into SkyWalking metrics). The collector's configuration is
/// generated from `scrape`, or given whole in a ConfigMap.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "skylift.io",
    version = "v1alpha1",
    kind = "OTelCollector",
    plural = "otelcollectors",
    singular = "otelcollector",
    shortname = "otelcol",
    category = "skylift",
    namespaced,
    status = "WorkloadStatus",
    doc = "An OpenTelemetry collector scraping Prometheus targets into SkyWalking, managed by skylift.",
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Backend", type_ = "string", json_path = ".status.backend"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.scrape) != has(self.configMapRef)").message("give exactly one of scrape (the configuration is generated) or configMapRef (the whole configuration)").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct OTelCollectorSpec {
    /// OpenTelemetry collector version, e.g. `0.115.0`. Sets the default image tag.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub version: String,
    /// Container image. Default: `otel/opentelemetry-collector-contrib:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// 1 to run, 0 to stop. Every replica would scrape every target, so OAP would count
    /// each sample once per replica: there is one.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1))]
    pub replicas: i32,
    /// Where the metrics go (OTLP over gRPC): an OAPServer, a Satellite, or an address.
    pub backend: Backend,
    /// Scrape jobs; each becomes a Prometheus receiver job with Kubernetes service
    /// discovery limited to this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub scrape: Option<Vec<ScrapeJob>>,
    /// A ConfigMap key holding the whole collector configuration instead; the pods roll
    /// when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
    /// Compute resources of the collector container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides for the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}

/// One Prometheus scrape job.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeJob {
    /// Job name. OAP's OpenTelemetry receiver files the metrics under `job_name`, which
    /// its rules filter on (e.g. `mysql-monitoring` for the stock MySQL rules).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    )]
    pub name: String,
    /// What is discovered: pods, or the endpoints of Services.
    #[serde(default)]
    pub role: DiscoveryRole,
    /// Labels the pods (or Services) must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Name of the container (or Service) port serving metrics. Default: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub port: Option<String>,
    /// Path of the metrics.
    #[serde(default = "default_metrics_path")]
    #[schemars(regex(pattern = r"^/\S*$"))]
    pub path: String,
    /// Labels put on every sample of the job, e.g. `host_name: orders-db`: OAP's MySQL,
    /// PostgreSQL and Redis rules name the service after `host_name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How often to scrape, e.g. `30s`.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
}

fn default_metrics_path() -> String {
    "/metrics".into()
}

fn default_interval() -> String {
    "30s".into()
}

/// What Kubernetes service discovery lists.
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryRole {
    /// Each pod (each of its ports).
    #[default]
    Pod,
    /// Each ready endpoint of the selected Services.
    Endpoints,
}

/// A key in a ConfigMap of the same namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the configuration.
    #[serde(default = "default_config_key")]
    pub key: String,
}

fn default_config_key() -> String {
    "config.yaml".into()
}
