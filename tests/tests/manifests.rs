//! Everything a user installs reads back as the typed Kubernetes objects, with no field
//! the types do not know, so a misspelt setting is an error here rather than something
//! the API server drops in silence: `manifests/`, `crds/`, the chart rendered with its
//! defaults and with every option, and `examples/`. Every image is the one the operator
//! defaults to. The examples are also created on the API-server double, which enforces
//! the CRDs' schemas and CEL rules as kube-apiserver does.

use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use skylift_api::{BanyanDB, OAPServer, OTelCollector, Proxy, Rover, Satellite, SwAgent, UI};
use skylift_e2e::{
    CHART_WITH_EVERY_OPTION, render_chart, render_chart_or_refusal, repo_file, repo_path,
    yaml_documents,
};

/// Paths of fields in `original` that did not survive the typed round trip.
fn unknown_fields(original: &Value, typed: &Value, path: &str, found: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(fields), Value::Object(kept)) => {
            for (key, value) in fields {
                let here = format!("{path}.{key}");
                match kept.get(key) {
                    Some(inner) => unknown_fields(value, inner, &here, found),
                    None => found.push(here),
                }
            }
        }
        (Value::Array(items), Value::Array(kept)) => {
            for (i, (item, inner)) in items.iter().zip(kept).enumerate() {
                unknown_fields(item, inner, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(document: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(document.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).expect("typed objects serialize");
    let mut unknown = Vec::new();
    unknown_fields(document, &back, "", &mut unknown);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!("unknown fields {unknown:?}"))
    }
}

/// Reads `document` as the type its apiVersion and kind name.
fn check_typed(document: &Value) -> Result<(), String> {
    let api_version = document["apiVersion"].as_str().unwrap_or_default();
    let kind = document["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<Namespace>(document),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(document),
        ("v1", "Service") => round_trip::<Service>(document),
        ("v1", "Secret") => round_trip::<Secret>(document),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(document),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(document),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(document),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(document),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(document)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(document),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(document),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(document)
        }
        ("apiregistration.k8s.io/v1", "APIService") => round_trip::<APIService>(document),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => {
            round_trip::<HorizontalPodAutoscaler>(document)
        }
        ("skylift.io/v1alpha1", "OAPServer") => round_trip::<OAPServer>(document),
        ("skylift.io/v1alpha1", "Satellite") => round_trip::<Satellite>(document),
        ("skylift.io/v1alpha1", "Proxy") => round_trip::<Proxy>(document),
        ("skylift.io/v1alpha1", "UI") => round_trip::<UI>(document),
        ("skylift.io/v1alpha1", "BanyanDB") => round_trip::<BanyanDB>(document),
        ("skylift.io/v1alpha1", "OTelCollector") => round_trip::<OTelCollector>(document),
        ("skylift.io/v1alpha1", "Rover") => round_trip::<Rover>(document),
        ("skylift.io/v1alpha1", "SwAgent") => round_trip::<SwAgent>(document),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            round_trip::<MutatingWebhookConfiguration>(document)
        }
        _ => Err(format!("no type for {api_version} {kind}")),
    }
}

