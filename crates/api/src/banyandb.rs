//! `BanyanDB`: SkyWalking's native database, standalone, as OAP's storage.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{PodTemplateOverrides, ServiceOptions, WorkloadStatus, default_replicas};

/// BanyanDB in standalone mode: a StatefulSet whose pod keeps its data on a volume claim,
/// with a gRPC Service (17912, what OAP writes to) and an HTTP Service (17913).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "skylift.io",
    version = "v1alpha1",
    kind = "BanyanDB",
    plural = "banyandbs",
    singular = "banyandb",
    shortname = "bydb",
    category = "skylift",
    namespaced,
    status = "WorkloadStatus",
    doc = "BanyanDB (standalone) as SkyWalking's storage, managed by skylift.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
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
pub struct BanyanDBSpec {
    /// BanyanDB version, e.g. `0.9.0`. Sets the default image tag.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub version: String,
    /// Container image. Default: `apache/skywalking-banyandb:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// 1 to run, 0 to stop while keeping the data. A standalone BanyanDB is one node: a
    /// second replica would be a second, separate database.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1))]
    pub replicas: i32,
    /// The data volume.
    #[serde(default)]
    pub storage: BanyanDBStorage,
    /// Extra flags of `banyand standalone`, e.g. `--logging-level=debug`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^--[a-z0-9][a-z0-9-]*(=.*)?$"))
    )]
    pub args: Vec<String>,
    /// How the Services are exposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceOptions>,
    /// Compute resources of the BanyanDB container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides for the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}

/// The volume claim each replica gets (kept when the BanyanDB is deleted, as a
/// StatefulSet's claims are).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BanyanDBStorage {
    /// Size of the volume, a Kubernetes quantity.
    #[serde(default = "default_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: String,
    /// StorageClass of the claim. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for BanyanDBStorage {
    fn default() -> Self {
        BanyanDBStorage {
            size: default_size(),
            storage_class_name: None,
        }
    }
}

fn default_size() -> String {
    "50Gi".into()
}
