//! skylift-proxy: sits between SkyWalking agents / Envoy sidecars and the OAP pool and
//! balances every message, not every connection.
//!
//! - [`balance`]: picking among healthy upstreams; ejecting failing ones;
//! - [`outlier`]: ejecting upstreams much slower than the rest of the pool;
//! - [`authentication`]: SkyWalking's `authentication` token on every upstream call;
//! - [`client`]: the HTTP/2 client to upstreams, more connections when streams saturate;
//! - [`connector`], [`origination`]: its connections, in cleartext or TLS (mutual TLS);
//! - [`server`], [`ingest`], [`forward`], [`send`], [`state`]: accepting clients, queueing
//!   reports, forwarding sync and unknown calls, sending batches upstream;
//! - [`inbound`]: HTTP/2 for clients: a socket-free protocol session (limits, flow control,
//!   abuse counts), the I/O loop around it, and the proxy's calls behind a handler trait,
//!   with report streams received in the connection's own task;
//! - [`payload`]: upstream request data, a batch gathered without copying;
//! - [`framing`]: gRPC length-prefixed messages, decoded without decoding protobuf;
//! - [`fuzzing`]: the properties the fuzz targets check, also run on the inputs they found;
//! - [`grpc`]: status codes, trailers-only answers, the empty `Commands` acknowledgement;
//! - [`protocol`]: which policy each SkyWalking / Envoy method gets (async batch, sync, pass-through);
//! - [`queue`]: bounded per-partition queues that account for every event;
//! - [`journal`]: the queue's events on disk (`--queue disk`), replayed after a restart;
//! - [`warm`]: upstream connections opened before data needs them, failed ones probed back;
//! - [`upstreams`]: the upstream set, from flags, a watched file or the operator's ConfigMap;
//! - [`wire`]: the few protobuf fields read for routing keys or spliced by [`reshape`];
//! - [`reshape`]: meter sets and Envoy streams made self-contained, so they can be batched;
//! - [`refuse`]: turning away a connection over the limit with an HTTP/2 GOAWAY and a reason;
//! - [`tls`]: TLS termination for clients, its files followed for renewals;
//! - [`watched`]: files (certificates, tokens) read again when they change;
//! - [`demand`]: clients turned away lately, reported to OAP beside the open connections;
//! - [`route`]: round-robin, smooth weighted round-robin and rendezvous hashing with a
//!   sticky LRU for meter data.

pub mod admin;
pub mod authentication;
pub mod balance;
pub mod client;
pub mod coalesce;
pub mod configmap;
pub mod connector;
pub mod demand;
pub mod forward;
pub mod framing;
pub mod fuzzing;
pub mod grpc;
pub mod inbound;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod origination;
pub mod outlier;
pub mod payload;
pub mod protocol;
pub mod queue;
pub mod refuse;
pub mod reshape;
pub mod route;
pub mod run;
pub mod send;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstreams;
pub mod warm;
pub mod watched;
pub mod wire;
