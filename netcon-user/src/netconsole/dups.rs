//! Duplicate suppression: the payloads recently heard from one sender.

use std::time::{Duration, Instant};

/// Recent payload fingerprints of one sender, to drop copies of a datagram already heard (the
/// same frame seen on two interfaces, or twice on a mirror port).
#[derive(Debug, Default)]
pub struct DupHistory {
    fingerprints: Vec<u64>,
    times: Vec<Instant>,
    next: usize,
}

impl DupHistory {
    /// Bytes held (both arrays at their capacity).
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.fingerprints.capacity() * size_of::<u64>()
            + self.times.capacity() * size_of::<Instant>()
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
        // Compare a block at a time without an early exit, which vectorizes; only a block with
        // a match is looked at closely.
        const BLOCK: usize = 16;
        for (b, block) in self.fingerprints.chunks(BLOCK).enumerate() {
            if block.iter().filter(|&&f| f == fingerprint).count() == 0 {
                continue;
            }
            for (j, &f) in block.iter().enumerate() {
                if f == fingerprint
                    && self
                        .times
                        .get(b * BLOCK + j)
                        .is_some_and(|&t| now.saturating_duration_since(t) <= window)
                {
                    return true;
                }
            }
        }
        if capacity == 0 {
            return false;
        }
        if self.fingerprints.len() < capacity {
            self.fingerprints.push(fingerprint);
            self.times.push(now);
        } else {
            let i = self.next % self.fingerprints.len();
            if let (Some(f), Some(t)) = (self.fingerprints.get_mut(i), self.times.get_mut(i)) {
                *f = fingerprint;
                *t = now;
            }
            self.next = i + 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
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
    }
}
