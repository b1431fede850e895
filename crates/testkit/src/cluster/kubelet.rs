//! The kubelet's part, played by the test: there is no kubelet (nor scheduler), so pods are
//! created but never run. A test binds a pod to a node, as the scheduler does, and reports
//! it running and ready at an address, as the kubelet does. The EndpointSlice controller
//! publishes a pod only when its node exists, so there is one Node object.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The node pods are bound to.
pub const NODE: &str = "skylift-test-node";

/// Creates the Node once (a second call finds it).
pub async fn ensure_node(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}},
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
    try_run_pod(client, namespace, name, ip)
        .await
        .unwrap_or_else(|e| panic!("running pod {namespace}/{name}: {e}"));
}

/// As [`run_pod`], the node already made; an error (the pod went meanwhile) is returned.
async fn try_run_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    ip: IpAddr,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get(name).await?;
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
            .await?;
    }
    set_ready(&pods, name, ip, true).await
}

/// Reports the pod `namespace/name` as no longer ready (its readiness probe failing).
pub async fn unready_pod(client: &kube::Client, namespace: &str, name: &str, ip: IpAddr) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    set_ready(&pods, name, ip, false)
        .await
        .unwrap_or_else(|e| panic!("the status of pod {namespace}/{name}: {e}"));
}

async fn set_ready(
    pods: &Api<Pod>,
    name: &str,
    ip: IpAddr,
    ready: bool,
) -> Result<(), kube::Error> {
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
        .await?;
    Ok(())
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

/// A pod address no other pod of this test process has: 10.244.0.0/16.
pub fn next_pod_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(10, 244, (n / 250) as u8, (n % 250 + 2) as u8))
}

/// Plays the kubelet for every pod of a namespace: each pod that is not running and
/// ready (a ReplicaSet's, a StatefulSet's, a test's own) is bound and reported ready at an
/// address of its own, a few times a second. Stops when dropped.
pub struct Kubelet {
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Starts on the caller's runtime.
    pub fn start(client: &kube::Client, namespace: &str) -> Kubelet {
        let client = client.clone();
        let namespace = namespace.to_string();
        let task = tokio::spawn(async move {
            ensure_node(&client).await;
            let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            loop {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    for pod in list.items {
                        let ready = pod
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                        if ready || pod.metadata.deletion_timestamp.is_some() {
                            continue;
                        }
                        if let Some(name) = pod.metadata.name.as_deref() {
                            // A pod gone meanwhile is no one's concern.
                            let _ = try_run_pod(&client, &namespace, name, next_pod_ip()).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Kubelet { task }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}
