//! `SwAgent`: which pods get a SkyWalking agent injected when they are created, and how.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::Backend;

/// Injects a SkyWalking agent (Java, Python or Node.js) into the pods it selects in its
/// namespace, when they are created: an init container copies the agent into a shared
/// volume, and the matching containers load it from there. Pod annotations
/// (`agent.skylift.io/*`) override the SwAgent, which overrides the language's defaults.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "skylift.io",
    version = "v1alpha1",
    kind = "SwAgent",
    plural = "swagents",
    singular = "swagent",
    category = "skylift",
    namespaced,
    status = "SwAgentStatus",
    doc = "Injection of a SkyWalking agent into the pods it selects, managed by skylift.",
    printcolumn(name = "Language", type_ = "string", json_path = ".spec.language"),
    printcolumn(
        name = "Injected",
        type_ = "integer",
        json_path = ".status.injectedPods"
    ),
    printcolumn(name = "Backend", type_ = "string", json_path = ".status.backend"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SwAgentSpec {
    /// Pods carrying all these labels get the agent. At least one label: a SwAgent never
    /// selects a whole namespace by accident.
    #[x_kube(validation = Rule::new("self.size() > 0").message("selector needs at least one label: a SwAgent never injects into every pod of a namespace").reason(Reason::FieldValueRequired))]
    pub selector: BTreeMap<String, String>,
    /// The agent's language.
    pub language: AgentLanguage,
    /// Regular expression (RE2, whole name) of the containers that load the agent.
    /// Default: every container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub container_matcher: Option<String>,
    /// Where the agent reports. Default: the Satellite in this namespace (the first by
    /// name when there are several), else the OAPServer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Image the init container copies the agent from. Default per language (see
    /// docs/operator.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// The service name the agent reports. Default: the pod's
    /// `app.kubernetes.io/name` label, else its `app` label, else the container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub service_name: Option<String>,
    /// Extra environment of the matching containers (agent settings such as
    /// `SW_AGENT_SAMPLE`); a pod's own variable of the same name wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// Languages with an injectable agent.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentLanguage {
    /// `-javaagent` through `JAVA_TOOL_OPTIONS`.
    Java,
    /// The agent's `sitecustomize` loader through `PYTHONPATH` (what `sw-python run` does).
    Python,
    /// `--require` of the agent through `NODE_OPTIONS`.
    Nodejs,
}

/// Observed state of a SwAgent.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwAgentStatus {
    /// Pods in the namespace that run with this SwAgent's agent.
    #[serde(default)]
    pub injected_pods: i32,
    /// Where injected agents report, as resolved (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
