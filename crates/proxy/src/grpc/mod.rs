//! What gRPC and SkyWalking's protocols say, below everything else: status codes and
//! trailers-only answers, length-prefixed messages, the table of methods and their
//! policies, and the few protobuf fields the proxy reads. Pure: no I/O, no state.
//!
//! - [`status`]: status codes, answers, `grpc-timeout`, what an upstream's status means;
//! - [`framing`]: gRPC length-prefixed messages, decoded without decoding protobuf;
//! - [`protocol`]: which policy each SkyWalking / Envoy method gets (async batch, sync,
//!   pass-through) and the shape of its stream;
//! - [`wire`]: the protobuf fields read for routing keys or rewritten by reshaping;
//! - [`message`]: the one message of a buffered unary call, gunzipped within the limit;
//! - [`otlp`]: OTLP exports split by trace ID or by service, and their partial success.

pub mod framing;
pub mod message;
pub mod otlp;
pub mod protocol;
pub mod status;
pub mod wire;

pub use status::*;
