//! Serving certificates without cert-manager, shared by skylift-adapter (called by the
//! aggregator) and skylift-operator's admission webhook (called by the API server):
//! - [`certs`]: making a CA and a serving certificate, reading certificates (pure);
//! - [`tls`]: the serving certificate and client CA, changeable at run time;
//! - [`bootstrap`]: a self-managed CA and serving certificate in a Secret, and the
//!   `caBundle` of whoever calls the server;
//! - [`serve`]: the HTTPS listener, HTTP/1.1 or HTTP/2 as ALPN chose.

pub mod bootstrap;
pub mod certs;
pub mod serve;
pub mod tls;
