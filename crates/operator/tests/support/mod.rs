//! Shared set-up for controller tests: the real controllers running against the API-server
//! double, plus helpers that play kube-controller-manager and the kubelet.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use skylift_operator::metrics::Metrics;
use skylift_operator::run::{Settings, run};
use skylift_testkit::apiserver::ApiServer;
use tokio::sync::oneshot;

pub const NS: &str = "observability";

pub struct Cluster {
    pub server: ApiServer,
    pub client: Client,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// A double with skylift's CRDs and namespace `observability`, and the operator running.
    pub async fn start() -> Cluster {
        Self::start_with(Settings::default()).await
    }

    /// Like [`Cluster::start`], with the operator's settings given.
    pub async fn start_with(settings: Settings) -> Cluster {
        let server = ApiServer::start_with_skylift_crds().await.unwrap();
        let client = server.client();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
            )
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let operator = tokio::spawn(run(client.clone(), settings, metrics.clone(), async {
            let _ = stopped.await;
        }));
        let cluster = Cluster {
            server,
            client,
            metrics,
            stop: Some(stop),
            operator: Some(operator),
        };
        eventually("the operator fills its caches", || async {
            cluster.metrics.is_ready().then_some(())
        })
        .await;
        cluster
    }

    /// Creates another namespace.
    pub async fn namespace(&self, name: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn create<K>(&self, object: Value) -> K
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_json::from_value(object).unwrap();
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap()
    }

    /// Merge-patches object `name` of kind `K`, as `kubectl patch --type merge` does.
    pub async fn merge<K>(&self, name: &str, patch: &Value) -> K
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        self.api::<K>()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap()
    }

    pub async fn get<K>(&self, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        self.api::<K>().get_opt(name).await.unwrap()
    }

    /// Plays the kubelet: a pod with these labels, Ready or not, with an IP.
    pub async fn pod(&self, name: &str, labels: Value, ip: &str, ready: bool) {
        let pods = self.api::<Pod>();
        if pods.get_opt(name).await.unwrap().is_none() {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"containers": [{"name": "oap", "image": "apache/skywalking-oap-server:10.2.0"}]},
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
        let status = json!({"status": {
            "phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// Plays the Deployment controller: reports every replica ready.
    pub async fn deployment_ready(&self, name: &str) {
        let deployments = self.api::<Deployment>();
        let deployment = deployments.get(name).await.unwrap();
        let replicas = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let status = json!({"status": {
            "observedGeneration": deployment.metadata.generation, "replicas": replicas,
            "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas,
        }});
        deployments
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// Plays the StatefulSet controller: reports every replica ready.
    pub async fn stateful_set_ready(&self, name: &str) {
        use k8s_openapi::api::apps::v1::StatefulSet;
        let sets = self.api::<StatefulSet>();
        let set = sets.get(name).await.unwrap();
        let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = json!({"status": {
            "observedGeneration": set.metadata.generation, "replicas": replicas,
            "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas,
        }});
        sets.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(operator) = self.operator.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
        }
    }
}

/// The condition of `type_` in a status's conditions.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a status carries a `Ready` condition that is `True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    condition(conditions, "Ready").is_some_and(|c| c.status == "True")
}

/// Polls `check` until it gives a value, failing the test after 10 seconds with `what`.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, Duration::from_secs(10), check).await
}

pub async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
