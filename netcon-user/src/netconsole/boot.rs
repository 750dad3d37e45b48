//! The boot-time estimate of one sender, from kernel timestamps and receive times.

use chrono::{DateTime, Utc};

/// How long one window of [`ImpliedBoot`] lasts, microseconds: 60 s. The estimate is the
/// minimum over the current and the previous window, so that it follows a kernel clock that runs
/// slow against the receiver's (tens of ppm are common: 50 ppm is 3 ms a minute but 4 s a day)
/// instead of keeping a minimum from hours ago that the clock has since drifted away from.
pub const BOOT_WINDOW_US: i64 = 60_000_000;

/// The minimum of "receive time minus kernel timestamp" over the recent past, in microseconds
/// on one clock: network and queueing delay only ever add to it, so the minimum is the best
/// estimate of when the sender booted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImpliedBoot {
    /// When the current window began (receive time) and its minimum.
    current: Option<(i64, i64)>,
    /// The minimum of the window before.
    previous: Option<i64>,
}

impl ImpliedBoot {
    /// The estimate: the smaller minimum of the current and the previous window.
    #[must_use]
    pub fn estimate(&self) -> Option<i64> {
        match (self.current, self.previous) {
            (Some((_, a)), Some(b)) => Some(a.min(b)),
            (Some((_, a)), None) => Some(a),
            (None, b) => b,
        }
    }

    /// Takes in one record received at `received_us` whose boot would be at `implied_us`.
    pub fn observe(&mut self, received_us: i64, implied_us: i64) {
        self.current = match self.current {
            Some((start, min)) if received_us.saturating_sub(start) < BOOT_WINDOW_US => {
                Some((start, min.min(implied_us)))
            }
            Some((_, min)) => {
                self.previous = Some(min);
                Some((received_us, implied_us))
            }
            None => Some((received_us, implied_us)),
        };
    }

    /// Whether a record received at `received_us` with kernel timestamp `ts_us` implies a boot
    /// more than `max_shift_us` later than the estimate: no delay on the way explains that, so
    /// the sender booted again. `false` without an estimate.
    #[must_use]
    pub fn is_later_boot(&self, received_us: i64, ts_us: u64, max_shift_us: u64) -> bool {
        let (Some(estimate), Ok(ts)) = (self.estimate(), i64::try_from(ts_us)) else {
            return false;
        };
        let implied = received_us.saturating_sub(ts);
        let shift = implied.saturating_sub(estimate);
        shift > i64::try_from(max_shift_us).unwrap_or(i64::MAX)
    }

    /// Forgets everything (the sender rebooted).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// The sender's boot time, from the capture times of its records: it gives records their
/// `kernel_time` and tells a new boot from a late record. Capture time, not the time the
/// decoder gets to a datagram: a collector that falls behind must not take its own backlog for
/// a reboot. (The XDP backend stamps frames from the monotonic clock, so a step of the wall
/// clock does not move them either.)
#[derive(Debug, Default, Clone, Copy)]
pub struct BootEstimate {
    wall: ImpliedBoot,
}

impl BootEstimate {
    /// Takes one observation into account and returns the estimated wall time of `ts_us`.
    pub fn observe(&mut self, received: DateTime<Utc>, ts_us: u64) -> Option<DateTime<Utc>> {
        let ts = i64::try_from(ts_us).ok()?;
        let at = received.timestamp_micros();
        self.wall.observe(at, at.checked_sub(ts)?);
        DateTime::from_timestamp_micros(self.wall.estimate()?.checked_add(ts)?)
    }

    /// Whether a record captured at `received` with kernel timestamp `ts_us` belongs to a boot
    /// later than the estimate by more than `max_shift_us`.
    #[must_use]
    pub fn is_later_boot(&self, received: DateTime<Utc>, ts_us: u64, max_shift_us: u64) -> bool {
        self.wall
            .is_later_boot(received.timestamp_micros(), ts_us, max_shift_us)
    }

    /// The current estimate of the boot time.
    #[must_use]
    pub fn boot_time(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.wall.estimate()?)
    }

    /// Forgets the estimate (the sender rebooted).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_estimate_keeps_the_minimum() {
        let mut b = BootEstimate::default();
        let t = |us: i64| DateTime::from_timestamp_micros(us).unwrap_or_default();
        // Replayed record: ts 0 received late.
        assert_eq!(b.observe(t(10_000_000), 0), Some(t(10_000_000)));
        // A live record shows the boot was 4 s earlier.
        assert_eq!(b.observe(t(10_100_000), 4_100_000), Some(t(10_100_000)));
        assert_eq!(b.boot_time(), Some(t(6_000_000)));
        // A delayed record does not move it.
        assert_eq!(b.observe(t(20_000_000), 5_000_000), Some(t(11_000_000)));
        b.reset();
        assert_eq!(b.boot_time(), None);
        assert_eq!(b.observe(t(0), u64::MAX), None);
    }

    #[test]
    fn boot_estimate_follows_a_slow_kernel_clock() {
        // The sender's clock loses 100 ppm: after ten minutes its records imply a boot 60 ms
        // later. The minimum of the last two windows follows; an all-time minimum would not.
        let mut b = ImpliedBoot::default();
        for minute in 0..=10i64 {
            let received = minute * 60_000_000;
            let ts = received - received / 10_000;
            b.observe(received, received - ts);
        }
        assert_eq!(b.estimate(), Some(54_000));
        assert!(!b.is_later_boot(600_000_000, 599_940_000, 1_000_000));
    }

    #[test]
    fn later_implied_boot_is_a_new_boot_and_a_late_record_is_not() {
        let mut b = ImpliedBoot::default();
        assert!(!b.is_later_boot(5_000_000, 3_000_000, 1_000_000));
        b.observe(5_000_000, 2_000_000);
        // 800 ms of delay: the same boot.
        assert!(!b.is_later_boot(5_800_000, 3_000_000, 1_000_000));
        // Received earlier than the estimate allows (a replay, or a faster path): same boot.
        assert!(!b.is_later_boot(5_000_000, 4_000_000, 1_000_000));
        // 1.5 s later than any delay explains.
        assert!(b.is_later_boot(6_500_000, 3_000_000, 1_000_000));
        assert!(!b.is_later_boot(i64::MAX, u64::MAX, 1_000_000));
    }
}
