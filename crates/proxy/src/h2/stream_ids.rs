//! Maps keyed by stream id. Every DATA frame looks its stream up (in the session and in the
//! handler), and SipHash, the standard map's hasher, was a few percent of the proxy's CPU
//! under agent-like load, where each message is a frame of its own. A stream id is a small
//! integer the client picks, so a multiplicative hash is enough: the map never holds more
//! than the connection's concurrent-stream limit, so ids chosen to collide cost a bounded
//! probe, not a flood.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from stream id to `V`.
pub(crate) type StreamIdMap<V> = HashMap<u32, V, BuildHasherDefault<StreamIdHasher>>;

/// 2^64 / φ, odd: multiplying by it spreads consecutive ids over the whole word (Knuth's
/// multiplicative hashing).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Hashes one `u32` with a multiplication.
#[derive(Clone, Copy, Default)]
pub(crate) struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u32` keys are hashed here; bytes are folded in the same way for completeness.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(GOLDEN);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(GOLDEN);
    }

    fn finish(&self) -> u64 {
        // The product's high half is well mixed, its low bits are not (odd ids give odd
        // products); the table indexes by the low bits, so fold the high half in.
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn client_stream_ids_spread_over_a_small_table() {
        // Client streams are odd and climb by two; a table of 128 buckets indexes by the
        // low seven bits. Each bucket should get about its share.
        let build = BuildHasherDefault::<StreamIdHasher>::default();
        let mut buckets = [0u32; 128];
        for id in (1..2 * 12_800u32).step_by(2) {
            buckets[(build.hash_one(id) & 127) as usize] += 1;
        }
        let (least, most) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(
            *least >= 50 && *most <= 150,
            "100 per bucket expected, got {least}..{most}"
        );
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        let mut map = StreamIdMap::default();
        for id in (1..2001u32).step_by(2) {
            map.insert(id, id * 10);
        }
        assert_eq!(map.get(&1999), Some(&19990));
        assert_eq!(map.get(&2), None);
        assert_eq!(map.len(), 1000);
    }
}
