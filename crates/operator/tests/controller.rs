//! The real controllers against the API-server double: what a user sees happen in the
//! cluster after they apply skylift resources.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use skylift_api::{OAPServer, Proxy, Satellite, UpstreamEndpoints};
use skylift_operator::run::Settings;
use support::{Cluster, NS, condition, eventually, eventually_within, is_ready};

fn oapserver(name: &str) -> Value {
    json!({"apiVersion": "skylift.io/v1alpha1", "kind": "OAPServer",
           "metadata": {"name": name}, "spec": {"version": "10.2.0", "replicas": 2}})
}

fn satellite(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "skylift.io/v1alpha1", "kind": "Satellite", "metadata": {"name": name}, "spec": spec})
}

fn oap_pod_labels(oap: &str) -> Value {
    json!({"app.kubernetes.io/name": "oap-server", "app.kubernetes.io/instance": oap, "pod-template-hash": "7c9f"})
}

async fn published(cluster: &Cluster, configmap: &str) -> Option<Vec<String>> {
    let cm = cluster.get::<ConfigMap>(configmap).await?;
    let text = cm.data?.get("endpoints.json")?.clone();
    Some(
        UpstreamEndpoints::from_json(&text)
            .unwrap()
            .endpoints
            .into_iter()
            .map(|e| {
                if e.draining {
                    format!("{} (draining)", e.address)
                } else {
                    e.address
                }
            })
            .collect(),
    )
}

async fn status_upstreams(cluster: &Cluster, satellite: &str) -> Option<Vec<String>> {
    let sat = cluster.get::<Satellite>(satellite).await?;
    Some(
        sat.status?
            .upstreams
            .into_iter()
            .map(|u| u.address)
            .collect(),
    )
}

#[tokio::test]
async fn oapserver_and_satellite_become_running_objects_with_the_right_content() {
    let cluster = Cluster::start().await;
    cluster.create::<OAPServer>(oapserver("skywalking")).await;
    cluster
        .create::<Satellite>(satellite(
            "ingest",
            json!({"upstream": {"oapServerRef": {"name": "skywalking"}},
                   "connectionLimit": {"maxConnections": 11},
                   "telemetry": {"service": "satellite-service"},
                   "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerReplica": 10}}),
        ))
        .await;

    let oap: Deployment = eventually("the OAP Deployment", || {
        cluster.get::<Deployment>("skywalking-oap")
    })
    .await;
    assert_eq!(oap.spec.as_ref().unwrap().replicas, Some(2));
    for name in ["skywalking-oap", "skywalking-oap-headless"] {
        eventually(name, || cluster.get::<Service>(name)).await;
    }
    let oap_role: Role = eventually("OAP's Role", || cluster.get::<Role>("skywalking-oap")).await;
    assert_eq!(
        oap_role.rules.unwrap()[0].resources.as_deref(),
        Some(&["pods".to_string()][..])
    );
    eventually("OAP's RoleBinding", || {
        cluster.get::<RoleBinding>("skywalking-oap")
    })
    .await;
    eventually("OAP's ServiceAccount", || {
        cluster.get::<ServiceAccount>("skywalking-oap")
    })
    .await;

    let proxy: Deployment = eventually("the Satellite Deployment", || {
        cluster.get::<Deployment>("ingest-satellite")
    })
    .await;
    let args = proxy.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"--max-connections=11".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--upstreams-configmap=observability/ingest-upstreams".to_string()),
        "{args:?}"
    );
    eventually("the Satellite Service", || {
        cluster.get::<Service>("ingest-satellite")
    })
    .await;
    let hpa: HorizontalPodAutoscaler = eventually("the HPA", || {
        cluster.get::<HorizontalPodAutoscaler>("ingest-satellite")
    })
    .await;
    let spec = hpa.spec.unwrap();
    assert_eq!(
        (
            spec.scale_target_ref.kind.as_str(),
            spec.scale_target_ref.name.as_str()
        ),
        ("Satellite", "ingest")
    );
    assert_eq!(published(&cluster, "ingest-upstreams").await, Some(vec![]));

    // The Deployment controller reports the rollout done; the resource tells the user.
    cluster.deployment_ready("skywalking-oap").await;
    let oap: OAPServer = eventually("OAPServer ready", || async {
        cluster
            .get::<OAPServer>("skywalking")
            .await
            .filter(|o| o.status.as_ref().is_some_and(|s| s.ready_replicas == 2))
    })
    .await;
    let status = oap.status.unwrap();
    assert_eq!(
        status.address.unwrap().grpc,
        "skywalking-oap.observability.svc:11800"
    );
    assert_eq!(status.observed_generation, Some(1));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllReplicasReady")
    );
    cluster.stop().await;
}

