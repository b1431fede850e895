//! The objects a `UI` is made of: a Deployment of SkyWalking's web UI pointed at OAP's
//! HTTP endpoint, its Service, and an optional Ingress.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe, Service};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skylift_api::UI;
use skylift_api::constants::ports;

use super::meta::{Labels, child_meta, pod_selector_of};
use super::oapserver::{container_port, plain, service_for, workload_name as oap_workload};
use super::podspec::{Hardening, PodParts, deployment_spec, pod_template};

/// `app.kubernetes.io/name` of UI pods.
pub const UI_APP_NAME: &str = "skywalking-ui";
/// The port the UI listens on in its container.
pub const UI_PORT: i32 = 8080;
/// The port of the UI Service.
pub const UI_SERVICE_PORT: i32 = 80;

/// Every object of one UI.
#[derive(Clone, Debug)]
pub struct UiObjects {
    pub deployment: Deployment,
    pub service: Service,
    /// `None`: no Ingress is wanted (one left from before is deleted).
    pub ingress: Option<Ingress>,
}

/// Name of the UI's Deployment, Service and Ingress.
pub fn workload_name(ui_name: &str) -> String {
    format!("{ui_name}-ui")
}

fn labels(ui: &UI) -> Labels {
    Labels {
        name: UI_APP_NAME,
        instance: ui.metadata.name.clone().unwrap_or_default(),
        component: "ui",
        version: ui.spec.version.clone(),
    }
}

/// The OAP HTTP endpoint the UI queries: the referenced OAPServer's Service, or the URL.
pub fn oap_url(ui: &UI) -> String {
    match (&ui.spec.oap.oap_server_ref, &ui.spec.oap.url) {
        (Some(oap), _) => format!(
            "http://{}.{}.svc:{}",
            oap_workload(&oap.name),
            ui.metadata.namespace.as_deref().unwrap_or("default"),
            ports::OAP_HTTP
        ),
        (None, Some(url)) => url.trim_end_matches('/').to_string(),
        (None, None) => String::new(),
    }
}

/// Where a browser reaches the UI: the Ingress host when there is one, else the Service.
pub fn url(ui: &UI) -> String {
    match &ui.spec.ingress {
        Some(ingress) => {
            let scheme = if ingress.tls_secret_name.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", ingress.host)
        }
        None => format!(
            "http://{}.{}.svc",
            workload_name(ui.metadata.name.as_deref().unwrap_or_default()),
            ui.metadata.namespace.as_deref().unwrap_or("default")
        ),
    }
}

pub fn pod_selector(ui_name: &str) -> BTreeMap<String, String> {
    pod_selector_of(UI_APP_NAME, ui_name)
}

