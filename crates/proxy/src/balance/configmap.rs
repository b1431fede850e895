//! Following the operator's `<name>-upstreams` ConfigMap (key `endpoints.json`) through
//! the Kubernetes API, in-cluster or from a kubeconfig. The proxy reads that one object and
//! nothing else (its Role allows only that).

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use skylift_api::UpstreamEndpoints;
use skylift_api::constants::upstreams::CONFIGMAP_KEY;

use crate::balance::upstream_set::{UpstreamSet, log_change};

/// Keeps `set` equal to the ConfigMap's endpoint list. A missing key or a document that
/// does not parse keeps the last good set (and is logged); a deleted ConfigMap too, as the
/// pool is then being removed.
pub async fn follow(client: kube::Client, namespace: String, name: String, set: UpstreamSet) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(configmap) => {
                let Some(text) = configmap.data.as_ref().and_then(|d| d.get(CONFIGMAP_KEY)) else {
                    tracing::warn!(%namespace, %name, "the ConfigMap has no {CONFIGMAP_KEY}; keeping the upstreams");
                    continue;
                };
                match UpstreamEndpoints::from_json(text) {
                    Ok(document) => log_change(&set.publish(&document)),
                    Err(err) => {
                        tracing::warn!(%namespace, %name, error = %err, "{CONFIGMAP_KEY} does not parse; keeping the upstreams")
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "watching the upstreams ConfigMap failed; retrying")
            }
        }
    }
}
