//! The rest of a SkyWalking deployment through the real controllers and the API-server
//! double: UI, BanyanDB under an OAPServer, OAP's configuration files and dynamic
//! configuration, the OpenTelemetry collector, Rover, and agent injection end to end
//! (AdmissionReview in, JSON Patch out, applied to the pod by the API server).

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skylift_api::{BanyanDB, OAPServer, OTelCollector, Rover, SwAgent, UI};
use skylift_operator::metrics::Metrics;
use skylift_operator::run::Settings;
use support::{Cluster, NS, condition, eventually, is_ready};

fn resource(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "skylift.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

fn env(deployment: &Deployment, name: &str) -> Option<String> {
    deployment.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

fn template_annotation(deployment: &Deployment, key: &str) -> Option<String> {
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

#[tokio::test]
async fn a_ui_fronts_its_oapserver_and_its_ingress_follows_the_spec() {
    let cluster = Cluster::start().await;
    cluster
        .create::<OAPServer>(resource(
            "OAPServer",
            "skywalking",
            json!({"version": "10.2.0"}),
        ))
        .await;
    cluster
        .create::<UI>(resource(
            "UI",
            "console",
            json!({
                "version": "10.2.0", "replicas": 2, "oap": {"oapServerRef": {"name": "skywalking"}},
                "ingress": {"host": "sw.example.com"}
            }),
        ))
        .await;
    let deployment: Deployment = eventually("the UI Deployment", || {
        cluster.get::<Deployment>("console-ui")
    })
    .await;
    assert_eq!(
        env(&deployment, "SW_OAP_ADDRESS").as_deref(),
        Some("http://skywalking-oap.observability.svc:12800")
    );
    eventually("the UI Service", || cluster.get::<Service>("console-ui")).await;
    eventually("the UI Ingress", || cluster.get::<Ingress>("console-ui")).await;
    cluster.deployment_ready("console-ui").await;
    let ui: UI = eventually("the UI ready, with its URL", || async {
        let ui = cluster.get::<UI>("console").await?;
        let status = ui.status.as_ref()?;
        (status.ready_replicas == 2 && status.url.as_deref() == Some("http://sw.example.com"))
            .then_some(ui)
    })
    .await;
    assert!(is_ready(&ui.status.unwrap().conditions));
    cluster
        .merge::<UI>("console", &json!({"spec": {"ingress": null}}))
        .await;
    eventually("the Ingress removed with the field", || async {
        cluster
            .get::<Ingress>("console-ui")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // `kubectl scale ui console --replicas=3`
    cluster
        .api::<UI>()
        .patch_scale(
            "console",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    eventually("the Deployment scaled through /scale", || async {
        let d = cluster.get::<Deployment>("console-ui").await?;
        (d.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn an_oapserver_on_a_banyandb_starts_once_the_banyandb_answers() {
    let cluster = Cluster::start().await;
    cluster
        .create::<OAPServer>(resource("OAPServer", "skywalking", json!({
            "version": "10.2.0", "storage": {"type": "banyandb", "banyanDBRef": {"name": "storage"}}
        })))
        .await;
    eventually("OAP waiting for its BanyanDB", || async {
        let oap = cluster.get::<OAPServer>("skywalking").await?;
        let degraded = condition(&oap.status.as_ref()?.conditions, "Degraded")?;
        (degraded.reason == "BanyanDBNotFound").then_some(())
    })
    .await;
    assert!(
        cluster.get::<Deployment>("skywalking-oap").await.is_none(),
        "no OAP without its storage"
    );

    cluster
        .create::<BanyanDB>(resource("BanyanDB", "storage", json!({"version": "0.9.0"})))
        .await;
    let set: StatefulSet = eventually("the BanyanDB StatefulSet", || {
        cluster.get::<StatefulSet>("storage-banyandb")
    })
    .await;
    assert_eq!(
        set.spec.unwrap().volume_claim_templates.unwrap()[0]
            .metadata
            .name
            .as_deref(),
        Some("data")
    );
    for service in ["storage-banyandb-grpc", "storage-banyandb-http"] {
        eventually(service, || cluster.get::<Service>(service)).await;
    }
    // An address, but no ready replica yet: OAP still waits (it would fail against it).
    eventually("OAP waiting for a ready BanyanDB", || async {
        let oap = cluster.get::<OAPServer>("skywalking").await?;
        condition(&oap.status?.conditions, "Degraded")
            .filter(|c| c.reason == "BanyanDBNotReady")
            .map(|_| ())
    })
    .await;
    assert!(cluster.get::<Deployment>("skywalking-oap").await.is_none());
    cluster.stateful_set_ready("storage-banyandb").await;
    let deployment: Deployment = eventually("OAP started against the BanyanDB", || {
        cluster.get::<Deployment>("skywalking-oap")
    })
    .await;
    assert_eq!(env(&deployment, "SW_STORAGE").as_deref(), Some("banyandb"));
    assert_eq!(
        env(&deployment, "SW_STORAGE_BANYANDB_TARGETS").as_deref(),
        Some("storage-banyandb-grpc.observability.svc:17912")
    );
    cluster.stop().await;
}

#[tokio::test]
async fn oap_configuration_files_roll_the_pods_and_dynamic_configuration_is_served() {
    let cluster = Cluster::start().await;
    cluster
        .create::<ConfigMap>(
            json!({"metadata": {"name": "rules"}, "data": {"app.yaml": "metricsRules: []"}}),
        )
        .await;
    cluster
        .create::<OAPServer>(resource(
            "OAPServer",
            "skywalking",
            json!({
                "version": "10.2.0",
                "config": [{"configMapName": "rules", "path": "otel-rules/custom"}],
                "dynamicConfig": {"data": {"core.default.apdexThreshold": "default: 500"}}
            }),
        ))
        .await;
    let first: Deployment = eventually("OAP with its files", || {
        cluster.get::<Deployment>("skywalking-oap")
    })
    .await;
    let mounts = first
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .volume_mounts
        .clone()
        .unwrap();
    assert_eq!(
        mounts[0].mount_path,
        "/skywalking/config/otel-rules/custom/app.yaml"
    );
    let hash = template_annotation(&first, "skylift.io/config-hash").unwrap();
    let dynamic: ConfigMap = eventually("the dynamic configuration", || {
        cluster.get::<ConfigMap>("skywalking-oap-dynamic-config")
    })
    .await;
    assert_eq!(
        dynamic.data.unwrap()["core.default.apdexThreshold"],
        "default: 500"
    );
    assert_eq!(
        env(&first, "SW_CONFIGURATION").as_deref(),
        Some("k8s-configmap")
    );

    cluster
        .merge::<ConfigMap>(
            "rules",
            &json!({"data": {"app.yaml": "metricsRules: [{name: x}]"}}),
        )
        .await;
    eventually("the pods roll on the edited rules", || async {
        let d = cluster.get::<Deployment>("skywalking-oap").await?;
        (template_annotation(&d, "skylift.io/config-hash")? != hash).then_some(())
    })
    .await;
    cluster
        .merge::<OAPServer>("skywalking", &json!({"spec": {"dynamicConfig": null}}))
        .await;
    eventually(
        "the dynamic configuration removed with the field",
        || async {
            cluster
                .get::<ConfigMap>("skywalking-oap-dynamic-config")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_collector_scrapes_its_namespace_into_the_oapserver() {
    let cluster = Cluster::start().await;
    cluster
        .create::<OTelCollector>(resource(
            "OTelCollector",
            "metrics",
            json!({
                "version": "0.115.0", "backend": {"oapServerRef": {"name": "skywalking"}},
                "scrape": [{"name": "mysql-monitoring", "matchLabels": {"app": "mysqld-exporter"}}]
            }),
        ))
        .await;
    let config: ConfigMap = eventually("the generated configuration", || {
        cluster.get::<ConfigMap>("metrics-otelcol")
    })
    .await;
    let text = &config.data.unwrap()["config.yaml"];
    assert!(
        text.contains("skywalking-oap.observability.svc:11800")
            && text.contains("mysql-monitoring"),
        "{text}"
    );
    eventually("the collector Deployment", || {
        cluster.get::<Deployment>("metrics-otelcol")
    })
    .await;
    eventually("OAPServerNotFound until it exists", || async {
        let status = cluster.get::<OTelCollector>("metrics").await?.status?;
        (condition(&status.conditions, "Degraded")?.reason == "OAPServerNotFound").then_some(())
    })
    .await;
    cluster
        .create::<OAPServer>(resource(
            "OAPServer",
            "skywalking",
            json!({"version": "10.2.0"}),
        ))
        .await;
    eventually("the problem clears once the OAPServer exists", || async {
        let status = cluster.get::<OTelCollector>("metrics").await?.status?;
        (condition(&status.conditions, "Degraded")?.status == "False").then_some(())
    })
    .await;
    cluster.stop().await;
}

/// The operator of an administrator who lets Rovers run in `observability`.
async fn rovers_allowed() -> Cluster {
    Cluster::start_with(Settings {
        rover_namespaces: vec![NS.into()],
        ..Settings::default()
    })
    .await
}

#[tokio::test]
async fn a_rover_runs_nothing_unless_its_namespace_is_allowed_and_says_so() {
    // By default no namespace is: a Rover is root on every node.
    let cluster = Cluster::start().await;
    cluster
        .create::<Rover>(resource(
            "Rover",
            "ebpf",
            json!({"version": "0.7.0", "backend": {"address": "oap:11800"}}),
        ))
        .await;
    let degraded = eventually("the Rover reporting why it does not run", || async {
        let status = cluster.get::<Rover>("ebpf").await?.status?;
        condition(&status.conditions, "Degraded")
            .filter(|c| c.reason == "NamespaceNotAllowed")
            .cloned()
    })
    .await;
    assert!(
        degraded.message.contains("--rover-namespaces")
            && degraded.message.contains("root on every node"),
        "{}",
        degraded.message
    );
    let rover = cluster.get::<Rover>("ebpf").await.unwrap();
    assert_eq!(rover.metadata.finalizers, None);
    assert!(cluster.get::<DaemonSet>("ebpf-rover").await.is_none());
    let bindings: Api<ClusterRoleBinding> = Api::all(cluster.client.clone());
    assert!(
        bindings
            .get_opt("skylift-rover-observability-ebpf")
            .await
            .unwrap()
            .is_none()
    );
    // Deleted, it goes at once (no finalizer holds it).
    cluster
        .api::<Rover>()
        .delete("ebpf", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Rover gone", || async {
        cluster.get::<Rover>("ebpf").await.is_none().then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_rover_gets_its_cluster_binding_and_takes_it_away_when_deleted() {
    let cluster = rovers_allowed().await;
    cluster
        .create::<Rover>(resource(
            "Rover",
            "ebpf",
            json!({"version": "0.7.0", "backend": {"address": "oap:11800"}}),
        ))
        .await;
    let set: DaemonSet = eventually("the Rover DaemonSet", || {
        cluster.get::<DaemonSet>("ebpf-rover")
    })
    .await;
    assert_eq!(
        set.spec.unwrap().template.spec.unwrap().host_pid,
        Some(true)
    );
    let bindings: Api<ClusterRoleBinding> = Api::all(cluster.client.clone());
    let name = "skylift-rover-observability-ebpf";
    eventually("the ClusterRoleBinding", || async {
        bindings.get_opt(name).await.ok()?
    })
    .await;
    let rover = cluster.get::<Rover>("ebpf").await.unwrap();
    assert!(
        rover
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"skylift.io/rover-cluster-binding".to_string())
    );

    cluster
        .api::<Rover>()
        .delete("ebpf", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the binding removed, then the Rover", || async {
        let binding_gone = bindings.get_opt(name).await.ok()?.is_none();
        let rover_gone = cluster.get::<Rover>("ebpf").await.is_none();
        (binding_gone && rover_gone).then_some(())
    })
    .await;
    cluster.stop().await;
}

/// The operator's webhook served over HTTPS with its self-managed certificate, whose CA it
/// writes into the MutatingWebhookConfiguration the double calls.
async fn start_webhook(
    cluster: &Cluster,
    metrics: Arc<Metrics>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "skylift-agent-injector"},
        "webhooks": [{
            "name": "inject.agent.skylift.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://localhost:{port}/inject-agent")},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}
        }]
    }))
    .unwrap();
    configurations
        .create(&PostParams::default(), &configuration)
        .await
        .unwrap();
    let tls = skylift_certs::tls::TlsState::new();
    let mut settings = skylift_certs::bootstrap::Settings::new(
        "skylift-operator-webhook",
        NS,
        (NS.into(), "webhook-tls".into()),
    );
    settings.dns_names = vec!["localhost".into()];
    settings.ca_bundle_for = Some(skylift_certs::bootstrap::CaBundleTarget::MutatingWebhook(
        "skylift-agent-injector".into(),
    ));
    let bootstrap = tokio::spawn(skylift_certs::bootstrap::run(
        cluster.client.clone(),
        settings,
        tls.clone(),
    ));
    let (caches, watches) = skylift_operator::webhook::Caches::start(&cluster.client, None);
    let server = tokio::spawn(skylift_certs::serve::serve(
        listener,
        tls,
        skylift_operator::webhook::router(caches, metrics),
    ));
    eventually("the caBundle written", || async {
        let c = configurations.get("skylift-agent-injector").await.ok()?;
        c.webhooks?[0].client_config.ca_bundle.as_ref().map(|_| ())
    })
    .await;
    let mut tasks = vec![server, bootstrap];
    tasks.extend(watches);
    tasks
}

fn app_pod(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "app", "image": "shop/app:1"}]}})
}

#[tokio::test]
async fn pods_get_their_agent_from_the_webhook_once_and_an_outage_never_blocks_them() {
    let cluster = Cluster::start().await;
    let metrics = Arc::new(Metrics::default());
    let webhook = start_webhook(&cluster, metrics.clone()).await;
    cluster
        .create::<OAPServer>(resource(
            "OAPServer",
            "skywalking",
            json!({"version": "10.2.0"}),
        ))
        .await;
    for (name, language) in [("java", "java"), ("python", "python"), ("node", "nodejs")] {
        cluster
            .create::<SwAgent>(resource(
                "SwAgent",
                name,
                json!({"selector": {"agent": name}, "language": language}),
            ))
            .await;
    }
    // The webhook's own caches see the SwAgents before pods are created.
    eventually("the webhook knows the SwAgents", || async {
        let pod: Pod = cluster
            .create::<Pod>(app_pod("probe", json!({"agent": "java"})))
            .await;
        cluster
            .api::<Pod>()
            .delete("probe", &DeleteParams::default())
            .await
            .ok()?;
        pod.metadata
            .annotations?
            .get("skylift.io/injected-by")
            .map(|_| ())
    })
    .await;

    let expectations = [
        (
            "java",
            "JAVA_TOOL_OPTIONS",
            "-javaagent:/sky/agent/java/skywalking-agent.jar",
        ),
        ("python", "PYTHONPATH", "/sky/agent/python/loader"),
        (
            "node",
            "NODE_OPTIONS",
            "--require /sky/agent/nodejs/start.js",
        ),
    ];
    for (agent, variable, value) in expectations {
        let pod: Pod = cluster
            .create::<Pod>(app_pod(
                &format!("{agent}-app"),
                json!({"agent": agent, "app": agent}),
            ))
            .await;
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.init_containers.as_ref().unwrap()[0].name,
            "skylift-agent",
            "{agent}"
        );
        let env = spec.containers[0].env.clone().unwrap();
        let get = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(get(variable).as_deref(), Some(value), "{agent}");
        // No backend on the SwAgent and no Satellite: the namespace's OAPServer.
        assert_eq!(
            get("SW_AGENT_COLLECTOR_BACKEND_SERVICES").as_deref(),
            Some("skywalking-oap.observability.svc:11800")
        );
        assert_eq!(get("SW_AGENT_NAME").as_deref(), Some(agent));
        assert_eq!(
            pod.metadata.annotations.unwrap()["skylift.io/injected-by"],
            agent
        );
    }
    // A pod that already carries the agent (re-sent, or restored from a backup) is left as it is.
    let mut again = app_pod("restored", json!({"agent": "java"}));
    again["metadata"]["annotations"] = json!({"skylift.io/injected-by": "java"});
    let restored: Pod = cluster.create::<Pod>(again).await;
    assert!(restored.spec.unwrap().init_containers.is_none());
    // A pod no SwAgent selects is not touched.
    let plain: Pod = cluster
        .create::<Pod>(app_pod("plain", json!({"agent": "go"})))
        .await;
    assert!(plain.spec.unwrap().init_containers.is_none());

    eventually("the SwAgent counts its pods", || async {
        let agent = cluster.get::<SwAgent>("java").await?;
        (agent.status?.injected_pods == 2).then_some(())
    })
    .await;
    assert!(metrics.admissions("injected") >= 3);
    assert!(metrics.admissions("already_injected") >= 1);

    // The operator is down: pods are still created (failurePolicy Ignore), without an agent.
    for task in webhook {
        task.abort();
        let _ = task.await;
    }
    let during: Pod = tokio::time::timeout(
        Duration::from_secs(20),
        cluster.create::<Pod>(app_pod("during-outage", json!({"agent": "java"}))),
    )
    .await
    .expect("a webhook outage never blocks pod creation");
    assert!(during.spec.unwrap().init_containers.is_none());
    assert!(
        cluster
            .server
            .state()
            .webhook_failures()
            .iter()
            .any(|(w, _)| w == "inject.agent.skylift.io")
    );
    cluster.stop().await;
}

