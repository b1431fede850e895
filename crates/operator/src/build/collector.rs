//! The objects an `OTelCollector` is made of: the collector's configuration (generated
//! from the scrape jobs, or the user's ConfigMap), a Deployment running it, and the
//! namespaced Role its Kubernetes service discovery reads with.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, HTTPGetAction, KeyToPath, Probe, ServiceAccount,
    Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use skylift_api::OTelCollector;
use skylift_api::constants::labels::CONFIG_HASH_ANNOTATION;
use skylift_api::otel_collector::{DiscoveryRole, ScrapeJob};

use super::backend::BackendTarget;
use super::meta::{Labels, child_meta, pod_selector_of};
use super::oapserver::{ConfigSource, container_port};
use super::podspec::{Hardening, PodParts, deployment_spec, pod_template};
use super::rbac::{read_rule_in, workload_identity};

pub const COLLECTOR_APP_NAME: &str = "otel-collector";
/// Where the configuration is mounted in the collector container.
pub const CONFIG_PATH: &str = "/etc/otelcol/config.yaml";
/// The generated configuration's health_check extension.
const HEALTH_PORT: i32 = 13133;
/// The collector's own metrics (`service.telemetry`).
const METRICS_PORT: i32 = 8888;

#[derive(Clone, Debug)]
pub struct CollectorObjects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// The generated configuration (`None` when the user's ConfigMap is used).
    pub config_map: Option<ConfigMap>,
    pub deployment: Deployment,
}

pub fn workload_name(name: &str) -> String {
    format!("{name}-otelcol")
}

fn labels(collector: &OTelCollector) -> Labels {
    Labels {
        name: COLLECTOR_APP_NAME,
        instance: collector.metadata.name.clone().unwrap_or_default(),
        component: "collector",
        version: collector.spec.version.clone(),
    }
}

pub fn pod_selector(name: &str) -> BTreeMap<String, String> {
    pod_selector_of(COLLECTOR_APP_NAME, name)
}

/// The Prometheus `kubernetes_sd_configs` role of a job, and the label holding the name
/// of the discovered port.
fn discovery(role: DiscoveryRole) -> (&'static str, &'static str) {
    match role {
        DiscoveryRole::Pod => ("pod", "__meta_kubernetes_pod_container_port_name"),
        DiscoveryRole::Endpoints => ("endpointslice", "__meta_kubernetes_endpointslice_port_name"),
    }
}

fn scrape_config(job: &ScrapeJob, namespace: &str) -> Value {
    let (role, port_label) = discovery(job.role);
    let mut sd = json!({"role": role, "namespaces": {"names": [namespace]}});
    if !job.match_labels.is_empty() {
        let selector = super::selector_string(&job.match_labels);
        // Endpoint slices are picked by the labels of their Service.
        let selector_role = if role == "pod" { "pod" } else { "service" };
        sd["selectors"] = json!([{"role": selector_role, "label": selector}]);
    }
    let mut relabel = Vec::new();
    if let Some(port) = &job.port {
        relabel.push(json!({"source_labels": [port_label], "regex": port, "action": "keep"}));
    }
    // Where a sample came from.
    relabel.push(
        json!({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}),
    );
    relabel.push(json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}));
    for (label, value) in &job.labels {
        // `$` starts a variable in a collector configuration; `$$` is a literal one.
        relabel.push(json!({
            "target_label": label, "replacement": value.replace('$', "$$"), "action": "replace",
        }));
    }
    json!({
        "job_name": job.name,
        "scrape_interval": job.interval,
        "metrics_path": job.path,
        "kubernetes_sd_configs": [sd],
        "relabel_configs": relabel,
    })
}

/// The collector configuration generated from the scrape jobs: a Prometheus receiver,
/// batching, and OTLP over gRPC (plaintext, as OAP and skylift-proxy listen) to the backend.
pub fn generated_config(jobs: &[ScrapeJob], namespace: &str, backend: &str) -> String {
    let config = json!({
        "extensions": {"health_check": {"endpoint": format!("0.0.0.0:{HEALTH_PORT}")}},
        "receivers": {"prometheus": {"config": {
            "scrape_configs": jobs.iter().map(|job| scrape_config(job, namespace)).collect::<Vec<_>>(),
        }}},
        "processors": {"batch": {}},
        "exporters": {"otlp": {"endpoint": backend, "tls": {"insecure": true}}},
        "service": {
            "extensions": ["health_check"],
            "pipelines": {"metrics": {
                "receivers": ["prometheus"], "processors": ["batch"], "exporters": ["otlp"],
            }},
        },
    });
    serde_yaml::to_string(&config).expect("JSON values serialize to YAML")
}

