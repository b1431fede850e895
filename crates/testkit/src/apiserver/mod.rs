//! A stateful Kubernetes API-server double.
//!
//! It follows kube-apiserver's semantics for what skylift uses, so a controller tested
//! against it behaves the same against a real cluster: typed CRUD with the real URL layout,
//! label and field selectors, list + watch with resource versions (410 Gone for versions
//! it no longer holds, selector-aware ADDED/DELETED), server-side apply per field manager,
//! merge patches, `status` and `scale` subresources, `metadata.generation`, optimistic
//! concurrency (409 Conflict), no-op writes that keep the resourceVersion, garbage
//! collection of owned objects, namespaces that must exist, and CRD admission: defaults,
//! pruning, OpenAPI constraints and CEL rules, rejected with kube-apiserver's messages.
//! Delegating servers get `TokenReview` (for tokens a test registers) and
//! `SubjectAccessReview` decided from the stored RBAC objects.
//! It does not run kube-controller-manager's workload controllers: tests play the
//! Deployment controller and the kubelet by writing status and pods themselves.

mod admission;
mod http;
mod merge;
mod resources;
mod reviews;
mod schema;
mod selector;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
pub use state::{ApiError, RequestAttributes, State, WriteStats};

/// A running double on a loopback port.
pub struct ApiServer {
    address: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Starts a double on `127.0.0.1` with skylift's own CRDs installed.
    pub async fn start_with_skylift_crds() -> std::io::Result<Self> {
        let crds: Vec<Value> = skylift_api::crds()
            .iter()
            .map(|c| serde_json::to_value(c).expect("CRDs serialize"))
            .collect();
        Self::start(&crds).await
    }

    /// Starts a double on `127.0.0.1` with the given CRDs installed.
    pub async fn start(crds: &[Value]) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("a valid address"), crds).await
    }

    pub async fn start_on(address: SocketAddr, crds: &[Value]) -> std::io::Result<Self> {
        let state = Arc::new(State::default());
        for crd in crds {
            state
                .create(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    None,
                    crd.clone(),
                )
                .map_err(|e| std::io::Error::other(e.message))?;
        }
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let router = http::router(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(ApiServer {
            address,
            state,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The state, for assertions that need no HTTP.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// A kube client talking to this double.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("a valid URL"));
        kube::Client::try_from(config).expect("a client for a plain HTTP URL")
    }

    /// A kubeconfig pointing at this double, for programs started as processes.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: double\n    namespace: default\ncurrent-context: double\nusers:\n- name: double\n  user: {{}}\n",
            self.url()
        )
    }

    pub fn writes(&self) -> WriteStats {
        self.state.write_stats()
    }

    /// Every distinct request served so far, with its RBAC attributes.
    pub fn requests(&self) -> Vec<RequestAttributes> {
        self.state.requests()
    }

    /// A kubeconfig whose user presents `token`: requests made with it are recorded as
    /// that user's (see [`ApiServer::requests`]).
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        self.kubeconfig()
            .replace("  user: {}\n", &format!("  user:\n    token: {token}\n"))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
