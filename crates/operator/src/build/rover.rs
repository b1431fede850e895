//! The objects a `Rover` is made of: a DaemonSet running SkyWalking Rover with the
//! privileges eBPF needs, its ServiceAccount, and the ClusterRoleBinding that lets it see
//! the pods, Services and nodes of the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, HostPathVolumeSource, SecurityContext, ServiceAccount, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use skylift_api::Rover;
use skylift_api::constants::labels as label_keys;

use super::backend::BackendTarget;
use super::meta::{Labels, child_meta, pod_selector_of};
use super::oapserver::{field_ref, plain};
use super::podspec::{Hardening, PodParts, pod_template, with_user_env};

pub const ROVER_APP_NAME: &str = "skywalking-rover";
/// The ClusterRole (pods, Services, nodes: get, list, watch) the bundle installs for Rover.
pub const DEFAULT_CLUSTER_ROLE: &str = "skylift-rover";
/// Labels naming the Rover a cluster-scoped binding belongs to: a namespaced resource
/// cannot own a cluster-scoped object, so the binding is found by these and removed by
/// the Rover's finalizer.
pub const OWNER_NAMESPACE_LABEL: &str = "skylift.io/owner-namespace";
pub const OWNER_NAME_LABEL: &str = "skylift.io/owner-name";
/// The finalizer that removes a Rover's ClusterRoleBinding before the Rover goes.
pub const FINALIZER: &str = "skylift.io/rover-cluster-binding";

#[derive(Clone, Debug)]
pub struct RoverObjects {
    pub service_account: ServiceAccount,
    pub daemon_set: DaemonSet,
    pub cluster_role_binding: ClusterRoleBinding,
}

pub fn workload_name(name: &str) -> String {
    format!("{name}-rover")
}

/// Cluster-unique name of the binding of Rover `namespace/name`.
pub fn cluster_binding_name(namespace: &str, name: &str) -> String {
    format!("skylift-rover-{namespace}-{name}")
}

fn labels(rover: &Rover) -> Labels {
    Labels {
        name: ROVER_APP_NAME,
        instance: rover.metadata.name.clone().unwrap_or_default(),
        component: "rover",
        version: rover.spec.version.clone(),
    }
}

pub fn pod_selector(name: &str) -> BTreeMap<String, String> {
    pod_selector_of(ROVER_APP_NAME, name)
}

fn host_path(name: &str, path: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some("Directory".into()),
        }),
        ..Volume::default()
    }
}

fn env(rover: &Rover, backend: &str) -> Vec<EnvVar> {
    let env = vec![
        plain("ROVER_BACKEND_ADDR", backend),
        // Rover finds the processes of the pods on its own node.
        plain("ROVER_PROCESS_DISCOVERY_KUBERNETES_ACTIVE", "true"),
        field_ref(
            "ROVER_PROCESS_DISCOVERY_KUBERNETES_NODE_NAME",
            "spec.nodeName",
        ),
        // The node's root filesystem, where Rover reads the processes' binaries.
        plain("ROVER_HOST_MAPPING", "/host"),
    ];
    with_user_env(env, &rover.spec.env)
}

