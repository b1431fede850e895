//! What kube-aggregator does for the HPA controller when it reads an External metric: it
//! reaches the adapter by its Service name, trusts only the APIService's `caBundle`, presents
//! its front-proxy client certificate and names the caller in `X-Remote-*` headers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::aggregation::{ADAPTER_HOST, APISERVICE, HPA_USER};
use crate::pki::TestCa;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use serde_json::Value;

pub struct Aggregator {
    client: reqwest::Client,
}

/// `k=v,k2=v2`, percent-encoded for a query string.
fn selector_query(selector: &BTreeMap<String, String>) -> String {
    let joined: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    joined
        .join(",")
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl Aggregator {
    /// Waits for the adapter to publish its `caBundle`, then trusts that only.
    pub async fn new(
        api: kube::Client,
        front_proxy_ca: &TestCa,
        adapter: SocketAddr,
    ) -> Aggregator {
        let apiservices: Api<APIService> = Api::all(api);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let bundle = loop {
            let published = apiservices
                .get(APISERVICE)
                .await
                .ok()
                .and_then(|s| s.spec?.ca_bundle)
                .and_then(|b| String::from_utf8(b.0).ok());
            if let Some(bundle) = published {
                break bundle;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the adapter did not publish its caBundle in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let identity = reqwest::Identity::from_pem(
            front_proxy_ca
                .client_identity_pem("front-proxy-client")
                .as_bytes(),
        )
        .expect("a client identity");
        let client = reqwest::Client::builder()
            .tls_certs_only(
                reqwest::Certificate::from_pem_bundle(bundle.as_bytes()).expect("a PEM bundle"),
            )
            .identity(identity)
            .resolve(ADAPTER_HOST, adapter)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        Aggregator { client }
    }

    /// The HPA controller's read of `metric` in `namespace`: the items' values, or the
    /// status code and body of a refusal.
    pub async fn read(
        &self,
        namespace: &str,
        metric: &str,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, String> {
        let url = format!(
            "https://{ADAPTER_HOST}:443/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{}?labelSelector={}",
            metric.replace('|', "%7C"),
            selector_query(selector)
        );
        let response = self
            .client
            .get(url)
            .header("X-Remote-User", HPA_USER)
            .header("X-Remote-Group", "system:serviceaccounts")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        Ok(body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["value"].as_str().map(String::from))
            .collect())
    }
}
