//! The client side of the proxy: HTTP/2 (RFC 9113) for gRPC, served by a purpose-built
//! connection loop instead of a general HTTP library, because the proxy's hot path is
//! narrow and hot: many long-lived connections, each carrying streams of small messages
//! that are only cut apart and queued. Reading large chunks and slicing messages out of
//! them in place, with no task or channel per report stream, costs a fraction of a general
//! server's per-frame work, and an idle connection holds no buffers at all.
//!
//! - [`frame`]: frame headers and the frames a server writes;
//! - [`hpack`]: the HPACK decoder (static and dynamic tables, Huffman strings);
//! - [`headers`]: requests from decoded header blocks, responses encoded;
//! - [`connection`]: one connection's loop, flow control, report streams;
//! - [`signal`], [`body`]: handler tasks for forwarded calls and their request bodies;
//! - [`transport`]: the socket, or TLS on it, read and written by readiness.

pub mod body;
pub mod connection;
pub mod frame;
pub mod headers;
pub mod hpack;
pub mod signal;
pub mod transport;

pub use body::RequestBody;
pub use connection::{Config, serve};
pub use transport::Transport;