/// Checks every document; returns them.
fn check_all(text: &str, origin: &str) -> Vec<Value> {
    let documents = yaml_documents(text, origin);
    assert!(!documents.is_empty(), "{origin} holds no object");
    let problems: Vec<String> = documents
        .iter()
        .filter_map(|d| {
            check_typed(d).err().map(|e| {
                format!(
                    "{origin}: {} {}: {e}",
                    d["kind"].as_str().unwrap_or("?"),
                    d["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    documents
}

fn images(documents: &[Value]) -> Vec<String> {
    documents
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["image"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_bundles_and_crds_are_typed_objects_running_the_operators_default_image() {
    let image = skylift_api::constants::default_proxy_image();
    let operator = check_all(
        &repo_file("manifests/operator-bundle.yaml"),
        "operator-bundle.yaml",
    );
    let adapter = check_all(
        &repo_file("manifests/adapter-bundle.yaml"),
        "adapter-bundle.yaml",
    );
    check_all(&repo_file("crds/skylift.io.yaml"), "crds/skylift.io.yaml");
    for (bundle, documents) in [("operator", &operator), ("adapter", &adapter)] {
        let images = images(documents);
        assert!(!images.is_empty(), "{bundle}: no workload");
        assert!(images.iter().all(|i| *i == image), "{bundle}: {images:?}");
    }
    let kinds = |documents: &[Value]| -> Vec<String> {
        documents
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let operator_kinds = kinds(&operator);
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Deployment",
    ] {
        assert!(
            operator_kinds.iter().any(|k| k == kind),
            "operator bundle lacks a {kind}"
        );
    }
    // Pools run the operator's own image (a mirror set in the chart reaches them too).
    let operator_args = operator
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["args"].clone())
        .unwrap();
    assert!(
        operator_args
            .as_array()
            .unwrap()
            .contains(&Value::String(format!("--proxy-image={image}"))),
        "{operator_args}"
    );
    // The walk-through applies the adapter after the operator: no CRD twice, no operator.
    assert!(
        !kinds(&adapter)
            .iter()
            .any(|k| k == "CustomResourceDefinition")
    );
    let apiservice = adapter.iter().find(|d| d["kind"] == "APIService").unwrap();
    assert!(apiservice["spec"].get("insecureSkipTLSVerify").is_none());
    assert!(
        apiservice["spec"].get("caBundle").is_none(),
        "the adapter writes it"
    );
    // A Secret's type never changes: the serving-certificate Secrets are declared with the
    // type the adapter and the operator give them when they make them themselves, or the
    // next `kubectl apply` after such a re-creation is refused.
    for (documents, name) in [
        (&operator, "skylift-operator-webhook-tls"),
        (&adapter, "skylift-adapter-tls"),
    ] {
        let secret = documents
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Secret {name}"));
        assert_eq!(
            secret["type"],
            skylift_certs::bootstrap::SECRET_TYPE,
            "Secret {name}"
        );
    }
}

#[test]
fn the_chart_renders_typed_objects_with_defaults_and_with_every_option() {
    let image = skylift_api::constants::default_proxy_image();
    let defaults = check_all(&render_chart(&[]), "helm template (defaults)");
    assert_eq!(images(&defaults), [image.clone(), image.clone()]);
    let everything = check_all(
        &render_chart(CHART_WITH_EVERY_OPTION),
        "helm template (every option)",
    );
    // Watching one namespace: a Role there instead of a ClusterRole.
    let operator_role = everything
        .iter()
        .find(|d| d["metadata"]["name"] == "skylift-operator" && d["kind"] == "Role")
        .expect("a namespaced Role");
    assert_eq!(operator_role["metadata"]["namespace"], "shop");
    assert!(
        !everything
            .iter()
            .any(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "skylift-operator")
    );
    // The operator keeps the injector's namespaceSelector (the namespaces with a SwAgent);
    // the chart declares none, so applying it again never resets the operator's.
    let injector = everything
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("the agent injector");
    let webhook = &injector["webhooks"][0];
    assert!(webhook.get("namespaceSelector").is_none(), "{webhook}");
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert!(
        webhook["clientConfig"].get("caBundle").is_none(),
        "the operator writes it"
    );
    assert_eq!(
        webhook["rules"][0]["operations"],
        serde_json::json!(["CREATE"])
    );

    // Rovers allowed in one namespace: their ClusterRole, the right to bind it, and the
    // operator told where.
    let operator_everything = everything
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "skylift-operator")
        .unwrap();
    assert!(
        operator_everything["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("--rover-namespaces=observability"))
    );
    for role in ["skylift-rover", "skylift-operator-rover"] {
        assert!(
            everything
                .iter()
                .any(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == role),
            "{role}"
        );
    }

    // Without injection, and by default without Rovers: no webhook, no cluster-wide
    // binding rights, and the operator told so.
    let lean = check_all(
        &render_chart(&["operator.agentInjection.enabled=false"]),
        "helm template (no injection, no Rover)",
    );
    for (kind, name) in [
        ("MutatingWebhookConfiguration", "skylift-agent-injector"),
        ("ClusterRole", "skylift-rover"),
        ("ClusterRole", "skylift-operator-rover"),
        ("Secret", "skylift-operator-webhook-tls"),
    ] {
        assert!(
            !lean
                .iter()
                .any(|d| d["kind"] == kind && d["metadata"]["name"] == name),
            "{kind} {name}"
        );
    }
    let operator = lean
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "skylift-operator")
        .unwrap();
    let operator_args = &operator["spec"]["template"]["spec"]["containers"][0]["args"];
    for flag in ["--webhook=false", "--rover-cluster-role="] {
        assert!(
            operator_args
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(flag)),
            "{operator_args}"
        );
    }

    let adapter = everything
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "skylift-adapter")
        .unwrap();
    let args = adapter["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(
        args.iter()
            .any(|a| a.as_str().unwrap().starts_with("--expressions="))
    );
    let expressions = everything
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"] == "skylift-adapter-expressions"
        })
        .unwrap();
    let expressions: serde_json::Value =
        serde_yaml::from_str(expressions["data"]["expressions.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(expressions["p95"], "latest(service_percentile{p='95'})");
    // A federated expression keeps its form.
    assert_eq!(
        expressions["cpm-everywhere"],
        serde_json::json!({"expression": "latest(service_cpm)", "oaps": ["default", "central"],
                           "combine": "sum", "unreachable": "partial", "staleness": "2m"})
    );
}

#[test]
fn a_misspelt_or_invalid_chart_value_is_refused_with_its_name() {
    for (setting, named) in [
        (
            "adapter.oapUrll=http://oap:12800/graphql",
            "'oapUrll' not allowed",
        ),
        ("operator.logFormat=yaml", "/operator/logFormat"),
        ("adapter.refreshInterval=soon", "/adapter/refreshInterval"),
        ("operator.replicas=0", "/operator/replicas"),
    ] {
        let refusal = render_chart_or_refusal(&[setting]).expect_err(setting);
        assert!(refusal.contains(named), "{setting}: {refusal}");
    }
}

#[tokio::test]
async fn the_examples_are_typed_and_accepted_by_the_crd_schemas() {
    use kube::api::{Api, DynamicObject, PostParams};
    let server = skylift_testkit::apiserver::ApiServer::start_with_skylift_crds()
        .await
        .unwrap();
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_path("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "{examples:?}");
    let discovery = kube::Discovery::new(server.client()).run().await.unwrap();
    for namespace in ["observability", "shop", "central"] {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).unwrap();
        let _ = Api::<Namespace>::all(server.client())
            .create(&PostParams::default(), &ns)
            .await;
    }
    for path in examples {
        let origin = path.file_name().unwrap().to_string_lossy().to_string();
        for document in check_all(&std::fs::read_to_string(&path).unwrap(), &origin) {
            if document["kind"] == "Namespace" {
                continue;
            }
            let object: DynamicObject = serde_json::from_value(document.clone()).unwrap();
            let gvk =
                kube::api::GroupVersionKind::try_from(object.types.as_ref().unwrap()).unwrap();
            let (resource, _) = discovery.resolve_gvk(&gvk).unwrap();
            let api: Api<DynamicObject> = Api::namespaced_with(
                server.client(),
                document["metadata"]["namespace"].as_str().unwrap(),
                &resource,
            );
            if let Err(err) = api.create(&PostParams::default(), &object).await {
                panic!("{origin}: {} refused: {err}", gvk.kind);
            }
        }
    }
}
