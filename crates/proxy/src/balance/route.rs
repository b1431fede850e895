//! Choosing an upstream for each message.
//!
//! - [`RoundRobin`] and [`SmoothWeighted`] (nginx's smooth weighted round-robin) spread
//!   messages evenly or by weight.
//! - [`rendezvous`] (highest random weight) gives each key one upstream, so that adding an
//!   upstream to N moves about 1/(N+1) of the keys and removing one moves only its keys;
//!   [`StickyKeys`] remembers recent choices (bounded, with a TTL), so a key stays where it
//!   is while its upstream stays.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// An upstream as routing sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Upstream {
    pub address: String,
    pub weight: u32,
}

/// An upstream stands for its address (to compare it with addresses already tried).
impl AsRef<str> for Upstream {
    fn as_ref(&self) -> &str {
        &self.address
    }
}

/// Lanes of [`RoundRobin`]; lanes beyond this share cursors, which costs nothing but the
/// guarantee below.
const LANES: usize = 64;

/// Plain round-robin over the current upstreams, in lanes.
///
/// Each lane (one queue partition's batches of one method, or one method's calls) cycles
/// through every upstream on a cursor of its own. One shared cursor phase-locks: when the
/// picks of several lanes repeat in a cycle whose length is a multiple of the upstream
/// count, one lane's batches keep landing on the same upstream, and since lanes carry
/// batches of different sizes the messages are no longer spread evenly.
#[derive(Debug)]
pub struct RoundRobin {
    lanes: [AtomicUsize; LANES],
}

impl Default for RoundRobin {
    fn default() -> Self {
        RoundRobin {
            // Staggered starts, so lanes that begin together do not all pick the first.
            lanes: std::array::from_fn(AtomicUsize::new),
        }
    }
}

impl RoundRobin {
    /// Index of the upstream for `lane`'s next batch (`None` when there is none).
    pub(crate) fn pick(&self, lane: usize, count: usize) -> Option<usize> {
        (count > 0).then(|| self.lanes[lane % LANES].fetch_add(1, Ordering::Relaxed) % count)
    }
}

/// The lane of `partition`'s batches on `path`.
pub(crate) fn lane(partition: usize, path: &str) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(partition, path), &mut hasher);
    std::hash::Hasher::finish(&hasher) as usize
}

