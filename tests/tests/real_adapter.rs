//! skylift-adapter behind the real kube-aggregator: the APIService Available, aggregated
//! discovery listing `externalmetrics`, metric reads through the API server, and the real
//! HPA controller scaling a Deployment on an adapter metric. The adapter runs as the
//! chart's pod would, in a network namespace of its own (its pod reported ready at that
//! address), reading an OAP stand-in; it is started in every order relative to the
//! APIService: the APIService first, the adapter first, and a restart over an APIService
//! that already trusts its certificate. A second OAP, the OAPServer of another namespace,
//! is read by the HPAs of that namespace and by a selector that names it, and a federated
//! metric adds up the two OAPs' values.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skylift_api::OAPServer;
use skylift_e2e::rbac::args_in;
use skylift_e2e::real::{chart, install, namespace};
use skylift_e2e::{Process, Scratch, binary, real_control_plane, wait_for};
use skylift_testkit::cluster::host::TestHost;
use skylift_testkit::cluster::relay::HttpRelay;
use skylift_testkit::cluster::{ControlPlane, kubelet};
use skylift_testkit::oap::graphql::{GraphqlOap, OapData};

const APISERVICE: &str = "v1beta1.external.metrics.k8s.io";
const NS: &str = "shop";
const METRIC: &str = "skywalking.apache.org|service_cpm";
const READ: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/skywalking.apache.org%7Cservice_cpm?labelSelector=service%3Dcheckout";

/// The adapter in `host`, as the chart runs it, reading OAP at `oap_url`, reaching the API
/// server at `api_server` (default: the host's relay).
async fn adapter_in(
    plane: &ControlPlane,
    host: &TestHost,
    scratch: &Scratch,
    name: &str,
    oap_url: &str,
    api_server: Option<&str>,
) -> Process {
    let token = plane
        .service_account("skylift-system", "skylift-adapter")
        .await;
    let server = api_server
        .map(String::from)
        .unwrap_or_else(|| host.api_server());
    let kubeconfig = plane.write_kubeconfig_to(&format!("adapter-{name}"), &token, Some(&server));
    let args = args_in(
        &chart(),
        "the chart",
        "skylift-adapter",
        &[
            ("--oap-url", oap_url.to_string()),
            ("--refresh-interval", "1s".into()),
        ],
    );
    // A metric federated across the default OAP and team-a's OAPServer.
    let expressions = scratch.path().join("expressions.yaml");
    std::fs::write(
        &expressions,
        "cpm-everywhere:\n  expression: latest(service_cpm)\n  oaps: [default, team-a/skywalking]\n  combine: sum\n",
    )
    .unwrap();
    let mut args = args;
    args.push(format!("--expressions={}", expressions.display()));
    let mut command = host.command(binary("skylift-adapter"));
    command
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", "skylift-system")
        .args(args);
    Process::spawn(name, command, scratch.path())
}

/// Waits until the real HPA controller scaled Deployment `web` to `replicas`.
async fn scaled_to(deployments: &Api<Deployment>, replicas: i32, what: &str) {
    wait_for(what, Duration::from_secs(90), || async {
        let now = deployments.get("web").await.ok()?.spec?.replicas?;
        (now == replicas).then_some(())
    })
    .await;
}

/// An OAP stand-in on the host's side of the network whose `service_cpm` is `value`.
async fn oap_standin(host: &TestHost, value: &str) -> GraphqlOap {
    let listener = tokio::net::TcpListener::bind((host.host_ip, 0))
        .await
        .unwrap();
    GraphqlOap::serve(
        listener,
        OapData {
            expressions: HashMap::from([(
                "latest(service_cpm)".to_string(),
                Some(value.to_string()),
            )]),
            ..OapData::default()
        },
        None,
        axum::Router::new(),
    )
    .unwrap()
}

/// The kubelet's part for the adapter's pod: not ready while the adapter is down, ready
/// once its readiness probe (`/readyz` over HTTPS at the pod's address) answers 200.
async fn probe_until_ready(client: &kube::Client, host: &TestHost, adapter: &mut Process) {
    let probe = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let url = format!("https://{}:6443/readyz", host.ip);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = probe.get(&url).send().await
            && response.status() == 200
        {
            break;
        }
        assert!(adapter.is_running(), "{}", adapter.tail(20));
        assert!(
            Instant::now() < deadline,
            "the adapter's readiness probe never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods = kubelet::pods(
        client,
        "skylift-system",
        "app.kubernetes.io/name=skylift-adapter",
    )
    .await;
    kubelet::run_pod(client, "skylift-system", &pods[0], host.ip.into()).await;
}