pub fn build(rover: &Rover, cluster_role: &str) -> RoverObjects {
    let name = rover.metadata.name.clone().unwrap_or_default();
    let namespace = rover.metadata.namespace.clone().unwrap_or_default();
    let labels = labels(rover);
    let workload = workload_name(&name);
    let meta = |object_name: String| child_meta(rover, object_name, labels.all());
    let backend = BackendTarget::of(&rover.spec.backend).grpc_address(&namespace);

    let container = Container {
        name: "rover".into(),
        image: Some(
            rover
                .spec
                .image
                .clone()
                .unwrap_or_else(|| format!("apache/skywalking-rover:{}", rover.spec.version)),
        ),
        env: Some(env(rover, &backend)),
        resources: rover.spec.resources.clone(),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "host".into(),
                mount_path: "/host".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "sys".into(),
                mount_path: "/sys".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let mut template = pod_template(
        PodParts {
            labels: labels.clone(),
            service_account: Some(workload.clone()),
            container,
            annotations: BTreeMap::new(),
            hardening: Hardening::ThirdPartyImage,
            termination_grace_period_seconds: 30,
            volumes: vec![host_path("host", "/"), host_path("sys", "/sys")],
        },
        rover.spec.pod_template.as_ref(),
    );
    let pod = template.spec.as_mut().expect("pod_template sets a spec");
    // eBPF: loading programs (CAP_SYS_ADMIN / CAP_BPF), reading other processes' memory
    // maps (CAP_SYS_PTRACE), every process of the node (hostPID) and its network
    // (hostNetwork), kernel BTF and tracing under /sys. The CRD refuses overrides of these.
    pod.containers[0].security_context = Some(SecurityContext {
        privileged: Some(true),
        capabilities: Some(Capabilities {
            add: Some(vec!["SYS_ADMIN".into(), "SYS_PTRACE".into(), "BPF".into()]),
            drop: None,
        }),
        ..SecurityContext::default()
    });
    pod.security_context = None;
    pod.host_pid = Some(true);
    pod.host_network = Some(true);
    pod.dns_policy = Some("ClusterFirstWithHostNet".into());
    pod.node_selector
        .get_or_insert_with(BTreeMap::new)
        .entry("kubernetes.io/os".into())
        .or_insert_with(|| "linux".into());

    let daemon_set = DaemonSet {
        metadata: meta(workload.clone()),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels.selector()),
                ..LabelSelector::default()
            },
            template,
            ..DaemonSetSpec::default()
        }),
        status: None,
    };
    let mut binding_labels = labels.all();
    binding_labels.insert(OWNER_NAMESPACE_LABEL.into(), namespace.clone());
    binding_labels.insert(OWNER_NAME_LABEL.into(), name.clone());
    binding_labels.insert(
        label_keys::MANAGED_BY.into(),
        label_keys::MANAGED_BY_VALUE.into(),
    );
    let cluster_role_binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(cluster_binding_name(&namespace, &name)),
            labels: Some(binding_labels),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: cluster_role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: workload.clone(),
            namespace: Some(namespace),
            ..Subject::default()
        }]),
    };
    RoverObjects {
        service_account: ServiceAccount {
            metadata: meta(workload),
            ..ServiceAccount::default()
        },
        daemon_set,
        cluster_role_binding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::ObjectMetaExt;

    fn rover(spec: serde_json::Value) -> Rover {
        let mut r = Rover::new("ebpf", serde_json::from_value(spec).unwrap());
        r.metadata.namespace = Some("obs".into());
        r.metadata.uid = Some("uid-r".into());
        r
    }

    #[test]
    fn rover_runs_on_every_linux_node_with_the_privileges_ebpf_needs() {
        let objects = build(
            &rover(serde_json::json!({
                "version": "0.7.0", "backend": {"satelliteRef": {"name": "ingest"}},
                "env": [{"name": "ROVER_LOGGER_LEVEL", "value": "DEBUG"}],
                "podTemplate": {"nodeSelector": {"profiling": "on"}}
            })),
            DEFAULT_CLUSTER_ROLE,
        );
        let pod = objects
            .daemon_set
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        assert_eq!((pod.host_pid, pod.host_network), (Some(true), Some(true)));
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("apache/skywalking-rover:0.7.0")
        );
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.privileged, Some(true));
        let added = security.capabilities.as_ref().unwrap().add.clone().unwrap();
        assert!(
            added.contains(&"SYS_ADMIN".to_string()) && added.contains(&"SYS_PTRACE".to_string())
        );
        let mounts: Vec<&str> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, vec!["/host", "/sys"]);
        assert!(
            container
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.read_only == Some(true))
        );
        let env = container.env.clone().unwrap();
        let value = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            value("ROVER_BACKEND_ADDR").as_deref(),
            Some("ingest-satellite.obs.svc:11800")
        );
        assert_eq!(value("ROVER_LOGGER_LEVEL").as_deref(), Some("DEBUG"));
        let selector = pod.node_selector.unwrap();
        assert_eq!(
            (
                selector["kubernetes.io/os"].as_str(),
                selector["profiling"].as_str()
            ),
            ("linux", "on")
        );
        assert!(objects.daemon_set.metadata.is_controlled_by("uid-r"));
    }

    #[test]
    fn the_cluster_binding_names_its_rover_by_label_not_by_owner() {
        let objects = build(
            &rover(serde_json::json!({"version": "0.7.0", "backend": {"address": "oap:11800"}})),
            "custom-rover-role",
        );
        let binding = &objects.cluster_role_binding;
        assert_eq!(
            binding.metadata.name.as_deref(),
            Some("skylift-rover-obs-ebpf")
        );
        assert!(
            binding.metadata.owner_references.is_none(),
            "a namespaced owner cannot own it"
        );
        let labels = binding.metadata.labels.as_ref().unwrap();
        assert_eq!(
            (
                labels[OWNER_NAMESPACE_LABEL].as_str(),
                labels[OWNER_NAME_LABEL].as_str()
            ),
            ("obs", "ebpf")
        );
        assert_eq!(binding.role_ref.name, "custom-rover-role");
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            ("ebpf-rover", Some("obs"))
        );
    }
}
