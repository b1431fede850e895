//! skylift-adapter as the cluster sees it: HTTPS with a certificate it made for itself and
//! published in the APIService, the aggregator authenticated by its front-proxy client
//! certificate (CA from the watched extension-apiserver-authentication ConfigMap), bearer
//! tokens by TokenReview, every request authorized by SubjectAccessReview — all against the
//! API-server double, with a stand-in OAP behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skylift_adapter::access::Access;
use skylift_adapter::bootstrap;
use skylift_adapter::guard::guarded;
use skylift_adapter::metrics::Metrics;
use skylift_adapter::oaps::Directory;
use skylift_adapter::reader::{OapConfig, OapReader};
use skylift_adapter::server::{Adapter, router};
use skylift_adapter::start::{self, Certificates};
use skylift_testkit::aggregation::{self, APISERVICE};
use skylift_testkit::apiserver::ApiServer;
use skylift_testkit::oap::graphql::{GraphqlOap, OapData};
use skylift_testkit::pki::TestCa;

const SERVICE_HOST: &str = aggregation::ADAPTER_HOST;
const HPA: &str = aggregation::HPA_USER;
const READ: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/skywalking/skywalking.apache.org%7Cservice_cpm?labelSelector=service%3Dcheckout";

/// A client certificate (clientAuth) for `common_name`, signed by `ca`.
fn client_cert(ca: &TestCa, common_name: &str) -> reqwest::Identity {
    reqwest::Identity::from_pem(ca.client_identity_pem(common_name).as_bytes()).unwrap()
}

struct Cluster {
    api: ApiServer,
    oap: GraphqlOap,
    front_proxy_ca: TestCa,
    adapter: SocketAddr,
}

