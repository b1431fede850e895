//! Which of the client's recent stream ids it really opened: nothing kept while the client
//! skips none (as clients do), a fixed 256 bytes once it has.
//!
//! Client streams take odd ids in increasing order, and may skip some (RFC 9113 §5.1.1:
//! the skipped ones are closed without ever being used). A frame on an id below the
//! highest one, of a stream no longer tracked, means one of two things: a stream that
//! existed and closed (its frames may still be arriving: refused on that stream alone), or
//! an id the client never opened (a HEADERS there is the connection error §5.1.1 names).
//! The last [`SPAN`] ids are told apart exactly; older ones are taken as having existed.

/// Odd ids remembered below the highest.
pub(crate) const SPAN: u32 = 2048;

const WORDS: usize = SPAN as usize / 64;

/// What is known of an id at or below the highest opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Used {
    Yes,
    Never,
    /// Older than [`SPAN`] ids: not remembered.
    Unknown,
}

#[derive(Default)]
pub(crate) struct UsedIds {
    /// One bit per recent odd id, set when it was opened; `None` while every id up to the
    /// highest was opened (then there is nothing to remember, and every connection holds
    /// this, idle ones included).
    bits: Option<Box<[u64; WORDS]>>,
    /// The highest id opened; 0 before the first.
    highest: u32,
}

impl UsedIds {
    /// The highest id opened, 0 before any.
    pub(crate) fn highest(&self) -> u32 {
        self.highest
    }

    /// `id` opened (it is above every id before it): the ids skipped on the way are marked
    /// never used.
    pub(crate) fn open(&mut self, id: u32) {
        debug_assert!(id > self.highest && id % 2 == 1);
        let from = if self.highest == 0 {
            1
        } else {
            self.highest + 2
        };
        let skipped = (id - from) / 2;
        if skipped > 0 && self.bits.is_none() {
            // The first skip: every id before it was opened.
            self.bits = Some(Box::new([u64::MAX; WORDS]));
        }
        if skipped >= SPAN {
            self.bits = Some(Box::new([0; WORDS]));
        } else {
            for at in (0..skipped).map(|k| from + 2 * k) {
                self.set(at, false);
            }
        }
        self.set(id, true);
        self.highest = id;
    }

    /// Whether `id` (odd, at most the highest) was opened.
    pub(crate) fn used(&self, id: u32) -> Used {
        debug_assert!(id <= self.highest);
        if (self.highest - id) / 2 >= SPAN {
            return Used::Unknown;
        }
        let Some(bits) = &self.bits else {
            return Used::Yes;
        };
        let slot = (id / 2) % SPAN;
        if bits[(slot / 64) as usize] & (1 << (slot % 64)) != 0 {
            Used::Yes
        } else {
            Used::Never
        }
    }

    fn set(&mut self, id: u32, used: bool) {
        let Some(bits) = self.bits.as_mut() else {
            // Nothing skipped yet: every id is taken as used.
            return;
        };
        let slot = (id / 2) % SPAN;
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        if used {
            bits[word] |= bit;
        } else {
            bits[word] &= !bit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_skips_no_id_costs_nothing_and_its_ids_all_read_used() {
        let mut ids = UsedIds::default();
        for id in (1..).step_by(2).take(3000) {
            ids.open(id);
        }
        assert!(ids.bits.is_none());
        let highest = ids.highest();
        assert_eq!(ids.used(highest), Used::Yes);
        assert_eq!(ids.used(highest - 2 * (SPAN - 1)), Used::Yes);
        assert_eq!(ids.used(1), Used::Unknown);
        // The first skip remembers from then on.
        ids.open(highest + 4);
        assert_eq!(ids.used(highest + 2), Used::Never);
        assert_eq!(ids.used(highest), Used::Yes);
        assert!(std::mem::size_of::<UsedIds>() <= 16);
    }

    #[test]
    fn opened_skipped_and_forgotten_ids_are_told_apart() {
        let mut ids = UsedIds::default();
        ids.open(1);
        ids.open(3);
        ids.open(9);
        assert_eq!(ids.used(1), Used::Yes);
        assert_eq!(ids.used(3), Used::Yes);
        assert_eq!(ids.used(5), Used::Never);
        assert_eq!(ids.used(7), Used::Never);
        assert_eq!(ids.used(9), Used::Yes);
        assert_eq!(ids.highest(), 9);

        // A long run of streams: the ring's slots are reused, old ids become unknown.
        for id in (11..).step_by(2).take(SPAN as usize) {
            ids.open(id);
        }
        let highest = ids.highest();
        assert_eq!(ids.used(highest - 2 * (SPAN - 1)), Used::Yes);
        assert_eq!(ids.used(9), Used::Unknown);

        // A jump over more than the span forgets everything between.
        let far = highest + 2 * SPAN + 2;
        ids.open(far);
        assert_eq!(ids.used(far - 2), Used::Never);
        assert_eq!(ids.used(far - 2 * (SPAN - 1)), Used::Never);
        assert_eq!(ids.used(far), Used::Yes);
        // A small skip reuses slots of ids opened before: they read as never used now.
        let next = far + 6;
        ids.open(next);
        assert_eq!(ids.used(far + 2), Used::Never);
        assert_eq!(ids.used(far + 4), Used::Never);
    }
}
