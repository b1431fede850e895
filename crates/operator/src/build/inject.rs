//! Agent injection, decided without I/O: a pod as the API server sent it for admission
//! and the SwAgents of its namespace go in; what to do comes out, with the JSON Patch
//! (RFC 6902) that does it.
//!
//! Precedence, highest first: the pod's `agent.skylift.io/*` annotations, then the
//! SwAgent, then the language's defaults. A variable the container already sets is never
//! replaced; `JAVA_TOOL_OPTIONS`, `PYTHONPATH` and `NODE_OPTIONS` are extended instead.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde_json::{Value, json};
use skylift_api::SwAgent;
use skylift_api::constants::labels as label_keys;
use skylift_api::swagent::AgentLanguage;

use super::backend::BackendTarget;

/// Pod annotation marking a pod the webhook injected, naming the SwAgent. A pod carrying
/// it is never injected again, whatever operation the webhook is called for.
pub const INJECTED_ANNOTATION: &str = "skylift.io/injected-by";
/// Prefix of the pod annotations that override a SwAgent.
pub const ANNOTATION_PREFIX: &str = "agent.skylift.io/";
/// The shared volume the init container copies the agent into.
pub const VOLUME: &str = "skylift-agent";
/// Where the volume is mounted in the init container and in the application containers.
pub const MOUNT_PATH: &str = "/sky/agent";
/// Name of the init container.
pub const INIT_CONTAINER: &str = "skylift-agent";
/// The user the init container copies as (any non-root user can: the agent images'
/// files are world-readable, an emptyDir world-writable).
const AGENT_COPY_USER: i64 = 65532;

/// The defaults of one language.
pub struct LanguageDefaults {
    pub image: &'static str,
    /// The variable that makes the runtime load the agent, and the value put in front of
    /// whatever the container already has in it.
    pub loader_variable: &'static str,
    pub loader_value: &'static str,
    /// Separator between our value and the container's own.
    pub separator: &'static str,
}

/// Java: the agent directory of the official image, loaded with `-javaagent`.
pub const JAVA: LanguageDefaults = LanguageDefaults {
    image: "apache/skywalking-java-agent:9.4.0-java17",
    loader_variable: "JAVA_TOOL_OPTIONS",
    loader_value: "-javaagent:/sky/agent/java/skywalking-agent.jar",
    separator: " ",
};
/// Python: the packages of the official agent image (its Python minor version must be the
/// application's, as for any compiled package), started by a `sitecustomize` module that
/// the init container writes into a directory of its own and Python imports at start-up
/// from `PYTHONPATH`. Only that module is on `PYTHONPATH`: it puts the agent's packages at
/// the end of `sys.path`, after the application's, so the application's own packages
/// (its grpcio, its protobuf) win and the agent's only fill in what it lacks.
pub const PYTHON: LanguageDefaults = LanguageDefaults {
    image: "apache/skywalking-python:1.2.0-grpc-py3.11",
    loader_variable: "PYTHONPATH",
    loader_value: "/sky/agent/python/loader",
    separator: ":",
};
/// Where the Python agent's packages are copied (appended to `sys.path`).
pub const PYTHON_PACKAGES: &str = "/sky/agent/python/packages";
/// Node.js: there is no official agent image, so skylift's (the `Dockerfile`'s
/// `nodejs-agent` target) carries `skywalking-backend-js` installed at
/// `/skywalking/nodejs`; the init container copies it (no registry is reached when a pod
/// starts) and writes a start module loaded with `--require`.
pub const NODEJS: LanguageDefaults = LanguageDefaults {
    image: NODEJS_AGENT_IMAGE,
    loader_variable: "NODE_OPTIONS",
    loader_value: "--require /sky/agent/nodejs/start.js",
    separator: " ",
};
/// skylift's image of the Node.js agent (`docker build --target nodejs-agent`), tagged
/// with the agent's version.
pub const NODEJS_AGENT_IMAGE: &str = "ghcr.io/skylift-io/skywalking-nodejs-agent:0.9.0";
/// Where an image of the Node.js agent keeps it.
pub const NODEJS_AGENT_DIR: &str = "/skywalking/nodejs";

pub fn defaults(language: AgentLanguage) -> &'static LanguageDefaults {
    match language {
        AgentLanguage::Java => &JAVA,
        AgentLanguage::Python => &PYTHON,
        AgentLanguage::Nodejs => &NODEJS,
    }
}