/// Read access for service discovery, limited to the collector's namespace.
fn discovery_rules(jobs: &[ScrapeJob]) -> Vec<PolicyRule> {
    let mut rules = vec![read_rule_in("", &["pods"])];
    if jobs.iter().any(|j| j.role == DiscoveryRole::Endpoints) {
        rules[0] = read_rule_in("", &["pods", "services"]);
        rules.push(read_rule_in("discovery.k8s.io", &["endpointslices"]));
    }
    rules
}

/// `user_config`: the ConfigMap of `spec.configMapRef` as read (`None`: missing or not
/// used).
pub fn build(collector: &OTelCollector, user_config: Option<&ConfigSource>) -> CollectorObjects {
    let name = collector.metadata.name.clone().unwrap_or_default();
    let namespace = collector.metadata.namespace.clone().unwrap_or_default();
    let labels = labels(collector);
    let workload = workload_name(&name);
    let meta = |object_name: String| child_meta(collector, object_name, labels.all());
    let jobs = collector.spec.scrape.clone().unwrap_or_default();
    let identity = workload_identity(meta(workload.clone()), discovery_rules(&jobs));
    let backend = BackendTarget::of(&collector.spec.backend).grpc_address(&namespace);

    let (config_map, source, key, hash) = match &collector.spec.config_map_ref {
        Some(user) => (
            None,
            user.name.clone(),
            user.key.clone(),
            user_config.map(|c| c.hash.clone()).unwrap_or_default(),
        ),
        None => {
            let text = generated_config(&jobs, &namespace, &backend);
            let hash = crate::diff::config_hash(&Value::String(text.clone()));
            let config_map = ConfigMap {
                metadata: meta(workload.clone()),
                data: Some(BTreeMap::from([("config.yaml".to_string(), text)])),
                ..ConfigMap::default()
            };
            (
                Some(config_map),
                workload.clone(),
                "config.yaml".to_string(),
                hash,
            )
        }
    };
    let generated = config_map.is_some();
    let health = |failure_threshold| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".into()),
            port: IntOrString::Int(HEALTH_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    };
    let container = Container {
        name: "otelcol".into(),
        image: Some(collector.spec.image.clone().unwrap_or_else(|| {
            format!(
                "otel/opentelemetry-collector-contrib:{}",
                collector.spec.version
            )
        })),
        args: Some(vec![format!("--config={CONFIG_PATH}")]),
        ports: Some(vec![container_port("metrics", METRICS_PORT)]),
        resources: collector.spec.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".into(),
            mount_path: "/etc/otelcol".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        // Only the generated configuration is known to serve the health endpoint.
        readiness_probe: generated.then(|| health(3)),
        liveness_probe: generated.then(|| health(6)),
        ..Container::default()
    };
    let template = pod_template(
        PodParts {
            labels: labels.clone(),
            service_account: Some(workload.clone()),
            container,
            annotations: BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), hash)]),
            hardening: Hardening::ThirdPartyImage,
            termination_grace_period_seconds: 30,
            volumes: vec![Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: source,
                    items: Some(vec![KeyToPath {
                        key,
                        path: "config.yaml".into(),
                        mode: None,
                    }]),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            }],
        },
        collector.spec.pod_template.as_ref(),
    );
    let deployment = Deployment {
        metadata: meta(workload.clone()),
        spec: Some(deployment_spec(
            collector.spec.replicas,
            labels.selector(),
            template,
        )),
        status: None,
    };
    CollectorObjects {
        service_account: identity.service_account,
        role: identity.role,
        role_binding: identity.role_binding,
        config_map,
        deployment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::ObjectMetaExt;

    fn collector(spec: Value) -> OTelCollector {
        let mut c = OTelCollector::new("metrics", serde_json::from_value(spec).unwrap());
        c.metadata.namespace = Some("obs".into());
        c.metadata.uid = Some("uid-c".into());
        c
    }

    fn config_of(objects: &CollectorObjects) -> Value {
        let text = &objects.config_map.as_ref().unwrap().data.as_ref().unwrap()["config.yaml"];
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn scrape_jobs_become_a_prometheus_receiver_exporting_otlp_to_the_backend() {
        let objects = build(
            &collector(json!({
                "version": "0.115.0", "backend": {"oapServerRef": {"name": "skywalking"}},
                "scrape": [
                    {"name": "mysql-monitoring", "matchLabels": {"app": "mysqld-exporter"}, "port": "metrics",
                     "labels": {"host_name": "orders-db"}},
                    {"name": "vm", "role": "endpoints", "interval": "15s", "path": "/stats"}
                ]
            })),
            None,
        );
        let config = config_of(&objects);
        assert_eq!(
            config["exporters"]["otlp"]["endpoint"],
            "skywalking-oap.obs.svc:11800"
        );
        assert_eq!(
            config["service"]["pipelines"]["metrics"]["exporters"],
            json!(["otlp"])
        );
        let jobs = &config["receivers"]["prometheus"]["config"]["scrape_configs"];
        assert_eq!(jobs[0]["job_name"], "mysql-monitoring");
        let sd = &jobs[0]["kubernetes_sd_configs"][0];
        assert_eq!(sd["role"], "pod");
        assert_eq!(
            sd["namespaces"]["names"],
            json!(["obs"]),
            "discovery stays in the collector's namespace"
        );
        assert_eq!(sd["selectors"][0]["label"], "app=mysqld-exporter");
        assert_eq!(jobs[0]["relabel_configs"][0]["regex"], "metrics");
        let relabels = jobs[0]["relabel_configs"].as_array().unwrap();
        assert!(relabels.contains(
            &json!({"target_label": "host_name", "replacement": "orders-db", "action": "replace"})
        ));
        assert_eq!(jobs[1]["kubernetes_sd_configs"][0]["role"], "endpointslice");
        assert_eq!(
            (
                jobs[1]["scrape_interval"].as_str(),
                jobs[1]["metrics_path"].as_str()
            ),
            (Some("15s"), Some("/stats"))
        );
        // What discovery lists is exactly what the Role lets it read, in this namespace.
        let rules = objects.role.rules.as_ref().unwrap();
        let resources: Vec<String> = rules
            .iter()
            .flat_map(|r| r.resources.clone().unwrap())
            .collect();
        assert_eq!(resources, vec!["pods", "services", "endpointslices"]);
        assert!(
            rules
                .iter()
                .all(|r| r.verbs == vec!["get", "list", "watch"])
        );
        assert!(objects.role.metadata.is_controlled_by("uid-c"));
        let pod = objects
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("metrics-otelcol"));
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("otel/opentelemetry-collector-contrib:0.115.0")
        );
        assert!(pod.containers[0].readiness_probe.is_some());
    }

    #[test]
    fn a_users_configmap_is_mounted_whole_and_its_changes_roll_the_pods() {
        let spec = json!({"version": "0.115.0", "backend": {"address": "oap:11800"},
                          "configMapRef": {"name": "my-otel", "key": "otel.yaml"}});
        let source = |hash: &str| ConfigSource {
            keys: vec!["otel.yaml".into()],
            hash: hash.into(),
        };
        let objects = build(&collector(spec.clone()), Some(&source("h1")));
        assert!(objects.config_map.is_none());
        let template = &objects.deployment.spec.as_ref().unwrap().template;
        let volume = &template.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        let config_map = volume.config_map.as_ref().unwrap();
        assert_eq!(config_map.name, "my-otel");
        assert_eq!(config_map.items.as_ref().unwrap()[0].key, "otel.yaml");
        let hash = |o: &CollectorObjects| {
            crate::build::podspec::template_annotation(&o.deployment, CONFIG_HASH_ANNOTATION)
                .unwrap()
        };
        assert_ne!(
            hash(&objects),
            hash(&build(&collector(spec), Some(&source("h2"))))
        );
    }
}
