//! The reconcilers and what they share: the context (client, caches, metrics, event
//! recorder), the error type, and the apply step.

mod apply;
pub mod banyandb;
pub mod cache;
pub mod collector;
pub mod oapserver;
pub mod pool;
mod report;
pub mod rover;
pub mod sources;
pub mod swagent;
pub mod ui;
pub mod watch;
mod workload;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use skylift_api::{BanyanDB, OAPServer, OTelCollector, Proxy, Rover, Satellite, SwAgent, UI};

use crate::metrics::Metrics;

pub use apply::Applied;
use cache::OwnedCache;
pub(crate) use report::report_failure;
pub use report::{FailureKey, ReportedFailures};

/// Caches of everything the reconcilers read. Reconcilers never list or get from the API
/// server; they read these and write only what differs. Generated objects are cached as
/// JSON text ([`cache`]); the resources and pods, which are read field by field, typed.
#[derive(Clone)]
pub struct Stores {
    pub oapservers: Store<OAPServer>,
    pub satellites: Store<Satellite>,
    pub proxies: Store<Proxy>,
    pub uis: Store<UI>,
    pub banyandbs: Store<BanyanDB>,
    pub collectors: Store<OTelCollector>,
    pub rovers: Store<Rover>,
    pub swagents: Store<SwAgent>,
    pub pods: Store<Pod>,
    /// ConfigMaps users name (OAP configuration files, collector configuration): their
    /// keys and a hash of their content, never the content itself.
    pub config_sources: Store<k8s_openapi::api::core::v1::ConfigMap>,
    pub deployments: OwnedCache,
    pub stateful_sets: OwnedCache,
    pub daemon_sets: OwnedCache,
    pub ingresses: OwnedCache,
    pub cluster_role_bindings: OwnedCache,
    pub services: OwnedCache,
    pub service_accounts: OwnedCache,
    pub roles: OwnedCache,
    pub role_bindings: OwnedCache,
    pub config_maps: OwnedCache,
    pub hpas: OwnedCache,
}

impl Stores {
    /// The rollout of the generated Deployment `namespace/name`, which should run
    /// `desired` replicas.
    pub(crate) fn deployment_rollout(
        &self,
        namespace: &str,
        name: &str,
        desired: i32,
    ) -> crate::status::Rollout {
        let deployment: Option<k8s_openapi::api::apps::v1::Deployment> = self
            .deployments
            .get(namespace, name)
            .and_then(|cached| cached.typed());
        crate::status::Rollout::of(deployment.as_ref(), desired)
    }
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    /// The image pools run unless their resource names one (`--proxy-image`).
    pub proxy_image: String,
    /// The ClusterRole Rovers are bound to (`--rover-cluster-role`).
    pub rover_cluster_role: String,
    /// The namespaces Rovers may run in (`--rover-namespaces`); none by default.
    pub rover_namespaces: Vec<String>,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// The failure last reported for each resource.
    pub failures: ReportedFailures,
}

/// Why a reconcile failed. Each variant names a category for metrics and events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status: {0}")]
    Status(#[source] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("{}", name_conflict(kind, name, owner.as_deref()))]
    NameConflict {
        kind: &'static str,
        name: String,
        /// The object's controller (`Kind name`), if it has one.
        owner: Option<String>,
    },
}

/// What a user reads about an object the operator will not take over.
pub(crate) fn name_conflict(kind: &str, name: &str, owner: Option<&str>) -> String {
    let whose = match owner {
        Some(owner) => format!("is controlled by {owner}"),
        None => "was not made by skylift (it has no controller)".into(),
    };
    format!(
        "{kind} {name} already exists and {whose}; it is left alone: rename this resource or remove that object"
    )
}

impl Error {
    /// The failure in words for a status condition: the API server's own message rather
    /// than the whole error value.
    pub fn explain(&self) -> String {
        let said = |source: &kube::Error| match source {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        };
        match self {
            Error::Apply { kind, name, source } => {
                format!("applying {kind} {name}: {}", said(source))
            }
            Error::Delete { kind, name, source } => {
                format!("deleting {kind} {name}: {}", said(source))
            }
            Error::Status(source) => format!("writing the status: {}", said(source)),
            other => other.to_string(),
        }
    }

    /// Short, stable name of the failure for metrics labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "ApplyFailed",
            Error::Delete { .. } => "DeleteFailed",
            Error::Status(_) => "StatusFailed",
            Error::Finalizer(_) => "FinalizerFailed",
            Error::NameConflict { .. } => "NameConflict",
        }
    }
}
