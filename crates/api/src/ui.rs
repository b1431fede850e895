//! `UI`: SkyWalking's web UI (booster UI) in front of an OAPServer.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{
    LocalRef, PodTemplateOverrides, ServiceOptions, WorkloadStatus, default_replicas,
};

/// SkyWalking's web UI: a Deployment of `apache/skywalking-ui` pointed at OAP's HTTP
/// endpoint, its Service, and optionally an Ingress.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "skylift.io",
    version = "v1alpha1",
    kind = "UI",
    plural = "uis",
    singular = "ui",
    category = "skylift",
    namespaced,
    status = "WorkloadStatus",
    doc = "SkyWalking's web UI in front of an OAPServer, managed by skylift.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct UISpec {
    /// SkyWalking UI version, e.g. `10.2.0`. Sets the default image tag; use the OAP's.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub version: String,
    /// Container image. Default: `apache/skywalking-ui:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Number of UI replicas (stateless).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// The OAP whose GraphQL the UI queries.
    pub oap: UIBackend,
    /// How the UI Service is exposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceOptions>,
    /// An Ingress for the UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressOptions>,
    /// Compute resources of the UI container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides for the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}

/// Exactly one of an OAPServer or a URL.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.oapServerRef) != has(self.url)").message("oap needs exactly one of oapServerRef or url").reason(Reason::FieldValueInvalid))]
pub struct UIBackend {
    /// An OAPServer in the same namespace (its HTTP Service, port 12800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oap_server_ref: Option<LocalRef>,
    /// OAP's HTTP base URL, e.g. `http://oap.example.com:12800`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/\S*)?$"))]
    pub url: Option<String>,
}

/// An Ingress routing a host to the UI Service.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressOptions {
    /// Host name the UI is served at, e.g. `skywalking.example.com`.
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub host: String,
    /// IngressClass. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// A `kubernetes.io/tls` Secret for the host; serves HTTPS when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Annotations of the Ingress (controller settings, authentication).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}
