//! skylift's Kubernetes API: the `OAPServer`, `Satellite` and `Proxy` custom resources
//! (group `skylift.io`, version `v1alpha1`) and the constants and formats that cross the
//! boundary between the operator, the proxy and the adapter.

// Repeated `printcolumn(...)` arguments of the CustomResource derive look like duplicated
// attributes to clippy; they are distinct columns.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod constants;
pub mod duration;
pub mod endpoints;
pub mod label_selector;
#[cfg(feature = "logging")]
pub mod logging;
pub mod metric_selector;
pub mod oapserver;
pub mod pool;
pub mod proxy;
#[cfg(feature = "proxy-args")]
pub mod proxy_args;
pub mod satellite;

pub use common::{PodTemplateOverrides, ServiceOptions};
pub use endpoints::{UpstreamEndpoint, UpstreamEndpoints};
pub use oapserver::{OAPServer, OAPServerSpec, OAPServerStatus};
pub use proxy::{Proxy, ProxySpec};
pub use satellite::{Satellite, SatelliteSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD skylift defines, in the order they are printed by `skylift-operator crd`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![OAPServer::crd(), Satellite::crd(), Proxy::crd()]
}
