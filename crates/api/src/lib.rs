//! skylift's Kubernetes API: the custom resources of group `skylift.io`, version
//! `v1alpha1` (`OAPServer`, `Satellite`, `Proxy`, `UI`, `BanyanDB`, `OTelCollector`,
//! `Rover`, `SwAgent`) and the constants and formats that cross the boundary between the
//! operator, the proxy and the adapter.

// Repeated `printcolumn(...)` arguments of the CustomResource derive look like duplicated
// attributes to clippy; they are distinct columns.
#![allow(clippy::duplicated_attributes)]

pub mod banyandb;
pub mod common;
pub mod constants;
pub mod duration;
pub mod endpoints;
pub mod label_selector;
#[cfg(feature = "logging")]
pub mod logging;
pub mod metric_selector;
pub mod oapserver;
pub mod otel_collector;
pub mod pool;
pub mod proxy;
#[cfg(feature = "proxy-args")]
pub mod proxy_args;
pub mod rover;
pub mod satellite;
pub mod swagent;
pub mod ui;

pub use banyandb::{BanyanDB, BanyanDBSpec};
pub use common::{Backend, LocalRef, PodTemplateOverrides, ServiceOptions, WorkloadStatus};
pub use endpoints::{UpstreamEndpoint, UpstreamEndpoints};
pub use oapserver::{OAPServer, OAPServerSpec, OAPServerStatus};
pub use otel_collector::{OTelCollector, OTelCollectorSpec};
pub use proxy::{Proxy, ProxySpec};
pub use rover::{Rover, RoverSpec};
pub use satellite::{Satellite, SatelliteSpec};
pub use swagent::{SwAgent, SwAgentSpec, SwAgentStatus};
pub use ui::{UI, UISpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD skylift defines, in the order they are printed by `skylift-operator crd`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        OAPServer::crd(),
        Satellite::crd(),
        Proxy::crd(),
        UI::crd(),
        BanyanDB::crd(),
        OTelCollector::crd(),
        Rover::crd(),
        SwAgent::crd(),
    ]
}
