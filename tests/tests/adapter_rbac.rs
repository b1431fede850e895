//! The adapter's RBAC in `manifests/adapter-bundle.yaml` is exactly what it uses: the
//! adapter runs as a process on the API-server double with what the bundle creates for it
//! (the empty Secret it fills, the APIService whose caBundle it keeps), is read through
//! the aggregator's front-proxy certificate, and every request it made is held against
//! the bundle's own rules plus the two Kubernetes roles the bundle binds it to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use skylift_e2e::rbac::{Grant, assert_least_privilege, bundle_args, bundle_grants};
use skylift_e2e::{Process, Scratch, binary, free_port, repo_file, yaml_documents};
use skylift_testkit::aggregation;
use skylift_testkit::aggregator::Aggregator;
use skylift_testkit::apiserver::ApiServer;
use skylift_testkit::pki::TestCa;

const USER: &str = "system:serviceaccount:skylift-system:skylift-adapter";

/// The bundle's empty Secret, as `kubectl apply` would create it.
fn bundle_secret() -> Value {
    let bundle = "manifests/adapter-bundle.yaml";
    yaml_documents(&repo_file(bundle), bundle)
        .into_iter()
        .find(|d| d["kind"] == "Secret")
        .expect("the bundle creates the adapter's Secret")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundles_adapter_rbac_is_exactly_what_the_adapter_uses() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scratch = Scratch::new("adapter-rbac");
    // The CRDs installed, as the operator bundle installs them: the adapter watches
    // OAPServers.
    let api = ApiServer::start_with_skylift_crds().await.unwrap();
    let front_proxy_ca = TestCa::new("front-proxy-ca");
    aggregation::install(api.state(), &front_proxy_ca.cert_pem);
    api.state()
        .create("", "secrets", Some("skylift-system"), bundle_secret())
        .unwrap();
    let kubeconfig = scratch.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig_with_token(USER)).unwrap();
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Run as the bundle runs it: its args (but the addresses) and its environment. No OAP
    // answers here: the read is refused (503) after it was authorized.
    let args = bundle_args(
        "manifests/adapter-bundle.yaml",
        "skylift-adapter",
        &[
            ("--secure-listen", address.to_string()),
            (
                "--oap-url",
                format!("http://127.0.0.1:{}/graphql", free_port()),
            ),
        ],
    );
    let mut command = Command::new(binary("skylift-adapter"));
    command
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "skylift-system")
        .args(&args);
    let mut adapter = Process::spawn("skylift-adapter", command, scratch.path());
    let aggregator = Aggregator::new(api.client(), &front_proxy_ca, address).await;
    let selector = BTreeMap::from([("service".to_string(), "checkout".to_string())]);
    let answer = aggregator
        .read("shop", "skywalking.apache.org|service_cpm", &selector)
        .await;
    assert!(
        answer.as_ref().is_err_and(|e| e.starts_with("503")),
        "{answer:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(adapter.is_running(), "{}", adapter.output());
    adapter.kill();

    let own = bundle_grants("manifests/adapter-bundle.yaml", "skylift-adapter");
    assert_eq!(
        own.len(),
        3,
        "its Secret, its APIService, and OAPServers to read"
    );
    let mut grants = own;
    // What the bundle binds from Kubernetes' bootstrap roles, as Kubernetes defines them.
    grants.push(Grant::builtin(
        json!({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}),
        None,
    ));
    grants.push(Grant::builtin(
        json!({"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}),
        None,
    ));
    grants.push(Grant::builtin(
        json!({"apiGroups": [""], "resources": ["configmaps"],
               "resourceNames": ["extension-apiserver-authentication"], "verbs": ["get", "list", "watch"]}),
        Some("kube-system"),
    ));
    // Its own rules are all used; of Kubernetes' roles, token reviews serve bearer-token
    // callers (none here) and a single get is never needed beside the watch.
    assert_least_privilege(
        "the adapter",
        api.requests(),
        USER,
        &grants,
        &[
            ("authentication.k8s.io", "tokenreviews", "create"),
            ("", "configmaps", "get"),
        ],
    );
}