pub fn build(ui: &UI) -> UiObjects {
    let name = ui.metadata.name.clone().unwrap_or_default();
    let labels = labels(ui);
    let workload = workload_name(&name);
    let meta = |object_name: String| child_meta(ui, object_name, labels.all());
    let probe = |failure_threshold| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    };
    let container = Container {
        name: "ui".into(),
        image: Some(
            ui.spec
                .image
                .clone()
                .unwrap_or_else(|| format!("apache/skywalking-ui:{}", ui.spec.version)),
        ),
        ports: Some(vec![container_port("http", UI_PORT)]),
        // The booster UI's server proxies GraphQL to `SW_OAP_ADDRESS`.
        env: Some(vec![
            plain("SW_OAP_ADDRESS", &oap_url(ui)),
            plain("SW_SERVER_PORT", &UI_PORT.to_string()),
        ]),
        resources: ui.spec.resources.clone(),
        readiness_probe: Some(probe(3)),
        liveness_probe: Some(probe(6)),
        ..Container::default()
    };
    let template = pod_template(
        PodParts {
            labels: labels.clone(),
            service_account: None,
            container,
            annotations: BTreeMap::new(),
            hardening: Hardening::ThirdPartyImage,
            termination_grace_period_seconds: 30,
            volumes: Vec::new(),
        },
        ui.spec.pod_template.as_ref(),
    );
    let deployment = Deployment {
        metadata: meta(workload.clone()),
        spec: Some(deployment_spec(
            ui.spec.replicas,
            labels.selector(),
            template,
        )),
        status: None,
    };
    let mut service_port = super::oapserver::service_port("http", UI_SERVICE_PORT);
    service_port.app_protocol = Some("http".into());
    let service = service_for(
        meta(workload.clone()),
        ui.spec.service.as_ref(),
        labels.selector(),
        vec![service_port],
    );
    let ingress = ui.spec.ingress.as_ref().map(|options| {
        let mut metadata = meta(workload.clone());
        if !options.annotations.is_empty() {
            metadata.annotations = Some(options.annotations.clone());
        }
        Ingress {
            metadata,
            spec: Some(IngressSpec {
                ingress_class_name: options.class_name.clone(),
                rules: Some(vec![IngressRule {
                    host: Some(options.host.clone()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".into()),
                            path_type: "Prefix".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: workload.clone(),
                                    port: Some(ServiceBackendPort {
                                        name: Some("http".into()),
                                        number: None,
                                    }),
                                }),
                                resource: None,
                            },
                        }],
                    }),
                }]),
                tls: options.tls_secret_name.as_ref().map(|secret| {
                    vec![IngressTLS {
                        hosts: Some(vec![options.host.clone()]),
                        secret_name: Some(secret.clone()),
                    }]
                }),
                ..IngressSpec::default()
            }),
            status: None,
        }
    });
    UiObjects {
        deployment,
        service,
        ingress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::ObjectMetaExt;
    use kube::api::ObjectMeta;

    fn ui(spec: serde_json::Value) -> UI {
        let mut ui = UI::new("console", serde_json::from_value(spec).unwrap());
        ui.metadata = ObjectMeta {
            name: Some("console".into()),
            namespace: Some("obs".into()),
            uid: Some("uid-ui".into()),
            ..ObjectMeta::default()
        };
        ui
    }

    fn env(objects: &UiObjects, name: &str) -> Option<String> {
        objects
            .deployment
            .spec
            .as_ref()?
            .template
            .spec
            .as_ref()?
            .containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    #[test]
    fn the_ui_queries_the_referenced_oapservers_http_service() {
        let objects = build(&ui(serde_json::json!({
            "version": "10.2.0", "replicas": 2, "oap": {"oapServerRef": {"name": "skywalking"}}
        })));
        assert_eq!(
            env(&objects, "SW_OAP_ADDRESS").as_deref(),
            Some("http://skywalking-oap.obs.svc:12800")
        );
        let spec = objects.deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("apache/skywalking-ui:10.2.0")
        );
        // The UI never calls the API server: no token in its pods.
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert!(objects.ingress.is_none());
        let port = &objects
            .service
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (80, Some(IntOrString::String("http".into())))
        );
        for meta in [&objects.deployment.metadata, &objects.service.metadata] {
            assert!(meta.is_controlled_by("uid-ui"));
        }
        assert_eq!(
            url(&ui(
                serde_json::json!({"version": "10.2.0", "oap": {"url": "http://x:12800"}})
            )),
            "http://console-ui.obs.svc"
        );
    }

    #[test]
    fn a_url_backend_and_an_ingress_with_tls() {
        let objects = build(&ui(serde_json::json!({
            "version": "10.2.0", "oap": {"url": "https://oap.example.com:12800/"},
            "ingress": {"host": "sw.example.com", "className": "nginx", "tlsSecretName": "sw-tls",
                        "annotations": {"nginx.ingress.kubernetes.io/auth-type": "basic"}}
        })));
        assert_eq!(
            env(&objects, "SW_OAP_ADDRESS").as_deref(),
            Some("https://oap.example.com:12800")
        );
        let ingress = objects.ingress.unwrap();
        assert!(ingress.metadata.is_controlled_by("uid-ui"));
        let spec = ingress.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rule = &spec.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("sw.example.com"));
        let backend = rule.http.as_ref().unwrap().paths[0]
            .backend
            .service
            .clone()
            .unwrap();
        assert_eq!(backend.name, "console-ui");
        assert_eq!(spec.tls.unwrap()[0].secret_name.as_deref(), Some("sw-tls"));
        assert_eq!(
            url(&ui(
                serde_json::json!({"version": "1", "oap": {"url": "http://x"},
                "ingress": {"host": "sw.example.com", "tlsSecretName": "t"}})
            )),
            "https://sw.example.com"
        );
    }
}