#[tokio::test]
async fn ready_oap_pod_is_published_within_a_second_and_removed_when_it_goes() {
    let cluster = Cluster::start().await;
    cluster.create::<OAPServer>(oapserver("skywalking")).await;
    cluster
        .create::<Satellite>(satellite(
            "ingest",
            json!({"upstream": {"oapServerRef": {"name": "skywalking"}}}),
        ))
        .await;
    eventually("an empty list", || async {
        published(&cluster, "ingest-upstreams")
            .await
            .filter(Vec::is_empty)
    })
    .await;

    cluster
        .pod(
            "skywalking-oap-7c9f-a",
            oap_pod_labels("skywalking"),
            "10.1.0.1",
            false,
        )
        .await;
    cluster
        .pod("unrelated", json!({"app": "web"}), "10.1.0.9", true)
        .await;
    // A Ready OAP pod created after them is published alone: the operator has seen the
    // two before it (one watch, in order) and published neither.
    cluster
        .pod(
            "skywalking-oap-7c9f-b",
            oap_pod_labels("skywalking"),
            "10.1.0.2",
            true,
        )
        .await;
    let listed = eventually("the later ready pod published", || async {
        published(&cluster, "ingest-upstreams")
            .await
            .filter(|p| !p.is_empty())
    })
    .await;
    assert_eq!(
        listed,
        ["10.1.0.2:11800"],
        "a pod that is not Ready, and a pod of something else, get no traffic"
    );
    cluster
        .api::<Pod>()
        .delete("skywalking-oap-7c9f-b", &DeleteParams::default())
        .await
        .unwrap();
    eventually("an empty list again", || async {
        published(&cluster, "ingest-upstreams")
            .await
            .filter(Vec::is_empty)
    })
    .await;

    let turned_ready = Instant::now();
    cluster
        .pod(
            "skywalking-oap-7c9f-a",
            oap_pod_labels("skywalking"),
            "10.1.0.1",
            true,
        )
        .await;
    let expected = vec!["10.1.0.1:11800".to_string()];
    eventually_within(
        "the ConfigMap to list the ready pod",
        Duration::from_secs(1),
        || async {
            published(&cluster, "ingest-upstreams")
                .await
                .filter(|p| *p == expected)
        },
    )
    .await;
    eventually_within(
        "status.upstreams to list the ready pod",
        Duration::from_secs(1),
        || async {
            status_upstreams(&cluster, "ingest")
                .await
                .filter(|p| *p == expected)
        },
    )
    .await;
    eprintln!("ready pod published after {:?}", turned_ready.elapsed());

    cluster
        .pod(
            "skywalking-oap-7c9f-b",
            oap_pod_labels("skywalking"),
            "10.1.0.2",
            true,
        )
        .await;
    eventually("both pods, in name order", || async {
        published(&cluster, "ingest-upstreams")
            .await
            .filter(|p| *p == ["10.1.0.1:11800", "10.1.0.2:11800"])
    })
    .await;

    let deleted = Instant::now();
    cluster
        .api::<Pod>()
        .delete("skywalking-oap-7c9f-a", &DeleteParams::default())
        .await
        .unwrap();
    eventually_within(
        "the deleted pod to leave the ConfigMap",
        Duration::from_secs(1),
        || async {
            published(&cluster, "ingest-upstreams")
                .await
                .filter(|p| *p == ["10.1.0.2:11800"])
        },
    )
    .await;
    eventually_within(
        "the deleted pod to leave status.upstreams",
        Duration::from_secs(1),
        || async {
            status_upstreams(&cluster, "ingest")
                .await
                .filter(|p| *p == ["10.1.0.2:11800"])
        },
    )
    .await;
    eprintln!("deleted pod unpublished after {:?}", deleted.elapsed());

    // Annotated draining: still published, marked, and not counted as an upstream.
    let drain = json!({"metadata": {"annotations": {"skylift.io/draining": "true"}}});
    cluster.merge::<Pod>("skywalking-oap-7c9f-b", &drain).await;
    eventually("the annotated pod to be published as draining", || async {
        published(&cluster, "ingest-upstreams")
            .await
            .filter(|p| *p == ["10.1.0.2:11800 (draining)"])
    })
    .await;
    eventually("status.upstreamCount to leave it out", || async {
        cluster
            .get::<Satellite>("ingest")
            .await
            .and_then(|s| s.status)
            .filter(|s| s.upstream_count == 0 && s.upstreams.len() == 1)
    })
    .await;

    // Relabelling a pod out of the OAP cluster also takes it out of rotation.
    let relabel = json!({"metadata": {"labels": {"app.kubernetes.io/instance": "other"}}});
    cluster
        .merge::<Pod>("skywalking-oap-7c9f-b", &relabel)
        .await;
    eventually("the relabelled pod to leave", || async {
        published(&cluster, "ingest-upstreams")
            .await
            .filter(Vec::is_empty)
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn spec_changes_update_the_objects_and_removing_autoscaling_removes_the_hpa() {
    let cluster = Cluster::start().await;
    cluster
        .create::<Satellite>(satellite(
            "ingest",
            json!({"upstream": {"addresses": ["oap-a.example:11800"]},
                   "autoscaling": {"maxReplicas": 4, "targetConnectionsPerReplica": 100}}),
        ))
        .await;
    eventually("the HPA", || {
        cluster.get::<HorizontalPodAutoscaler>("ingest-satellite")
    })
    .await;
    assert_eq!(
        published(&cluster, "ingest-upstreams").await,
        Some(vec!["oap-a.example:11800".to_string()])
    );

    let change = json!({"spec": {"connectionLimit": {"maxConnections": 500},
                                 "upstream": {"addresses": ["oap-a.example:11800", "oap-b.example:11800"]},
                                 "autoscaling": null}});
    cluster.merge::<Satellite>("ingest", &change).await;
    eventually("the new connection limit in the proxy's flags", || async {
        let deployment = cluster.get::<Deployment>("ingest-satellite").await?;
        let args = deployment.spec?.template.spec?.containers[0].args.clone()?;
        args.contains(&"--max-connections=500".to_string())
            .then_some(())
    })
    .await;
    eventually("both addresses published", || async {
        published(&cluster, "ingest-upstreams")
            .await
            .filter(|p| p.len() == 2)
    })
    .await;
    eventually("the HPA to be gone", || async {
        cluster
            .get::<HorizontalPodAutoscaler>("ingest-satellite")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let sat: Satellite = eventually("status for generation 2", || async {
        cluster
            .get::<Satellite>("ingest")
            .await
            .filter(|s| s.status.as_ref().and_then(|s| s.observed_generation) == Some(2))
    })
    .await;
    assert!(sat.status.unwrap().hpa.is_none());
    cluster.stop().await;
}

#[tokio::test]
async fn an_idle_operator_writes_nothing() {
    let cluster = Cluster::start().await;
    cluster.create::<OAPServer>(oapserver("skywalking")).await;
    cluster
        .create::<Satellite>(satellite(
            "ingest",
            json!({"upstream": {"oapServerRef": {"name": "skywalking"}},
                   "autoscaling": {"maxReplicas": 3, "targetConnectionsPerReplica": 10}}),
        ))
        .await;
    cluster
        .pod(
            "skywalking-oap-7c9f-a",
            oap_pod_labels("skywalking"),
            "10.1.0.1",
            true,
        )
        .await;
    eventually("the pod published", || async {
        published(&cluster, "ingest-upstreams")
            .await
            .filter(|p| p.len() == 1)
    })
    .await;
    eventually("the OAP Deployment", || {
        cluster.get::<Deployment>("skywalking-oap")
    })
    .await;
    cluster.deployment_ready("skywalking-oap").await;
    cluster.deployment_ready("ingest-satellite").await;
    // Everything the operator will write shows in the two statuses; after that, the test
    // counts any write as one too many.
    eventually(
        "both statuses ready, with the upstream and the HPA",
        || async {
            let oap = cluster.get::<OAPServer>("skywalking").await?.status?;
            let sat = cluster.get::<Satellite>("ingest").await?.status?;
            (is_ready(&oap.conditions)
                && is_ready(&sat.conditions)
                && sat.upstream_count == 1
                && sat.hpa.is_some())
            .then_some(())
        },
    )
    .await;

    let before = cluster.server.writes();
    let reconciles_before =
        cluster.metrics.reconciles("Satellite") + cluster.metrics.reconciles("OAPServer");

    // Things that wake the reconcilers but change nothing they own: a user's annotation on
    // the resources, a new condition on a Deployment's status, a relabelled upstream pod.
    let note = json!({"metadata": {"annotations": {"team": "observability"}}});
    cluster.merge::<Satellite>("ingest", &note).await;
    cluster.merge::<OAPServer>("skywalking", &note).await;
    let condition = json!({"status": {"conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}});
    cluster
        .api::<Deployment>()
        .patch_status(
            "ingest-satellite",
            &PatchParams::default(),
            &Patch::Merge(&condition),
        )
        .await
        .unwrap();
    let relabel = json!({"metadata": {"labels": {"restarted": "yes"}}});
    cluster
        .merge::<Pod>("skywalking-oap-7c9f-a", &relabel)
        .await;
    // The noise wakes the reconcilers (three events at least); what they write is counted.
    eventually("the noise to wake the reconcilers", || async {
        let reconciles =
            cluster.metrics.reconciles("Satellite") + cluster.metrics.reconciles("OAPServer");
        (reconciles >= reconciles_before + 3).then_some(())
    })
    .await;

    let after = cluster.server.writes();
    // The four writes above are the test's own.
    assert_eq!(
        after.total(),
        before.total() + 4,
        "operator writes while nothing changed: {:?} → {:?}",
        before.by_request,
        after.by_request
    );
    assert_eq!(after.no_ops, before.no_ops, "not even no-op writes");
    cluster.stop().await;
}

#[tokio::test]
async fn a_missing_oapserver_degrades_the_satellite_until_it_appears() {
    let cluster = Cluster::start().await;
    cluster
        .create::<Satellite>(satellite(
            "ingest",
            json!({"upstream": {"oapServerRef": {"name": "skywalking"}}}),
        ))
        .await;
    let sat: Satellite = eventually("a Degraded condition", || async {
        cluster.get::<Satellite>("ingest").await.filter(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.reason == "OAPServerNotFound")
            })
        })
    })
    .await;
    let status = sat.status.unwrap();
    let degraded = condition(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    assert!(
        degraded
            .message
            .contains("OAPServer \"skywalking\" does not exist"),
        "{}",
        degraded.message
    );

    cluster.create::<OAPServer>(oapserver("skywalking")).await;
    cluster
        .pod(
            "skywalking-oap-7c9f-a",
            oap_pod_labels("skywalking"),
            "10.1.0.1",
            true,
        )
        .await;
    eventually("the Satellite to recover", || async {
        let status = cluster.get::<Satellite>("ingest").await?.status?;
        (condition(&status.conditions, "Degraded")?.status == "False").then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn the_hpa_scales_the_satellite_through_scale_and_the_deployment_follows() {
    let cluster = Cluster::start().await;
    cluster
        .create::<Satellite>(satellite(
            "ingest",
            json!({"upstream": {"addresses": ["oap:11800"]}}),
        ))
        .await;
    eventually("the Deployment", || {
        cluster.get::<Deployment>("ingest-satellite")
    })
    .await;

    // What the HPA controller (and `kubectl scale satellite ingest --replicas=3`) does.
    let scale = json!({"spec": {"replicas": 3}});
    cluster
        .api::<Satellite>()
        .patch_scale("ingest", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    eventually("the Deployment at 3 replicas", || async {
        cluster
            .get::<Deployment>("ingest-satellite")
            .await
            .filter(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(3))
    })
    .await;
    cluster.deployment_ready("ingest-satellite").await;
    let scale = eventually(
        "/scale to report 3 ready replicas and the selector",
        || async {
            let scale = cluster.api::<Satellite>().get_scale("ingest").await.ok()?;
            (scale.status.as_ref()?.replicas == 3).then_some(scale)
        },
    )
    .await;
    assert_eq!(
        scale.status.unwrap().selector.as_deref(),
        Some("app.kubernetes.io/instance=ingest,app.kubernetes.io/name=satellite")
    );
    cluster.stop().await;
}

#[tokio::test]
async fn edits_to_generated_objects_are_repaired_and_deletion_collects_everything() {
    let cluster = Cluster::start().await;
    cluster
        .create::<Satellite>(satellite(
            "ingest",
            json!({"upstream": {"addresses": ["oap:11800"]}}),
        ))
        .await;
    eventually("the Deployment", || {
        cluster.get::<Deployment>("ingest-satellite")
    })
    .await;

    let tamper = json!({"spec": {"replicas": 7}});
    cluster
        .merge::<Deployment>("ingest-satellite", &tamper)
        .await;
    eventually("replicas restored to the Satellite's", || async {
        cluster
            .get::<Deployment>("ingest-satellite")
            .await
            .filter(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(1))
    })
    .await;
    cluster
        .api::<Service>()
        .delete("ingest-satellite", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted Service to come back", || {
        cluster.get::<Service>("ingest-satellite")
    })
    .await;

    cluster
        .api::<Satellite>()
        .delete("ingest", &DeleteParams::default())
        .await
        .unwrap();
    eventually("every generated object to be collected", || async {
        let gone = cluster
            .get::<Deployment>("ingest-satellite")
            .await
            .is_none()
            && cluster.get::<Service>("ingest-satellite").await.is_none()
            && cluster.get::<ConfigMap>("ingest-upstreams").await.is_none()
            && cluster.get::<Role>("ingest-satellite").await.is_none();
        gone.then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_proxy_publishes_the_pods_its_selector_picks_with_their_weights() {
    let cluster = Cluster::start().await;
    cluster
        .create::<Proxy>(json!({"apiVersion": "skylift.io/v1alpha1", "kind": "Proxy", "metadata": {"name": "otlp"},
            "spec": {"upstream": {"selector": {"matchLabels": {"app": "collector"}, "port": 4317}}}}))
        .await;
    cluster
        .pod("collector-1", json!({"app": "collector"}), "10.2.0.1", true)
        .await;
    cluster
        .pod("collector-2", json!({"app": "collector"}), "10.2.0.2", true)
        .await;
    let weight = json!({"metadata": {"annotations": {"skylift.io/weight": "5"}}});
    cluster.merge::<Pod>("collector-2", &weight).await;
    let endpoints = eventually("both collectors with their weights", || async {
        let cm = cluster.get::<ConfigMap>("otlp-upstreams").await?;
        let doc = UpstreamEndpoints::from_json(cm.data?.get("endpoints.json")?).unwrap();
        (doc.endpoints.len() == 2 && doc.endpoints[1].weight == 5).then_some(doc)
    })
    .await;
    assert_eq!(endpoints.endpoints[0].address, "10.2.0.1:4317");
    assert_eq!(endpoints.endpoints[1].pod.as_deref(), Some("collector-2"));
    cluster.stop().await;
}

#[tokio::test]
async fn an_operator_limited_to_one_namespace_leaves_the_others_alone() {
    // Also: pools run the operator's --proxy-image (a registry mirror) unless they name one.
    let mirror = "registry.internal/skylift:0.1.0";
    let cluster = Cluster::start_with(Settings {
        namespace: Some(NS.into()),
        proxy_image: mirror.into(),
        ..Settings::default()
    })
    .await;
    cluster.namespace("elsewhere").await;
    let elsewhere: kube::Api<Satellite> =
        kube::Api::namespaced(cluster.client.clone(), "elsewhere");
    let other: Satellite = serde_json::from_value(satellite(
        "other",
        json!({"upstream": {"addresses": ["oap:11800"]}}),
    ))
    .unwrap();
    elsewhere
        .create(&kube::api::PostParams::default(), &other)
        .await
        .unwrap();
    cluster
        .create::<Satellite>(satellite(
            "ingest",
            json!({"upstream": {"addresses": ["oap:11800"]}}),
        ))
        .await;

    let deployment = eventually("the watched namespace to be reconciled", || {
        cluster.get::<Deployment>("ingest-satellite")
    })
    .await;
    let image = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some(mirror));
    // The Satellite elsewhere was created first: once the later one's status is written,
    // the operator would have acted on the first had it seen it.
    eventually("the watched Satellite's status", || async {
        cluster.get::<Satellite>("ingest").await?.status
    })
    .await;
    let untouched: kube::Api<Deployment> =
        kube::Api::namespaced(cluster.client.clone(), "elsewhere");
    assert!(
        untouched
            .get_opt("other-satellite")
            .await
            .unwrap()
            .is_none()
    );
    assert!(elsewhere.get("other").await.unwrap().status.is_none());
    cluster.stop().await;
}

/// Two replicas on one Lease: the first leads, the second stands by; a Lease in a namespace
/// that does not exist is an error the operator exits on, not an endless standby.
#[tokio::test]
async fn one_replica_leads_and_a_missing_lease_namespace_is_an_error() {
    use skylift_operator::leader::{self, LeaderError, LeaseSettings};
    let cluster = Cluster::start().await;
    let settings = |identity: &str, namespace: &str| LeaseSettings {
        namespace: namespace.into(),
        name: "skylift-operator".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_every: Duration::from_millis(50),
    };
    leader::acquire(cluster.client.clone(), &settings("a", NS))
        .await
        .unwrap();
    let lease: k8s_openapi::api::coordination::v1::Lease = eventually("the Lease", || {
        cluster.get::<k8s_openapi::api::coordination::v1::Lease>("skylift-operator")
    })
    .await;
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("a"),
        "the first replica leads"
    );
    // A live Lease is not taken: the standby looks about ten times and stays a standby
    // (a negative, so it can only be bounded by time; the Lease would expire at 15 s).
    let standby = tokio::time::timeout(
        Duration::from_millis(500),
        leader::acquire(cluster.client.clone(), &settings("b", NS)),
    )
    .await;
    assert!(standby.is_err(), "the standby took a live Lease");

    // Bounded: standing by forever (the old behaviour) fails here rather than hanging.
    let missing = tokio::time::timeout(
        Duration::from_secs(10),
        leader::acquire(cluster.client.clone(), &settings("a", "no-such-namespace")),
    )
    .await
    .expect("a missing namespace ends the election")
    .unwrap_err();
    assert!(
        matches!(missing, LeaderError::NamespaceMissing(ref ns) if ns == "no-such-namespace"),
        "{missing}"
    );
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    cluster.stop().await;
}

#[tokio::test]
async fn objects_made_by_hand_under_a_pools_names_are_left_alone_and_the_pool_says_so() {
    let cluster = Cluster::start().await;
    // Made before the Satellite, without skylift's labels or an owner: the operator's
    // cache never sees them.
    let hand_made = cluster
        .create::<ConfigMap>(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ingest-upstreams"}, "data": {"mine": "keep me"}}))
        .await;
    cluster
        .create::<Satellite>(satellite(
            "ingest",
            json!({"upstream": {"addresses": ["oap-0.oap:11800"]}}),
        ))
        .await;
    let degraded = eventually("the Satellite reporting the name conflict", || async {
        let status = cluster.get::<Satellite>("ingest").await?.status?;
        condition(&status.conditions, "Degraded")
            .filter(|c| c.reason == "NameConflict")
            .cloned()
    })
    .await;
    assert!(
        degraded
            .message
            .contains("ConfigMap ingest-upstreams already exists and was not made by skylift"),
        "{}",
        degraded.message
    );
    // The rest of the pool is made; the ConfigMap is as its author left it.
    eventually("the pool's Deployment", || {
        cluster.get::<Deployment>("ingest-satellite")
    })
    .await;
    let kept = cluster.get::<ConfigMap>("ingest-upstreams").await.unwrap();
    assert_eq!(kept.data, hand_made.data);
    assert_eq!(kept.metadata.owner_references, None);
    assert_eq!(
        kept.metadata.resource_version, hand_made.metadata.resource_version,
        "never written"
    );
    // Removed by its author, the name is free: the pool takes it and recovers.
    cluster
        .api::<ConfigMap>()
        .delete("ingest-upstreams", &DeleteParams::default())
        .await
        .unwrap();
    // Nothing is watched that says so: the operator looks again while the name is taken.
    eventually_within(
        "the pool's own upstreams ConfigMap",
        Duration::from_secs(30),
        || async { published(&cluster, "ingest-upstreams").await },
    )
    .await;
    eventually("the conflict cleared", || async {
        let status = cluster.get::<Satellite>("ingest").await?.status?;
        (condition(&status.conditions, "Degraded")?.reason != "NameConflict").then_some(())
    })
    .await;
}
