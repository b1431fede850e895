//! Prometheus metrics of the proxy: connections, what was received / forwarded / dropped
//! per protocol and reason, queue fill, upstream health and send latency.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::queue::DropReason;
use crate::queue::journal::JournalCounters;

// Labels borrow the protocol's static name: counting a report allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    protocol: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    protocol: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OtlpItemLabels {
    signal: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusClassLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OtlpWholeLabels {
    signal: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EjectionLabels {
    reason: String,
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    resting: Gauge,
    pub turned_away: Gauge,
    refused: Counter,
    aged_out: Counter,
    closed: Family<ReasonLabels, Counter>,
    calls_refused: Family<ReasonLabels, Counter>,
    tls_failed: Counter,
    received: Family<ProtocolLabels, Counter>,
    forwarded: Family<ProtocolLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    queue_size: Family<PartitionLabels, Gauge>,
    queue_capacity: Gauge,
    upstream_up: Family<UpstreamLabels, Gauge>,
    pub upstreams_draining: Gauge,
    ejections: Family<EjectionLabels, Counter>,
    upstream_refusals: Family<RefusalLabels, Counter>,
    send_seconds: Family<UpstreamLabels, Histogram>,
    journal_bytes: Family<PartitionLabels, Gauge>,
    otlp_items: Family<OtlpItemLabels, Counter>,
    http_requests: Family<StatusClassLabels, Counter>,
    otlp_whole: Family<OtlpWholeLabels, Counter>,
    /// Counted by the journal itself.
    pub journal: JournalCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::build("skylift_proxy", true)
    }
}

impl Metrics {
    /// The federation pool's metrics (`skylift_proxy_federation_*`): its queue, its
    /// upstreams and what it forwarded or dropped, apart from the local pool's. No client
    /// faces the federation pool, so it has no connection metrics.
    pub fn federation() -> Self {
        Metrics::build("skylift_proxy_federation", false)
    }

