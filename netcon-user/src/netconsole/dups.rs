//! Duplicate suppression: the payloads recently heard from one sender.
//!
//! The history is a ring of the last `capacity` fingerprints, in the order heard, with a 16-bit
//! tag of each kept apart: a lookup scans the tags (256 bytes for 128 fingerprints, four cache
//! lines, compared a block at a time) and reads a fingerprint and its time only where a tag
//! matches (one in 65,536 otherwise). With a thousand active senders the histories together
//! outgrow the CPU's caches, and a scan of the fingerprints themselves cost 16 cache lines per
//! datagram.

use std::time::{Duration, Instant};

/// One fingerprint heard, and when.
#[derive(Debug, Clone, Copy)]
struct Heard {
    fingerprint: u64,
    /// Nanoseconds from [`DupHistory::epoch`]: half the size of an `Instant`, and exact for
    /// times within 292 years of it.
    at: i64,
}

/// Recent payload fingerprints of one sender, to drop copies of a datagram already heard (the
/// same frame seen on two interfaces, or twice on a mirror port).
///
/// It holds nothing until the sender's first datagram and grows with what it keeps, up to the
/// capacity: a quiet sender holds little.
#[derive(Debug, Default)]
pub struct DupHistory {
    /// The tags of `heard`, slot for slot.
    tags: Vec<u16>,
    /// The last fingerprints heard, oldest first until full; then a ring whose oldest entry is
    /// at `next`.
    heard: Vec<Heard>,
    next: usize,
    /// The time `Heard::at` counts from: the first one heard.
    epoch: Option<Instant>,
}

impl DupHistory {
    /// Bytes held (the tags and the ring at their capacity).
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.tags.capacity() * size_of::<u16>() + self.heard.capacity() * size_of::<Heard>()
    }

    /// Whether `fingerprint` was heard at most `window` ago; records it otherwise, keeping the
    /// last `capacity` fingerprints.
    pub fn check_and_insert(
        &mut self,
        fingerprint: u64,
        now: Instant,
        window: Duration,
        capacity: usize,
    ) -> bool {
        let epoch = *self.epoch.get_or_insert(now);
        let now = nanos_since(epoch, now);
        if self.heard_within(fingerprint, now, window) {
            return true;
        }
        if capacity == 0 {
            return false;
        }
        let tag = tag(fingerprint);
        let heard = Heard {
            fingerprint,
            at: now,
        };
        let len = self.heard.len();
        if len < capacity {
            if len == self.heard.capacity() {
                // Double as a Vec would, but never past the capacity: every byte is charged.
                let more = len.max(4).min(capacity - len);
                self.heard.reserve_exact(more);
                self.tags.reserve_exact(more);
            }
            self.heard.push(heard);
            self.tags.push(tag);
        } else {
            // `next` is at most `len` (the ring never shrinks): no division needed but there.
            let slot = if self.next < len {
                self.next
            } else {
                self.next % len
            };
            if let (Some(h), Some(t)) = (self.heard.get_mut(slot), self.tags.get_mut(slot)) {
                *h = heard;
                *t = tag;
            }
            self.next = slot + 1;
        }
        false
    }

    /// Whether any entry for `fingerprint` was heard at most `window` before `now` (a time after
    /// `now` counts as no time at all).
    fn heard_within(&self, fingerprint: u64, now: i64, window: Duration) -> bool {
        // Compare a block of tags at a time without an early exit, which vectorizes; only a
        // block with a match is looked at closely.
        const BLOCK: usize = 32;
        let tag = tag(fingerprint);
        let window = i128::try_from(window.as_nanos()).unwrap_or(i128::MAX);
        for (b, block) in self.tags.chunks(BLOCK).enumerate() {
            if block.iter().fold(0u16, |any, &t| any | u16::from(t == tag)) == 0 {
                continue;
            }
            for (j, &t) in block.iter().enumerate() {
                if t == tag
                    && let Some(heard) = self.heard.get(b * BLOCK + j)
                    && heard.fingerprint == fingerprint
                    && i128::from(now) - i128::from(heard.at) <= window
                {
                    return true;
                }
            }
        }
        false
    }
}

/// A fingerprint's tag: its top 16 bits.
fn tag(fingerprint: u64) -> u16 {
    u16::try_from(fingerprint >> 48).unwrap_or(u16::MAX)
}

