//! `Rover`: SkyWalking Rover, eBPF profiling and network monitoring on every node.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Backend, PodTemplateOverrides, WorkloadStatus};

/// SkyWalking Rover on every (selected) node: a DaemonSet running with the privileges eBPF
/// needs, finding the processes of the node's pods and profiling them on OAP's request.
///
/// Each node must run Linux 4.9 or later with BTF (`/sys/kernel/btf/vmlinux`); network
/// profiling needs 4.16 or later. Rover's pods see every process of their node: run it
/// only where that is acceptable (`podTemplate.nodeSelector`).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "skylift.io",
    version = "v1alpha1",
    kind = "Rover",
    plural = "rovers",
    singular = "rover",
    category = "skylift",
    namespaced,
    status = "WorkloadStatus",
    doc = "SkyWalking Rover (eBPF profiling) on every node, managed by skylift.",
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Backend", type_ = "string", json_path = ".status.backend"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.podTemplate) || (!has(self.podTemplate.containerSecurityContext) && !has(self.podTemplate.securityContext))").message("Rover's security context is fixed: it needs a privileged container (CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_BPF) with hostPID and the node's /sys, on Linux 4.9 or later with BTF (/sys/kernel/btf/vmlinux); choose the nodes with podTemplate.nodeSelector instead").reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct RoverSpec {
    /// SkyWalking Rover version, e.g. `0.7.0`. Sets the default image tag.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub version: String,
    /// Container image. Default: `apache/skywalking-rover:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Where Rover reports: an OAPServer, a Satellite, or an address.
    pub backend: Backend,
    /// Extra environment variables (Rover is configured through `ROVER_*` variables);
    /// a value here replaces skylift's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Compute resources of the Rover container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides for the pod template (node selection, tolerations; not the security
    /// contexts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}
