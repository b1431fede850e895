//! The objects an `OAPServer` is made of.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, GRPCAction, ObjectFieldSelector, Probe,
    SecretKeySelector, Service, ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skylift_api::common::ServiceAddress;
use skylift_api::constants::{default_oap_image, ports};
use skylift_api::oapserver::{OAPStorage, StorageType};
use skylift_api::{OAPServer, ServiceOptions};

use super::meta::{Labels, child_meta, selector_string};
use super::podspec::{Hardening, PodParts, deployment_spec, pod_template};
use super::rbac::{read_rule, workload_identity};

/// `app.kubernetes.io/name` of OAP pods.
pub const OAP_APP_NAME: &str = "oap-server";

/// Meter rule files OAP activates: its stock set plus `satellite`, whose rules turn the
/// proxies' `sw_stl_*` meters into `satellite_service_grpc_connect_count`.
pub const METER_ANALYZER_ACTIVE_FILES: &str = "datasource,threadpool,satellite,go-runtime,python-runtime,continuous-profiling,java-agent,go-agent";

/// Every object of one OAPServer.
#[derive(Clone, Debug)]
pub struct OapObjects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
    pub service: Service,
    pub headless_service: Service,
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
    Labels {
        name: OAP_APP_NAME,
        instance: oap_name.to_string(),
        component: "oap",
        version: String::new(),
    }
    .selector()
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

pub fn build(oap: &OAPServer) -> OapObjects {
    let name = oap.metadata.name.clone().unwrap_or_default();
    let labels = labels(oap);
    let workload = workload_name(&name);
    let meta = |object_name: String| child_meta(oap, object_name, labels.all());

    // OAP's kubernetes coordinator lists and watches the pods of its own cluster in its own
    // namespace; a namespaced Role named after the resource is all it needs.
    let identity = workload_identity(meta(workload.clone()), read_rule("pods", None));

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
        env: Some(env(oap, &name)),
        resources: oap.spec.resources.clone(),
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
            service_account: workload.clone(),
            container,
            annotations: BTreeMap::new(),
            hardening: Hardening::ThirdPartyImage,
            termination_grace_period_seconds: 60,
            volumes: Vec::new(),
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
    }
}

/// OAP's environment: skylift's settings, then the storage, then the user's `env`, where a
/// user variable replaces one of ours of the same name in place.
fn env(oap: &OAPServer, name: &str) -> Vec<EnvVar> {
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
        env.extend(storage_env(storage));
    }
    for user in &oap.spec.env {
        match env.iter_mut().find(|e| e.name == user.name) {
            Some(existing) => *existing = user.clone(),
            None => env.push(user.clone()),
        }
    }
    env
}

fn storage_env(storage: &OAPStorage) -> Vec<EnvVar> {
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
    if let Some(address) = &storage.address {
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
        let objects = build(&oap(
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
        let objects = build(&oap(serde_json::json!({
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
        let objects = build(&oap(serde_json::json!({
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
        let objects = build(&oap(serde_json::json!({"version": "10.2.0"})));
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
        let objects = build(&oap(serde_json::json!({
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
        let objects = build(&oap(serde_json::json!({
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
}
