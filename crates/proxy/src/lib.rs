//! skylift-proxy: sits between SkyWalking agents / Envoy sidecars and the OAP pool and
//! balances every message, not every connection.
//!
//! A report's path, one folder per stage:
//!
//! 1. [`listen`] accepts the client's connection (TLS, connection limit) and runs the
//!    proxy's handler on it; [`h2`] is the HTTP/2 protocol underneath, with no socket.
//! 2. [`ingest`] takes the report stream apart, message by message ([`grpc::framing`]),
//!    keys and reshapes what needs it ([`grpc::wire`], [`grpc::protocol`]).
//! 3. [`queue`] holds each message as an [`queue::Event`] in a bounded partition (and
//!    its journal on disk), counted until it leaves.
//! 4. [`upstream::send`] takes batches from the queue and sends each to the upstream
//!    [`balance`] picks; sync and unknown calls go through [`upstream::forward`] instead.
//!    With a federation pool, [`federation`] copies the reports it takes into a queue and
//!    upstream pool of their own, on the way into the queue.
//! 5. [`metrics`] counts every step; [`ops`] serves them and reports to OAP.
//!
//! [`run`] wires it all and starts the background loops. Beside the rooms: [`pem`] and
//! [`watched`] (certificate and token files, read again when they change), and `fuzzing`
//! (with the `fuzzing` feature: the properties the fuzz targets check).

pub mod balance;
pub mod federation;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod grpc;
pub mod h2;
pub mod ingest;
pub mod listen;
pub mod metrics;
pub mod ops;
pub mod pem;
pub mod queue;
pub mod run;
pub mod upstream;
pub mod watched;
