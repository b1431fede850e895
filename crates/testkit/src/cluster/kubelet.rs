//! The kubelet's part, played by the test: there is no kubelet (nor scheduler), so pods are
//! created but never run. A test binds a pod to a node, as the scheduler does, and reports
//! it running and ready at an address, as the kubelet does. The EndpointSlice controller
//! publishes a pod only when its node exists, so there is one Node object.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The node pods are bound to.
pub const NODE: &str = "skylift-test-node";

/// Creates the Node once (a second call finds it).
pub async fn ensure_node(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
    }))
    .unwrap();
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => panic!("creating Node {NODE}: {err}"),
    }
}

/// Binds the pod `namespace/name` to the node (unless it is bound) and reports it running
/// and ready at `ip`.
pub async fn run_pod(client: &kube::Client, namespace: &str, name: &str, ip: IpAddr) {
    ensure_node(client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("pod {namespace}/{name}: {e}"));
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_none()
    {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
        });
        let _: serde_json::Value = pods
            .create_subresource("binding", name, &PostParams::default(), &binding)
            .await
            .unwrap_or_else(|e| panic!("binding pod {namespace}/{name}: {e}"));
    }
    set_ready(&pods, name, ip, true).await;
}

/// Reports the pod `namespace/name` as no longer ready (its readiness probe failing).
pub async fn unready_pod(client: &kube::Client, namespace: &str, name: &str, ip: IpAddr) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    set_ready(&pods, name, ip, false).await;
}

async fn set_ready(pods: &Api<Pod>, name: &str, ip: IpAddr, ready: bool) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = if ready { "True" } else { "False" };
    let body = json!({"status": {
        "phase": "Running",
        "hostIP": "10.0.0.1",
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
            {"type": "Ready", "status": status, "lastTransitionTime": now},
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .unwrap_or_else(|e| panic!("the status of pod {name}: {e}"));
}

/// The names of the pods in `namespace` matching `selector` (`key=value,...`) that are not
/// being deleted.
pub async fn pods(client: &kube::Client, namespace: &str, selector: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.list(&ListParams::default().labels(selector))
        .await
        .unwrap_or_else(|e| panic!("listing pods {selector} in {namespace}: {e}"))
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect()
}
