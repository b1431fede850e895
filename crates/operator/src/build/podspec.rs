//! The pod template of a generated Deployment: the main container plus the user's
//! `podTemplate` overrides, on secure defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile,
    SecurityContext, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skylift_api::PodTemplateOverrides;

use super::meta::Labels;

/// How locked down the pods can be by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hardening {
    /// skylift's own image: non-root user, read-only root filesystem.
    SkyliftImage,
    /// A third-party image (OAP) that may run as root and write to its filesystem:
    /// only privilege escalation and capabilities are taken away.
    ThirdPartyImage,
}

pub(crate) struct PodParts {
    pub labels: Labels,
    /// The ServiceAccount the pods run as; `None` for workloads that never call the API
    /// server (they run as `default`, with no token mounted).
    pub service_account: Option<String>,
    pub container: Container,
    /// Annotations the operator adds to the pod template (e.g. a configuration hash that
    /// rolls the pods when the configuration changes).
    pub annotations: BTreeMap<String, String>,
    pub hardening: Hardening,
    pub termination_grace_period_seconds: i64,
    /// Volumes the container mounts.
    pub volumes: Vec<Volume>,
}

pub(crate) fn pod_template(
    parts: PodParts,
    overrides: Option<&PodTemplateOverrides>,
) -> PodTemplateSpec {
    let empty = PodTemplateOverrides::default();
    let overrides = overrides.unwrap_or(&empty);

    // User labels first, so the selector labels the Deployment relies on always win.
    let mut labels = overrides.labels.clone();
    labels.extend(parts.labels.all());
    let mut annotations = overrides.annotations.clone();
    annotations.extend(parts.annotations);

    let mut container = parts.container;
    container.security_context = Some(
        overrides
            .container_security_context
            .clone()
            .unwrap_or_else(|| container_security_context(parts.hardening)),
    );

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            automount_service_account_token: Some(parts.service_account.is_some()),
            service_account_name: parts.service_account,
            containers: vec![container],
            node_selector: (!overrides.node_selector.is_empty())
                .then(|| overrides.node_selector.clone()),
            tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
            affinity: overrides.affinity.clone(),
            image_pull_secrets: (!overrides.image_pull_secrets.is_empty())
                .then(|| overrides.image_pull_secrets.clone()),
            priority_class_name: overrides.priority_class_name.clone(),
            security_context: Some(
                overrides
                    .security_context
                    .clone()
                    .unwrap_or_else(|| pod_security_context(parts.hardening)),
            ),
            termination_grace_period_seconds: Some(parts.termination_grace_period_seconds),
            volumes: (!parts.volumes.is_empty()).then_some(parts.volumes),
            ..PodSpec::default()
        }),
    }
}

fn pod_security_context(hardening: Hardening) -> PodSecurityContext {
    let seccomp = Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    });
    match hardening {
        Hardening::SkyliftImage => PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            // Mounted Secrets (mode 0440) and the journal's volume belong to this group.
            fs_group: Some(65532),
            seccomp_profile: seccomp,
            ..PodSecurityContext::default()
        },
        Hardening::ThirdPartyImage => PodSecurityContext {
            seccomp_profile: seccomp,
            ..PodSecurityContext::default()
        },
    }
}

fn container_security_context(hardening: Hardening) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        read_only_root_filesystem: Some(hardening == Hardening::SkyliftImage),
        ..SecurityContext::default()
    }
}

/// `ours` with the user's variables applied after them: a user variable replaces one of
/// ours of the same name in place, the rest are added at the end.
pub(crate) fn with_user_env(mut ours: Vec<EnvVar>, user: &[EnvVar]) -> Vec<EnvVar> {
    for variable in user {
        match ours.iter_mut().find(|e| e.name == variable.name) {
            Some(existing) => *existing = variable.clone(),
            None => ours.push(variable.clone()),
        }
    }
    ours
}

/// A Deployment spec whose rollouts never lower capacity: new pods come up (25% surge)
/// before old ones go.
pub(crate) fn deployment_spec(
    replicas: i32,
    selector: BTreeMap<String, String>,
    template: PodTemplateSpec,
) -> DeploymentSpec {
    DeploymentSpec {
        replicas: Some(replicas),
        selector: LabelSelector {
            match_labels: Some(selector),
            ..LabelSelector::default()
        },
        strategy: Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::String("25%".into())),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }),
        template,
        ..DeploymentSpec::default()
    }
}

/// An annotation of a Deployment's pod template, for tests of what rolls the pods.
#[cfg(test)]
pub(crate) fn template_annotation(
    deployment: &k8s_openapi::api::apps::v1::Deployment,
    key: &str,
) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}