/// `kubectl apply -f examples/`: every example file, in the order kubectl reads them.
async fn apply_examples(cluster: &Cluster) {
    use kube::api::{DynamicObject, GroupVersionKind};
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<_> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let discovery = kube::Discovery::new(cluster.client.clone())
        .run()
        .await
        .unwrap();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            if value.is_null() {
                continue;
            }
            let object: DynamicObject = serde_json::from_value(value.clone()).unwrap();
            let gvk = GroupVersionKind::try_from(object.types.as_ref().unwrap()).unwrap();
            let (resource, _) = discovery.resolve_gvk(&gvk).unwrap();
            let api: Api<DynamicObject> = match value["metadata"]["namespace"].as_str() {
                Some(ns) => Api::namespaced_with(cluster.client.clone(), ns, &resource),
                None => Api::all_with(cluster.client.clone(), &resource),
            };
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => {}
                // A Namespace several files declare, as `kubectl apply` allows.
                Err(kube::Error::Api(status)) if status.code == 409 && gvk.kind == "Namespace" => {}
                Err(err) => panic!("{}: {} refused: {err}", file.display(), gvk.kind),
            }
        }
    }
}

#[tokio::test]
async fn the_examples_make_a_whole_skywalking_with_one_operator() {
    let cluster = rovers_allowed().await;
    apply_examples(&cluster).await;
    // Plays the StatefulSet controller once the BanyanDB's pod would be ready.
    eventually("the BanyanDB", || {
        cluster.get::<StatefulSet>("storage-banyandb")
    })
    .await;
    cluster.stateful_set_ready("storage-banyandb").await;
    let oap: Deployment = eventually("OAP on the BanyanDB", || async {
        let oap = cluster.get::<Deployment>("skywalking-oap").await?;
        env(&oap, "SW_STORAGE_BANYANDB_TARGETS").map(|_| oap)
    })
    .await;
    assert_eq!(
        env(&oap, "SW_STORAGE_BANYANDB_TARGETS").as_deref(),
        Some("storage-banyandb-grpc.observability.svc:17912")
    );
    eventually("OAP's dynamic configuration", || {
        cluster.get::<ConfigMap>("skywalking-oap-dynamic-config")
    })
    .await;
    eventually("the UI", || cluster.get::<Deployment>("skywalking-ui")).await;
    eventually("the Satellite", || {
        cluster.get::<Deployment>("ingest-satellite")
    })
    .await;
    eventually("its autoscaler", || {
        cluster
            .get::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>("ingest-satellite")
    })
    .await;
    eventually("the collector", || {
        cluster.get::<Deployment>("metrics-otelcol")
    })
    .await;
    eventually("the OTLP proxy", || cluster.get::<Deployment>("otlp-proxy")).await;
    eventually("Rover", || cluster.get::<DaemonSet>("profiling-rover")).await;
    let agents: Api<SwAgent> = Api::namespaced(cluster.client.clone(), "shop");
    for language in ["java", "python", "nodejs"] {
        let agents = agents.clone();
        eventually("each language's SwAgent ready", move || {
            let agents = agents.clone();
            async move {
                let agent = agents.get(language).await.ok()?;
                let status = agent.status?;
                let ready = is_ready(&status.conditions);
                (ready
                    && status.backend.as_deref()
                        == Some("ingest-satellite.observability.svc:11800"))
                .then_some(())
            }
        })
        .await;
    }
    cluster.stop().await;
}