/// The init container's script: for Python and Node.js, first the module that starts the
/// agent (it never stops the application when the agent cannot start), then the agent
/// copied into the shared volume. A copy that fails is said on stderr and the script still
/// succeeds: the pod starts its application, without the agent.
pub fn init_script(language: AgentLanguage) -> String {
    let not_copied = |what: &str| {
        format!(
            " || echo 'skylift: the {what} agent could not be copied; the application starts without it' >&2"
        )
    };
    match language {
        AgentLanguage::Java => "cp -R /skywalking/agent/. /sky/agent/java/".into(),
        AgentLanguage::Python => format!(
            concat!(
                "mkdir -p /sky/agent/python/loader {packages}; ",
                "printf '%s\\n' 'import sys' 'sys.path.append(\"{packages}\")' 'try:' ",
                "'    from skywalking import agent' '    agent.start()' ",
                "'except Exception as error:' ",
                "'    sys.stderr.write(\"skylift: the SkyWalking agent did not start: %r\\n\" % (error,))' ",
                "> /sky/agent/python/loader/sitecustomize.py; ",
                "{{ site=$(python -c 'import os, skywalking; print(os.path.dirname(os.path.dirname(skywalking.__file__)))') ",
                "&& cp -R \"$site\"/. {packages}/; }}{failed}; exit 0"
            ),
            packages = PYTHON_PACKAGES,
            failed = not_copied("Python"),
        ),
        AgentLanguage::Nodejs => format!(
            concat!(
                "mkdir -p /sky/agent/nodejs; ",
                "printf '%s\\n' 'try {{ require(\"/sky/agent/nodejs/node_modules/skywalking-backend-js\").default.start(); }}' ",
                "'catch (error) {{ console.error(\"skylift: the SkyWalking agent did not start:\", error); }}' ",
                "> /sky/agent/nodejs/start.js; ",
                "cp -R {dir}/. /sky/agent/nodejs/{failed}; exit 0"
            ),
            dir = NODEJS_AGENT_DIR,
            failed = not_copied("Node.js"),
        ),
    }
}

/// What the webhook does with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// No SwAgent of the namespace selects the pod.
    NotSelected,
    /// The pod carries the injection marker already (an UPDATE, or a re-sent CREATE).
    AlreadyInjected,
    /// `agent.skylift.io/inject: "false"`.
    OptedOut,
    /// Selected, but nothing to inject into or nowhere to report; the pod is admitted
    /// unchanged with this warning.
    Skipped {
        agent: String,
        warning: String,
    },
    Injected {
        agent: String,
        patch: Vec<Value>,
    },
}

/// The pod's annotations that override a SwAgent, without the prefix.
fn overrides(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata
        .annotations
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.strip_prefix(ANNOTATION_PREFIX)?.to_string(), v.clone())))
        .collect()
}

/// The SwAgent for a pod: the one its annotation names, else the first by name whose
/// selector the pod's labels satisfy.
pub fn select<'a>(pod: &Pod, agents: &'a [SwAgent]) -> Option<&'a SwAgent> {
    let named = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&format!("{ANNOTATION_PREFIX}swagent")));
    let mut candidates: Vec<&SwAgent> = agents
        .iter()
        .filter(|agent| match named {
            Some(name) => agent.metadata.name.as_deref() == Some(name.as_str()),
            None => crate::publish::matches(pod, &agent.spec.selector),
        })
        .collect();
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    candidates.first().copied()
}

/// The backend address for an agent with no `backend` and no annotation: the first
/// Satellite by name, else the first OAPServer by name.
pub fn default_backend(
    namespace: &str,
    satellites: &[String],
    oapservers: &[String],
) -> Option<String> {
    let first = |names: &[String]| names.iter().min().cloned();
    first(satellites)
        .map(BackendTarget::Satellite)
        .or_else(|| first(oapservers).map(BackendTarget::OapServer))
        .map(|target| target.grpc_address(namespace))
}

/// The service name an agent reports as.
fn service_name(pod: &Pod, container: &Container) -> String {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    labels
        .get(label_keys::NAME)
        .or_else(|| labels.get("app"))
        .cloned()
        .unwrap_or_else(|| container.name.clone())
}

