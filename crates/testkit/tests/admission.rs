//! The double's mutating admission, held to kube-apiserver's rules: a JSON Patch answer
//! is applied to the object before it is stored; a refusal carries the webhook's name and
//! a code of at least 400; an answer for another request, or no answer in time, fails
//! the request under `failurePolicy: Fail` and is skipped under `Ignore`; webhooks whose
//! rules or selectors do not match are not called.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use skylift_testkit::apiserver::ApiServer;
use skylift_testkit::pki::TestCa;

/// A webhook over TLS answering by path, counting calls per path.
struct Webhook {
    port: u16,
    ca: String,
    calls: Arc<Mutex<BTreeMap<String, u32>>>,
}

fn answer(path: &str, review: &Value) -> Value {
    let uid = review["request"]["uid"].clone();
    let response = match path {
        "/label" => {
            let patch = json!([{"op": "add", "path": "/metadata/labels/injected", "value": "yes"}]);
            json!({"uid": uid, "allowed": true, "patchType": "JSONPatch",
                   "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string())})
        }
        "/deny" => {
            json!({"uid": uid, "allowed": false, "status": {"message": "no pods on Sundays"}})
        }
        "/other-uid" => json!({"uid": "not-the-request", "allowed": true}),
        _ => json!({"uid": uid, "allowed": true}),
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

impl Webhook {
    async fn start() -> Webhook {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = TestCa::new("webhook-ca");
        let (cert, key) = ca.server_identity(&["localhost"]);
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
        let counted = calls.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                            let counted = counted.clone();
                            async move {
                                let path = request.uri().path().to_string();
                                *counted.lock().unwrap().entry(path.clone()).or_default() += 1;
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let review: Value = serde_json::from_slice(&body).unwrap();
                                if path == "/slow" {
                                    tokio::time::sleep(Duration::from_secs(5)).await;
                                }
                                let answer = answer(&path, &review).to_string();
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from(answer),
                                )))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Webhook {
            port,
            ca: ca.cert_pem,
            calls,
        }
    }

    fn calls(&self, path: &str) -> u32 {
        self.calls.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// A MutatingWebhookConfiguration calling `path` for pod creations, with `extra` merged
    /// into its one webhook.
    fn configuration(&self, name: &str, path: &str, extra: Value) -> MutatingWebhookConfiguration {
        let mut webhook = json!({
            "name": format!("{name}.test"), "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"url": format!("https://localhost:{}{path}", self.port),
                             "caBundle": base64::engine::general_purpose::STANDARD.encode(&self.ca)},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        });
        for (key, value) in extra.as_object().unwrap() {
            webhook[key] = value.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "webhooks": [webhook]})).unwrap()
    }
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": "app:1"}]}}))
    .unwrap()
}

/// A double (which has `kube-system`, as a cluster does) with the namespace `shop`.
async fn cluster() -> (ApiServer, kube::Client) {
    let server = ApiServer::start(&[]).await.unwrap();
    let client = server.client();
    for name in ["shop"] {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
    }
    (server, client)
}

#[tokio::test]
async fn a_patch_is_applied_and_a_refusal_names_the_webhook() {
    let (_server, client) = cluster().await;
    let webhook = Webhook::start().await;
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let post = PostParams::default();

    configurations
        .create(&post, &webhook.configuration("label", "/label", json!({})))
        .await
        .unwrap();
    let created = pods
        .create(&post, &pod("a", json!({"app": "shop"})))
        .await
        .unwrap();
    assert_eq!(created.metadata.labels.unwrap()["injected"], "yes");
    let stored = pods.get("a").await.unwrap();
    assert_eq!(
        stored.metadata.labels.unwrap()["injected"],
        "yes",
        "stored as patched"
    );
    // Other kinds are not sent to a webhook registered for pods.
    let config_map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .create(&post, &config_map)
        .await
        .unwrap();
    assert_eq!(webhook.calls("/label"), 1);
    configurations
        .delete("label", &DeleteParams::default())
        .await
        .unwrap();

    configurations
        .create(&post, &webhook.configuration("deny", "/deny", json!({})))
        .await
        .unwrap();
    let Err(kube::Error::Api(status)) = pods.create(&post, &pod("b", json!({}))).await else {
        panic!("a refusal refuses");
    };
    assert_eq!(status.code, 400, "a code below 400 becomes 400");
    assert_eq!(
        status.message,
        "admission webhook \"deny.test\" denied the request: no pods on Sundays"
    );
    assert!(pods.get_opt("b").await.unwrap().is_none());
}

#[tokio::test]
async fn failures_refuse_under_fail_and_are_skipped_under_ignore() {
    let (server, client) = cluster().await;
    let webhook = Webhook::start().await;
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let post = PostParams::default();

    // failurePolicy defaults to Fail in admissionregistration/v1.
    configurations
        .create(
            &post,
            &webhook.configuration("uid", "/other-uid", json!({})),
        )
        .await
        .unwrap();
    let Err(kube::Error::Api(status)) = pods.create(&post, &pod("a", json!({}))).await else {
        panic!("an answer to another request fails the call");
    };
    assert_eq!(status.code, 500);
    assert!(
        status
            .message
            .contains("failed calling webhook \"uid.test\""),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("expected response.uid="),
        "{}",
        status.message
    );
    configurations
        .delete("uid", &DeleteParams::default())
        .await
        .unwrap();

    configurations
        .create(
            &post,
            &webhook.configuration(
                "slow",
                "/slow",
                json!({"failurePolicy": "Ignore", "timeoutSeconds": 1}),
            ),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let created = pods.create(&post, &pod("b", json!({}))).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout holds: {:?}",
        started.elapsed()
    );
    assert!(
        created.metadata.labels.unwrap_or_default().is_empty(),
        "created as sent"
    );
    assert!(
        server
            .state()
            .webhook_failures()
            .iter()
            .any(|(w, _)| w == "slow.test")
    );
}

#[tokio::test]
async fn webhooks_whose_selectors_do_not_match_are_not_called() {
    let (_server, client) = cluster().await;
    let webhook = Webhook::start().await;
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let post = PostParams::default();
    configurations
        .create(&post, &webhook.configuration("selective", "/label", json!({
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                                        "operator": "NotIn", "values": ["kube-system"]}]},
            "objectSelector": {"matchLabels": {"inject": "yes"}},
        })))
        .await
        .unwrap();
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let shop: Api<Pod> = Api::namespaced(client.clone(), "shop");
    system
        .create(&post, &pod("a", json!({"inject": "yes"})))
        .await
        .unwrap();
    shop.create(&post, &pod("b", json!({"inject": "no"})))
        .await
        .unwrap();
    assert_eq!(webhook.calls("/label"), 0);
    let selected = shop
        .create(&post, &pod("c", json!({"inject": "yes"})))
        .await
        .unwrap();
    assert_eq!(selected.metadata.labels.unwrap()["injected"], "yes");
    assert_eq!(webhook.calls("/label"), 1);
}
