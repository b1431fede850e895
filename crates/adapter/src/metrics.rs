//! The adapter's Prometheus metrics, served on `/metrics` of the secure port to callers
//! allowed `get` on that path.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// Which OAP (`default`, an `--oap` name, or `<namespace>/<name>` of an OAPServer): a
    /// handful, as many as the adapter reads.
    oap: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<KindLabels, Histogram>,
    oap_queries: Family<OutcomeLabels, Counter>,
    oap_seconds: Histogram,
    cache: Family<ResultLabels, Counter>,
    authorizations: Family<DecisionLabels, Counter>,
}

/// What kind of request a path is, for the request metrics (paths themselves would make
/// one series per metric name).
pub fn request_kind(path: &str) -> &'static str {
    match path {
        "/healthz" | "/livez" | "/readyz" => "health",
        "/metrics" => "metrics",
        "/openapi/v2" | "/openapi/v3" => "openapi",
        "/apis" | "/apis/external.metrics.k8s.io" | "/apis/external.metrics.k8s.io/v1beta1" => {
            "discovery"
        }
        p if p.starts_with(crate::answer::READ_PATH_PREFIX) => "read",
        _ => "other",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("skylift_adapter");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let oap_queries = Family::<OutcomeLabels, Counter>::default();
        let oap_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let cache = Family::<ResultLabels, Counter>::default();
        let authorizations = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, per kind (read, discovery, health, ...) and HTTP code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, per kind",
            request_seconds.clone(),
        );
        registry.register(
            "oap_queries",
            "Queries sent to OAP, per outcome (value, no_data, refused, unavailable)",
            oap_queries.clone(),
        );
        registry.register(
            "oap_query_duration_seconds",
            "Time OAP took to answer one read (including a time-info query when due)",
            oap_seconds.clone(),
        );
        registry.register(
            "cache_lookups",
            "Metric reads per cache result: hit (kept answer), stale (kept answer being refreshed), shared (joined a query in flight), miss (new query)",
            cache.clone(),
        );
        registry.register(
            "authorizations",
            "Authorization decisions per result (allowed, denied, error)",
            authorizations.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            oap_queries,
            oap_seconds,
            cache,
            authorizations,
        }
    }
}

impl Metrics {
    pub fn request(&self, kind: &'static str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { kind, code })
            .inc();
        self.request_seconds
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    /// A query to `oap` and how it ended.
    pub fn oap_query(&self, oap: &str, outcome: &'static str, took: Duration) {
        self.oap_queries
            .get_or_create(&OutcomeLabels {
                oap: oap.to_string(),
                outcome,
            })
            .inc();
        self.oap_seconds.observe(took.as_secs_f64());
    }

    pub fn cache_lookup(&self, result: &'static str) {
        self.cache.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn authorization(&self, decision: &'static str) {
        self.authorizations
            .get_or_create(&DecisionLabels { decision })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_kind_not_by_path() {
        let metrics = Metrics::default();
        assert_eq!(
            request_kind("/apis/external.metrics.k8s.io/v1beta1/namespaces/a/m"),
            "read"
        );
        assert_eq!(request_kind("/apis"), "discovery");
        assert_eq!(request_kind("/readyz"), "health");
        metrics.request("read", 200, Duration::from_millis(2));
        metrics.cache_lookup("hit");
        metrics.oap_query("team-a/skywalking", "value", Duration::from_millis(3));
        let text = metrics.render();
        assert!(text.contains(
            r#"skylift_adapter_oap_queries_total{oap="team-a/skywalking",outcome="value"} 1"#
        ));
        assert!(text.contains(r#"skylift_adapter_requests_total{kind="read",code="200"} 1"#));
        assert!(text.contains(r#"skylift_adapter_cache_lookups_total{result="hit"} 1"#));
    }
}