    fn build(prefix: &str, listener: bool) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let metrics = Metrics {
            connections: Gauge::default(),
            resting: Gauge::default(),
            turned_away: Gauge::default(),
            refused: Counter::default(),
            aged_out: Counter::default(),
            closed: Family::default(),
            calls_refused: Family::default(),
            tls_failed: Counter::default(),
            received: Family::default(),
            forwarded: Family::default(),
            dropped: Family::default(),
            queue_size: Family::default(),
            queue_capacity: Gauge::default(),
            upstream_up: Family::default(),
            upstreams_draining: Gauge::default(),
            ejections: Family::default(),
            upstream_refusals: Family::default(),
            send_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            journal_bytes: Family::default(),
            otlp_items: Family::default(),
            http_requests: Family::default(),
            otlp_whole: Family::default(),
            journal: JournalCounters::default(),
            registry: Registry::default(),
        };
        if listener {
            registry.register(
                "connections",
                "Open client connections",
                metrics.connections.clone(),
            );
            registry.register(
                "connections_resting",
                "Open client connections at rest: nothing under way for a second, so they keep only their \
                 parked state until the client sends again",
                metrics.resting.clone(),
            );
            registry.register(
                "clients_turned_away",
                "Client addresses refused at --max-connections lately (reported to OAP with the open connections)",
                metrics.turned_away.clone(),
            );
            registry.register(
                "connections_refused",
                "Connections refused over --max-connections",
                metrics.refused.clone(),
            );
            registry.register(
                "connections_aged_out",
                "Client connections asked to reconnect at --max-connection-age",
                metrics.aged_out.clone(),
            );
            registry.register(
                "connections_closed",
                "Client connections closed, per reason: client_closed, client_goaway, drained, idle, \
                 keepalive_timeout, io_error, tls_handshake_failed, stalled (preface, header block or frame not finished \
                 within --header-timeout), protocol_error, and the abuses answered with GOAWAY \
                 ENHANCE_YOUR_CALM: rapid_reset, local_resets, settings_flood, ping_flood, \
                 window_update_flood, empty_frame_flood, continuation_flood, header_block_too_large, header_list_too_large",
                metrics.closed.clone(),
            );
            registry.register(
                "calls_refused",
                "Report calls answered with an error before they ended, per reason: connection_budget \
                 (partly received messages of several streams filled the connection's budget; all but \
                 the stream holding the most were refused with RESOURCE_EXHAUSTED)",
                metrics.calls_refused.clone(),
            );
            registry.register(
                "http_requests",
                "HTTP requests that are not gRPC calls (--upstream-http-port), per class of the status \
                 the client was answered: 2xx, 3xx, 4xx (413: body over --max-message-bytes), 5xx \
                 (502: no upstream could be reached, 504: none answered in time)",
                metrics.http_requests.clone(),
            );
            registry.register(
                "otlp_items",
                "With --otlp-affinity: spans, data points and log records of OTLP exports sent by \
                 affinity, per signal and outcome: forwarded (taken by their collector), \
                 refused (a collector refused them or answered a partial success counting them), \
                 failed (no collector could be reached in time); the client's partial success \
                 counts the last two",
                metrics.otlp_items.clone(),
            );
            registry.register(
                "otlp_forwarded_whole",
                "With --otlp-affinity: OTLP exports the proxy could not take apart, forwarded whole \
                 round-robin, per signal and reason: framing (not one gRPC message), encoding \
                 (compressed other than gzip), corrupt (gzip that does not inflate), malformed \
                 (not an export request)",
                metrics.otlp_whole.clone(),
            );
            registry.register(
                "tls_handshake_failures",
                "Client connections whose TLS handshake failed or did not finish within --header-timeout",
                metrics.tls_failed.clone(),
            );
        }
        registry.register(
            "received",
            "Report messages received, per protocol",
            metrics.received.clone(),
        );
        registry.register(
            "forwarded",
            "Report messages acknowledged by an upstream, per protocol",
            metrics.forwarded.clone(),
        );
        registry.register(
            "dropped",
            "Report messages not forwarded, per protocol and reason",
            metrics.dropped.clone(),
        );
        registry.register(
            "queue_size",
            "Messages queued or in flight, per partition",
            metrics.queue_size.clone(),
        );
        registry.register(
            "queue_capacity",
            "Messages each partition holds",
            metrics.queue_capacity.clone(),
        );
        registry.register(
            "upstream_up",
            "1 while an upstream is not ejected",
            metrics.upstream_up.clone(),
        );
        registry.register(
            "upstreams_draining",
            "Upstreams the operator marks draining: no new work goes to them",
            metrics.upstreams_draining.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Upstreams ejected, per reason (failure, health_check, latency)",
            metrics.ejections.clone(),
        );
        registry.register(
            "upstream_refusals",
            "Upstream calls whose data the upstream refused (a status it would give that data anywhere), per protocol and gRPC status code",
            metrics.upstream_refusals.clone(),
        );
        registry.register(
            "upstream_send_seconds",
            "Time to send one batch stream, per upstream",
            metrics.send_seconds.clone(),
        );
        registry.register(
            "journal_bytes",
            "Bytes the queue journal takes on disk, per partition (--queue disk)",
            metrics.journal_bytes.clone(),
        );
        registry.register(
            "journal_corrupt_records",
            "Damaged journal records skipped when reading the journal back",
            metrics.journal.corrupt.clone(),
        );
        registry.register(
            "journal_recovered",
            "Unacknowledged messages read back from the journal at start",
            metrics.journal.recovered.clone(),
        );
        registry.register(
            "journal_append_refused",
            "Messages the journal refused (out of room or failing); the overflow policy applied",
            metrics.journal.refused.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub(crate) fn received_many(&self, protocol: &'static str, n: u64) {
        if n > 0 {
            self.received
                .get_or_create(&ProtocolLabels { protocol })
                .inc_by(n);
        }
    }

    pub fn forwarded(&self, protocol: &'static str, n: u64) {
        self.forwarded
            .get_or_create(&ProtocolLabels { protocol })
            .inc_by(n);
    }

    pub fn dropped(&self, protocol: &'static str, reason: DropReason, n: u64) {
        self.dropped
            .get_or_create(&DropLabels {
                protocol,
                reason: reason.as_str(),
            })
            .inc_by(n);
    }

    pub fn refused(&self) {
        self.refused.inc();
    }

    pub(crate) fn otlp_items(&self, signal: &'static str, outcome: &'static str, n: u64) {
        if n > 0 {
            self.otlp_items
                .get_or_create(&OtlpItemLabels { signal, outcome })
                .inc_by(n);
        }
    }

    pub(crate) fn http_answered(&self, status: http::StatusCode) {
        let code = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .get_or_create(&StatusClassLabels { code })
            .inc();
    }

    pub(crate) fn otlp_forwarded_whole(&self, signal: &'static str, reason: &'static str) {
        self.otlp_whole
            .get_or_create(&OtlpWholeLabels { signal, reason })
            .inc();
    }

    /// A connection rests (`true`) or is served again.
    pub(crate) fn resting(&self, resting: bool) {
        if resting {
            self.resting.inc();
        } else {
            self.resting.dec();
        }
    }

    pub(crate) fn aged_out(&self) {
        self.aged_out.inc();
    }

    pub(crate) fn connection_closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn call_refused(&self, reason: &'static str) {
        self.calls_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn tls_failed(&self) {
        self.tls_failed.inc();
    }

    pub fn sent(&self, upstream: &str, seconds: f64) {
        self.send_seconds
            .get_or_create(&UpstreamLabels {
                upstream: upstream.into(),
            })
            .observe(seconds);
    }

    /// Sets the gauges read at scrape time.
    pub(crate) fn set_queue(&self, sizes: &[usize], capacity: usize) {
        for (partition, size) in sizes.iter().enumerate() {
            self.queue_size
                .get_or_create(&PartitionLabels {
                    partition: partition.to_string(),
                })
                .set(i64::try_from(*size).unwrap_or(i64::MAX));
        }
        self.queue_capacity
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
    }

    /// Sets the journal's size per partition, read at scrape time.
    pub(crate) fn set_journal_bytes(&self, bytes: &[u64]) {
        for (partition, size) in bytes.iter().enumerate() {
            self.journal_bytes
                .get_or_create(&PartitionLabels {
                    partition: partition.to_string(),
                })
                .set(i64::try_from(*size).unwrap_or(i64::MAX));
        }
    }

    /// An upstream was ejected: `failure` (a send or call to it failed), `health_check`
    /// or `latency`. Not labelled by upstream: pod addresses come and go, and the log
    /// names it.
    pub fn ejected(&self, reason: &'static str) {
        self.ejections
            .get_or_create(&EjectionLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// An upstream refused a call's data with gRPC status `code`.
    pub(crate) fn upstream_refused(&self, protocol: &'static str, code: u16) {
        self.upstream_refusals
            .get_or_create(&RefusalLabels { protocol, code })
            .inc();
    }

    pub(crate) fn set_upstreams(&self, upstreams: &[(String, bool)]) {
        self.upstream_up.clear();
        for (address, up) in upstreams {
            self.upstream_up
                .get_or_create(&UpstreamLabels {
                    upstream: address.clone(),
                })
                .set(i64::from(*up));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Warnings about dropped data, at most one per method and cause every ten seconds (with
/// how many reports went meanwhile): an upstream without a receiver for a method refuses
/// all of it, and its log should say so, not drown.
#[derive(Default)]
pub struct RefusalLog {
    last: Mutex<HashMap<(String, DropCause), (Instant, u64)>>,
}

/// Why reports were dropped, for [`RefusalLog`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DropCause {
    /// Refused by upstreams with this gRPC status.
    Refused(u16),
    /// Their delivery budget is spent.
    Exhausted,
}

const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl RefusalLog {
    pub fn refused(&self, path: &str, code: u16, message: &str, events: u64) {
        if let Some(reports) = self.due(path, DropCause::Refused(code), events) {
            tracing::warn!(
                %path,
                code,
                %message,
                reports,
                "upstreams refused reports; they are dropped (counted as refused_by_upstream)"
            );
        }
    }

    /// Reports given up on after `attempts` calls that may have delivered them failed.
    pub fn exhausted(&self, path: &str, events: u64, attempts: u16) {
        if let Some(reports) = self.due(path, DropCause::Exhausted, events) {
            tracing::warn!(
                %path,
                attempts,
                reports,
                "reports failed on every try their delivery budget allows, or an upstream \
                 took them and left them unanswered twice; they are dropped (counted as \
                 retries_exhausted)"
            );
        }
    }

    /// Adds `events` to the count of `(path, cause)`; the count to log when it is time to.
    fn due(&self, path: &str, cause: DropCause, events: u64) -> Option<u64> {
        let now = Instant::now();
        let mut last = self
            .last
            .lock()
            .expect("refusal log lock is never poisoned");
        let entry = last
            .entry((path.to_string(), cause))
            .or_insert((now - REFUSAL_LOG_EVERY, 0));
        entry.1 += events;
        if now.duration_since(entry.0) < REFUSAL_LOG_EVERY {
            return None;
        }
        let reports = entry.1;
        *entry = (now, 0);
        Some(reports)
    }
}
