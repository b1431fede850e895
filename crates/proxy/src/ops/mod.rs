//! What operators and OAP see of the proxy: the admin server (`/metrics`, `/healthz`,
//! `/readyz`, `/upstreams`) and the proxy's own telemetry to OAP, as Satellite reports it.
//!
//! - [`admin`]: the admin server;
//! - [`telemetry`]: open connections, queue and CPU, sent to OAP's meter service.

pub mod admin;
pub mod telemetry;
