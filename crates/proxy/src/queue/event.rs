//! What is queued: one report message and where it goes. Below both the queue and its
//! journal, which stores events and reads them back.

use std::sync::Arc;

use bytes::Bytes;

/// Where a client stream's messages go upstream: shared by all of that stream's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The gRPC path the batch is sent on (that of the client's stream, or `collectBatch`
    /// for a meter set).
    pub path: String,
    /// Protocol name for metrics (`segment`, `log`, `meter`, ...).
    pub protocol: &'static str,
    /// `grpc-encoding` of the messages when compressed.
    pub encoding: Option<String>,
    /// Each event is an upstream call of its own: a unary method's reports, and events,
    /// which OAP may refuse one by one (see [`crate::grpc::protocol::Method::sends_alone`]).
    pub alone: bool,
}

/// One report message, still encoded, with what sending it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub route: Arc<Route>,
    /// Fixed-routing key (service and instance) for meter data.
    pub key: Option<Arc<str>>,
    /// The sender an upstream stream must be about, for streams whose receiver reads the
    /// sender from the first message (Envoy's identifier): events of different origins
    /// never share an upstream stream.
    pub origin: Option<Bytes>,
    /// The message as sent upstream: gRPC's 5-byte header, then the message (usually a
    /// slice of the buffer it was read into, written upstream from there).
    pub framed: Bytes,
    /// Events received together share this number and, without a key, their partition.
    pub run: Option<usize>,
    /// Its record's number in its partition's journal (with `--queue disk`).
    pub seq: Option<u64>,
    /// Upstream calls that carried it and failed after it may have reached OAP (timed
    /// out, broken off once connected, or a failing status): each may have delivered it,
    /// so they are bounded by `--delivery-attempts`.
    pub attempts: u16,
    /// Upstreams whose answer to a call carrying it timed out after they took the call
    /// (bits of [`crate::upstream::delivery`]'s mask): each is sent it again at most once.
    pub unanswered_at: u32,
}

impl Event {
    pub(crate) fn cost(&self) -> usize {
        self.framed.len() + 64
    }

    /// A segment report of `framed` bytes, for tests.
    #[cfg(test)]
    pub(crate) fn segment(framed: Bytes) -> Event {
        Event {
            route: Arc::new(Route {
                path: "/skywalking.v3.TraceSegmentReportService/collect".into(),
                protocol: "segment",
                encoding: None,
                alone: false,
            }),
            key: None,
            origin: None,
            framed,
            run: None,
            seq: None,
            attempts: 0,
            unanswered_at: 0,
        }
    }
}
