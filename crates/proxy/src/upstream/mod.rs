//! Talking to OAP (or any upstream): batches taken from the queue and sent, calls
//! forwarded whole, connections kept warm and probed, over cleartext or TLS, with
//! SkyWalking's `authentication` token on every call.
//!
//! - [`send`]: the senders: batches from each queue partition to the upstream
//!   [`crate::balance`] picks, settled as sent, refused or failed;
//! - [`delivery`]: the call's deadline and each event's budget of calls that may have
//!   delivered it;
//! - [`forward`]: sync and unknown calls relayed to an upstream, tried on another on failure;
//! - [`affinity`]: OTLP exports split and sent by trace ID or resource (`--otlp-affinity`);
//! - [`http`]: HTTP requests forwarded to the upstreams' HTTP port, per request;
//! - [`health`]: connections opened before data needs them, failed upstreams probed back;
//! - [`pool`]: what they share: the upstream set, the balancer, the client;
//! - [`client`]: the HTTP/2 client, more connections when one's streams saturate;
//! - [`driven`]: the connections the proxy's own calls go on, driven by the proxy itself;
//! - [`connector`], [`tls`]: its connections, in cleartext or TLS (mutual TLS);
//! - [`coalesce`]: small writes gathered into one, vectored writes kept;
//! - [`request`], [`payload`]: the calls it makes, their data gathered without copying;
//! - [`authentication`]: the token file, read again when it changes.

pub mod affinity;
pub mod authentication;
pub mod client;
pub(crate) mod coalesce;
pub mod connector;
pub mod delivery;
pub mod driven;
pub(crate) mod forward;
pub mod health;
pub mod http;
pub mod payload;
pub mod pool;
pub mod request;
pub mod send;
pub mod tls;

pub use pool::Pool;
