//! The operator's RBAC in `manifests/operator-bundle.yaml` is exactly what it uses: the
//! operator runs as a process through its whole repertoire (OAPServer, Satellite with and
//! then without autoscaling, Proxy, upstream pods, leader election) against the
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
use skylift_e2e::rbac::{assert_least_privilege, bundle_args, bundle_grants};
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
        "",
        "configmaps",
        "get",
        "each pool's Role grants it (same escalation check)",
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
];

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
    // Run as the bundle runs it: its args (but the admin address) and its environment.
    let args = bundle_args(
        "manifests/operator-bundle.yaml",
        "skylift-operator",
        &[("--admin-listen", format!("127.0.0.1:{}", free_port()))],
    );
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

    let grants = bundle_grants("manifests/operator-bundle.yaml", "skylift-operator");
    assert!(grants.len() > 5, "the bundle's operator rules");
    let excused: Vec<(&str, &str, &str)> = GRANTED_NOT_CALLED
        .iter()
        .map(|(g, r, v, _)| (*g, *r, *v))
        .collect();
    assert_least_privilege("the operator", server.requests(), USER, &grants, &excused);
}
