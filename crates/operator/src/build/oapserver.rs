//! The objects an `OAPServer` is made of.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, GRPCAction,
    ObjectFieldSelector, Probe, SecretKeySelector, Service, ServiceAccount, ServicePort,
    ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skylift_api::common::ServiceAddress;
use skylift_api::constants::labels::CONFIG_HASH_ANNOTATION;
use skylift_api::constants::{default_oap_image, ports};
use skylift_api::oapserver::{OAPStorage, StorageType};
use skylift_api::{OAPServer, ServiceOptions};

use super::meta::{Labels, child_meta, pod_selector_of, selector_string};
use super::podspec::{Hardening, PodParts, deployment_spec, pod_template, with_user_env};
use super::rbac::{read_rule, workload_identity};

/// `app.kubernetes.io/name` of OAP pods.
pub const OAP_APP_NAME: &str = "oap-server";

/// Meter rule files OAP activates: its stock set plus `satellite`, whose rules turn the
/// proxies' `sw_stl_*` meters into `satellite_service_grpc_connect_count`.
pub const METER_ANALYZER_ACTIVE_FILES: &str = "datasource,threadpool,satellite,go-runtime,python-runtime,continuous-profiling,java-agent,go-agent";

/// OAP's configuration directory in its image.
pub const CONFIG_DIR: &str = "/skywalking/config";

/// What the OAPServer's objects are built from besides its spec, as the operator read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OapInputs {
    /// The gRPC address of the BanyanDB named by `spec.storage.banyanDBRef` (`None`: it is
    /// not known yet, so storage is left unset rather than pointed at nothing).
    pub banyandb_targets: Option<String>,
    /// The ConfigMaps of `spec.config` that exist, by name.
    pub config_maps: BTreeMap<String, ConfigSource>,
}

/// One ConfigMap of `spec.config` as read: its keys and a hash of its content.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSource {
    pub keys: Vec<String>,
    pub hash: String,
}

/// Every object of one OAPServer.
#[derive(Clone, Debug)]
pub struct OapObjects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
    pub service: Service,
    pub headless_service: Service,
    /// The dynamic configuration's ConfigMap (`None`: `spec.dynamicConfig` is unset).
    pub dynamic_config: Option<ConfigMap>,
}

/// Name of the ConfigMap OAP's k8s-configmap provider reads.
pub fn dynamic_config_name(oap_name: &str) -> String {
    format!("{oap_name}-oap-dynamic-config")
}

/// Name of the Deployment, Service, ServiceAccount, Role and RoleBinding of an OAPServer.
pub fn workload_name(oap_name: &str) -> String {
    format!("{oap_name}-oap")
}

pub fn headless_service_name(oap_name: &str) -> String {
    format!("{oap_name}-oap-headless")
}

fn labels(oap: &OAPServer) -> Labels {
    Labels {
        name: OAP_APP_NAME,
        instance: oap.metadata.name.clone().unwrap_or_default(),
        component: "oap",
        version: oap.spec.version.clone(),
    }
}

/// Labels that select an OAPServer's pods (used by its Deployment, OAP's cluster
/// coordinator, and Satellites referring to it).
pub fn pod_selector(oap_name: &str) -> BTreeMap<String, String> {
    pod_selector_of(OAP_APP_NAME, oap_name)
}

/// Where clients reach the OAP cluster.
pub fn address(oap: &OAPServer) -> ServiceAddress {
    let host = format!(
        "{}.{}.svc",
        workload_name(oap.metadata.name.as_deref().unwrap_or_default()),
        oap.metadata.namespace.as_deref().unwrap_or("default")
    );
    ServiceAddress {
        grpc: format!("{host}:{}", ports::GRPC),
        http: Some(format!("http://{host}:{}", ports::OAP_HTTP)),
    }
}

