//! The stand-in's metric storage: what an OAP cluster keeps in its database, shared by all
//! of its nodes. Values are kept per metric, entity (service name), label set and minute,
//! as OAP's `avg` function keeps them: whole numbers, a running sum and count per bucket,
//! read as `sum / count` (at least 1 once anything positive arrived). Coarser steps
//! (HOUR, DAY) combine the minutes' sums and counts, as OAP's downsampling does.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A label set, sorted by name.
pub type Labels = Vec<(String, String)>;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Avg {
    summation: i64,
    count: i64,
}

impl Avg {
    fn value(self) -> Option<i64> {
        if self.count == 0 {
            return None;
        }
        let value = self.summation / self.count;
        // OAP's avg: once anything positive arrived, the minimum is 1, not 0.
        Some(if value == 0 && self.summation > 0 {
            1
        } else {
            value
        })
    }

    fn merge(self, other: Avg) -> Avg {
        Avg {
            summation: self.summation + other.summation,
            count: self.count + other.count,
        }
    }
}

/// How OAP turns a sample's double into the whole number its meter functions keep.
pub fn whole(value: f64) -> i64 {
    if value <= 0.0 || value.is_nan() {
        0
    } else if value < 1.0 {
        1
    } else {
        value.round() as i64
    }
}

const MINUTE_MS: i64 = 60_000;

type Buckets = BTreeMap<i64, Avg>;
/// One metric: entity → labels → minutes.
type ByEntity = BTreeMap<String, BTreeMap<Labels, Buckets>>;

/// One metric's data points, for one entity: per label set, one optional value per step.
pub type Points = BTreeMap<Labels, Vec<(i64, Option<i64>)>>;

#[derive(Default)]
pub struct MetricStore {
    /// metric → entity → labels → minute start (ms since the epoch) → value.
    metrics: Mutex<BTreeMap<String, ByEntity>>,
}

/// A query window: `[start, end]` in ms since the epoch, `step` ms per point, and the OAP's
/// zone offset (which hours and days align to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
    pub offset_ms: i64,
}

impl MetricStore {
    /// Adds one value at `timestamp_ms` to its minute.
    pub fn observe(
        &self,
        metric: &str,
        entity: &str,
        mut labels: Labels,
        timestamp_ms: i64,
        value: i64,
    ) {
        labels.sort();
        let minute = timestamp_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let mut metrics = self.metrics.lock().expect("never poisoned");
        let bucket = metrics
            .entry(metric.to_string())
            .or_default()
            .entry(entity.to_string())
            .or_default()
            .entry(labels)
            .or_default()
            .entry(minute)
            .or_default();
        bucket.summation += value;
        bucket.count += 1;
    }

    /// Whether the metric exists (OAP knows a metric once its rule exists; the stand-in once
    /// something was recorded).
    pub fn knows(&self, metric: &str) -> bool {
        self.metrics
            .lock()
            .expect("never poisoned")
            .contains_key(metric)
    }

    /// Every metric's name and whether it is labeled.
    pub fn catalogue(&self) -> Vec<(String, bool)> {
        let metrics = self.metrics.lock().expect("never poisoned");
        metrics
            .iter()
            .map(|(name, entities)| {
                let labeled = entities
                    .values()
                    .flat_map(|by_labels| by_labels.keys())
                    .any(|labels| !labels.is_empty());
                (name.clone(), labeled)
            })
            .collect()
    }

    /// One point per step of `window` for `metric` of `entity`, per label set, or `None`
    /// when the metric is unknown. An entity without data gets the unlabeled series of nulls.
    pub fn points(&self, metric: &str, entity: &str, window: Window) -> Option<Points> {
        let metrics = self.metrics.lock().expect("never poisoned");
        let entities = metrics.get(metric)?;
        let step = window.step_ms.max(MINUTE_MS);
        let align = |t: i64| (t + window.offset_ms).div_euclid(step) * step - window.offset_ms;
        let starts: Vec<i64> = (0..)
            .map(|i| align(window.start_ms) + i * step)
            .take_while(|t| *t <= window.end_ms)
            .take(10_000)
            .collect();
        let empty = BTreeMap::from([(Labels::new(), Buckets::new())]);
        let series = entities.get(entity).unwrap_or(&empty);
        Some(
            series
                .iter()
                .map(|(labels, buckets)| {
                    let values = starts
                        .iter()
                        .map(|start| {
                            let combined = buckets
                                .range(*start..start + step)
                                .fold(Avg::default(), |sum, (_, avg)| sum.merge(*avg));
                            (*start, combined.value())
                        })
                        .collect();
                    (labels.clone(), values)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_040_000; // a minute boundary

    fn minute_window(start: i64, minutes: i64) -> Window {
        Window {
            start_ms: start,
            end_ms: start + (minutes - 1) * MINUTE_MS,
            step_ms: MINUTE_MS,
            offset_ms: 0,
        }
    }

    #[test]
    fn a_minute_reads_as_the_whole_number_average_of_its_samples() {
        let store = MetricStore::default();
        for (at, value) in [(0, 6), (1_000, 5), (2_000, 6), (3_000, 5)] {
            store.observe("m", "svc", vec![], T0 + at, value);
        }
        store.observe("m", "svc", vec![], T0 + MINUTE_MS, 11);
        let points = store.points("m", "svc", minute_window(T0, 3)).unwrap();
        assert_eq!(
            points[&Labels::new()],
            vec![
                (T0, Some(5)),
                (T0 + MINUTE_MS, Some(11)),
                (T0 + 2 * MINUTE_MS, None)
            ]
        );
        assert!(store.points("other", "svc", minute_window(T0, 1)).is_none());
        assert_eq!(whole(0.4), 1);
        assert_eq!(whole(5.5), 6);
        assert_eq!(whole(-3.0), 0);
    }

    #[test]
    fn hours_combine_their_minutes_and_label_sets_stay_apart() {
        let store = MetricStore::default();
        let hour = 1_699_999_200_000; // an hour boundary
        store.observe("m", "svc", vec![("s".into(), "a".into())], hour, 2);
        store.observe(
            "m",
            "svc",
            vec![("s".into(), "a".into())],
            hour + 30 * MINUTE_MS,
            4,
        );
        store.observe("m", "svc", vec![("s".into(), "b".into())], hour, 9);
        let window = Window {
            start_ms: hour,
            end_ms: hour,
            step_ms: 60 * MINUTE_MS,
            offset_ms: 0,
        };
        let points = store.points("m", "svc", window).unwrap();
        assert_eq!(
            points[&vec![("s".into(), "a".into())]],
            vec![(hour, Some(3))]
        );
        assert_eq!(
            points[&vec![("s".into(), "b".into())]],
            vec![(hour, Some(9))]
        );
        assert_eq!(store.catalogue(), vec![("m".to_string(), true)]);
    }
}