/// JSON Pointer escaping of one path segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Decides what to do with `pod`, created in a namespace whose SwAgents are `agents`.
/// `default_backend` is used when neither the annotations nor the SwAgent name one.
pub fn inject(pod: &Pod, agents: &[SwAgent], default_backend: Option<&str>) -> Outcome {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.contains_key(INJECTED_ANNOTATION) {
        return Outcome::AlreadyInjected;
    }
    let overrides = overrides(pod);
    if overrides.get("inject").map(String::as_str) == Some("false") {
        return Outcome::OptedOut;
    }
    let Some(agent) = select(pod, agents) else {
        return Outcome::NotSelected;
    };
    let agent_name = agent.metadata.name.clone().unwrap_or_default();
    let skipped = |warning: String| Outcome::Skipped {
        agent: agent_name.clone(),
        warning,
    };
    let namespace = agent.metadata.namespace.clone().unwrap_or_default();
    let spec = &agent.spec;
    let language = spec.language;
    let defaults = defaults(language);

    let backend = overrides
        .get("backend")
        .cloned()
        .or_else(|| {
            spec.backend
                .as_ref()
                .map(|b| BackendTarget::of(b).grpc_address(&namespace))
        })
        .or_else(|| default_backend.map(str::to_string));
    let Some(backend) = backend else {
        return skipped(format!(
            "SwAgent {agent_name} selects this pod but names no backend, and namespace {namespace} has no Satellite or OAPServer; the pod runs without the agent"
        ));
    };
    let matcher_text = overrides
        .get("container-matcher")
        .or(spec.container_matcher.as_ref())
        .cloned()
        .unwrap_or_else(|| ".*".into());
    let Ok(matcher) = regex::Regex::new(&format!("^(?:{matcher_text})$")) else {
        return skipped(format!(
            "container matcher {matcher_text:?} is not a valid regular expression; the pod runs without the agent"
        ));
    };
    let Some(pod_spec) = pod.spec.as_ref() else {
        return skipped("the pod has no spec".into());
    };
    let matching: Vec<usize> = pod_spec
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| matcher.is_match(&c.name))
        .map(|(i, _)| i)
        .collect();
    if matching.is_empty() {
        return skipped(format!(
            "no container name matches {matcher_text:?}; the pod runs without the agent"
        ));
    }
    let image = overrides
        .get("image")
        .or(spec.image.as_ref())
        .cloned()
        .unwrap_or_else(|| defaults.image.to_string());

    // Agent settings: the backend, the SwAgent's (references kept), then the
    // annotations' (`env.<NAME>`); a later one of the same name wins.
    let mut settings: Vec<EnvVar> = Vec::new();
    let mut set = |variable: EnvVar| match settings.iter_mut().find(|e| e.name == variable.name) {
        Some(existing) => *existing = variable,
        None => settings.push(variable),
    };
    let literal = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    set(literal("SW_AGENT_COLLECTOR_BACKEND_SERVICES", backend));
    for variable in &spec.env {
        set(variable.clone());
    }
    for (key, value) in &overrides {
        if let Some(name) = key.strip_prefix("env.") {
            set(literal(name, value.clone()));
        }
    }
    let service_override = overrides
        .get("service-name")
        .or(spec.service_name.as_ref())
        .cloned();

    let mut patch = Vec::new();
    if pod.metadata.annotations.is_none() {
        patch.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    patch.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(INJECTED_ANNOTATION)), "value": agent_name}));
    let volume = json!({"name": VOLUME, "emptyDir": {}});
    match &pod_spec.volumes {
        Some(_) => patch.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume})),
        None => patch.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]})),
    }
    let init = json!({
        "name": INIT_CONTAINER,
        "image": image,
        "command": ["sh", "-c", init_script(language)],
        "volumeMounts": [{"name": VOLUME, "mountPath": MOUNT_PATH}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        // The agent images run as root; copying needs no privilege, and a pod that must
        // run as non-root (Pod Security "restricted") still starts.
        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": true, "runAsUser": AGENT_COPY_USER},
    });
    // First, so the agent is in place before any other init container could need it.
    match &pod_spec.init_containers {
        Some(_) => {
            patch.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}))
        }
        None => patch.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]})),
    }
    for index in matching {
        let container = &pod_spec.containers[index];
        let base = format!("/spec/containers/{index}");
        let own = container.env.clone().unwrap_or_default();
        let mut added: Vec<EnvVar> = Vec::new();
        let mut add = |variable: EnvVar| {
            let name = variable.name.as_str();
            if !own.iter().any(|e| e.name == name) && !added.iter().any(|e| e.name == name) {
                added.push(variable);
            }
        };
        let name = service_override
            .clone()
            .unwrap_or_else(|| service_name(pod, container));
        add(literal("SW_AGENT_NAME", name));
        for variable in &settings {
            add(variable.clone());
        }
        if language == AgentLanguage::Python {
            add(literal("SW_AGENT_PROTOCOL", "grpc".into()));
        }
        // The loader variable: ours in front of a literal value the container has.
        let loader = own.iter().position(|e| e.name == defaults.loader_variable);
        match loader.map(|i| (i, &own[i])) {
            Some((i, existing)) if existing.value_from.is_none() => {
                let current = existing.value.clone().unwrap_or_default();
                let value = if current.is_empty() {
                    defaults.loader_value.to_string()
                } else {
                    format!("{}{}{current}", defaults.loader_value, defaults.separator)
                };
                patch.push(json!({"op": "replace", "path": format!("{base}/env/{i}/value"), "value": value}));
            }
            Some(_) => {
                return skipped(format!(
                    "container {} sets {} from a reference, which cannot be extended; the pod runs without the agent",
                    container.name, defaults.loader_variable
                ));
            }
            None => add(literal(
                defaults.loader_variable,
                defaults.loader_value.to_string(),
            )),
        }
        let env_values: Vec<Value> = added
            .iter()
            .map(|e| serde_json::to_value(e).expect("EnvVar serializes"))
            .collect();
        match &container.env {
            Some(_) => patch.extend(env_values.into_iter().map(
                |value| json!({"op": "add", "path": format!("{base}/env/-"), "value": value}),
            )),
            None => {
                patch.push(json!({"op": "add", "path": format!("{base}/env"), "value": env_values}))
            }
        }
        let mount = json!({"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": true});
        match &container.volume_mounts {
            Some(_) => patch.push(
                json!({"op": "add", "path": format!("{base}/volumeMounts/-"), "value": mount}),
            ),
            None => patch.push(
                json!({"op": "add", "path": format!("{base}/volumeMounts"), "value": [mount]}),
            ),
        }
    }
    Outcome::Injected {
        agent: agent_name,
        patch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, spec: Value) -> SwAgent {
        let mut agent = SwAgent::new(name, serde_json::from_value(spec).unwrap());
        agent.metadata.namespace = Some("shop".into());
        agent
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    /// The pod after the patch, as the API server would store it.
    fn patched(pod_value: &Value, outcome: &Outcome) -> Value {
        let Outcome::Injected { patch, .. } = outcome else {
            panic!("not injected: {outcome:?}");
        };
        let mut value = pod_value.clone();
        let patch: json_patch::Patch = serde_json::from_value(json!(patch)).unwrap();
        json_patch::patch(&mut value, &patch).unwrap();
        value
    }

    fn env_of(container: &Value) -> BTreeMap<String, String> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn java_pod() -> Value {
        json!({"metadata": {"name": "checkout-1", "labels": {"app": "checkout", "inject": "java"}},
        "spec": {"containers": [
            {"name": "app", "image": "shop/checkout", "env": [{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx512m"}]},
            {"name": "envoy", "image": "envoyproxy/envoy"}
        ]}})
    }

    #[test]
    fn java_pods_get_the_agent_from_an_init_container_and_load_it_with_javaagent() {
        let agents = [agent(
            "java",
            json!({"selector": {"inject": "java"}, "language": "java",
                                             "containerMatcher": "app", "backend": {"satelliteRef": {"name": "ingest"}}}),
        )];
        let value = java_pod();
        let outcome = inject(&pod(value.clone()), &agents, None);
        let after = patched(&value, &outcome);
        assert_eq!(
            after["metadata"]["annotations"][INJECTED_ANNOTATION],
            "java"
        );
        let init = &after["spec"]["initContainers"][0];
        assert_eq!(init["image"], JAVA.image);
        assert_eq!(init["volumeMounts"][0]["mountPath"], MOUNT_PATH);
        assert_eq!(
            after["spec"]["volumes"][0],
            json!({"name": VOLUME, "emptyDir": {}})
        );
        let app = &after["spec"]["containers"][0];
        let env = env_of(app);
        assert_eq!(
            env["JAVA_TOOL_OPTIONS"],
            "-javaagent:/sky/agent/java/skywalking-agent.jar -Xmx512m"
        );
        assert_eq!(
            env["SW_AGENT_COLLECTOR_BACKEND_SERVICES"],
            "ingest-satellite.shop.svc:11800"
        );
        assert_eq!(env["SW_AGENT_NAME"], "checkout");
        assert_eq!(app["volumeMounts"][0]["readOnly"], true);
        // The sidecar does not match the container matcher: untouched.
        assert_eq!(
            after["spec"]["containers"][1],
            value["spec"]["containers"][1]
        );
    }

    #[test]
    fn a_pod_is_injected_once_whatever_it_is_sent_for() {
        let agents = [agent(
            "java",
            json!({"selector": {"inject": "java"}, "language": "java"}),
        )];
        let value = java_pod();
        let once = patched(
            &value,
            &inject(&pod(value.clone()), &agents, Some("oap:11800")),
        );
        assert_eq!(
            inject(&pod(once), &agents, Some("oap:11800")),
            Outcome::AlreadyInjected
        );
    }

    #[test]
    fn python_and_nodejs_pods_load_the_agent_through_their_runtimes_variables() {
        let value = json!({"metadata": {"name": "p", "labels": {"app.kubernetes.io/name": "orders", "lang": "py"}},
                           "spec": {"containers": [{"name": "web", "image": "python:3.11",
                                                    "env": [{"name": "PYTHONPATH", "value": "/app"}]}],
                                    "initContainers": [{"name": "migrate", "image": "python:3.11"}]}});
        let agents = [agent(
            "py",
            json!({"selector": {"lang": "py"}, "language": "python",
                   "env": [{"name": "SW_AGENT_LOG_REPORTER_ACTIVE", "value": "True"},
                           {"name": "SW_AGENT_AUTHENTICATION",
                            "valueFrom": {"secretKeyRef": {"name": "oap-token", "key": "token"}}}]}),
        )];
        let after = patched(
            &value,
            &inject(&pod(value.clone()), &agents, Some("sat.shop.svc:11800")),
        );
        let env = env_of(&after["spec"]["containers"][0]);
        // Only the loader goes in front of the application's path; the agent's packages are
        // appended to sys.path by it, after the application's.
        assert_eq!(env["PYTHONPATH"], "/sky/agent/python/loader:/app");
        assert_eq!(env["SW_AGENT_NAME"], "orders");
        assert_eq!(
            env["SW_AGENT_COLLECTOR_BACKEND_SERVICES"],
            "sat.shop.svc:11800"
        );
        assert_eq!(env["SW_AGENT_LOG_REPORTER_ACTIVE"], "True");
        let token = after["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "SW_AGENT_AUTHENTICATION")
            .unwrap()
            .clone();
        assert_eq!(
            token["valueFrom"]["secretKeyRef"]["name"], "oap-token",
            "references are kept"
        );
        // Ours runs first; the pod's own init container keeps running after it.
        assert_eq!(after["spec"]["initContainers"][0]["name"], INIT_CONTAINER);
        assert_eq!(after["spec"]["initContainers"][1]["name"], "migrate");
        let script = after["spec"]["initContainers"][0]["command"][2]
            .as_str()
            .unwrap();
        assert!(script.contains("sitecustomize.py") && script.contains("except Exception"));

        let node = json!({"metadata": {"name": "n", "labels": {"lang": "js"}},
                          "spec": {"containers": [{"name": "api", "image": "node:22"}]}});
        let agents = [agent(
            "js",
            json!({"selector": {"lang": "js"}, "language": "nodejs", "serviceName": "gateway"}),
        )];
        let after = patched(
            &node,
            &inject(&pod(node.clone()), &agents, Some("sat:11800")),
        );
        let env = env_of(&after["spec"]["containers"][0]);
        assert_eq!(env["NODE_OPTIONS"], "--require /sky/agent/nodejs/start.js");
        assert_eq!(env["SW_AGENT_NAME"], "gateway");
        let script = after["spec"]["initContainers"][0]["command"][2]
            .as_str()
            .unwrap();
        // Copied from skylift's Node.js agent image: no registry is reached at pod start.
        assert_eq!(
            after["spec"]["initContainers"][0]["image"],
            NODEJS_AGENT_IMAGE
        );
        assert!(script.contains("cp -R /skywalking/nodejs/.") && script.contains("start.js"));
        assert!(!script.contains("npm"), "{script}");
        assert!(
            script.ends_with("exit 0"),
            "a failed copy never keeps the pod in Init"
        );
    }

    #[test]
    fn annotations_override_the_swagent_which_overrides_the_defaults() {
        let value = json!({"metadata": {"name": "p", "labels": {"inject": "java"}, "annotations": {
                "agent.skylift.io/service-name": "from-annotation",
                "agent.skylift.io/backend": "annotated:11800",
                "agent.skylift.io/image": "mirror/java-agent:9",
                "agent.skylift.io/env.SW_AGENT_SAMPLE": "100",
            }},
            "spec": {"containers": [{"name": "app", "image": "a", "env": [{"name": "SW_AGENT_SAMPLE_N", "value": "own"}]}]}});
        let agents = [agent(
            "java",
            json!({"selector": {"inject": "java"}, "language": "java",
            "serviceName": "from-swagent", "image": "swagent/image:1", "backend": {"address": "swagent:11800"},
            "env": [{"name": "SW_AGENT_SAMPLE", "value": "5"}, {"name": "SW_AGENT_SAMPLE_N", "value": "swagent"}]}),
        )];
        let after = patched(
            &value,
            &inject(&pod(value.clone()), &agents, Some("default:11800")),
        );
        let env = env_of(&after["spec"]["containers"][0]);
        assert_eq!(env["SW_AGENT_NAME"], "from-annotation");
        assert_eq!(
            env["SW_AGENT_COLLECTOR_BACKEND_SERVICES"],
            "annotated:11800"
        );
        assert_eq!(env["SW_AGENT_SAMPLE"], "100");
        assert_eq!(
            env["SW_AGENT_SAMPLE_N"], "own",
            "the container's own variable is never replaced"
        );
        assert_eq!(
            after["spec"]["initContainers"][0]["image"],
            "mirror/java-agent:9"
        );
    }

    #[test]
    fn pods_that_cannot_be_injected_are_admitted_unchanged_with_a_reason() {
        let agents = [agent(
            "java",
            json!({"selector": {"inject": "java"}, "language": "java", "containerMatcher": "nothing"}),
        )];
        assert!(matches!(
            inject(&pod(java_pod()), &agents, Some("b:1")),
            Outcome::Skipped { .. }
        ));
        let agents = [agent(
            "java",
            json!({"selector": {"inject": "java"}, "language": "java"}),
        )];
        let Outcome::Skipped { warning, .. } = inject(&pod(java_pod()), &agents, None) else {
            panic!("no backend anywhere");
        };
        assert!(warning.contains("no Satellite or OAPServer"), "{warning}");
        let mut opted = java_pod();
        opted["metadata"]["annotations"] = json!({"agent.skylift.io/inject": "false"});
        assert_eq!(inject(&pod(opted), &agents, Some("b:1")), Outcome::OptedOut);
        let other = json!({"metadata": {"name": "x", "labels": {"inject": "go"}}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(
            inject(&pod(other), &agents, Some("b:1")),
            Outcome::NotSelected
        );
        let from_ref = json!({"metadata": {"name": "x", "labels": {"inject": "java"}},
            "spec": {"containers": [{"name": "app", "env": [{"name": "JAVA_TOOL_OPTIONS",
                "valueFrom": {"configMapKeyRef": {"name": "jvm", "key": "opts"}}}]}]}});
        assert!(matches!(
            inject(&pod(from_ref), &agents, Some("b:1")),
            Outcome::Skipped { .. }
        ));
    }

    #[test]
    fn the_default_backend_is_the_first_satellite_else_the_first_oapserver() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            default_backend("shop", &names(&["zeta", "alpha"]), &names(&["sw"])).as_deref(),
            Some("alpha-satellite.shop.svc:11800")
        );
        assert_eq!(
            default_backend("shop", &[], &names(&["sw"])).as_deref(),
            Some("sw-oap.shop.svc:11800")
        );
        assert_eq!(default_backend("shop", &[], &[]), None);
    }
}
