//! skylift-operator as a process: started from a kubeconfig with no other configuration,
//! two replicas electing one leader, the standby taking over when the leader is killed.

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

fn operator(identity: &str, admin_port: u16, kubeconfig: &std::path::Path) -> Command {
    let mut command = Command::new(binary("skylift-operator"));
    command
        .env("KUBECONFIG", kubeconfig)
        .env("SKYLIFT_OPERATOR_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .args(["--identity", identity])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--leader-election-namespace", "default"]);
    command
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
    let mut replicas = [
        Process::spawn(
            "operator-a",
            operator("operator-a", ports[0], &kubeconfig),
            scratch.path(),
        ),
        Process::spawn(
            "operator-b",
            operator("operator-b", ports[1], &kubeconfig),
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
fn crd_subcommand_prints_the_three_crds() {
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
            "proxies.skylift.io"
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
