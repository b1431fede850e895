//! The operator on a real kube-apiserver and kube-controller-manager (`KUBEBUILDER_ASSETS`),
//! run as its pod runs: the chart's ServiceAccount (RBAC as shipped), the chart's
//! arguments. The test plays the kubelet (pods bound to a node and reported ready), the
//! real controllers do the rest (ReplicaSets, StatefulSets, DaemonSets, garbage
//! collection), and the API server's audit log says what the operator wrote.
//!
//! One operator serves the whole scenario, so it is one test in phases: every kind
//! reconciled to Ready; objects of its names that it did not make left alone; a failing
//! reconcile explained in the status; `/scale`; garbage collection; an idle minute without
//! a write; a Rover withdrawn when its namespace is no longer allowed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use skylift_api::UpstreamEndpoints;
use skylift_e2e::real::{
    OPERATOR_USER, ROVER_NAMESPACE, create, events_about, install, namespace, skylift,
    start_operator, wait_condition, writes_by,
};
use skylift_e2e::{Scratch, real_control_plane, wait_for};
use skylift_testkit::cluster::kubelet::Kubelet;

const NS: &str = ROVER_NAMESPACE;
const MINUTE: Duration = Duration::from_secs(60);

fn config_map(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
}

/// The resources of a whole SkyWalking, one of each kind.
async fn declare_everything(client: &kube::Client) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    for (name, data) in [
        ("rules", json!({"app.yaml": "metricsRules: []"})),
        ("otel", json!({"config.yaml": "receivers: {}"})),
    ] {
        config_maps
            .create(&PostParams::default(), &config_map(name, data))
            .await
            .unwrap();
    }
    create(
        client,
        NS,
        "BanyanDB",
        "storage",
        json!({"version": "0.9.0"}),
    )
    .await;
    create(
        client,
        NS,
        "OAPServer",
        "skywalking",
        json!({"version": "10.2.0", "replicas": 2,
               "storage": {"type": "banyandb", "banyanDBRef": {"name": "storage"}},
               "config": [{"configMapName": "rules", "path": "otel-rules/custom"}],
               "dynamicConfig": {"data": {"core.default.apdexThreshold": "default: 500"}}}),
    )
    .await;
    create(
        client,
        NS,
        "UI",
        "console",
        json!({"version": "10.2.0", "oap": {"oapServerRef": {"name": "skywalking"}},
               "ingress": {"host": "sw.example.com"}}),
    )
    .await;
    create(
        client,
        NS,
        "Satellite",
        "ingest",
        json!({"upstream": {"oapServerRef": {"name": "skywalking"}},
               "connectionLimit": {"maxConnections": 11},
               "telemetry": {"service": "satellite-service"},
               "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerReplica": 10}}),
    )
    .await;
    create(
        client,
        NS,
        "Proxy",
        "otel",
        json!({"upstream": {"selector": {"matchLabels": {"app": "collector"}, "port": 4317}}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for name in ["collector-a", "collector-b"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "collector"}},
            "spec": {"containers": [{"name": "otelcol", "image": "otel/opentelemetry-collector:0.115.0"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    create(
        client,
        NS,
        "OTelCollector",
        "metrics",
        json!({"version": "0.115.0", "backend": {"satelliteRef": {"name": "ingest"}},
               "scrape": [{"name": "vm", "role": "endpoints", "matchLabels": {"app": "vm"}}]}),
    )
    .await;
    create(
        client,
        NS,
        "Rover",
        "ebpf",
        json!({"version": "0.7.0", "backend": {"satelliteRef": {"name": "ingest"}}}),
    )
    .await;
    create(
        client,
        NS,
        "SwAgent",
        "java",
        json!({"selector": {"app": "checkout"}, "language": "java"}),
    )
    .await;
}

/// The `podIP:port` of the ready pods matching `selector`.
async fn pod_addresses(client: &kube::Client, selector: &str, port: u16) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.status?.pod_ip)
        .map(|ip| format!("{ip}:{port}"))
        .collect()
}

/// The addresses a pool's upstreams ConfigMap publishes.
async fn published(client: &kube::Client, configmap: &str) -> Option<BTreeSet<String>> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let text = config_maps
        .get_opt(configmap)
        .await
        .ok()??
        .data?
        .get("endpoints.json")?
        .clone();
    Some(
        UpstreamEndpoints::from_json(&text)
            .ok()?
            .endpoints
            .into_iter()
            .map(|e| e.address)
            .collect(),
    )
}

#[tokio::test]
async fn the_operator_runs_every_kind_on_a_real_control_plane_as_the_chart_installs_it() {
    let plane = real_control_plane!();
    install(plane).await;
    let client = plane.admin().await;
    namespace(plane, NS);
    let scratch = Scratch::new("real-operator");
    let _kubelet = Kubelet::start(&client, NS);
    let mut operator = start_operator(plane, scratch.path(), "operator-a", &[]).await;

    // Every kind, reconciled to Ready by the real controllers and the played kubelet.
    let declared = Instant::now();
    declare_everything(&client).await;
    let kinds = [
        ("BanyanDB", "storage"),
        ("OAPServer", "skywalking"),
        ("UI", "console"),
        ("Satellite", "ingest"),
        ("Proxy", "otel"),
        ("OTelCollector", "metrics"),
        ("Rover", "ebpf"),
        ("SwAgent", "java"),
    ];
    for (kind, name) in kinds {
        let (reason, message) =
            wait_condition(&client, NS, kind, name, "Ready", "True", 2 * MINUTE).await;
        assert!(!reason.is_empty(), "{kind} {name}: {message}");
    }
    println!(
        "every kind Ready {:.1} s after it was declared",
        declared.elapsed().as_secs_f64()
    );
    assert!(operator.is_running(), "{}", operator.tail(30));

    // The Satellite publishes the OAP pods, the Proxy its collectors.
    let oap_selector = "app.kubernetes.io/name=oap-server,app.kubernetes.io/instance=skywalking";
    let oap = pod_addresses(&client, oap_selector, 11800).await;
    assert_eq!(oap.len(), 2, "{oap:?}");
    wait_for("the Satellite's upstreams", MINUTE, || async {
        (published(&client, "ingest-upstreams").await? == oap).then_some(())
    })
    .await;
    let collectors = pod_addresses(&client, "app=collector", 4317).await;
    wait_for("the Proxy's upstreams", MINUTE, || async {
        (published(&client, "otel-upstreams").await? == collectors).then_some(())
    })
    .await;
    let hpa: HorizontalPodAutoscaler = Api::namespaced(client.clone(), NS)
        .get("ingest-satellite")
        .await
        .unwrap();
    let target = hpa.spec.unwrap().scale_target_ref;
    assert_eq!(
        (target.kind.as_str(), target.name.as_str()),
        ("Satellite", "ingest")
    );
    let binding: ClusterRoleBinding = Api::all(client.clone())
        .get(&format!("skylift-rover-{NS}-ebpf"))
        .await
        .unwrap();
    assert_eq!(binding.role_ref.name, "skylift-rover");

    name_conflicts_are_left_alone(plane, &client).await;
    failures_are_explained_in_the_status(&client).await;
    scale_and_garbage_collection(&client).await;
    an_idle_minute_without_writes(plane).await;

    // Restarted without Rovers allowed in their namespace: the Rover is withdrawn.
    operator.kill();
    let _operator = start_operator(
        plane,
        scratch.path(),
        "operator-b",
        &[("--rover-namespaces", "elsewhere".into())],
    )
    .await;
    let (_, message) =
        wait_condition(&client, NS, "Rover", "ebpf", "Degraded", "True", 2 * MINUTE).await;
    assert!(message.contains("--rover-namespaces"), "{message}");
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    wait_for("the Rover's DaemonSet and binding gone", MINUTE, || async {
        let set_gone = daemon_sets.get_opt("ebpf-rover").await.ok()?.is_none();
        let binding_gone = bindings
            .get_opt(&format!("skylift-rover-{NS}-ebpf"))
            .await
            .ok()?
            .is_none();
        (set_gone && binding_gone).then_some(())
    })
    .await;
    let rover = skylift(&client, NS, "Rover").get("ebpf").await.unwrap();
    assert!(
        rover.metadata.finalizers.unwrap_or_default().is_empty(),
        "the finalizer went with the binding"
    );
}

/// A ConfigMap and a Deployment made by hand under the names pools would use: neither is
/// written, and each pool says why in its status and an Event.
async fn name_conflicts_are_left_alone(
    plane: &skylift_testkit::cluster::ControlPlane,
    client: &kube::Client,
) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let mine = config_maps
        .create(
            &PostParams::default(),
            &config_map("taken-upstreams", json!({"mine": "keep me"})),
        )
        .await
        .unwrap();
    let theirs: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "occupied-satellite"},
        "spec": {"selector": {"matchLabels": {"app": "theirs"}},
                 "template": {"metadata": {"labels": {"app": "theirs"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
    }))
    .unwrap();
    let theirs = deployments
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    for name in ["taken", "occupied"] {
        create(
            client,
            NS,
            "Satellite",
            name,
            json!({"upstream": {"addresses": ["oap.example:11800"]}}),
        )
        .await;
    }
    for (pool, object) in [
        ("taken", "ConfigMap taken-upstreams"),
        ("occupied", "Deployment occupied-satellite"),
    ] {
        let (reason, message) =
            wait_condition(client, NS, "Satellite", pool, "Degraded", "True", MINUTE).await;
        assert_eq!(reason, "NameConflict", "{message}");
        assert!(
            message.contains(&format!(
                "{object} already exists and was not made by skylift"
            )),
            "{message}"
        );
        wait_for("the NameConflict Event", MINUTE, || async {
            events_about(client, NS, pool)
                .await
                .into_iter()
                .find(|(reason, note)| reason == "NameConflict" && note.contains(object))
        })
        .await;
    }
    let kept = config_maps.get("taken-upstreams").await.unwrap();
    assert_eq!(
        kept.metadata.resource_version,
        mine.metadata.resource_version
    );
    // (Its status is the Deployment controller's to write.)
    let kept = deployments.get("occupied-satellite").await.unwrap();
    assert_eq!(kept.metadata.generation, theirs.metadata.generation);
    assert_eq!(kept.metadata.labels, theirs.metadata.labels);
    assert_eq!(kept.metadata.owner_references, None);
    let touched: Vec<String> = writes_by(plane, OPERATOR_USER)
        .into_iter()
        .filter(|w| {
            (w.resource == "configmaps" && w.name == "taken-upstreams")
                || (w.resource == "deployments" && w.name == "occupied-satellite")
        })
        .map(|w| w.what())
        .collect();
    assert!(touched.is_empty(), "the operator wrote them: {touched:?}");
    for name in ["taken", "occupied"] {
        skylift(client, NS, "Satellite")
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    config_maps
        .delete("taken-upstreams", &DeleteParams::default())
        .await
        .unwrap();
    deployments
        .delete("occupied-satellite", &DeleteParams::default())
        .await
        .unwrap();
}

/// An OAPServer whose Deployment the API server refuses (requests above limits): the
/// status says so, with the API server's words, and an Event once.
async fn failures_are_explained_in_the_status(client: &kube::Client) {
    create(
        client,
        NS,
        "OAPServer",
        "overcommitted",
        json!({"version": "10.2.0",
               "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}),
    )
    .await;
    let (reason, message) = wait_condition(
        client,
        NS,
        "OAPServer",
        "overcommitted",
        "Degraded",
        "True",
        MINUTE,
    )
    .await;
    assert_eq!(reason, "ApplyFailed", "{message}");
    assert!(
        message.contains("applying Deployment overcommitted-oap")
            && message.contains("must be less than or equal to cpu limit"),
        "{message}"
    );
    let events = wait_for("the ApplyFailed Event", MINUTE, || async {
        let events: Vec<_> = events_about(client, NS, "overcommitted")
            .await
            .into_iter()
            .filter(|(reason, _)| reason == "ApplyFailed")
            .collect();
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(
        events.len(),
        1,
        "once, however often it is retried: {events:?}"
    );
    skylift(client, NS, "OAPServer")
        .delete("overcommitted", &DeleteParams::default())
        .await
        .unwrap();
}

/// `kubectl scale` of a Proxy reaches its Deployment and its status; deleting the Proxy
/// deletes what it made (the real garbage collector, through owner references).
async fn scale_and_garbage_collection(client: &kube::Client) {
    let proxies = skylift(client, NS, "Proxy");
    let patch = json!({"spec": {"replicas": 2}});
    proxies
        .patch_subresource(
            "scale",
            "otel",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    wait_for("the Proxy scaled to 2 ready replicas", MINUTE, || async {
        let deployment = deployments.get("otel-proxy").await.ok()?;
        let spec = deployment.spec?.replicas?;
        let proxy = proxies.get("otel").await.ok()?;
        let status = proxy.data["status"]["readyReplicas"].as_i64()?;
        (spec == 2 && status == 2).then_some(())
    })
    .await;
    // What the HPA reads: the replicas and the pods' selector.
    let scale = proxies.get_subresource("scale", "otel").await.unwrap();
    assert_eq!(scale.data["status"]["replicas"], 2, "{:?}", scale.data);
    assert!(
        scale.data["status"]["selector"]
            .as_str()
            .is_some_and(|s| s.contains("app.kubernetes.io/instance=otel")),
        "{:?}",
        scale.data
    );

    proxies
        .delete("otel", &DeleteParams::default())
        .await
        .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let roles: Api<Role> = Api::namespaced(client.clone(), NS);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), NS);
    wait_for("what the Proxy made, collected", MINUTE, || async {
        let gone = deployments.get_opt("otel-proxy").await.ok()?.is_none()
            && services.get_opt("otel-proxy").await.ok()?.is_none()
            && config_maps.get_opt("otel-upstreams").await.ok()?.is_none()
            && accounts.get_opt("otel-proxy").await.ok()?.is_none()
            && roles.get_opt("otel-proxy").await.ok()?.is_none()
            && bindings.get_opt("otel-proxy").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
}

/// With nothing changing but the controllers' own status updates, the operator writes
/// nothing for a whole minute (Lease renewals aside).
async fn an_idle_minute_without_writes(plane: &skylift_testkit::cluster::ControlPlane) {
    // Settled: no write for a few seconds first (the deletions above ripple through).
    let mut seen = writes_by(plane, OPERATOR_USER).len();
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = writes_by(plane, OPERATOR_USER).len();
        if now != seen {
            seen = now;
            still_since = Instant::now();
        }
    }
    tokio::time::sleep(MINUTE).await;
    let written: Vec<String> = writes_by(plane, OPERATOR_USER)
        .into_iter()
        .skip(seen)
        .map(|w| w.what())
        .collect();
    assert!(
        written.is_empty(),
        "the operator wrote while idle: {written:#?}"
    );
}
