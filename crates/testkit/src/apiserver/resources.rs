//! The resource types the double serves: built-in kinds and installed CRDs.

use serde_json::Value;

/// Paths of a `/scale` subresource inside the parent object.
#[derive(Clone, Debug)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One served resource type.
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Writes to the main resource ignore `status`, and `/status` writes only `status`.
    pub status_subresource: bool,
    pub scale: Option<ScalePaths>,
    /// The CRD's `openAPIV3Schema` (custom resources only).
    pub schema: Option<Value>,
    /// metadata.generation moves when the spec changes.
    pub has_generation: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
    ) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status_subresource: status,
            scale: None,
            schema: None,
            has_generation: status,
        }
    }

    /// The kinds of a Kubernetes 1.33 control plane that skylift and its tests touch.
    pub fn builtins() -> Vec<ResourceType> {
        let mut deployments = Self::builtin("apps", "v1", "deployments", "Deployment", true, true);
        deployments.scale = Some(ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        });
        vec![
            Self::builtin("", "v1", "namespaces", "Namespace", false, true),
            Self::builtin("", "v1", "pods", "Pod", true, true),
            Self::builtin("", "v1", "services", "Service", true, true),
            Self::builtin("", "v1", "configmaps", "ConfigMap", true, false),
            Self::builtin("", "v1", "secrets", "Secret", true, false),
            Self::builtin("", "v1", "serviceaccounts", "ServiceAccount", true, false),
            Self::builtin("", "v1", "events", "Event", true, false),
            deployments,
            Self::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "roles",
                "Role",
                true,
                false,
            ),
            Self::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "rolebindings",
                "RoleBinding",
                true,
                false,
            ),
            Self::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterroles",
                "ClusterRole",
                false,
                false,
            ),
            Self::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterrolebindings",
                "ClusterRoleBinding",
                false,
                false,
            ),
            Self::builtin(
                "autoscaling",
                "v2",
                "horizontalpodautoscalers",
                "HorizontalPodAutoscaler",
                true,
                true,
            ),
            Self::builtin("coordination.k8s.io", "v1", "leases", "Lease", true, false),
            Self::builtin(
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
                "MutatingWebhookConfiguration",
                false,
                false,
            ),
            Self::builtin("apps", "v1", "statefulsets", "StatefulSet", true, true),
            Self::builtin("apps", "v1", "daemonsets", "DaemonSet", true, true),
            Self::builtin(
                "networking.k8s.io",
                "v1",
                "ingresses",
                "Ingress",
                true,
                true,
            ),
            Self::builtin("events.k8s.io", "v1", "events", "Event", true, false),
            Self::builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                true,
            ),
            Self::builtin(
                "apiregistration.k8s.io",
                "v1",
                "apiservices",
                "APIService",
                false,
                true,
            ),
        ]
    }

    /// The served versions of a CRD object.
    pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        let namespaced = spec["scope"].as_str() == Some("Namespaced");
        spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"].as_bool().unwrap_or(true))
            .map(|v| {
                let scale = v["subresources"].get("scale").map(|s| ScalePaths {
                    spec_replicas: s["specReplicasPath"]
                        .as_str()
                        .unwrap_or(".spec.replicas")
                        .into(),
                    status_replicas: s["statusReplicasPath"]
                        .as_str()
                        .unwrap_or(".status.replicas")
                        .into(),
                    label_selector: s["labelSelectorPath"].as_str().map(String::from),
                });
                ResourceType {
                    group: group.into(),
                    version: v["name"].as_str().unwrap_or_default().into(),
                    plural: spec["names"]["plural"].as_str().unwrap_or_default().into(),
                    kind: spec["names"]["kind"].as_str().unwrap_or_default().into(),
                    namespaced,
                    status_subresource: v["subresources"].get("status").is_some(),
                    scale,
                    schema: v["schema"].get("openAPIV3Schema").cloned(),
                    has_generation: true,
                }
            })
            .collect()
    }
}

/// Reads a `.a.b` JSON path from an object.
pub fn get_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(object, |value, key| value.get(key))
}

/// Writes a `.a.b` JSON path, creating objects on the way.
pub fn set_path(object: &mut Value, path: &str, new: Value) {
    let keys: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut cursor = object;
    for key in &keys[..keys.len() - 1] {
        if !cursor.get(*key).is_some_and(Value::is_object) {
            cursor[*key] = Value::Object(Default::default());
        }
        cursor = &mut cursor[*key];
    }
    cursor[keys[keys.len() - 1]] = new;
}
