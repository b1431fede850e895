//! skylift-adapter: serves `external.metrics.k8s.io/v1beta1` from OAP's GraphQL metrics,
//! so the Horizontal Pod Autoscaler can scale on SkyWalking metrics.
//!
//! The pure parts, each tested directly:
//! - [`metric`]: external metric names (`<prefix>|<oap metric>`, `<prefix>|mqe|<name>`);
//! - [`entity`]: the SkyWalking entity a selector names, plain or SWCK-escaped;
//! - [`federation`]: federated expressions (read from several OAPs) and how their values
//!   combine;
//! - [`oap`]: OAP GraphQL requests (MQE, metrics v2, time info) and their answers;
//! - [`oaps`]: which OAP a read goes to (the selector's `oap`, the namespace's route or
//!   `OAPServer`, the default) and each one's reader;
//! - [`quantity`]: values as exact Kubernetes Quantities;
//! - [`answer`]: discovery, `ExternalMetricValueList` and `Status` JSON;
//! - [`auth`]: front-proxy settings, `X-Remote-*` identities, the access review of a request;
//!
//! With I/O:
//! - [`reader`]: OAP over GraphQL (MQE, else metrics v2), in the OAP's time zone;
//! - [`cache`]: one query per (OAP, metric, entity) per refresh interval, misses coalesced;
//! - [`discovery`]: the `OAPServer`s watched, and their addresses;
//! - [`server`]: the routes the aggregator and the HPA call;
//! - [`access`]: TokenReview, SubjectAccessReview, the watched front-proxy settings;
//! - [`guard`]: authentication and authorization in front of every route;
//! - `tls`, `bootstrap`, `certs`, `serve` (from skylift-certs): the serving certificate, kept in a
//!   Secret with the APIService's `caBundle` when no certificate files are given;
//! - [`metrics`]: Prometheus metrics;
//! - [`start`]: the order of a start: front-proxy CA, then certificates and caBundle, then
//!   connections.

pub mod access;
pub mod answer;
pub mod auth;
pub mod cache;
pub mod discovery;
pub mod entity;
pub mod federation;
pub mod guard;
pub mod metric;
pub mod metrics;
pub mod oap;
pub mod oaps;
pub mod quantity;
pub mod reader;
pub mod server;
pub mod start;

pub use skylift_certs::{bootstrap, certs, serve, tls};
