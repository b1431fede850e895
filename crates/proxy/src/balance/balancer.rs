//! Choosing among the current upstreams: the configured policy over the healthy ones, and
//! ejection of upstreams that fail (for a growing interval, then probed again).
//!
//! Ejections the data path decides (connection failures, latency outliers) leave at least
//! half the pool in use (`--max-ejection-percent`, as Envoy's `max_ejection_percent`): a
//! pool whose every node has trouble keeps sending to them rather than to nobody. Failed
//! health checks eject whatever the share: a node that says it is not serving is out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::balance::route::{RoundRobin, SmoothWeighted, StickyKeys, Upstream};

/// The balancing policy for unkeyed messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    WeightedRoundRobin,
}

#[derive(Default)]
struct Health {
    failures: u32,
    /// Ejected for failing, until then.
    ejected_until: Option<Instant>,
    /// Ejected for being slow, until then: a success (a slow node still answers) does not
    /// end this one.
    slow_until: Option<Instant>,
}

impl Health {
    /// When the ejection in force ends.
    fn until(&self) -> Option<Instant> {
        // `None` orders before any time: the later of the two, or whichever is set.
        self.ejected_until.max(self.slow_until)
    }

    /// Counts a failure and, when `eject`, ejects for 1 s, doubling with each further
    /// failure (at most [`MAX_EJECTION`]); the ejection's length.
    fn fail(&mut self, now: Instant, eject: bool) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ejection = Duration::from_secs(1)
            .checked_mul(1 << self.failures.saturating_sub(1).min(5))
            .unwrap_or(MAX_EJECTION)
            .min(MAX_EJECTION);
        if eject {
            self.ejected_until = Some(now + ejection);
        }
        ejection
    }
}

/// Whether `address` is ejected at `now` in `health`.
fn ejected(health: &HashMap<String, Health>, address: &str, now: Instant) -> bool {
    health
        .get(address)
        .and_then(Health::until)
        .is_some_and(|t| t > now)
}

/// Picks upstreams and remembers which ones fail.
pub struct Balancer {
    policy: Policy,
    round_robin: RoundRobin,
    weighted: SmoothWeighted,
    sticky: StickyKeys,
    health: Mutex<HashMap<String, Health>>,
    /// The most of the pool, in percent, that data-path ejections may leave out at once.
    max_ejection_percent: u32,
}

/// Longest an upstream stays ejected.
const MAX_EJECTION: Duration = Duration::from_secs(30);

impl Balancer {
    pub fn new(policy: Policy, sticky: StickyKeys) -> Self {
        Balancer {
            policy,
            round_robin: RoundRobin::default(),
            weighted: SmoothWeighted::default(),
            sticky,
            health: Mutex::default(),
            max_ejection_percent: 50,
        }
    }

    /// At most `percent` of the pool ejected at once by the data path (at least one
    /// upstream may always be).
    pub fn with_max_ejection_percent(mut self, percent: u32) -> Self {
        self.max_ejection_percent = percent.min(100);
        self
    }

    /// How many more of `pool` the data path may eject at `now`.
    pub(crate) fn ejection_room(&self, pool: &[Upstream], now: Instant) -> usize {
        let health = self.health.lock().expect("health lock is never poisoned");
        self.room_in(&health, pool, now)
    }

    fn room_in(&self, health: &HashMap<String, Health>, pool: &[Upstream], now: Instant) -> usize {
        let allowed = (pool.len() * self.max_ejection_percent as usize / 100).max(1);
        let out = pool
            .iter()
            .filter(|u| ejected(health, &u.address, now))
            .count();
        allowed.saturating_sub(out)
    }