/// The adapter's pod not ready (its process gone).
async fn adapter_down(client: &kube::Client, host: &TestHost, adapter: &mut Process) {
    adapter.kill();
    let pods = kubelet::pods(
        client,
        "skylift-system",
        "app.kubernetes.io/name=skylift-adapter",
    )
    .await;
    kubelet::unready_pod(client, "skylift-system", &pods[0], host.ip.into()).await;
}

/// The APIService's Available condition: (status, reason, message).
async fn availability(client: &kube::Client) -> Option<(String, String, String)> {
    let apiservice = Api::<APIService>::all(client.clone())
        .get(APISERVICE)
        .await
        .ok()?;
    let condition = apiservice
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "Available")?;
    Some((
        condition.status,
        condition.reason.unwrap_or_default(),
        condition.message.unwrap_or_default(),
    ))
}

/// Waits until the APIService is Available and a metric read through the API server
/// answers with OAP's value; how long it took.
async fn serving(
    plane: &ControlPlane,
    client: &kube::Client,
    adapter: &mut Process,
    what: &str,
) -> Duration {
    let started = Instant::now();
    let http = plane.admin_http();
    let url = format!("{}{READ}", plane.server);
    let deadline = started + Duration::from_secs(120);
    loop {
        let available = availability(client).await;
        let read = match http.get(&url).send().await {
            Ok(response) => Some((
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )),
            Err(_) => None,
        };
        if available.as_ref().is_some_and(|(s, _, _)| s == "True")
            && read
                .as_ref()
                .is_some_and(|(code, body)| *code == 200 && body.contains("1500500m"))
        {
            return started.elapsed();
        }
        assert!(adapter.is_running(), "the adapter exited ({what})");
        assert!(
            Instant::now() < deadline,
            "{what}: not serving through the aggregator after 120 s: Available {available:?}, read {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_adapter_serves_the_aggregator_and_the_hpa_in_every_start_order() {
    let plane = real_control_plane!();
    install(plane).await;
    let client = plane.admin().await;
    namespace(plane, NS);
    let scratch = Scratch::new("real-adapter");
    let host = TestHost::new(plane.address);
    let oap = oap_standin(&host, "1500.5").await;
    let apiservices: Api<APIService> = Api::all(client.clone());

    // The APIService first (installed with the chart, no caBundle yet), then the adapter.
    let mut adapter = adapter_in(plane, &host, &scratch, "adapter-1", &oap.url(), None).await;
    probe_until_ready(&client, &host, &mut adapter).await;
    let first = serving(plane, &client, &mut adapter, "the APIService first").await;
    println!(
        "APIService first: serving through the aggregator {:.1} s after the adapter started",
        first.as_secs_f64()
    );

    // Aggregated discovery lists the resource (the aggregator's own calls are allowed).
    let (ok, listed) = plane.kubectl(&["api-resources", "--api-group=external.metrics.k8s.io"]);
    assert!(ok && listed.contains("externalmetrics"), "{listed}");
    let (ok, discovery) = plane.kubectl(&["get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"]);
    assert!(ok && discovery.contains("externalmetrics"), "{discovery}");

    // A restart over an APIService that already trusts the certificate: the aggregator
    // reconnects at once, and must never keep a connection the adapter accepted before it
    // could authenticate it.
    adapter_down(&client, &host, &mut adapter).await;
    let mut adapter = adapter_in(plane, &host, &scratch, "adapter-2", &oap.url(), None).await;
    probe_until_ready(&client, &host, &mut adapter).await;
    let restart = serving(plane, &client, &mut adapter, "a restart").await;
    println!(
        "restart: serving again {:.1} s after the new adapter started",
        restart.as_secs_f64()
    );

    // The adapter first, the APIService after it (removed, then applied again).
    adapter_down(&client, &host, &mut adapter).await;
    apiservices
        .delete(APISERVICE, &Default::default())
        .await
        .unwrap();
    let mut adapter = adapter_in(plane, &host, &scratch, "adapter-3", &oap.url(), None).await;
    probe_until_ready(&client, &host, &mut adapter).await;
    plane.apply("the chart, the APIService again", &chart());
    let later = serving(plane, &client, &mut adapter, "the adapter first").await;
    println!(
        "adapter first: serving {:.1} s after the APIService was applied",
        later.as_secs_f64()
    );

    // A restart whose read of the front-proxy CA is slow (the API server slow to answer
    // for that ConfigMap alone), while the aggregator keeps calling: the adapter must not
    // take the aggregator's connections before it can authenticate them, or the aggregator
    // keeps one that carries no client certificate and is refused 401 for as long as it
    // lives.
    adapter_down(&client, &host, &mut adapter).await;
    let slow = HttpRelay::start((host.host_ip, 0).into(), plane.address, &plane.ca);
    slow.hold("namespaces/kube-system/configmaps");
    let server = format!("https://{}", slow.address);
    let mut adapter = adapter_in(
        plane,
        &host,
        &scratch,
        "adapter-4",
        &oap.url(),
        Some(&server),
    )
    .await;
    let http = plane.admin_http();
    let slow_window = async {
        let held_since = Instant::now();
        while held_since.elapsed() < Duration::from_secs(6) {
            let _ = http.get(format!("{}{READ}", plane.server)).send().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow.release();
    };
    // The kubelet probes meanwhile, and reports the pod ready once the probe answers.
    tokio::join!(probe_until_ready(&client, &host, &mut adapter), slow_window);
    let slow_ca = serving(
        plane,
        &client,
        &mut adapter,
        "a restart with a slow front-proxy CA",
    )
    .await;
    println!(
        "slow CA: serving {:.1} s after the CA could be read",
        slow_ca.as_secs_f64()
    );

    // The real HPA controller scales a Deployment on the metric: 1500.5 per 500 a pod.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "shop/web:1"}]}}},
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &web)
        .await
        .unwrap();
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 1, "maxReplicas": 6,
                 "metrics": [{"type": "External", "external": {
                     "metric": {"name": METRIC, "selector": {"matchLabels": {"service": "checkout"}}},
                     "target": {"type": "AverageValue", "averageValue": "500"}}}]},
    }))
    .unwrap();
    let created = Instant::now();
    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &hpa)
        .await
        .unwrap();
    scaled_to(&deployments, 4, "the HPA scaling web to 4 replicas").await;
    println!(
        "HPA: web scaled from 1 to 4 replicas {:.1} s after the HPA was created",
        created.elapsed().as_secs_f64()
    );

    // A second OAP: the OAPServer of namespace team-a, its status giving a stand-in whose
    // service_cpm is 2500. An HPA there reads its own OAP (scaling to 5 pods at 500 each,
    // where the default OAP's 1500.5 would give 4); the HPA in shop keeps reading the
    // default; a read in shop naming team-a's OAPServer in its selector gets team-a's value.
    let team_a_oap = oap_standin(&host, "2500").await;
    namespace(plane, "team-a");
    let oapservers: Api<OAPServer> = Api::namespaced(client.clone(), "team-a");
    let oapserver: OAPServer = serde_json::from_value(json!({
        "apiVersion": "skylift.io/v1alpha1", "kind": "OAPServer",
        "metadata": {"name": "skywalking", "namespace": "team-a"},
        "spec": {"version": "10.2.0"},
    }))
    .unwrap();
    oapservers
        .create(&PostParams::default(), &oapserver)
        .await
        .unwrap();
    // What the operator writes once it made the OAP's Service.
    let http = team_a_oap.url().trim_end_matches("/graphql").to_string();
    oapservers
        .patch_status(
            "skywalking",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"address": {"grpc": "skywalking-oap.team-a.svc:11800", "http": http}}})),
        )
        .await
        .unwrap();
    let team_a_deployments: Api<Deployment> = Api::namespaced(client.clone(), "team-a");
    let mut web_a = web.clone();
    web_a.metadata.namespace = Some("team-a".into());
    team_a_deployments
        .create(&PostParams::default(), &web_a)
        .await
        .unwrap();
    let mut hpa_a = hpa.clone();
    hpa_a.metadata.namespace = Some("team-a".into());
    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), "team-a")
        .create(&PostParams::default(), &hpa_a)
        .await
        .unwrap();
    scaled_to(
        &team_a_deployments,
        5,
        "the HPA of team-a scaling its web to 5 replicas on team-a's OAP",
    )
    .await;
    let escaped: Vec<String> = skylift_api::metric_selector::escape("oap", "team-a/skywalking")
        .into_iter()
        .map(|(k, v)| format!("{k}%3D{v}"))
        .collect();
    let named = format!("{}{READ}%2C{}", plane.server, escaped.join("%2C"));
    let answer = plane.admin_http().get(named).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.text().await.unwrap();
    assert!(body.contains("\"2500\""), "{body}");
    let replicas = deployments.get("web").await.unwrap().spec.unwrap().replicas;
    assert_eq!(replicas, Some(4), "shop's HPA still reads the default OAP");
    // Federated through the aggregator: 1500.5 + 2500.
    let federated = format!(
        "{}/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/skywalking.apache.org%7Cmqe%7Ccpm-everywhere?labelSelector=service%3Dcheckout",
        plane.server
    );
    let answer = plane.admin_http().get(federated).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.text().await.unwrap();
    assert!(body.contains("\"4000500m\""), "{body}");
    assert!(adapter.is_running());
}
