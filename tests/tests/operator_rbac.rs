//! The operator's RBAC as the chart installs it for an administrator who lets Rovers run
//! in `obs` (the bundle's rules, plus Rover's) is exactly what it uses: the
//! operator runs as a process through its whole repertoire (OAPServer, Satellite with and
//! then without autoscaling, Proxy, upstream pods, leader election; UI with and then
//! without an Ingress, BanyanDB under an OAPServer with configuration files and then
//! without dynamic configuration, a collector switching to its own ConfigMap, a Rover
//! created and deleted, a SwAgent, the webhook's certificate) against the
//! API-server double, which records every request's RBAC attributes. Every request must
//! be allowed by the bundle's rules, and every rule must have been used, but for the few
//! kube-apiserver checks without a call (each named below with its reason).

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skylift_e2e::rbac::{args_in, assert_least_privilege, grants_in};
use skylift_e2e::{Process, Scratch, binary, free_port, wait_for};
use skylift_testkit::apiserver::ApiServer;

const USER: &str = "system:serviceaccount:skylift-system:skylift-operator";

/// Rules granted without a call: (group, resource, verb) and why.
const GRANTED_NOT_CALLED: &[(&str, &str, &str, &str)] = &[
    (
        "",
        "pods",
        "get",
        "OAP's Role grants it; kube-apiserver lets a Role be written only by who holds what it grants",
    ),
    (
        "skylift.io",
        "oapservers/finalizers",
        "update",
        "blockOwnerDeletion (OwnerReferencesPermissionEnforcement)",
    ),
    (
        "skylift.io",
        "satellites/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
    (
        "skylift.io",
        "proxies/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
    (
        "events.k8s.io",
        "events",
        "patch",
        "the event recorder patches an event that repeats within its series window",
    ),
    (
        "skylift.io",
        "uis/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
    (
        "skylift.io",
        "banyandbs/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
    (
        "skylift.io",
        "otelcollectors/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
    (
        "skylift.io",
        "rovers/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
    (
        "discovery.k8s.io",
        "endpointslices",
        "get",
        "a collector's Role grants it",
    ),
    (
        "discovery.k8s.io",
        "endpointslices",
        "list",
        "a collector's Role grants it",
    ),
    (
        "discovery.k8s.io",
        "endpointslices",
        "watch",
        "a collector's Role grants it",
    ),
    (
        "rbac.authorization.k8s.io",
        "clusterroles",
        "bind",
        "binding skylift-rover to a Rover without holding its rights (kube-apiserver's bind check)",
    ),
    (
        "apps",
        "daemonsets",
        "delete",
        "a Rover whose namespace is no longer allowed (an operator restarted with other --rover-namespaces): tests/tests/real_operator.rs",
    ),
    (
        "",
        "serviceaccounts",
        "delete",
        "the same Rover's ServiceAccount",
    ),
];

/// The chart as an administrator who lets Rovers run in `obs` renders it.
fn installed() -> String {
    skylift_e2e::render_chart(&["operator.rover.namespaces[0]=obs"])
}

/// Creates, as an administrator would by applying the chart, its object `kind` `name`.
async fn from_bundle(client: &kube::Client, kind: &str, name: &str) {
    let bundle = installed();
    let document = skylift_e2e::yaml_documents(&bundle, "the chart")
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the bundle has no {kind} {name}"));
    let object: DynamicObject = serde_json::from_value(document.clone()).unwrap();
    let gvk = kube::api::GroupVersionKind::try_from(object.types.as_ref().unwrap()).unwrap();
    let resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = match document["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.create(&PostParams::default(), &object).await.unwrap();
}

/// The rest of a SkyWalking deployment, each kind through what makes it write and delete.
async fn components(client: &kube::Client) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "obs");
    let object = |name: &str, data: Value| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
    };
    config_maps
        .create(
            &PostParams::default(),
            &object("rules", json!({"app.yaml": "metricsRules: []"})),
        )
        .await
        .unwrap();
    config_maps
        .create(
            &PostParams::default(),
            &object("otel", json!({"config.yaml": "receivers: {}"})),
        )
        .await
        .unwrap();
    create(
        client,
        "UI",
        "console",
        json!({"version": "10.2.0", "oap": {"oapServerRef": {"name": "skywalking"}},
        "ingress": {"host": "sw.example.com"}}),
    )
    .await;
    create(client, "BanyanDB", "storage", json!({"version": "0.9.0"})).await;
    create(
        client,
        "OAPServer",
        "stored",
        json!({"version": "10.2.0",
        "storage": {"type": "banyandb", "banyanDBRef": {"name": "storage"}},
        "config": [{"configMapName": "rules", "path": "otel-rules/custom"}],
        "dynamicConfig": {"data": {"core.default.apdexThreshold": "default: 500"}}}),
    )
    .await;
    create(
        client,
        "OTelCollector",
        "metrics",
        json!({"version": "0.115.0",
        "backend": {"satelliteRef": {"name": "ingest"}},
        "scrape": [{"name": "vm", "role": "endpoints", "matchLabels": {"app": "vm"}}]}),
    )
    .await;
    create(
        client,
        "Rover",
        "ebpf",
        json!({"version": "0.7.0", "backend": {"oapServerRef": {"name": "skywalking"}}}),
    )
    .await;
    create(
        client,
        "SwAgent",
        "java",
        json!({"selector": {"app": "checkout"}, "language": "java"}),
    )
    .await;

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "obs");
    // Plays the StatefulSet controller: the BanyanDB's pod is ready, so OAP may start on it.
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), "obs");
    wait_for(
        "the BanyanDB's StatefulSet",
        Duration::from_secs(20),
        || async { sets.get_opt("storage-banyandb").await.ok()? },
    )
    .await;
    sets.patch_status(
        "storage-banyandb",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"replicas": 1, "readyReplicas": 1}})),
    )
    .await
    .unwrap();

    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> =
        Api::namespaced(client.clone(), "obs");
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
    wait_for(
        "every component's objects",
        Duration::from_secs(20),
        || async {
            deployments.get_opt("console-ui").await.ok()??;
            ingresses.get_opt("console-ui").await.ok()??;
            deployments.get_opt("stored-oap").await.ok()??;
            config_maps
                .get_opt("stored-oap-dynamic-config")
                .await
                .ok()??;
            config_maps.get_opt("metrics-otelcol").await.ok()??;
            bindings.get_opt("skylift-rover-obs-ebpf").await.ok()??;
            let agent = skylift_api(client, "SwAgent").get("java").await.ok()?;
            agent.data.get("status")?;
            Some(())
        },
    )
    .await;
    // Fields removed: what they made is deleted. The Rover goes: its binding first.
    for (kind, name, patch) in [
        ("UI", "console", json!({"spec": {"ingress": null}})),
        (
            "OAPServer",
            "stored",
            json!({"spec": {"dynamicConfig": null}}),
        ),
        (
            "OTelCollector",
            "metrics",
            json!({"spec": {"scrape": null, "configMapRef": {"name": "otel"}}}),
        ),
    ] {
        skylift_api(client, kind)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }
    skylift_api(client, "Rover")
        .delete("ebpf", &Default::default())
        .await
        .unwrap();
    wait_for(
        "what the removed fields made, and the Rover, gone",
        Duration::from_secs(20),
        || async {
            let gone = ingresses.get_opt("console-ui").await.ok()?.is_none()
                && config_maps
                    .get_opt("stored-oap-dynamic-config")
                    .await
                    .ok()?
                    .is_none()
                && config_maps.get_opt("metrics-otelcol").await.ok()?.is_none()
                && bindings
                    .get_opt("skylift-rover-obs-ebpf")
                    .await
                    .ok()?
                    .is_none()
                && skylift_api(client, "Rover")
                    .get_opt("ebpf")
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await;
    // The webhook's certificate: kept in the bundle's Secret, its CA in the configuration.
    let webhooks: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    wait_for(
        "the webhook's caBundle",
        Duration::from_secs(20),
        || async {
            let configuration = webhooks.get("skylift-agent-injector").await.ok()?;
            configuration.webhooks?[0]
                .client_config
                .ca_bundle
                .as_ref()
                .map(|_| ())
        },
    )
    .await;
}

async fn ready_pod(client: &kube::Client, name: &str, labels: Value, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "obs");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "oap", "image": "apache/skywalking-oap-server:10.2.0"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"podIP": ip, "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// The API of skylift's `kind` in namespace obs.
fn skylift_api(client: &kube::Client, kind: &str) -> Api<DynamicObject> {
    let resource = match kind {
        "OAPServer" => ApiResource::erase::<skylift_api::OAPServer>(&()),
        "Satellite" => ApiResource::erase::<skylift_api::Satellite>(&()),
        "UI" => ApiResource::erase::<skylift_api::UI>(&()),
        "BanyanDB" => ApiResource::erase::<skylift_api::BanyanDB>(&()),
        "OTelCollector" => ApiResource::erase::<skylift_api::OTelCollector>(&()),
        "Rover" => ApiResource::erase::<skylift_api::Rover>(&()),
        "SwAgent" => ApiResource::erase::<skylift_api::SwAgent>(&()),
        _ => ApiResource::erase::<skylift_api::Proxy>(&()),
    };
    Api::namespaced_with(client.clone(), "obs", &resource)
}

async fn create(client: &kube::Client, kind: &str, name: &str, spec: Value) {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "skylift.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": "obs"}, "spec": spec,
    }))
    .unwrap();
    skylift_api(client, kind)
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_bundles_operator_rbac_is_exactly_what_the_operator_uses() {
    let server = ApiServer::start_with_skylift_crds().await.unwrap();
    let client = server.client();
    for namespace in ["skylift-system", "obs"] {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    let scratch = Scratch::new("rbac");
    let kubeconfig = scratch.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig_with_token(USER)).unwrap();
    // What applying the bundle creates for the webhook: its empty Secret and the
    // MutatingWebhookConfiguration the operator writes its CA into.
    from_bundle(&client, "Secret", "skylift-operator-webhook-tls").await;
    from_bundle(
        &client,
        "MutatingWebhookConfiguration",
        "skylift-agent-injector",
    )
    .await;
    // Run as the bundle runs it: its args (but this machine's addresses) and its
    // environment.
    let mut args = args_in(
        &installed(),
        "the chart",
        "skylift-operator",
        &[("--admin-listen", format!("127.0.0.1:{}", free_port()))],
    );
    args.push(format!("--webhook-listen=127.0.0.1:{}", free_port()));
    let mut command = Command::new(binary("skylift-operator"));
    command
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "skylift-system")
        .env("SKYLIFT_OPERATOR_IDENTITY", "skylift-operator-7c9f-x2")
        .args(&args);
    let mut operator = Process::spawn("operator", command, scratch.path());

    let leases: Api<Lease> = Api::namespaced(client.clone(), "skylift-system");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "obs");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "obs");
    wait_for("the Lease", Duration::from_secs(20), || async {
        leases.get_opt("skylift-operator").await.ok()?
    })
    .await;

    create(
        &client,
        "OAPServer",
        "skywalking",
        json!({"version": "10.2.0", "replicas": 1}),
    )
    .await;
    create(
        &client,
        "Satellite",
        "ingest",
        json!({"upstream": {"oapServerRef": {"name": "skywalking"}},
               "connectionLimit": {"maxConnections": 11},
               "autoscaling": {"maxReplicas": 3, "targetConnectionsPerReplica": 10}}),
    )
    .await;
    create(
        &client,
        "Proxy",
        "otlp",
        json!({"upstream": {"selector": {"matchLabels": {"app": "collector"}, "port": 4317}}}),
    )
    .await;
    ready_pod(
        &client,
        "skywalking-oap-7c9f-a",
        json!({"app.kubernetes.io/name": "oap-server", "app.kubernetes.io/instance": "skywalking"}),
        "10.1.0.1",
    )
    .await;
    ready_pod(
        &client,
        "collector-0",
        json!({"app": "collector"}),
        "10.1.0.9",
    )
    .await;
    wait_for(
        "the HPA and both upstream lists",
        Duration::from_secs(20),
        || async {
            hpas.get_opt("ingest-satellite").await.ok()??;
            let ingest = config_maps.get_opt("ingest-upstreams").await.ok()??;
            let otlp = config_maps.get_opt("otlp-upstreams").await.ok()??;
            let listed = |cm: &ConfigMap, ip: &str| {
                cm.data
                    .as_ref()
                    .is_some_and(|d| d.values().any(|v| v.contains(ip)))
            };
            (listed(&ingest, "10.1.0.1") && listed(&otlp, "10.1.0.9")).then_some(())
        },
    )
    .await;

    // Autoscaling removed: the HPA is deleted.
    skylift_api(&client, "Satellite")
        .patch(
            "ingest",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": null}})),
        )
        .await
        .unwrap();
    wait_for("the HPA to go", Duration::from_secs(20), || async {
        hpas.get_opt("ingest-satellite")
            .await
            .ok()
            .filter(Option::is_none)
            .map(|_| ())
    })
    .await;
    components(&client).await;

    // The Lease is renewed (every 2 s) under the bundle's identity: its renewTime moves.
    let renewed_at = |lease: Option<Lease>| lease?.spec?.renew_time;
    let before = renewed_at(leases.get_opt("skylift-operator").await.unwrap());
    wait_for("the Lease renewed", Duration::from_secs(20), || async {
        let now = renewed_at(leases.get_opt("skylift-operator").await.ok()?);
        (now.is_some() && now != before).then_some(())
    })
    .await;
    assert!(operator.is_running(), "{}", operator.output());
    operator.kill();

    let grants = grants_in(&installed(), "the chart", "skylift-operator");
    assert!(grants.len() > 5, "the bundle's operator rules");
    let excused: Vec<(&str, &str, &str)> = GRANTED_NOT_CALLED
        .iter()
        .map(|(g, r, v, _)| (*g, *r, *v))
        .collect();
    assert_least_privilege("the operator", server.requests(), USER, &grants, &excused);
}
