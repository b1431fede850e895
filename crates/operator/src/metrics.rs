//! Prometheus metrics of the operator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    reason: String,
}

/// Counters and histograms exported on `/metrics`, plus the readiness flag.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabels, Histogram>,
    writes: Family<KindLabels, Counter>,
    admissions: Family<OutcomeLabels, Counter>,
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("skylift_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let writes = Family::<KindLabels, Counter>::default();
        let leader = Gauge::default();
        let admissions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "admission_reviews",
            "Pods the agent-injection webhook was asked about, by outcome (injected, not_selected, already_injected, opted_out, skipped, invalid, not_ready)",
            admissions.clone(),
        );
        registry.register(
            "reconciliations",
            "Reconciles run, per resource kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, per kind and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, per kind",
            durations.clone(),
        );
        registry.register(
            "api_writes",
            "Writes sent to the API server, per object kind (zero while nothing changes)",
            writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            durations,
            writes,
            admissions,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

/// Records a reconcile's count and duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let labels = KindLabels {
            kind: self.kind.into(),
        };
        self.metrics.reconciles.get_or_create(&labels).inc();
        self.metrics
            .durations
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    pub fn reconcile_started(&self, kind: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            kind,
            started: Instant::now(),
        }
    }

    pub fn record_error(&self, kind: &str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn record_admission(&self, outcome: &str) {
        self.admissions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn admissions(&self, outcome: &str) -> u64 {
        self.admissions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .get()
    }

    pub fn record_write(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Reconciles run so far for one kind.
    pub fn reconciles(&self, kind: &str) -> u64 {
        self.reconciles
            .get_or_create(&KindLabels { kind: kind.into() })
            .get()
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
