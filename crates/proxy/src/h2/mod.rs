//! HTTP/2 for clients, protocol only: HTTP/2 (RFC 9113) for gRPC, served by a purpose-built
//! connection loop instead of a general HTTP library, because the proxy's hot path is
//! narrow and hot: many long-lived connections, each carrying streams of small messages
//! that are only cut apart and queued. Reading large chunks and slicing messages out of
//! them in place, with no task or channel per report stream, costs a fraction of a general
//! server's per-frame work, and an idle connection holds no buffers at all.
//!
//! - [`frame`]: frame headers and the frames a server writes;
//! - [`hpack`]: the HPACK decoder (static and dynamic tables, Huffman strings);
//! - [`headers`]: requests from decoded header blocks, responses encoded;
//! - [`session`]: one connection's HTTP/2 state machine, with no socket: bytes in, events
//!   and frames out, flow control, limits and abuse counts;
//! - [`connection`]: the I/O loop around a session and its timers, and the [`Handler`]
//!   trait between the protocol and the application;
//! - [`signal`], [`body`]: what a handler's tasks send back, and request bodies handed to them;
//! - [`shutdown`]: what connections wait on for shutdown;
//! - [`transport`]: the socket, or TLS on it, read and written by readiness;
//! - [`used_ids`]: which recent stream ids the client opened (late frames told from bad ids);
//! - [`stream_ids`]: maps keyed by stream id, with a hasher cheap enough for every frame.

pub mod body;
pub mod connection;
pub mod frame;
pub mod headers;
pub(crate) mod hpack;
pub(crate) mod session;
pub mod shutdown;
pub mod signal;
pub(crate) mod stream_ids;
pub(crate) mod transport;
pub(crate) mod used_ids;

pub(crate) use body::RequestBody;
pub(crate) use connection::{Config, serve};
pub(crate) use session::Settings;
pub(crate) use shutdown::Shutdown;
pub(crate) use transport::Transport;
