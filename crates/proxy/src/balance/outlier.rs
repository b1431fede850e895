//! Passive ejection of upstreams that answer much slower than the rest of the pool.
//!
//! A failing upstream is ejected at its first failed send (see [`crate::balance::balancer`]); a slow
//! one never fails, it only holds every batch sent its way (a node in long garbage
//! collection, or on a starved host). Each upstream's batch latency is followed as a moving
//! average; one whose average exceeds `--outlier-latency-factor` times the median of the
//! others' (and `--outlier-min-latency`, so a pool of fast nodes is left alone) is ejected
//! for `--outlier-ejection`, doubling while it keeps being found slow. On return it is
//! judged on fresh samples only.
//!
//! A pool that is slow as a whole has no outlier, and nobody is ejected: its nodes keep
//! their share. Ejecting the slow node of a small pool moves its load onto the others, so
//! at most `--max-ejection-percent` of the pool (half by default) is ejected at once, by
//! latency and connection failures together; two upstreams are enough to judge one
//! against the other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Weight of each new sample in the moving average.
const SMOOTHING: f64 = 0.1;
/// Samples since its last ejection (or since it appeared) before an upstream is judged.
pub(crate) const MIN_SAMPLES: u32 = 20;
/// Longest latency ejection.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// The settings of latency ejection.
#[derive(Clone, Copy, Debug)]
pub struct OutlierDetection {
    /// Slower than this many times the median of the others; 0 turns it off.
    pub factor: f64,
    /// And slower than this.
    pub min_latency: Duration,
    /// The first ejection; each further one in a row doubles it.
    pub ejection: Duration,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            factor: 3.0,
            min_latency: Duration::from_millis(100),
            ejection: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Track {
    /// Moving average latency, seconds.
    average: f64,
    samples: u32,
    /// Ejections in a row (reset once it is judged fine).
    ejections: u32,
}

/// One upstream's standing, for [`find_outliers`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Standing {
    pub address: String,
    /// Moving average latency, seconds.
    pub average: f64,
    pub samples: u32,
}

/// The upstreams among `standings` to eject for latency, slowest first, at most
/// `room`. Only upstreams with [`MIN_SAMPLES`] are judged, against the median of the
/// other judged ones, and only when at least two are judged.
pub(crate) fn find_outliers(
    standings: &[Standing],
    config: &OutlierDetection,
    room: usize,
) -> Vec<String> {
    if config.factor <= 0.0 {
        return Vec::new();
    }
    let judged: Vec<&Standing> = standings
        .iter()
        .filter(|s| s.samples >= MIN_SAMPLES)
        .collect();
    if judged.len() < 2 {
        return Vec::new();
    }
    let mut slow: Vec<(&Standing, f64)> = judged
        .iter()
        .filter_map(|s| {
            let mut others: Vec<f64> = judged
                .iter()
                .filter(|o| o.address != s.address)
                .map(|o| o.average)
                .collect();
            others.sort_by(f64::total_cmp);
            let median = if others.len() % 2 == 1 {
                others[others.len() / 2]
            } else {
                (others[others.len() / 2 - 1] + others[others.len() / 2]) / 2.0
            };
            let ratio = s.average / median.max(f64::MIN_POSITIVE);
            (ratio > config.factor && s.average > config.min_latency.as_secs_f64())
                .then_some((*s, ratio))
        })
        .collect();
    slow.sort_by(|a, b| b.1.total_cmp(&a.1));
    slow.into_iter()
        .take(room)
        .map(|(s, _)| s.address.clone())
        .collect()
}

/// An ejection decided by [`LatencyOutliers::sweep`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ejection {
    pub address: String,
    pub average: Duration,
    pub duration: Duration,
}

/// The latency of every upstream, and the ejections made for it.
pub struct LatencyOutliers {
    config: OutlierDetection,
    tracks: Mutex<HashMap<String, Track>>,
}

impl LatencyOutliers {
    pub fn new(config: OutlierDetection) -> Self {
        LatencyOutliers {
            config,
            tracks: Mutex::default(),
        }
    }

    /// A batch to `address` was acknowledged after `latency`.
    pub(crate) fn observe(&self, address: &str, latency: Duration) {
        if self.config.factor <= 0.0 {
            return;
        }
        let mut tracks = self.tracks.lock().expect("never poisoned");
        let track = match tracks.get_mut(address) {
            Some(track) => track,
            None => tracks.entry(address.to_string()).or_default(),
        };
        let sample = latency.as_secs_f64();
        track.average = if track.samples == 0 {
            sample
        } else {
            track.average + SMOOTHING * (sample - track.average)
        };
        track.samples = track.samples.saturating_add(1);
    }