async fn start_adapter(client: kube::Client, oap_url: String) -> SocketAddr {
    let metrics = Arc::new(Metrics::default());
    let access = Access::new(client.clone(), Duration::from_secs(10));
    let mut settings = bootstrap::Settings::new(
        "skylift-adapter",
        "skylift-system",
        ("skylift-system".into(), "skylift-adapter-tls".into()),
    );
    settings.ca_bundle_for = Some(bootstrap::CaBundleTarget::ApiService(APISERVICE.into()));
    settings.check_every = Duration::from_millis(500);
    let reader = OapReader::new(OapConfig {
        url: oap_url,
        timeout: Duration::from_secs(2),
        basic_auth: None,
    })
    .unwrap();
    let adapter = Arc::new(Adapter::new(
        "skywalking.apache.org".into(),
        HashMap::new(),
        Arc::new(Directory::single(reader)),
        Duration::from_secs(10),
        metrics.clone(),
    ));
    let app = guarded(router(adapter), access.clone(), metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(start::run(
        client,
        access,
        Certificates::SelfManaged(settings),
        listener,
        app,
    ));
    address
}

async fn cluster() -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = ApiServer::start(&[]).await.unwrap();
    let front_proxy_ca = TestCa::new("front-proxy-ca");
    aggregation::install(api.state(), &front_proxy_ca.cert_pem);
    api.state()
        .add_token("hpa-token", HPA, &["system:serviceaccounts"]);
    api.state().add_token("jane-token", "jane", &[]);

    let oap = GraphqlOap::start(OapData {
        expressions: HashMap::from([(
            "latest(service_cpm)".to_string(),
            Some("1500.5".to_string()),
        )]),
        ..OapData::default()
    })
    .await
    .unwrap();
    let adapter = start_adapter(api.client(), oap.url()).await;
    Cluster {
        api,
        oap,
        front_proxy_ca,
        adapter,
    }
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Cluster {
    /// The caBundle the adapter published, once it has.
    async fn ca_bundle(&self) -> String {
        let api: Api<APIService> = Api::all(self.api.client());
        eventually("the APIService's caBundle", async || {
            let bundle = api.get(APISERVICE).await.ok()?.spec?.ca_bundle?;
            Some(String::from_utf8(bundle.0).unwrap())
        })
        .await
    }

    /// A client that trusts only the published caBundle and reaches the adapter by its
    /// Service name, as the aggregator does.
    async fn client(&self, identity: Option<reqwest::Identity>) -> reqwest::Client {
        let roots =
            reqwest::Certificate::from_pem_bundle(self.ca_bundle().await.as_bytes()).unwrap();
        let mut builder = reqwest::Client::builder()
            .tls_certs_only(roots)
            .resolve(SERVICE_HOST, self.adapter)
            .timeout(Duration::from_secs(5));
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder.build().unwrap()
    }

    /// The aggregator: the front-proxy certificate and the caller's identity in headers.
    async fn aggregator(&self) -> reqwest::Client {
        self.client(Some(client_cert(
            &self.front_proxy_ca,
            "front-proxy-client",
        )))
        .await
    }
}

fn url(path: &str) -> String {
    format!("https://{SERVICE_HOST}:443{path}")
}

async fn get(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn as_user(
    client: &reqwest::Client,
    path: &str,
    user: &str,
    groups: &[&str],
) -> reqwest::RequestBuilder {
    let mut request = client.get(url(path)).header("X-Remote-User", user);
    for group in groups {
        request = request.header("X-Remote-Group", *group);
    }
    request
}

// The adapter's URL uses port 443 in the name only; `resolve` sends it to the test port.
#[tokio::test]
async fn the_aggregator_and_the_hpa_are_served_over_the_self_made_certificate() {
    let cluster = cluster().await;
    let aggregator = cluster.aggregator().await;
    let secret: Secret = Api::namespaced(cluster.api.client(), "skylift-system")
        .get("skylift-adapter-tls")
        .await
        .unwrap();
    assert_eq!(
        secret.type_.as_deref(),
        Some(bootstrap::SECRET_TYPE),
        "the type the bundle declares"
    );

    // The availability check: discovery as system:kube-aggregator, which names no group,
    // on h2; allowed because every authenticated user may read discovery.
    let response = as_user(
        &aggregator,
        "/apis/external.metrics.k8s.io/v1beta1",
        "system:kube-aggregator",
        &[],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["kind"], "APIResourceList");

    // The HPA's read, proxied by the aggregator.
    let (status, body) = get(as_user(
        &aggregator,
        READ,
        HPA,
        &["system:serviceaccounts", "system:authenticated"],
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "1500500m");

    // Someone RBAC does not allow.
    let (status, body) = get(as_user(
        &aggregator,
        READ,
        "jane",
        &["system:authenticated"],
    ))
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "Forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("User \"jane\" cannot list resource \"skywalking.apache.org|service_cpm\" in API group \"external.metrics.k8s.io\" in the namespace \"skywalking\""),
        "{body}"
    );

    // The front proxy must say who the caller is.
    let (status, body) = get(aggregator.get(url(READ))).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("Unauthorized"))
    );

    // /metrics for an allowed scraper.
    let (status, body) = get(as_user(
        &aggregator,
        "/metrics",
        "prometheus",
        &["system:masters"],
    ))
    .await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap();
    assert!(
        text.contains("skylift_adapter_requests_total{kind=\"read\",code=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("skylift_adapter_authorizations_total{decision=\"denied\"} 1"),
        "{text}"
    );
    assert_eq!(cluster.oap.metric_queries(), 1);
}

