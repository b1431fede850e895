//! The agent-injection webhook called by the real admission chain of kube-apiserver, for
//! pods the real ReplicaSet controller makes. The operator runs as the chart's pod would: in
//! a network namespace of its own (its "pod IP"), reaching the API server through a relay,
//! and the pod of the chart's Deployment that stands for it is reported ready at that
//! address, so the Service's endpoints lead the API server to it.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use skylift_e2e::real::{create, install, namespace, operator_command};
use skylift_e2e::{Process, Scratch, binary, real_control_plane, wait_for};
use skylift_testkit::cluster::ControlPlane;
use skylift_testkit::cluster::host::TestHost;
use skylift_testkit::cluster::kubelet;

const APP_NS: &str = "shop";
const OTHER_NS: &str = "billing";

/// A Deployment of one pod labelled `app: <app>` and `tier: web` (what the SwAgent
/// selects).
fn deployment(app: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": app},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                 "template": {"metadata": {"labels": {"app": app, "tier": "web"}},
                              "spec": {"containers": [{"name": "app", "image": format!("shop/{app}:1")}]}}},
    }))
    .unwrap()
}

/// The pod the ReplicaSet controller made for the Deployment `app` in `namespace`.
async fn pod_of(client: &kube::Client, namespace: &str, app: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("the pod of Deployment {namespace}/{app}"),
        Duration::from_secs(60),
        || async {
            pods.list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        },
    )
    .await
}

fn injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("skylift.io/injected-by"));
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == "skylift-agent"));
    annotated && init
}

/// The operator in `host`, as the pod `pod` of the chart's Deployment: that pod is reported
/// ready at the host's address.
async fn operator_in(
    plane: &ControlPlane,
    host: &TestHost,
    scratch: &Scratch,
    name: &str,
) -> Process {
    let client = plane.admin().await;
    let token = plane
        .service_account("skylift-system", "skylift-operator")
        .await;
    let kubeconfig =
        plane.write_kubeconfig_to(&format!("webhook-{name}"), &token, Some(&host.api_server()));
    let command = operator_command(
        host.command(binary("skylift-operator")),
        &kubeconfig,
        name,
        &[
            ("--admin-listen", "0.0.0.0:8080".into()),
            ("--webhook-listen", "0.0.0.0:9443".into()),
        ],
    );
    let process = Process::spawn(name, command, scratch.path());
    // The chart's Deployment has made its pods; one of them is this process.
    let pods = wait_for("the operator's pods", Duration::from_secs(60), || async {
        let pods = kubelet::pods(
            &client,
            "skylift-system",
            "app.kubernetes.io/component=operator",
        )
        .await;
        (!pods.is_empty()).then_some(pods)
    })
    .await;
    kubelet::run_pod(&client, "skylift-system", &pods[0], host.ip.into()).await;
    process
}

/// The admissions the operator in `host` has answered, by its metrics.
async fn admissions(host: &TestHost) -> Option<f64> {
    let (code, text) = skylift_testkit::http::get(&format!("http://{}:8080/metrics", host.ip))
        .await
        .ok()?;
    (code == 200).then(|| {
        skylift_testkit::http::prometheus_sum(&text, "skylift_operator_admission_reviews_total")
    })
}

#[tokio::test]
async fn the_real_admission_chain_injects_agents_only_where_a_swagent_is_and_never_waits_on_a_stopped_operator()
 {
    let plane = real_control_plane!();
    install(plane).await;
    let client = plane.admin().await;
    namespace(plane, APP_NS);
    namespace(plane, OTHER_NS);
    let scratch = Scratch::new("real-webhook");
    let host = TestHost::new(plane.address);
    let mut operator = operator_in(plane, &host, &scratch, "webhook-a").await;
    wait_for(
        "the operator's admin server",
        Duration::from_secs(30),
        || admissions(&host),
    )
    .await;

    create(
        &client,
        APP_NS,
        "SwAgent",
        "java",
        json!({"selector": {"tier": "web"}, "language": "java",
               "backend": {"address": "oap.example:11800"}}),
    )
    .await;
    // The API server is told to call the webhook for this namespace, and this one only.
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    wait_for("the webhook's namespaceSelector", Duration::from_secs(30), || async {
        let configuration = configurations.get("skylift-agent-injector").await.ok()?;
        let webhook = configuration.webhooks?.into_iter().next()?;
        webhook.client_config.ca_bundle.as_ref()?;
        let selector = serde_json::to_value(webhook.namespace_selector?).ok()?;
        (selector
            == json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [APP_NS]}]}))
        .then_some(())
    })
    .await;

    // A pod the ReplicaSet controller makes is injected by the real admission chain.
    let shop: Api<Deployment> = Api::namespaced(client.clone(), APP_NS);
    shop.create(&PostParams::default(), &deployment("checkout"))
        .await
        .unwrap();
    let pod = pod_of(&client, APP_NS, "checkout").await;
    assert!(injected(&pod), "{:?}", pod.spec);
    let answered = admissions(&host).await.unwrap();
    assert!(answered >= 1.0, "{answered}");

    // A namespace without a SwAgent: its pods never reach the webhook.
    let billing: Api<Deployment> = Api::namespaced(client.clone(), OTHER_NS);
    billing
        .create(&PostParams::default(), &deployment("checkout"))
        .await
        .unwrap();
    let pod = pod_of(&client, OTHER_NS, "checkout").await;
    assert!(!injected(&pod));
    assert_eq!(
        admissions(&host).await.unwrap(),
        answered,
        "the webhook was asked"
    );

    // The bundle applied again over the running operator: nothing refused (the Secret's
    // type is the one the operator keeps), and injection goes on.
    plane.apply("the chart, again", &skylift_e2e::real::chart());
    shop.create(&PostParams::default(), &deployment("cart"))
        .await
        .unwrap();
    let pod = pod_of(&client, APP_NS, "cart").await;
    assert!(injected(&pod), "injected after the chart was applied again");
    let webhook = configurations
        .get("skylift-agent-injector")
        .await
        .unwrap()
        .webhooks
        .unwrap()
        .remove(0);
    assert!(
        webhook
            .namespace_selector
            .is_some_and(|s| s.match_expressions.is_some())
    );

    // The operator stopped: failurePolicy Ignore, the pod is made at once, without agent.
    operator.kill();
    shop.create(&PostParams::default(), &deployment("payments"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let pod = pod_of(&client, APP_NS, "payments").await;
    assert!(!injected(&pod));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the pod waited {:?}",
        started.elapsed()
    );
}
