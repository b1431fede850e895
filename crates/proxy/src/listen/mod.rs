//! Where clients come in: the listener, at most `--max-connections` connections at once
//! (the rest closed at once and counted), TLS termination, and the proxy's
//! handler on each HTTP/2 connection, which hands report streams to [`crate::ingest`] and
//! every other call to [`crate::upstream::forward`].
//!
//! - [`accept`]: the accept loop and each connection's settings and limits;
//! - [`calls`]: the handler: gRPC's request rules, then each call to its method's policy;
//! - [`staged`]: the events of a connection's reports, queued together once per read;
//! - [`http1`], [`http`]: HTTP/1.1 connections, and HTTP requests that are not gRPC calls
//!   (`--upstream-http-port`);
//! - [`turned_away`]: clients refused lately, reported to OAP beside the open connections;
//! - [`tls`]: TLS termination, its files followed for renewals;
//! - [`state`]: what every connection shares.

pub mod accept;
pub mod calls;
pub(crate) mod http;
pub(crate) mod http1;
pub(crate) mod sniff;
pub(crate) mod staged;
pub mod state;
pub mod tls;
pub mod turned_away;

pub use accept::serve;
