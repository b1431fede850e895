//! The identity a generated workload runs as: a ServiceAccount, a namespaced Role holding
//! only the rules it needs, and the RoleBinding between them, all named after the workload.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// What a workload's pods may do.
pub(crate) struct WorkloadIdentity {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}

/// `metadata` names all three objects (and gives their namespace, labels and owner).
pub(crate) fn workload_identity(metadata: ObjectMeta, rules: Vec<PolicyRule>) -> WorkloadIdentity {
    let name = metadata.name.clone().unwrap_or_default();
    WorkloadIdentity {
        service_account: ServiceAccount {
            metadata: metadata.clone(),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: metadata.clone(),
            rules: Some(rules),
        },
        role_binding: RoleBinding {
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name,
                namespace: metadata.namespace.clone(),
                ..Subject::default()
            }]),
            metadata,
        },
    }
}

/// Read access to one core resource, optionally limited to named objects.
pub(crate) fn read_rule(resource: &str, names: Option<Vec<String>>) -> PolicyRule {
    PolicyRule {
        resource_names: names,
        ..read_rule_in("", &[resource])
    }
}

/// Read access to resources of an API group (`""` for the core group).
pub(crate) fn read_rule_in(group: &str, resources: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..PolicyRule::default()
    }
}