pub fn build(oap: &OAPServer, inputs: &OapInputs) -> OapObjects {
    let name = oap.metadata.name.clone().unwrap_or_default();
    let labels = labels(oap);
    let workload = workload_name(&name);
    let meta = |object_name: String| child_meta(oap, object_name, labels.all());

    // OAP's kubernetes coordinator lists and watches the pods of its own cluster in its own
    // namespace; a namespaced Role named after the resource is all it needs. The
    // k8s-configmap provider of the dynamic configuration lists ConfigMaps by the same
    // label selector (`SW_CLUSTER_K8S_LABEL`), so it reads ConfigMaps too.
    let mut rules = vec![read_rule("pods", None)];
    if oap.spec.dynamic_config.is_some() {
        rules.push(read_rule("configmaps", None));
    }
    let identity = workload_identity(meta(workload.clone()), rules);
    let files = config_files(oap, inputs);

    let container = Container {
        name: "oap".into(),
        image: Some(
            oap.spec
                .image
                .clone()
                .unwrap_or_else(|| default_oap_image(&oap.spec.version)),
        ),
        ports: Some(vec![
            container_port("grpc", ports::GRPC),
            container_port("http", ports::OAP_HTTP),
            container_port("metrics", ports::ADMIN),
        ]),
        env: Some(env(oap, &name, inputs)),
        resources: oap.spec.resources.clone(),
        volume_mounts: (!files.mounts.is_empty()).then(|| files.mounts.clone()),
        // OAP takes a while to load its rules and storage models: a startup probe gives it
        // five minutes before liveness applies.
        startup_probe: Some(Probe {
            grpc: Some(GRPCAction {
                port: ports::GRPC,
                service: None,
            }),
            period_seconds: Some(5),
            failure_threshold: Some(60),
            ..Probe::default()
        }),
        readiness_probe: Some(Probe {
            grpc: Some(GRPCAction {
                port: ports::GRPC,
                service: None,
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(ports::OAP_HTTP),
                host: None,
            }),
            period_seconds: Some(10),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        ..Container::default()
    };

    let template = pod_template(
        PodParts {
            labels: labels.clone(),
            service_account: Some(workload.clone()),
            container,
            annotations: files.annotations,
            hardening: Hardening::ThirdPartyImage,
            termination_grace_period_seconds: 60,
            volumes: files.volumes,
        },
        oap.spec.pod_template.as_ref(),
    );

    let deployment = Deployment {
        metadata: meta(workload.clone()),
        spec: Some(deployment_spec(
            oap.spec.replicas,
            labels.selector(),
            template,
        )),
        status: None,
    };

    let service_ports = vec![
        service_port("grpc", ports::GRPC),
        service_port("http", ports::OAP_HTTP),
    ];
    let service = service_for(
        meta(workload.clone()),
        oap.spec.service.as_ref(),
        labels.selector(),
        service_ports.clone(),
    );

    let headless_service = Service {
        metadata: meta(headless_service_name(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels.selector()),
            ports: Some(service_ports),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        status: None,
    };

    OapObjects {
        service_account: identity.service_account,
        role: identity.role,
        role_binding: identity.role_binding,
        deployment,
        service,
        headless_service,
        dynamic_config: oap.spec.dynamic_config.as_ref().map(|dynamic| ConfigMap {
            // The pod selector's labels are what OAP's provider selects ConfigMaps by.
            metadata: meta(dynamic_config_name(&name)),
            data: Some(dynamic.data.clone()),
            ..ConfigMap::default()
        }),
    }
}

/// The volumes, mounts and hash annotation of `spec.config`.
struct ConfigFiles {
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    annotations: BTreeMap<String, String>,
}

/// Each key of each ConfigMap that exists becomes one file, mounted by `subPath` so the
/// rest of OAP's configuration directory stays as the image has it.
fn config_files(oap: &OAPServer, inputs: &OapInputs) -> ConfigFiles {
    let mut files = ConfigFiles {
        volumes: Vec::new(),
        mounts: Vec::new(),
        annotations: BTreeMap::new(),
    };
    let mut hashed = Vec::new();
    for (index, wanted) in oap.spec.config.iter().enumerate() {
        let Some(source) = inputs.config_maps.get(&wanted.config_map_name) else {
            continue;
        };
        let volume = format!("config-{index}");
        files.volumes.push(Volume {
            name: volume.clone(),
            config_map: Some(ConfigMapVolumeSource {
                name: wanted.config_map_name.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        let dir = if wanted.path.is_empty() {
            CONFIG_DIR.to_string()
        } else {
            format!("{CONFIG_DIR}/{}", wanted.path)
        };
        for key in &source.keys {
            files.mounts.push(VolumeMount {
                name: volume.clone(),
                mount_path: format!("{dir}/{key}"),
                sub_path: Some(key.clone()),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        hashed.push(serde_json::json!([
            wanted.config_map_name,
            wanted.path,
            source.hash
        ]));
    }
    if !hashed.is_empty() {
        files.annotations.insert(
            CONFIG_HASH_ANNOTATION.into(),
            crate::diff::config_hash(&serde_json::Value::Array(hashed)),
        );
    }
    files
}

/// OAP's environment: skylift's settings, then the storage, then the user's `env`, where a
/// user variable replaces one of ours of the same name in place.
fn env(oap: &OAPServer, name: &str, inputs: &OapInputs) -> Vec<EnvVar> {
    let mut env = vec![
        plain("SW_CLUSTER", "kubernetes"),
        field_ref("SW_CLUSTER_K8S_NAMESPACE", "metadata.namespace"),
        plain(
            "SW_CLUSTER_K8S_LABEL",
            &selector_string(&pod_selector(name)),
        ),
        // OAP's coordinator recognises its own pod among the listed ones by this uid.
        field_ref("SKYWALKING_COLLECTOR_UID", "metadata.uid"),
        plain("SW_TELEMETRY", "prometheus"),
        plain("SW_HEALTH_CHECKER", "default"),
        plain(
            "SW_METER_ANALYZER_ACTIVE_FILES",
            METER_ANALYZER_ACTIVE_FILES,
        ),
    ];
    if let Some(storage) = &oap.spec.storage {
        env.extend(storage_env(storage, inputs));
    }
    if let Some(dynamic) = &oap.spec.dynamic_config {
        env.push(plain("SW_CONFIGURATION", "k8s-configmap"));
        env.push(plain(
            "SW_CONFIG_CONFIGMAP_PERIOD",
            &dynamic.period_seconds.to_string(),
        ));
    }
    with_user_env(env, &oap.spec.env)
}

fn storage_env(storage: &OAPStorage, inputs: &OapInputs) -> Vec<EnvVar> {
    let (kind, address_var, user_var, password_var) = match storage.type_ {
        StorageType::Banyandb => (
            "banyandb",
            "SW_STORAGE_BANYANDB_TARGETS",
            "SW_STORAGE_BANYANDB_USER",
            "SW_STORAGE_BANYANDB_PASSWORD",
        ),
        StorageType::Elasticsearch => (
            "elasticsearch",
            "SW_STORAGE_ES_CLUSTER_NODES",
            "SW_ES_USER",
            "SW_ES_PASSWORD",
        ),
        StorageType::H2 => (
            "h2",
            "SW_STORAGE_H2_URL",
            "SW_STORAGE_H2_USER",
            "SW_STORAGE_H2_PASSWORD",
        ),
    };
    let mut env = vec![plain("SW_STORAGE", kind)];
    let address = match &storage.banyandb_ref {
        Some(_) => inputs.banyandb_targets.as_ref(),
        None => storage.address.as_ref(),
    };
    if let Some(address) = address {
        env.push(plain(address_var, address));
    }
    if let Some(credentials) = &storage.credentials {
        env.push(secret_ref(
            user_var,
            &credentials.secret_name,
            &credentials.username_key,
        ));
        env.push(secret_ref(
            password_var,
            &credentials.secret_name,
            &credentials.password_key,
        ));
    }
    env
}

pub(crate) fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

pub(crate) fn field_ref(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn secret_ref(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

pub(crate) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

pub(crate) fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        // gRPC is cleartext HTTP/2: lets meshes and gateways pick the right protocol.
        app_protocol: (name == "grpc").then(|| "kubernetes.io/h2c".into()),
        ..ServicePort::default()
    }
}

/// A Service with the user's type and annotations.
pub(crate) fn service_for(
    mut metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    options: Option<&ServiceOptions>,
    selector: BTreeMap<String, String>,
    ports: Vec<ServicePort>,
) -> Service {
    let options = options.cloned().unwrap_or_default();
    if !options.annotations.is_empty() {
        metadata.annotations = Some(options.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(options.type_.as_str().into()),
            selector: Some(selector),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::ObjectMetaExt;
    use kube::api::ObjectMeta;
    use skylift_api::OAPServerSpec;

    fn build_plain(oap: &OAPServer) -> OapObjects {
        build(oap, &OapInputs::default())
    }

    pub(crate) fn oap(spec: serde_json::Value) -> OAPServer {
        let mut oap = OAPServer::new(
            "skywalking",
            serde_json::from_value::<OAPServerSpec>(spec).unwrap(),
        );
        oap.metadata = ObjectMeta {
            name: Some("skywalking".into()),
            namespace: Some("observability".into()),
            uid: Some("uid-oap".into()),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        oap
    }

    fn env_of(objects: &OapObjects) -> Vec<EnvVar> {
        objects
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap()
    }

    fn value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a EnvVar> {
        env.iter().find(|e| e.name == name)
    }

    #[test]
    fn oap_deployment_runs_the_versioned_image_with_cluster_coordination() {
        let objects = build_plain(&oap(
            serde_json::json!({"version": "10.2.0", "replicas": 3}),
        ));
        let deployment = &objects.deployment;
        assert_eq!(deployment.metadata.name.as_deref(), Some("skywalking-oap"));
        let spec = deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let container = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("apache/skywalking-oap-server:10.2.0")
        );
        let ports: Vec<i32> = container
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, vec![11800, 12800, 1234]);
        assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());

        let env = env_of(&objects);
        assert_eq!(
            value(&env, "SW_CLUSTER").unwrap().value.as_deref(),
            Some("kubernetes")
        );
        assert_eq!(
            value(&env, "SW_CLUSTER_K8S_LABEL")
                .unwrap()
                .value
                .as_deref(),
            Some("app.kubernetes.io/instance=skywalking,app.kubernetes.io/name=oap-server")
        );
        // The coordinator's label matches the pods the Deployment creates.
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (k, v) in pod_selector("skywalking") {
            assert_eq!(pod_labels.get(&k), Some(&v));
        }
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap(),
            &pod_selector("skywalking")
        );
        assert_eq!(
            value(&env, "SW_TELEMETRY").unwrap().value.as_deref(),
            Some("prometheus")
        );
        assert_eq!(
            value(&env, "SW_HEALTH_CHECKER").unwrap().value.as_deref(),
            Some("default")
        );
        assert!(
            value(&env, "SW_METER_ANALYZER_ACTIVE_FILES")
                .unwrap()
                .value
                .as_deref()
                .unwrap()
                .split(',')
                .any(|f| f == "satellite")
        );
        assert!(
            value(&env, "SW_CLUSTER_K8S_NAMESPACE")
                .unwrap()
                .value_from
                .is_some()
        );
    }

    #[test]
    fn user_env_wins_and_keeps_value_from() {
        let objects = build_plain(&oap(serde_json::json!({
            "version": "10.2.0",
            "env": [
                {"name": "SW_TELEMETRY", "value": "none"},
                {"name": "JAVA_OPTS", "valueFrom": {"configMapKeyRef": {"name": "jvm", "key": "opts"}}}
            ]
        })));
        let env = env_of(&objects);
        assert_eq!(env.iter().filter(|e| e.name == "SW_TELEMETRY").count(), 1);
        assert_eq!(
            value(&env, "SW_TELEMETRY").unwrap().value.as_deref(),
            Some("none")
        );
        let java = value(&env, "JAVA_OPTS").unwrap();
        assert_eq!(
            java.value_from
                .as_ref()
                .unwrap()
                .config_map_key_ref
                .as_ref()
                .unwrap()
                .key,
            "opts"
        );
    }

    #[test]
    fn storage_credentials_come_from_the_secret() {
        let objects = build_plain(&oap(serde_json::json!({
            "version": "10.2.0",
            "storage": {"type": "elasticsearch", "address": "es:9200",
                        "credentials": {"secretName": "es-auth"}}
        })));
        let env = env_of(&objects);
        assert_eq!(
            value(&env, "SW_STORAGE").unwrap().value.as_deref(),
            Some("elasticsearch")
        );
        assert_eq!(
            value(&env, "SW_STORAGE_ES_CLUSTER_NODES")
                .unwrap()
                .value
                .as_deref(),
            Some("es:9200")
        );
        let password = value(&env, "SW_ES_PASSWORD").unwrap();
        let secret = password
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("es-auth", "password")
        );
        assert!(
            password.value.is_none(),
            "the password never appears in the Deployment"
        );
    }

    #[test]
    fn rbac_is_namespaced_and_named_after_the_resource() {
        let objects = build_plain(&oap(serde_json::json!({"version": "10.2.0"})));
        assert_eq!(
            objects.role.metadata.name.as_deref(),
            Some("skywalking-oap")
        );
        assert_eq!(
            objects.role.metadata.namespace.as_deref(),
            Some("observability")
        );
        let rule = &objects.role.rules.as_ref().unwrap()[0];
        assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
        assert!(
            !rule
                .verbs
                .iter()
                .any(|v| v == "create" || v == "delete" || v == "*")
        );
        let binding = &objects.role_binding;
        assert_eq!(binding.role_ref.kind, "Role");
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(subject.name, "skywalking-oap");
        assert_eq!(subject.namespace.as_deref(), Some("observability"));
        let pod = objects
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("skywalking-oap"));
    }

    #[test]
    fn services_expose_grpc_and_http_and_every_object_is_owned() {
        let objects = build_plain(&oap(serde_json::json!({
            "version": "10.2.0",
            "service": {"type": "LoadBalancer", "annotations": {"lb": "internal"}}
        })));
        let spec = objects.service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let ports: Vec<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, vec![11800, 12800]);
        assert_eq!(
            objects.service.metadata.annotations.as_ref().unwrap()["lb"],
            "internal"
        );
        assert_eq!(
            objects
                .headless_service
                .spec
                .as_ref()
                .unwrap()
                .cluster_ip
                .as_deref(),
            Some("None")
        );
        for meta in [
            &objects.service_account.metadata,
            &objects.role.metadata,
            &objects.role_binding.metadata,
            &objects.deployment.metadata,
            &objects.service.metadata,
            &objects.headless_service.metadata,
        ] {
            assert!(meta.is_controlled_by("uid-oap"), "{:?}", meta.name);
            assert_eq!(
                meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
                "skylift-operator"
            );
        }
    }

    #[test]
    fn pod_template_overrides_are_applied_without_breaking_the_selector() {
        let objects = build_plain(&oap(serde_json::json!({
            "version": "10.2.0",
            "podTemplate": {
                "labels": {"team": "obs", "app.kubernetes.io/name": "hijack"},
                "nodeSelector": {"pool": "oap"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "imagePullSecrets": [{"name": "regcred"}]
            }
        })));
        let template = &objects.deployment.spec.as_ref().unwrap().template;
        let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels["team"], "obs");
        assert_eq!(labels["app.kubernetes.io/name"], "oap-server");
        let pod = template.spec.as_ref().unwrap();
        assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "oap");
        assert_eq!(
            pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    }

    #[test]
    fn status_address_names_the_service() {
        let address = address(&oap(serde_json::json!({"version": "10.2.0"})));
        assert_eq!(address.grpc, "skywalking-oap.observability.svc:11800");
        assert_eq!(
            address.http.as_deref(),
            Some("http://skywalking-oap.observability.svc:12800")
        );
    }

    fn source(keys: &[&str], hash: &str) -> ConfigSource {
        ConfigSource {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            hash: hash.into(),
        }
    }

    #[test]
    fn config_files_are_mounted_key_by_key_and_their_content_rolls_the_pods() {
        let oap = oap(serde_json::json!({
            "version": "10.2.0",
            "config": [
                {"configMapName": "overrides"},
                {"configMapName": "rules", "path": "otel-rules/custom"},
                {"configMapName": "missing", "path": "oal"}
            ]
        }));
        let inputs = |rules_hash: &str| OapInputs {
            banyandb_targets: None,
            config_maps: BTreeMap::from([
                ("overrides".to_string(), source(&["application.yml"], "a")),
                (
                    "rules".to_string(),
                    source(&["app.yaml", "db.yaml"], rules_hash),
                ),
            ]),
        };
        let objects = build(&oap, &inputs("r1"));
        let template = &objects.deployment.spec.as_ref().unwrap().template;
        let container = &template.spec.as_ref().unwrap().containers[0];
        let mounts: Vec<(String, String, String)> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.name.clone(),
                    m.mount_path.clone(),
                    m.sub_path.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            vec![
                (
                    "config-0".into(),
                    "/skywalking/config/application.yml".into(),
                    "application.yml".into()
                ),
                (
                    "config-1".into(),
                    "/skywalking/config/otel-rules/custom/app.yaml".into(),
                    "app.yaml".into()
                ),
                (
                    "config-1".into(),
                    "/skywalking/config/otel-rules/custom/db.yaml".into(),
                    "db.yaml".into()
                ),
            ],
            "a ConfigMap that does not exist yet is not mounted (the pod would not start)"
        );
        let volumes = template.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        assert_eq!(volumes[1].config_map.as_ref().unwrap().name, "rules");
        let hash = |objects: &OapObjects| {
            crate::build::podspec::template_annotation(&objects.deployment, CONFIG_HASH_ANNOTATION)
                .unwrap()
        };
        assert_eq!(hash(&objects), hash(&build(&oap, &inputs("r1"))));
        assert_ne!(
            hash(&objects),
            hash(&build(&oap, &inputs("r2"))),
            "edited rules roll the pods"
        );
    }

    #[test]
    fn dynamic_configuration_is_a_configmap_oap_selects_and_may_read() {
        let objects = build_plain(&oap(serde_json::json!({
            "version": "10.2.0",
            "dynamicConfig": {"periodSeconds": 20,
                              "data": {"agent-analyzer.default.slowDBAccessThreshold": "default:200"}}
        })));
        let config_map = objects.dynamic_config.as_ref().unwrap();
        assert_eq!(
            config_map.metadata.name.as_deref(),
            Some("skywalking-oap-dynamic-config")
        );
        assert!(config_map.metadata.is_controlled_by("uid-oap"));
        // OAP's provider selects ConfigMaps with SW_CLUSTER_K8S_LABEL, the pod selector.
        let labels = config_map.metadata.labels.as_ref().unwrap();
        for (k, v) in pod_selector("skywalking") {
            assert_eq!(labels.get(&k), Some(&v));
        }
        assert_eq!(
            config_map.data.as_ref().unwrap()["agent-analyzer.default.slowDBAccessThreshold"],
            "default:200"
        );
        let env = env_of(&objects);
        assert_eq!(
            value(&env, "SW_CONFIGURATION").unwrap().value.as_deref(),
            Some("k8s-configmap")
        );
        assert_eq!(
            value(&env, "SW_CONFIG_CONFIGMAP_PERIOD")
                .unwrap()
                .value
                .as_deref(),
            Some("20")
        );
        let rules = objects.role.rules.as_ref().unwrap();
        assert!(rules.iter().any(|r| {
            r.resources.as_deref() == Some(&["configmaps".to_string()][..])
                && r.verbs
                    .iter()
                    .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
        }));
        assert!(
            build_plain(&oap(serde_json::json!({"version": "10.2.0"})))
                .dynamic_config
                .is_none()
        );
    }

    #[test]
    fn a_banyandb_reference_sets_the_targets_once_they_are_known() {
        let oap = oap(serde_json::json!({
            "version": "10.2.0", "storage": {"type": "banyandb", "banyanDBRef": {"name": "storage"}}
        }));
        let unknown = env_of(&build_plain(&oap));
        assert_eq!(
            value(&unknown, "SW_STORAGE").unwrap().value.as_deref(),
            Some("banyandb")
        );
        assert!(value(&unknown, "SW_STORAGE_BANYANDB_TARGETS").is_none());
        let known = env_of(&build(
            &oap,
            &OapInputs {
                banyandb_targets: Some("storage-banyandb-grpc.observability.svc:17912".into()),
                ..OapInputs::default()
            },
        ));
        assert_eq!(
            value(&known, "SW_STORAGE_BANYANDB_TARGETS")
                .unwrap()
                .value
                .as_deref(),
            Some("storage-banyandb-grpc.observability.svc:17912")
        );
    }
}
