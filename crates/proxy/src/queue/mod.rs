//! Per-partition bounded queues between receiving a report and sending it upstream.
//!
//! Every event offered is accounted for: at any moment
//! `received = forwarded + pending + dropped` (dropped by reason), where pending counts the
//! events in a partition *and* those taken for a send that has not finished. Capacity is
//! charged on pending, so a failed batch can always be put back in front of its partition.
//!
//! - [`event`]: an event (one report message) and its route;
//! - [`partitioned`]: the bounded partitions, offered to and taken from in batches;
//! - [`journal`]: the events on disk (`--queue disk`), replayed after a restart.

pub mod event;
pub mod journal;
pub(crate) mod partitioned;

pub(crate) use event::{Event, Route};
pub use partitioned::*;