/// Signed nanoseconds from `epoch` to `t`, saturating beyond 292 years either way.
fn nanos_since(epoch: Instant, t: Instant) -> i64 {
    match t.checked_duration_since(epoch) {
        Some(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        None => i64::try_from(epoch.duration_since(t).as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn duplicates_within_window_and_capacity() {
        let mut d = DupHistory::default();
        let t0 = Instant::now();
        let w = Duration::from_millis(500);
        assert!(!d.check_and_insert(1, t0, w, 2));
        assert!(d.check_and_insert(1, t0 + Duration::from_millis(500), w, 2));
        assert!(!d.check_and_insert(1, t0 + Duration::from_millis(501), w, 2));
        assert!(!d.check_and_insert(2, t0, w, 2));
        assert!(!d.check_and_insert(3, t0, w, 2));
        // Capacity 2: fingerprint 1 was overwritten by 3.
        assert!(d.check_and_insert(3, t0, w, 2));
        assert!(!d.check_and_insert(1, t0, w, 2));
        let mut off = DupHistory::default();
        assert!(!off.check_and_insert(1, t0, w, 0));
        assert!(!off.check_and_insert(1, t0, w, 0));
        assert_eq!(off.held_bytes(), 0);
    }

    /// The history as it was first written: a linear scan of every fingerprint kept, the
    /// reference the tagged one must agree with call for call.
    #[derive(Default)]
    struct Linear {
        fingerprints: Vec<u64>,
        times: Vec<Instant>,
        next: usize,
    }

    impl Linear {
        fn check_and_insert(
            &mut self,
            fingerprint: u64,
            now: Instant,
            window: Duration,
            capacity: usize,
        ) -> bool {
            let heard = self
                .fingerprints
                .iter()
                .zip(&self.times)
                .any(|(&f, &t)| f == fingerprint && now.saturating_duration_since(t) <= window);
            if heard || capacity == 0 {
                return heard;
            }
            if self.fingerprints.len() < capacity {
                self.fingerprints.push(fingerprint);
                self.times.push(now);
            } else {
                let i = self.next % self.fingerprints.len();
                self.fingerprints[i] = fingerprint;
                self.times[i] = now;
                self.next = i + 1;
            }
            false
        }
    }

    /// Fingerprints from a small pool (so that repeats are common), some sharing their tag (top
    /// 16 bits) with others, some not.
    fn fingerprint() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..24,
            (0u64..6).prop_map(|lo| (0x1234 << 48) | lo),
            (0u64..4).prop_map(|lo| (7 << 48) | (lo << 20)),
            any::<u64>(),
        ]
    }

    /// Every call's fingerprint and time step in milliseconds (some back: a file's clock).
    fn calls() -> impl Strategy<Value = Vec<(u64, i64)>> {
        prop::collection::vec((fingerprint(), -30i64..300), 1..600)
    }

    fn at(t0: Instant, ms: i64) -> Instant {
        let step = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            t0 + step
        } else {
            t0.checked_sub(step).unwrap_or(t0)
        }
    }

    proptest! {
        #[test]
        fn tagged_history_agrees_with_the_linear_scan(
            capacity in prop_oneof![0usize..6, 0usize..300],
            window_ms in 0u64..2000,
            calls in calls(),
        ) {
            let window = Duration::from_millis(window_ms);
            // Far enough from the clock's start that steps back stay representable.
            let t0 = Instant::now() + Duration::from_hours(1);
            let mut ms = 0i64;
            let (mut tagged, mut linear) = (DupHistory::default(), Linear::default());
            for (i, &(fingerprint, step)) in calls.iter().enumerate() {
                ms += step;
                let now = at(t0, ms);
                prop_assert_eq!(
                    tagged.check_and_insert(fingerprint, now, window, capacity),
                    linear.check_and_insert(fingerprint, now, window, capacity),
                    "call {} (fingerprint {:#x} at {} ms)", i, fingerprint, ms
                );
            }
        }

        #[test]
        fn tagged_history_agrees_when_the_capacity_changes(
            calls in prop::collection::vec((fingerprint(), 0i64..100, 0usize..40), 1..400),
        ) {
            let window = Duration::from_millis(500);
            let t0 = Instant::now();
            let mut ms = 0i64;
            let (mut tagged, mut linear) = (DupHistory::default(), Linear::default());
            for &(fingerprint, step, capacity) in &calls {
                ms += step;
                let now = at(t0, ms);
                prop_assert_eq!(
                    tagged.check_and_insert(fingerprint, now, window, capacity),
                    linear.check_and_insert(fingerprint, now, window, capacity)
                );
            }
        }
    }

    #[test]
    fn a_sender_cycling_fingerprints_cannot_grow_the_history_past_its_bound() {
        let t0 = Instant::now();
        let window = Duration::from_millis(500);
        let mut d = DupHistory::default();
        // Fill it, to learn what a full history of 128 holds.
        for f in 0..128u64 {
            assert!(!d.check_and_insert(f, t0, window, 128));
        }
        let full = d.held_bytes();
        assert_eq!(full, 128 * (size_of::<u16>() + size_of::<Heard>()));
        // Then many more distinct fingerprints, all with one tag (the worst case for the scan),
        // each repeated once.
        let last = 20_000u64;
        for i in 0..last {
            let f = (0xbeef << 48) | i;
            let now = t0 + Duration::from_micros(i);
            assert!(!d.check_and_insert(f, now, window, 128));
            assert!(d.check_and_insert(f, now, window, 128));
            assert_eq!(d.held_bytes(), full);
        }
        // The last 128 are remembered, the one before them is not.
        let now = t0 + Duration::from_secs(1);
        for i in last - 128..last {
            assert!(d.check_and_insert((0xbeef << 48) | i, now, Duration::from_secs(2), 128));
        }
        assert!(!d.check_and_insert((0xbeef << 48) | (last - 129), now, window, 128));
        assert_eq!(d.held_bytes(), full);
    }

    #[test]
    fn a_quiet_history_holds_little() {
        let t0 = Instant::now();
        let mut d = DupHistory::default();
        assert_eq!(d.held_bytes(), 0);
        d.check_and_insert(42, t0, Duration::from_millis(500), 128);
        assert_eq!(d.held_bytes(), 4 * (size_of::<u16>() + size_of::<Heard>()));
    }
}
