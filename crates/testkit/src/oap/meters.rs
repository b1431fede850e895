//! OAP's meter analyzer, for what skylift reports: the stock `satellite` rules turn the
//! proxy's `sw_stl_*` meters into `satellite_service_*` metrics of the entity
//! `satellite::<service>`; any other meter becomes a metric of its own name for the service
//! that reported it, with its labels.
//!
//! The rules, as OAP's `satellite.yaml` writes them: gauges are kept as they come (several
//! proxy instances of one service average into one value per minute); the queue gauges
//! are summed by `["pipeline", "service"]`; counters are read as their increase over the
//! last minute, per instance and label set, and summed by `["pipe", "status", "service"]`.
//! A sum keeps only the labels it is by (the service is the entity); a sample without one
//! of them is summed under an empty value, where a dashboard reading the label finds
//! nothing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use super::store::{Labels, MetricStore, whole};
use crate::sink::MeterReport;

/// How a `sw_stl_*` meter becomes an OAP metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Gauge,
    /// Summed over a report, by these labels.
    Sum(&'static [&'static str]),
    /// Increase over a minute, summed by these labels.
    IncreaseOverMinute(&'static [&'static str]),
}

/// `satellite.yaml`'s groupings (the `service` label is the entity).
const BY_PIPELINE: &[&str] = &["pipeline"];
const BY_PIPE_AND_STATUS: &[&str] = &["pipe", "status"];

fn satellite_rule(meter: &str) -> Option<(&'static str, Rule)> {
    Some(match meter {
        "sw_stl_grpc_server_connection_count" => {
            ("satellite_service_grpc_connect_count", Rule::Gauge)
        }
        "sw_stl_grpc_server_cpu_gauge" => ("satellite_service_server_cpu_utilization", Rule::Gauge),
        "sw_stl_pipeline_queue_partition_size" => {
            ("satellite_service_queue_used_count", Rule::Sum(BY_PIPELINE))
        }
        "sw_stl_pipeline_queue_total_capacity" => (
            "satellite_service_queue_total_capacity",
            Rule::Sum(BY_PIPELINE),
        ),
        "sw_stl_gatherer_receive_count" => (
            "satellite_service_receive_event_count",
            Rule::IncreaseOverMinute(BY_PIPE_AND_STATUS),
        ),
        "sw_stl_gatherer_fetch_count" => (
            "satellite_service_fetch_event_count",
            Rule::IncreaseOverMinute(BY_PIPE_AND_STATUS),
        ),
        "sw_stl_queue_output_count" => (
            "satellite_service_queue_input_count",
            Rule::IncreaseOverMinute(BY_PIPE_AND_STATUS),
        ),
        "sw_stl_sender_output_count" => (
            "satellite_service_send_event_count",
            Rule::IncreaseOverMinute(BY_PIPE_AND_STATUS),
        ),
        _ => return None,
    })
}

/// The labels a sum is by, each with the sample's value or empty when it has none.
fn only(labels: &Labels, by: &[&str]) -> Labels {
    by.iter()
        .map(|name| {
            let value = labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone());
            (name.to_string(), value.unwrap_or_default())
        })
        .collect()
}

/// The OAP entity name of a proxy's service.
pub fn satellite_entity(service: &str) -> String {
    format!("satellite::{service}")
}

const INCREASE_WINDOW_MS: i64 = 60_000;

/// A counter series: one instance's samples of one meter and label set.
type SeriesKey = (String, String, String, Labels);

#[derive(Default)]
pub struct MeterAnalyzer {
    /// Recent samples of each counter series, for `increase("PT1M")`.
    counters: Mutex<HashMap<SeriesKey, VecDeque<(i64, f64)>>>,
}