/// Smooth weighted round-robin: every pick adds each upstream's weight to its running
/// score, takes the highest and subtracts the total from it. Weights 5:1:1 give
/// `a a b a c a a` rather than `a a a a a b c`.
#[derive(Debug, Default)]
pub(crate) struct SmoothWeighted {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub(crate) fn pick(&self, upstreams: &[Upstream]) -> Option<usize> {
        let total: i64 = upstreams.iter().map(|u| i64::from(u.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut current = self.current.lock().expect("routing lock is never poisoned");
        if current.len() != upstreams.len() {
            // The upstream set changed: start over (a fresh cycle is as smooth).
            *current = vec![0; upstreams.len()];
        }
        let mut best = 0;
        for (i, upstream) in upstreams.iter().enumerate() {
            current[i] += i64::from(upstream.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        Some(best)
    }
}

/// A 64-bit hash that is the same in every proxy replica and release (FNV-1a followed by a
/// SplitMix64 finaliser for avalanche), so all replicas send a key to the same upstream.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    mix(hash)
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Rendezvous hashing: the upstream with the highest score for `key`. Upstreams of weight 0
/// are never chosen.
pub(crate) fn rendezvous(key: &str, upstreams: &[Upstream]) -> Option<usize> {
    Rendezvous::new(upstreams).pick(key.as_bytes())
}

/// Rendezvous hashing over one set of upstreams for many keys (the trace IDs of an
/// export): each upstream's hash is computed once, not once per key.
pub(crate) struct Rendezvous<'a> {
    /// (address hash, index, address) of each upstream that may be chosen.
    upstreams: Vec<(u64, usize, &'a str)>,
}

impl<'a> Rendezvous<'a> {
    pub(crate) fn new(upstreams: &'a [Upstream]) -> Rendezvous<'a> {
        Rendezvous {
            upstreams: upstreams
                .iter()
                .enumerate()
                .filter(|(_, u)| u.weight > 0)
                .map(|(i, u)| (stable_hash(u.address.as_bytes()), i, u.address.as_str()))
                .collect(),
        }
    }

    /// The index of `key`'s upstream: the highest score; equal scores (practically never)
    /// fall to the smaller address, the same everywhere.
    pub(crate) fn pick(&self, key: &[u8]) -> Option<usize> {
        self.pick_hashed(stable_hash(key))
    }

    /// [`Rendezvous::pick`] for a trace ID (random bytes already): hashed eight bytes at a
    /// time, a few times cheaper than byte by byte, and as stable.
    pub(crate) fn pick_trace(&self, trace_id: &[u8]) -> Option<usize> {
        let mut hash: u64 = 0x9e37_79b9_7f4a_7c15 ^ trace_id.len() as u64;
        for word in trace_id.chunks(8) {
            let mut bytes = [0u8; 8];
            bytes[..word.len()].copy_from_slice(word);
            hash = mix(hash ^ u64::from_le_bytes(bytes));
        }
        self.pick_hashed(hash)
    }

    fn pick_hashed(&self, key_hash: u64) -> Option<usize> {
        self.upstreams
            .iter()
            .map(|(hash, i, address)| (mix(key_hash ^ hash), *i, *address))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.2.cmp(a.2)))
            .map(|(_, i, _)| i)
    }
}

struct Remembered {
    address: String,
    last_used: Instant,
    order: u64,
}

/// Remembers where each key went, for at most `capacity` keys and `ttl` since last use.
/// A key whose upstream is gone is routed afresh.
pub struct StickyKeys {
    capacity: usize,
    ttl: Duration,
    state: Mutex<StickyState>,
}

#[derive(Default)]
struct StickyState {
    entries: HashMap<String, Remembered>,
    /// use order → key, oldest first
    by_age: BTreeMap<u64, String>,
    clock: u64,
}

impl StickyKeys {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        StickyKeys {
            capacity: capacity.max(1),
            ttl,
            state: Mutex::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.state
            .lock()
            .expect("routing lock is never poisoned")
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The upstream for `key` at time `now`.
    pub(crate) fn pick(&self, key: &str, upstreams: &[Upstream], now: Instant) -> Option<usize> {
        let mut state = self.state.lock().expect("routing lock is never poisoned");
        state.clock += 1;
        let order = state.clock;
        let remembered = state.entries.get(key).and_then(|r| {
            let fresh = now.saturating_duration_since(r.last_used) < self.ttl;
            let index = upstreams
                .iter()
                .position(|u| u.address == r.address && u.weight > 0);
            fresh.then_some(index).flatten().map(|i| (i, r.order))
        });
        let index = match remembered {
            Some((index, old_order)) => {
                state.by_age.remove(&old_order);
                index
            }
            None => {
                if let Some(old) = state.entries.get(key).map(|r| r.order) {
                    state.by_age.remove(&old);
                }
                rendezvous(key, upstreams)?
            }
        };
        state.entries.insert(
            key.to_string(),
            Remembered {
                address: upstreams[index].address.clone(),
                last_used: now,
                order,
            },
        );
        state.by_age.insert(order, key.to_string());
        while state.entries.len() > self.capacity {
            let Some((_, oldest)) = state.by_age.pop_first() else {
                break;
            };
            state.entries.remove(&oldest);
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams(n: usize) -> Vec<Upstream> {
        (0..n)
            .map(|i| Upstream {
                address: format!("10.0.0.{i}:11800"),
                weight: 1,
            })
            .collect()
    }

    fn keys() -> Vec<String> {
        (0..10_000)
            .map(|i| format!("service-{}\0instance-{i}", i % 37))
            .collect()
    }

    #[test]
    fn round_robin_visits_every_upstream_in_turn() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(0, 3).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.pick(0, 0), None);
    }

    #[test]
    fn lanes_of_different_batch_sizes_spread_messages_evenly() {
        // Per flush: partition 0's segments (100 messages), partition 1's segments (10),
        // and one keep-alive (1): three picks a cycle over three upstreams. A single
        // cursor would send every 100-message batch to the same upstream.
        let rr = RoundRobin::default();
        let lanes = [(0, 100), (1, 10), (2, 1)];
        let mut messages = [0u64; 3];
        for _ in 0..300 {
            for (lane, size) in lanes {
                messages[rr.pick(lane, 3).unwrap()] += size;
            }
        }
        let total: u64 = messages.iter().sum();
        for count in messages {
            assert_eq!(count, total / 3, "{messages:?}");
        }
    }

    #[test]
    fn smooth_weighted_interleaves_by_weight() {
        let set = vec![
            Upstream {
                address: "a".into(),
                weight: 5,
            },
            Upstream {
                address: "b".into(),
                weight: 1,
            },
            Upstream {
                address: "c".into(),
                weight: 1,
            },
        ];
        let swrr = SmoothWeighted::default();
        let picks: String = (0..7)
            .map(|_| ["a", "b", "c"][swrr.pick(&set).unwrap()])
            .collect();
        assert_eq!(picks, "aabacaa");
        let counts = (0..700).fold([0; 3], |mut c, _| {
            c[swrr.pick(&set).unwrap()] += 1;
            c
        });
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn adding_an_upstream_moves_about_one_in_n_plus_one_keys() {
        let keys = keys();
        for n in [2usize, 3, 5, 8] {
            let before = upstreams(n);
            let after = upstreams(n + 1);
            let moved = keys
                .iter()
                .filter(|k| {
                    before[rendezvous(k, &before).unwrap()].address
                        != after[rendezvous(k, &after).unwrap()].address
                })
                .count();
            let expected = keys.len() as f64 / (n + 1) as f64;
            let ratio = moved as f64 / expected;
            assert!(
                (0.9..1.1).contains(&ratio),
                "n={n}: moved {moved}, expected about {expected:.0}"
            );
            // Every moved key moved to the new upstream.
            assert!(keys.iter().all(|k| {
                let was = &before[rendezvous(k, &before).unwrap()].address;
                let now = &after[rendezvous(k, &after).unwrap()].address;
                was == now || *now == after[n].address
            }));
        }
    }

    #[test]
    fn removing_an_upstream_moves_only_its_keys() {
        let keys = keys();
        let before = upstreams(5);
        let mut after = before.clone();
        let removed = after.remove(2);
        for k in &keys {
            let was = &before[rendezvous(k, &before).unwrap()].address;
            let now = &after[rendezvous(k, &after).unwrap()].address;
            if *was != removed.address {
                assert_eq!(was, now, "{k:?} moved although its upstream stayed");
            }
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let set = upstreams(4);
        let mut counts = [0usize; 4];
        for k in keys() {
            counts[rendezvous(&k, &set).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|c| (2_200..2_800).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn sticky_keys_stay_until_their_upstream_goes_or_they_expire() {
        let sticky = StickyKeys::new(100, Duration::from_secs(180));
        let t0 = Instant::now();
        let three = upstreams(3);
        let key = "checkout\0pod-1";
        let first = sticky.pick(key, &three, t0).unwrap();
        // A fourth upstream: the key stays where it is while remembered.
        let four = upstreams(4);
        assert_eq!(
            four[sticky
                .pick(key, &four, t0 + Duration::from_secs(10))
                .unwrap()],
            three[first]
        );
        // Its upstream gone: routed afresh, never to the removed one.
        let without: Vec<_> = four
            .iter()
            .filter(|u| **u != three[first])
            .cloned()
            .collect();
        let moved = sticky
            .pick(key, &without, t0 + Duration::from_secs(20))
            .unwrap();
        assert_eq!(without[moved], without[rendezvous(key, &without).unwrap()]);
        // Expired: back to the consistent choice.
        let later = sticky
            .pick(key, &four, t0 + Duration::from_secs(500))
            .unwrap();
        assert_eq!(later, rendezvous(key, &four).unwrap());
    }

    #[test]
    fn sticky_keys_are_bounded_oldest_first() {
        let sticky = StickyKeys::new(3, Duration::from_secs(180));
        let set = upstreams(2);
        let now = Instant::now();
        for k in ["a", "b", "c", "a", "d"] {
            sticky.pick(k, &set, now);
        }
        assert_eq!(sticky.len(), 3);
        let state = sticky.state.lock().unwrap();
        assert!(
            !state.entries.contains_key("b"),
            "b was the least recently used"
        );
        assert!(state.entries.contains_key("a"));
    }

    #[test]
    fn trace_ids_spread_evenly_and_a_new_upstream_takes_only_its_share() {
        // Trace IDs as SDKs make them: 16 random bytes (here from a fixed generator).
        let mut state = 0x1234_5678_9abc_def0_u64;
        let ids: Vec<[u8; 16]> = (0..30_000)
            .map(|_| {
                let mut id = [0u8; 16];
                for half in id.chunks_mut(8) {
                    state = mix(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
                    half.copy_from_slice(&state.to_le_bytes());
                }
                id
            })
            .collect();
        let three = upstreams(3);
        let four = upstreams(4);
        let before = Rendezvous::new(&three);
        let after = Rendezvous::new(&four);
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for id in &ids {
            let was = before.pick_trace(id).unwrap();
            counts[was] += 1;
            let now = after.pick_trace(id).unwrap();
            if three[was].address != four[now].address {
                assert_eq!(now, 3, "a trace moves only to the new upstream");
                moved += 1;
            }
        }
        for count in counts {
            assert!((9_000..=11_000).contains(&count), "{counts:?}");
        }
        let share = moved as f64 / ids.len() as f64;
        assert!((0.22..=0.28).contains(&share), "{share}");
    }
}
