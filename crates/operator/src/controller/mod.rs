//! The reconcilers and what they share: the context (client, caches, metrics, event
//! recorder), the error type, and the apply step.

mod apply;
pub mod oapserver;
pub mod pool;
pub mod watch;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use skylift_api::{OAPServer, Proxy, Satellite};

use crate::metrics::Metrics;

pub use apply::Applied;

/// Caches of everything the reconcilers read. Reconcilers never list or get from the API
/// server; they read these and write only what differs.
#[derive(Clone)]
pub struct Stores {
    pub oapservers: Store<OAPServer>,
    pub satellites: Store<Satellite>,
    pub proxies: Store<Proxy>,
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub service_accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub config_maps: Store<ConfigMap>,
    pub hpas: Store<HorizontalPodAutoscaler>,
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
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
    #[error(
        "{kind} {name} already exists and is controlled by {owner}; rename this resource or remove that object"
    )]
    NameConflict {
        kind: &'static str,
        name: String,
        owner: String,
    },
}

impl Error {
    /// Short, stable name of the failure for metrics labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "ApplyFailed",
            Error::Delete { .. } => "DeleteFailed",
            Error::Status(_) => "StatusFailed",
            Error::NameConflict { .. } => "NameConflict",
        }
    }
}