impl MeterAnalyzer {
    /// Analyzes one report into `store`.
    pub fn analyze(&self, report: &MeterReport, store: &MetricStore) {
        let at = report.timestamp_ms;
        // metric → labels → summed value, for the rules that sum over the report.
        let mut sums: BTreeMap<(&'static str, Labels), f64> = BTreeMap::new();
        for sample in &report.samples {
            let mut labels = sample.labels.clone();
            labels.sort();
            let Some((metric, rule)) = satellite_rule(&sample.name) else {
                if !sample.name.starts_with("sw_stl_") {
                    store.observe(
                        &sample.name,
                        &report.service,
                        labels,
                        at,
                        whole(sample.value),
                    );
                }
                continue;
            };
            match rule {
                Rule::Gauge => store.observe(
                    metric,
                    &satellite_entity(&report.service),
                    Labels::new(),
                    at,
                    whole(sample.value),
                ),
                Rule::Sum(by) => {
                    *sums.entry((metric, only(&labels, by))).or_default() += sample.value
                }
                Rule::IncreaseOverMinute(by) => {
                    let key = (
                        report.instance.clone(),
                        sample.name.clone(),
                        report.service.clone(),
                        labels.clone(),
                    );
                    if let Some(increase) = self.increase(key, at, sample.value) {
                        *sums.entry((metric, only(&labels, by))).or_default() += increase;
                    }
                }
            }
        }
        for ((metric, labels), value) in sums {
            store.observe(
                metric,
                &satellite_entity(&report.service),
                labels,
                at,
                whole(value),
            );
        }
    }

    /// The counter's increase since its oldest sample within the last minute; `None` for
    /// a series' first sample. A counter that went down (the process restarted) counts from 0.
    fn increase(&self, key: SeriesKey, at: i64, value: f64) -> Option<f64> {
        let mut counters = self.counters.lock().expect("never poisoned");
        let history = counters.entry(key).or_default();
        while history
            .front()
            .is_some_and(|(t, _)| at - t > INCREASE_WINDOW_MS)
            && history.len() > 1
        {
            history.pop_front();
        }
        let increase = history.front().map(|(_, first)| {
            if value >= *first {
                value - first
            } else {
                value
            }
        });
        history.push_back((at, value));
        increase
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oap::store::Window;
    use crate::sink::Sample;

    const T0: i64 = 1_700_000_040_000;

    /// A sample as (meter name, labels, value).
    type Raw<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

    fn report(instance: &str, at: i64, samples: &[Raw<'_>]) -> MeterReport {
        MeterReport {
            service: "satellite-service".into(),
            instance: instance.into(),
            timestamp_ms: at,
            samples: samples
                .iter()
                .map(|(name, labels, value)| Sample {
                    name: name.to_string(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    value: *value,
                })
                .collect(),
        }
    }

    fn newest(store: &MetricStore, metric: &str, entity: &str, labels: Labels) -> Option<i64> {
        let window = Window {
            start_ms: T0,
            end_ms: T0,
            step_ms: 60_000,
            offset_ms: 0,
        };
        store.points(metric, entity, window)?.get(&labels)?[0].1
    }

    #[test]
    fn connection_gauges_of_two_instances_average_per_minute() {
        let (analyzer, store) = (MeterAnalyzer::default(), MetricStore::default());
        for second in 0..4 {
            let at = T0 + second * 1_000;
            analyzer.analyze(
                &report(
                    "a",
                    at,
                    &[("sw_stl_grpc_server_connection_count", &[], 7.0)],
                ),
                &store,
            );
            analyzer.analyze(
                &report(
                    "b",
                    at,
                    &[("sw_stl_grpc_server_connection_count", &[], 5.0)],
                ),
                &store,
            );
        }
        assert_eq!(
            newest(
                &store,
                "satellite_service_grpc_connect_count",
                "satellite::satellite-service",
                vec![]
            ),
            Some(6)
        );
    }

    #[test]
    fn counters_become_their_increase_and_partitions_their_sum() {
        let (analyzer, store) = (MeterAnalyzer::default(), MetricStore::default());
        let all: &[(&str, &str)] = &[("pipe", "skylift"), ("status", "all")];
        for (second, received) in [(0, 100.0), (10, 160.0), (20, 250.0)] {
            analyzer.analyze(
                &report(
                    "a",
                    T0 + second * 1_000,
                    &[
                        ("sw_stl_gatherer_receive_count", all, received),
                        (
                            "sw_stl_pipeline_queue_partition_size",
                            &[("pipeline", "skylift"), ("partition", "0")],
                            3.0,
                        ),
                        (
                            "sw_stl_pipeline_queue_partition_size",
                            &[("pipeline", "skylift"), ("partition", "1")],
                            4.0,
                        ),
                        // Labelled as the counters are: summed where no pipeline is.
                        (
                            "sw_stl_pipeline_queue_partition_size",
                            &[("pipe", "skylift"), ("partition", "2")],
                            5.0,
                        ),
                    ],
                ),
                &store,
            );
        }
        let labels = vec![
            ("pipe".to_string(), "skylift".to_string()),
            ("status".to_string(), "all".to_string()),
        ];
        // Increases 60 and 150 (the first sample only starts the series): average 105.
        assert_eq!(
            newest(
                &store,
                "satellite_service_receive_event_count",
                "satellite::satellite-service",
                labels
            ),
            Some(105)
        );
        let pipeline = |value: &str| vec![("pipeline".to_string(), value.to_string())];
        assert_eq!(
            newest(
                &store,
                "satellite_service_queue_used_count",
                "satellite::satellite-service",
                pipeline("skylift")
            ),
            Some(7)
        );
        assert_eq!(
            newest(
                &store,
                "satellite_service_queue_used_count",
                "satellite::satellite-service",
                pipeline("")
            ),
            Some(5)
        );
    }

    #[test]
    fn other_meters_keep_their_name_service_and_labels() {
        let (analyzer, store) = (MeterAnalyzer::default(), MetricStore::default());
        let mut checkout = report("a", T0, &[("orders_in_flight", &[("region", "eu")], 12.0)]);
        checkout.service = "checkout".into();
        analyzer.analyze(&checkout, &store);
        assert_eq!(
            newest(
                &store,
                "orders_in_flight",
                "checkout",
                vec![("region".into(), "eu".into())]
            ),
            Some(12)
        );
    }
}