    /// Judges the upstreams `in_use` (`(address, ejected now)`), returning whom to eject
    /// (at most `room`) and for how long. Upstreams no longer in use are forgotten.
    pub(crate) fn sweep(&self, in_use: &[(String, bool)], room: usize) -> Vec<Ejection> {
        if self.config.factor <= 0.0 {
            return Vec::new();
        }
        let mut tracks = self.tracks.lock().expect("never poisoned");
        tracks.retain(|address, _| in_use.iter().any(|(a, _)| a == address));
        let standings: Vec<Standing> = in_use
            .iter()
            .filter(|(_, ejected)| !ejected)
            .filter_map(|(address, _)| {
                let track = tracks.get(address)?;
                Some(Standing {
                    address: address.clone(),
                    average: track.average,
                    samples: track.samples,
                })
            })
            .collect();
        let outliers = find_outliers(&standings, &self.config, room);
        let mut ejections = Vec::new();
        for standing in &standings {
            let Some(track) = tracks.get_mut(&standing.address) else {
                continue;
            };
            if outliers.contains(&standing.address) {
                let duration = self
                    .config
                    .ejection
                    .checked_mul(1 << track.ejections.min(10))
                    .unwrap_or(MAX_EJECTION)
                    .min(MAX_EJECTION);
                ejections.push(Ejection {
                    address: standing.address.clone(),
                    average: Duration::from_secs_f64(track.average),
                    duration,
                });
                track.ejections = track.ejections.saturating_add(1);
                // Judged again on what it does after coming back.
                track.samples = 0;
            } else if track.samples >= MIN_SAMPLES {
                track.ejections = 0;
            }
        }
        ejections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(address: &str, millis: u64) -> Standing {
        Standing {
            address: address.into(),
            average: millis as f64 / 1000.0,
            samples: MIN_SAMPLES,
        }
    }

    #[test]
    fn only_a_node_far_slower_than_the_others_and_slow_in_itself_is_an_outlier() {
        let config = OutlierDetection::default();
        let pool = [
            standing("a", 20),
            standing("b", 25),
            standing("c", 30),
            standing("slow", 400),
        ];
        assert_eq!(find_outliers(&pool, &config, 1), ["slow"]);
        assert!(find_outliers(&pool, &config, 0).is_empty(), "no room");
        // Ten times slower, but 10 ms: nobody minds.
        let fast = [
            standing("a", 1),
            standing("b", 1),
            standing("c", 1),
            standing("d", 10),
        ];
        assert!(find_outliers(&fast, &config, 1).is_empty());
        // Uniformly slow: nobody stands out.
        let slow_pool = [standing("a", 500), standing("b", 600), standing("c", 700)];
        assert!(find_outliers(&slow_pool, &config, 1).is_empty());
    }

    #[test]
    fn small_pools_and_thin_evidence_eject_nobody() {
        let config = OutlierDetection::default();
        assert!(find_outliers(&[standing("b", 900)], &config, 1).is_empty());
        // Two are enough: each is judged against the other.
        assert_eq!(
            find_outliers(&[standing("a", 10), standing("b", 900)], &config, 1),
            ["b"]
        );
        assert!(find_outliers(&[standing("a", 600), standing("b", 900)], &config, 1).is_empty());
        let mut few_samples = standing("slow", 900);
        few_samples.samples = MIN_SAMPLES - 1;
        let pool = [
            standing("a", 10),
            standing("b", 10),
            standing("c", 10),
            few_samples,
        ];
        assert!(find_outliers(&pool, &config, 1).is_empty());
        let off = OutlierDetection {
            factor: 0.0,
            ..config
        };
        let pool = [standing("a", 10), standing("b", 10), standing("slow", 900)];
        assert!(find_outliers(&pool, &off, 1).is_empty());
    }

    #[test]
    fn ejections_double_while_the_node_stays_slow_and_reset_once_it_is_fine() {
        let outliers = LatencyOutliers::new(OutlierDetection::default());
        let in_use: Vec<(String, bool)> = ["a", "b", "c", "slow"]
            .iter()
            .map(|a| (a.to_string(), false))
            .collect();
        let feed = |slow_ms: u64| {
            for _ in 0..MIN_SAMPLES {
                for a in ["a", "b", "c"] {
                    outliers.observe(a, Duration::from_millis(20));
                }
                outliers.observe("slow", Duration::from_millis(slow_ms));
            }
        };
        feed(500);
        let first = outliers.sweep(&in_use, 1);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].address, "slow");
        assert_eq!(first[0].duration, Duration::from_secs(10));
        assert!(
            outliers.sweep(&in_use, 1).is_empty(),
            "judged again only on fresh samples"
        );
        feed(500);
        assert_eq!(
            outliers.sweep(&in_use, 1)[0].duration,
            Duration::from_secs(20)
        );
        // Recovered: its average comes down and the count of ejections resets.
        for _ in 0..60 {
            outliers.observe("slow", Duration::from_millis(20));
        }
        feed(20);
        assert!(outliers.sweep(&in_use, 1).is_empty());
        feed(500);
        assert_eq!(
            outliers.sweep(&in_use, 1)[0].duration,
            Duration::from_secs(10)
        );
        // No room left in the pool (the balancer's share): none more.
        feed(500);
        assert!(outliers.sweep(&in_use, 0).is_empty());
    }
}