    /// A send to `address`, one of `pool`, failed for a reason of the connection: it is
    /// ejected as [`Balancer::failed`] ejects, if it is out already or the pool has room
    /// for one more ejection (see [`Balancer::ejection_room`]); otherwise only the failure
    /// is counted. Whether it was ejected.
    pub(crate) fn failed_in(&self, address: &str, pool: &[Upstream], now: Instant) -> bool {
        let mut health = self.health.lock().expect("health lock is never poisoned");
        let eject = ejected(&health, address, now) || self.room_in(&health, pool, now) > 0;
        health
            .entry(address.to_string())
            .or_default()
            .fail(now, eject);
        eject
    }

    /// The upstreams not ejected at `now`; all of them when every one is ejected (so they
    /// are probed rather than nothing being tried).
    pub fn healthy<'a>(
        &self,
        upstreams: &'a [Upstream],
        now: Instant,
    ) -> std::borrow::Cow<'a, [Upstream]> {
        let health = self.health.lock().expect("health lock is never poisoned");
        // Usually none is ejected: the set as it is, uncopied.
        if health.is_empty() {
            return std::borrow::Cow::Borrowed(upstreams);
        }
        let ok: Vec<Upstream> = upstreams
            .iter()
            .filter(|u| !ejected(&health, &u.address, now))
            .cloned()
            .collect();
        if ok.is_empty() {
            std::borrow::Cow::Borrowed(upstreams)
        } else {
            std::borrow::Cow::Owned(ok)
        }
    }

    /// The upstream for a message: by key when it has one, by policy otherwise.
    pub(crate) fn pick(
        &self,
        key: Option<&str>,
        upstreams: &[Upstream],
        now: Instant,
    ) -> Option<Upstream> {
        self.pick_in_lane(0, key, upstreams, now)
    }

    /// [`Balancer::pick`] for one lane of round-robin (see [`route::lane`]): each lane
    /// cycles through the upstreams on its own.
    pub(crate) fn pick_in_lane(
        &self,
        lane: usize,
        key: Option<&str>,
        upstreams: &[Upstream],
        now: Instant,
    ) -> Option<Upstream> {
        let candidates = self.healthy(upstreams, now);
        let index = match key {
            Some(key) => self.sticky.pick(key, &candidates, now)?,
            None => match self.policy {
                Policy::RoundRobin => self.round_robin.pick(lane, candidates.len())?,
                Policy::WeightedRoundRobin => self.weighted.pick(&candidates)?,
            },
        };
        candidates.get(index).cloned()
    }

    /// A send to `address` failed: eject it for 1 s, doubling with each further failure.
    pub fn failed(&self, address: &str, now: Instant) -> Duration {
        let mut health = self.health.lock().expect("health lock is never poisoned");
        health
            .entry(address.to_string())
            .or_default()
            .fail(now, true)
    }

    /// Leaves `address` out until `until` (a latency outlier: see [`crate::balance::outlier`]); its
    /// count of failures is left as it is.
    pub fn eject(&self, address: &str, until: Instant) {
        let mut health = self.health.lock().expect("health lock is never poisoned");
        health.entry(address.to_string()).or_default().slow_until = Some(until);
    }

    /// A send to `address` succeeded: it is not failing (a latency ejection stays).
    pub(crate) fn succeeded(&self, address: &str) {
        let mut health = self.health.lock().expect("health lock is never poisoned");
        if let Some(entry) = health.get_mut(address) {
            entry.failures = 0;
            entry.ejected_until = None;
            if entry.slow_until.is_none_or(|t| t <= Instant::now()) {
                health.remove(address);
            }
        }
    }

    /// Whether `address` failed and its ejection has run out: time to try it again.
    pub(crate) fn due_for_probe(&self, address: &str, now: Instant) -> bool {
        self.health
            .lock()
            .expect("health lock is never poisoned")
            .get(address)
            .and_then(Health::until)
            .is_some_and(|t| t <= now)
    }

    /// Whether `address` is ejected at `now`.
    pub fn is_ejected(&self, address: &str, now: Instant) -> bool {
        let health = self.health.lock().expect("health lock is never poisoned");
        ejected(&health, address, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Vec<Upstream> {
        ["a:1", "b:1", "c:1"]
            .iter()
            .map(|a| Upstream {
                address: a.to_string(),
                weight: 1,
            })
            .collect()
    }

    fn round_robin() -> Balancer {
        Balancer::new(
            Policy::RoundRobin,
            StickyKeys::new(10, Duration::from_secs(60)),
        )
    }

    #[test]
    fn a_failing_upstream_is_left_out_for_a_growing_interval_then_probed() {
        let balancer = round_robin();
        let now = Instant::now();
        assert_eq!(balancer.failed("b:1", now), Duration::from_secs(1));
        assert_eq!(balancer.failed("b:1", now), Duration::from_secs(2));
        assert_eq!(balancer.failed("b:1", now), Duration::from_secs(4));
        let picks: Vec<String> = (0..4)
            .map(|_| balancer.pick(None, &set(), now).unwrap().address)
            .collect();
        assert!(!picks.contains(&"b:1".to_string()), "{picks:?}");
        assert!(
            !balancer.is_ejected("b:1", now + Duration::from_secs(5)),
            "back after the interval"
        );
        balancer.succeeded("b:1");
        assert_eq!(
            balancer.failed("b:1", now),
            Duration::from_secs(1),
            "success resets the interval"
        );
        for _ in 0..20 {
            balancer.failed("c:1", now);
        }
        assert!(balancer.is_ejected("c:1", now + Duration::from_secs(29)));
        assert!(
            !balancer.is_ejected("c:1", now + Duration::from_secs(31)),
            "capped at 30 s"
        );
    }

    #[test]
    fn a_latency_ejection_outlasts_the_slow_nodes_successes() {
        let balancer = round_robin();
        let now = Instant::now();
        balancer.eject("b:1", now + Duration::from_secs(10));
        balancer.succeeded("b:1");
        assert!(balancer.is_ejected("b:1", now + Duration::from_secs(9)));
        assert!(!balancer.due_for_probe("b:1", now + Duration::from_secs(9)));
        assert!(balancer.due_for_probe("b:1", now + Duration::from_secs(11)));
        // A failure meanwhile does not shorten it.
        balancer.failed("b:1", now);
        assert!(balancer.is_ejected("b:1", now + Duration::from_secs(9)));
    }

    #[test]
    fn the_data_path_leaves_at_least_half_the_pool_in_use() {
        let balancer = round_robin();
        let now = Instant::now();
        let pool = set();
        assert_eq!(
            balancer.ejection_room(&pool, now),
            1,
            "half of 3, rounded down"
        );
        assert!(balancer.failed_in("a:1", &pool, now));
        assert!(
            !balancer.failed_in("b:1", &pool, now),
            "a second of three would leave too few"
        );
        assert!(!balancer.is_ejected("b:1", now));
        assert!(
            balancer.failed_in("a:1", &pool, now),
            "the ejected one again"
        );
        // Once the first is back, another may go.
        let later = now + Duration::from_secs(5);
        assert!(balancer.failed_in("b:1", &pool, later));
        // Health checks eject whatever the share.
        balancer.failed("c:1", later);
        assert!(balancer.is_ejected("c:1", later));
        // A pool of one may still lose its one (then it is tried all the same).
        let one = &pool[..1];
        let fresh = round_robin();
        assert!(fresh.failed_in("a:1", one, now));
        // 100 %: every one may go.
        let all = round_robin().with_max_ejection_percent(100);
        for u in &pool {
            assert!(all.failed_in(&u.address, &pool, now));
        }
    }

    #[test]
    fn when_every_upstream_is_ejected_they_are_all_tried() {
        let balancer = round_robin();
        let now = Instant::now();
        for u in set() {
            balancer.failed(&u.address, now);
        }
        assert_eq!(balancer.healthy(&set(), now).len(), 3);
        assert!(balancer.pick(Some("svc\0pod"), &set(), now).is_some());
    }
}
