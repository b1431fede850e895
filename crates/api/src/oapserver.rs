//! `OAPServer`: a SkyWalking OAP cluster.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::common::{
    LocalRef, PodTemplateOverrides, ServiceAddress, ServiceOptions, default_replicas,
};

/// A SkyWalking OAP cluster: a Deployment of OAP nodes that find each other through
/// OAP's kubernetes cluster coordinator, and the Services that reach them.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "skylift.io",
    version = "v1alpha1",
    kind = "OAPServer",
    plural = "oapservers",
    singular = "oapserver",
    shortname = "oap",
    category = "skylift",
    namespaced,
    status = "OAPServerStatus",
    doc = "A SkyWalking OAP cluster managed by skylift.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Address", type_ = "string", json_path = ".status.address.grpc"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OAPServerSpec {
    /// SkyWalking OAP version, e.g. `10.2.0`. Sets the default image tag.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub version: String,
    /// Container image. Default: `apache/skywalking-oap-server:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Number of OAP nodes.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Extra environment variables (OAP is configured through `SW_*` variables). Applied
    /// after skylift's own, so a value here wins. `valueFrom` is supported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Compute resources of the OAP container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Storage back end. Default: OAP's own default for the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<OAPStorage>,
    /// How the OAP Service is exposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceOptions>,
    /// Files from ConfigMaps mounted into OAP's configuration directory
    /// (`/skywalking/config`): custom OAL, MAL and LAL rules, `application.yml` overrides.
    /// Each key of a ConfigMap becomes a file; the pods roll when any of them changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub config: Vec<OAPConfigFiles>,
    /// OAP's dynamic configuration (`configuration: k8s-configmap`), served from a
    /// ConfigMap the operator owns (`<name>-oap-dynamic-config`); OAP reads it again every
    /// `periodSeconds` without restarting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_config: Option<DynamicConfig>,
    /// Overrides for the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}

/// The keys of one ConfigMap, mounted as files under a directory of OAP's configuration.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAPConfigFiles {
    /// A ConfigMap in the OAPServer's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub config_map_name: String,
    /// Directory under `/skywalking/config` the files go to, e.g. `otel-rules/custom` or
    /// `oal`. Default: the configuration directory itself (where `application.yml` is).
    // Bounded: the rule below walks the path, and kube-apiserver refuses a CRD whose rules
    // walk an unbounded string (the estimated cost exceeds its budget).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$') && !self.split('/').exists(p, p == '..' || p == '.')").message("config[].path is a directory relative to /skywalking/config: names of letters, digits, '_', '.' and '-' separated by '/', and no '.' or '..'").reason(Reason::FieldValueInvalid))]
    pub path: String,
}

/// OAP's dynamic configuration.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DynamicConfig {
    /// How often OAP reads the ConfigMap, in seconds.
    #[serde(default = "default_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
    /// The settings, by OAP's dynamic configuration key, e.g.
    /// `agent-analyzer.default.slowDBAccessThreshold: "default:200,mongodb:50"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

fn default_period() -> i32 {
    60
}

/// Where OAP keeps its data.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'h2' || has(self.address) || has(self.banyanDBRef)").message("storage.address (or, for banyandb, storage.banyanDBRef) is required for banyandb and elasticsearch").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.banyanDBRef) || (self.type == 'banyandb' && !has(self.address))").message("storage.banyanDBRef goes with type banyandb and no address: the address is the BanyanDB's").reason(Reason::FieldValueInvalid))]
pub struct OAPStorage {
    /// Storage type.
    #[serde(rename = "type")]
    pub type_: StorageType,
    /// BanyanDB gRPC targets (`host:17912`, comma-separated), Elasticsearch nodes
    /// (`host:9200`, comma-separated) or, for H2, a JDBC URL (default: in-memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub address: Option<String>,
    /// A BanyanDB in the same namespace: its gRPC address (from its status) becomes the
    /// storage targets, so the two are declared together.
    #[serde(
        default,
        rename = "banyanDBRef",
        skip_serializing_if = "Option::is_none"
    )]
    pub banyandb_ref: Option<LocalRef>,
    /// Secret holding the storage credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretCredentials>,
}

/// Storage types skylift knows how to configure.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    Banyandb,
    Elasticsearch,
    H2,
}

/// Username and password keys in a Secret of the same namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretCredentials {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the user name.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// Observed state of an OAPServer.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAPServerStatus {
    /// Pods of the Deployment (the `/scale` status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for `/scale` and the HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where agents (gRPC) and UIs / the adapter (HTTP) reach OAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<ServiceAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
