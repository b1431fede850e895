//! Report streams taken apart on their connection: each message framed out of the
//! client's buffers, given its routing key, made self-contained where its stream's
//! messages depend on each other, and offered to the [`crate::queue`].
//!
//! - [`stream`]: one report stream, message by message into the queue;
//! - [`reshape`]: meter sets and Envoy streams made self-contained, so they can be batched.

pub(crate) mod reshape;
pub mod stream;