#[tokio::test]
async fn tokens_are_reviewed_and_anonymous_callers_reach_only_health() {
    let cluster = cluster().await;
    let plain = cluster.client(None).await;
    let (status, body) = get(plain.get(url(READ)).bearer_auth("hpa-token")).await;
    assert_eq!(
        status, 200,
        "a token the cluster accepts, for a user RBAC allows: {body}"
    );
    let (status, body) = get(plain.get(url(READ)).bearer_auth("jane-token")).await;
    assert_eq!(status, 403, "{body}");
    for path in [READ, "/apis", "/metrics", "/openapi/v2"] {
        let (status, body) = get(plain.get(url(path)).bearer_auth("forged")).await;
        assert_eq!(status, 401, "{path} with a bad token: {body}");
        let (status, body) = get(plain.get(url(path))).await;
        assert_eq!(status, 401, "{path} anonymously: {body}");
        assert_eq!(body["kind"], "Status");
        // Anonymous identity headers count for nothing without the front-proxy certificate.
        let (status, _) = get(as_user(&plain, path, HPA, &["system:masters"])).await;
        assert_eq!(status, 401, "{path} with forged X-Remote-User");
    }
    for path in ["/healthz", "/livez", "/readyz"] {
        let (status, _) = get(plain.get(url(path))).await;
        assert_eq!(status, 200, "{path}");
    }
}

#[tokio::test]
async fn only_allowed_front_proxy_certificates_count_and_a_rotated_ca_is_followed() {
    let cluster = cluster().await;
    // Signed by the right CA, but not a name in requestheader-allowed-names.
    let intruder = cluster
        .client(Some(client_cert(&cluster.front_proxy_ca, "intruder")))
        .await;
    let (status, _) = get(as_user(&intruder, READ, HPA, &["system:masters"])).await;
    assert_eq!(status, 401);
    // Signed by some other CA: refused at the handshake.
    let stranger_ca = TestCa::new("stranger");
    let stranger = cluster
        .client(Some(client_cert(&stranger_ca, "front-proxy-client")))
        .await;
    assert!(as_user(&stranger, READ, HPA, &[]).send().await.is_err());

    // The cluster rotates the front-proxy CA: new certificates work, old ones stop.
    let rotated = TestCa::new("front-proxy-ca-2");
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.api.client(), "kube-system");
    configmaps
        .patch(
            "extension-apiserver-authentication",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"requestheader-client-ca-file": rotated.cert_pem}})),
        )
        .await
        .unwrap();
    let fresh = cluster
        .client(Some(client_cert(&rotated, "front-proxy-client")))
        .await;
    eventually("the rotated CA", async || {
        let response = as_user(&fresh, READ, HPA, &[]).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let old = cluster.aggregator().await;
    assert!(as_user(&old, READ, HPA, &[]).send().await.is_err());
}

#[tokio::test]
async fn a_second_replica_serves_the_certificate_the_first_one_made() {
    let cluster = cluster().await;
    let bundle = cluster.ca_bundle().await;
    let secrets: Api<Secret> = Api::namespaced(cluster.api.client(), "skylift-system");
    let before = secrets.get("skylift-adapter-tls").await.unwrap();
    let second = start_adapter(cluster.api.client(), cluster.oap.url()).await;
    let client = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(bundle.as_bytes()).unwrap())
        .resolve(SERVICE_HOST, second)
        .build()
        .unwrap();
    // Trusted through the same caBundle once it serves.
    eventually("the second replica serving", async || {
        let response = client.get(url("/healthz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let after = secrets.get("skylift-adapter-tls").await.unwrap();
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "not rewritten"
    );

    // An APIService someone set to skip verification is put right.
    let apiservices: Api<APIService> = Api::all(cluster.api.client());
    let mut apiservice = apiservices.get(APISERVICE).await.unwrap();
    let spec = apiservice.spec.as_mut().unwrap();
    spec.ca_bundle = None;
    spec.insecure_skip_tls_verify = Some(true);
    apiservices
        .replace(APISERVICE, &PostParams::default(), &apiservice)
        .await
        .unwrap();
    eventually("caBundle restored", async || {
        let spec = apiservices.get(APISERVICE).await.ok()?.spec?;
        (spec.insecure_skip_tls_verify != Some(true) && spec.ca_bundle.is_some()).then_some(())
    })
    .await;
}
