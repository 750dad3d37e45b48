//! Sequence tracking for one sender: loss, late arrivals, reboots.

/// What a sequence number means, given what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// The first record heard from this sender (or since a reboot).
    First,
    /// The next one.
    Next,
    /// The same record again (another fragment of it).
    Same,
    /// Records `first..=last` were skipped.
    Gap {
        /// First missing seq.
        first: u64,
        /// Last missing seq.
        last: u64,
    },
    /// Below the highest seq, within the reorder window: a record arriving late.
    Late,
    /// The sequence started over.
    Reboot {
        /// The highest seq before.
        previous_seq: u64,
        /// Its kernel timestamp.
        previous_ts: u64,
    },
}

/// Tracks the highest seq and its kernel timestamp.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqTracker {
    highest: Option<(u64, u64)>,
}

impl SeqTracker {
    /// Classifies `seq` (with its kernel timestamp `ts`) and updates the highest seq.
    ///
    /// A reboot is a seq at or below the highest with a different record (its kernel timestamp
    /// more than `backstep_us` earlier, or its seq more than `reorder_window` back), or a seq
    /// above the highest whose timestamp went back by more than `backstep_us` (a new boot whose
    /// replayed log starts above the old highest seq). Within one boot, seq and timestamp grow
    /// together (`kernel/printk/printk.c` stamps both when it reserves the record).
    pub fn observe(
        &mut self,
        seq: u64,
        ts: u64,
        reorder_window: u64,
        backstep_us: u64,
    ) -> SeqVerdict {
        let Some((high, high_ts)) = self.highest else {
            self.highest = Some((seq, ts));
            return SeqVerdict::First;
        };
        let went_back = ts.saturating_add(backstep_us) < high_ts;
        let verdict = if seq > high {
            if went_back {
                SeqVerdict::Reboot {
                    previous_seq: high,
                    previous_ts: high_ts,
                }
            } else if seq == high + 1 {
                SeqVerdict::Next
            } else {
                SeqVerdict::Gap {
                    first: high + 1,
                    last: seq - 1,
                }
            }
        } else if seq == high && ts == high_ts {
            return SeqVerdict::Same;
        } else if !went_back && high - seq <= reorder_window && seq != high {
            return SeqVerdict::Late;
        } else {
            SeqVerdict::Reboot {
                previous_seq: high,
                previous_ts: high_ts,
            }
        };
        self.highest = Some((seq, ts));
        verdict
    }

    /// Starts over at `seq` (a new boot): returns the verdict for the highest seq before.
    pub fn restart(&mut self, seq: u64, ts: u64) -> SeqVerdict {
        let previous = self.highest.replace((seq, ts));
        match previous {
            Some((previous_seq, previous_ts)) => SeqVerdict::Reboot {
                previous_seq,
                previous_ts,
            },
            None => SeqVerdict::First,
        }
    }

    /// The highest seq and its timestamp.
    #[must_use]
    pub fn highest(&self) -> Option<(u64, u64)> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_verdicts() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(10, 1000, 128, 1_000_000), SeqVerdict::First);
        assert_eq!(t.observe(11, 1001, 128, 1_000_000), SeqVerdict::Next);
        assert_eq!(t.observe(11, 1001, 128, 1_000_000), SeqVerdict::Same);
        assert_eq!(
            t.observe(15, 1005, 128, 1_000_000),
            SeqVerdict::Gap {
                first: 12,
                last: 14
            }
        );
        assert_eq!(t.observe(13, 1003, 128, 1_000_000), SeqVerdict::Late);
        assert_eq!(t.highest(), Some((15, 1005)));
    }

    #[test]
    fn seq_back_to_zero_is_a_reboot() {
        let mut t = SeqTracker::default();
        t.observe(590, 6_456_131, 128, 1_000_000);
        assert_eq!(
            t.observe(0, 0, 128, 1_000_000),
            SeqVerdict::Reboot {
                previous_seq: 590,
                previous_ts: 6_456_131
            }
        );
        assert_eq!(t.observe(1, 0, 128, 1_000_000), SeqVerdict::Next);
    }

    #[test]
    fn records_that_cannot_follow_are_reboots() {
        for (why, (seq, ts), (next_seq, next_ts)) in [
            (
                "fewer records than the reorder window, but the clock went back by seconds",
                (40, 5_000_000),
                (0, 0),
            ),
            (
                "a replay starting above the old seq",
                (40, 50_000_000),
                (5000, 2_000_000),
            ),
            ("far below", (1000, 1000), (500, 1000)),
        ] {
            let mut t = SeqTracker::default();
            t.observe(seq, ts, 128, 1_000_000);
            assert!(
                matches!(
                    t.observe(next_seq, next_ts, 128, 1_000_000),
                    SeqVerdict::Reboot { .. }
                ),
                "{why}"
            );
        }
    }
}
