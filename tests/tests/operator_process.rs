//! skylift-operator as a process: started from a kubeconfig with no other configuration,
//! two replicas electing one leader, the standby taking over when the leader is killed,
//! and both serving the agent-injection webhook with the certificate they share.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use skylift_api::Satellite;
use skylift_e2e::{Process, Scratch, binary, free_port, wait_for};
use skylift_testkit::apiserver::ApiServer;
use skylift_testkit::http;

fn operator(identity: &str, ports: (u16, u16), kubeconfig: &std::path::Path) -> Command {
    let mut command = Command::new(binary("skylift-operator"));
    command
        .env("KUBECONFIG", kubeconfig)
        .env("SKYLIFT_OPERATOR_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("POD_NAMESPACE", "default")
        .args(["--identity", identity])
        .args(["--admin-listen", &format!("127.0.0.1:{}", ports.0)])
        .args(["--webhook-listen", &format!("127.0.0.1:{}", ports.1)])
        .args(["--leader-election-namespace", "default"]);
    command
}

/// Asks the webhook on `port` about a pod nothing selects, as the API server would: over
/// HTTPS to the Service's name, trusting the CA the replicas keep in their Secret.
async fn webhook_answers(client: &kube::Client, port: u16) -> Option<()> {
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "default")
        .get_opt("skylift-operator-webhook-tls")
        .await
        .ok()??;
    let ca = secret.data?.get("ca.crt")?.0.clone();
    let host = "skylift-operator-webhook.default.svc";
    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).ok()?)
        .resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .build()
        .ok()?;
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "e911857d-c318-11e8-bbad-025000000001", "operation": "CREATE",
        "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "default",
        "object": {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "app"}]}}}});
    let answer: Value = https
        .post(format!("https://{host}:{port}/inject-agent"))
        .json(&review)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let response = &answer["response"];
    (response["uid"] == "e911857d-c318-11e8-bbad-025000000001" && response["allowed"] == true)
        .then_some(())
}

async fn leader_gauge(port: u16) -> Option<i64> {
    let (code, body) = http::get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?;
    if code != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with("skylift_operator_leader "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("skylift-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn create_satellite(client: &kube::Client, name: &str) {
    let sat: Satellite = serde_json::from_value(json!({
        "apiVersion": "skylift.io/v1alpha1", "kind": "Satellite", "metadata": {"name": name},
        "spec": {"upstream": {"addresses": ["oap.example:11800"]}}}))
    .unwrap();
    Api::<Satellite>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &sat)
        .await
        .unwrap();
}

async fn deployment_exists(client: &kube::Client, name: &str) -> Option<()> {
    Api::<Deployment>::namespaced(client.clone(), "default")
        .get_opt(name)
        .await
        .ok()?
        .map(|_| ())
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_the_standby_takes_over_when_it_is_killed() {
    let server = ApiServer::start_with_skylift_crds().await.unwrap();
    let scratch = Scratch::new("leader");
    let kubeconfig = scratch.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let client = server.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");

    let ports = [free_port(), free_port()];
    let webhook_ports = [free_port(), free_port()];
    let mut replicas = [
        Process::spawn(
            "operator-a",
            operator("operator-a", (ports[0], webhook_ports[0]), &kubeconfig),
            scratch.path(),
        ),
        Process::spawn(
            "operator-b",
            operator("operator-b", (ports[1], webhook_ports[1]), &kubeconfig),
            scratch.path(),
        ),
    ];

    let leader = wait_for("a leader", Duration::from_secs(30), || holder(&leases)).await;
    let (leading, standby) = if leader == "operator-a" {
        (0, 1)
    } else {
        (1, 0)
    };
    wait_for(
        "the leader to report itself on /metrics",
        Duration::from_secs(10),
        || async { (leader_gauge(ports[leading]).await == Some(1)).then_some(()) },
    )
    .await;
    assert_eq!(
        leader_gauge(ports[standby]).await,
        Some(0),
        "the standby must not lead"
    );
    for port in ports {
        let (ready, _) = http::get(&format!("http://127.0.0.1:{port}/readyz"))
            .await
            .unwrap();
        let (healthy, _) = http::get(&format!("http://127.0.0.1:{port}/healthz"))
            .await
            .unwrap();
        assert_eq!(
            (ready, healthy),
            (200, 200),
            "both replicas are healthy and ready"
        );
    }

    let _ = rustls::crypto::ring::default_provider().install_default();
    for port in webhook_ports {
        wait_for(
            "the webhook served by each replica, the standby too",
            Duration::from_secs(20),
            || webhook_answers(&client, port),
        )
        .await;
    }

    create_satellite(&client, "before").await;
    wait_for("the leader to reconcile", Duration::from_secs(10), || {
        deployment_exists(&client, "before-satellite")
    })
    .await;

    replicas[leading].kill();
    let new_leader = wait_for(
        "the standby to take the Lease",
        Duration::from_secs(40),
        || async { holder(&leases).await.filter(|h| *h != leader) },
    )
    .await;
    assert_eq!(new_leader, replicas[standby].name);
    create_satellite(&client, "after").await;
    wait_for(
        "the new leader to reconcile",
        Duration::from_secs(15),
        || deployment_exists(&client, "after-satellite"),
    )
    .await;
    assert!(replicas[standby].is_running());

    // --log-format json (here through SKYLIFT_OPERATOR_LOG_FORMAT): every line is a JSON object.
    let output = replicas[standby].output();
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the operator logs");
    for line in lines {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            parsed.get("level").is_some() && parsed.get("timestamp").is_some(),
            "{line}"
        );
    }
}

#[test]
fn crd_subcommand_prints_every_crd() {
    let output = Command::new(binary("skylift-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let names: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let value = <Value as serde::Deserialize>::deserialize(doc).unwrap();
            value["metadata"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "oapservers.skylift.io",
            "satellites.skylift.io",
            "proxies.skylift.io",
            "uis.skylift.io",
            "banyandbs.skylift.io",
            "otelcollectors.skylift.io",
            "rovers.skylift.io",
            "swagents.skylift.io",
        ]
    );
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/skylift.io.yaml"
    ))
    .unwrap();
    assert_eq!(
        committed.trim_end(),
        text.trim_end(),
        "crds/ is stale: run hack/gen-crds.sh"
    );
}
