//! The per-sender rate limit of `--on-panic`: sans-IO, the time is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The per-sender rate limit: sans-IO, the time is passed in.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    pub(super) min_interval: Duration,
    max_senders: usize,
    /// When each sender last ran the command.
    last: HashMap<IpAddr, Instant>,
}

impl RateLimiter {
    /// A limit of one run per `min_interval` per sender, remembering at most `max_senders`
    /// (at least 1).
    #[must_use]
    pub fn new(min_interval: Duration, max_senders: usize) -> Self {
        Self {
            min_interval,
            max_senders: max_senders.max(1),
            last: HashMap::new(),
        }
    }

    /// Whether `sender` may run the command at `now`; if so, `now` becomes its last run.
    pub fn admit(&mut self, sender: IpAddr, now: Instant) -> bool {
        let interval = self.min_interval;
        // A clock that went backwards gives zero: the run is suppressed, not repeated.
        let passed = |last: Instant| now.saturating_duration_since(last) >= interval;
        if let Some(last) = self.last.get_mut(&sender) {
            if !passed(*last) {
                return false;
            }
            *last = now;
            return true;
        }
        if self.last.len() >= self.max_senders {
            self.last.retain(|_, last| !passed(*last));
        }
        while self.last.len() >= self.max_senders {
            let Some(oldest) = self
                .last
                .iter()
                .min_by_key(|(_, last)| **last)
                .map(|(ip, _)| *ip)
            else {
                break;
            };
            self.last.remove(&oldest);
        }
        self.last.insert(sender, now);
        true
    }

    /// Senders remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether no sender is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ipv4;

    /// `at(s)`: `s` seconds after the clock was made.
    fn fake_clock() -> impl Fn(u64) -> Instant {
        let t0 = Instant::now();
        move |s| t0 + Duration::from_secs(s)
    }

    #[test]
    fn rate_limit_per_sender_with_a_fake_clock() {
        let at = fake_clock();
        let mut limiter = RateLimiter::new(Duration::from_mins(1), 100);
        assert!(limiter.admit(ipv4(42, 1), at(0)));
        assert!(!limiter.admit(ipv4(42, 1), at(1)));
        assert!(!limiter.admit(ipv4(42, 1), at(59)));
        // Another sender is not affected.
        assert!(limiter.admit(ipv4(42, 2), at(30)));
        assert!(limiter.admit(ipv4(42, 1), at(60)));
        assert!(!limiter.admit(ipv4(42, 1), at(100)));
        assert!(limiter.admit(ipv4(42, 1), at(120)));
        assert!(!limiter.admit(ipv4(42, 2), at(89)));
        assert!(limiter.admit(ipv4(42, 2), at(90)));
    }

    #[test]
    fn clock_going_backwards_suppresses() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(Duration::from_mins(1), 100);
        assert!(limiter.admit(ipv4(42, 1), t0 + Duration::from_secs(100)));
        assert!(!limiter.admit(ipv4(42, 1), t0 + Duration::from_secs(50)));
    }

    #[test]
    fn zero_interval_always_runs() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(Duration::ZERO, 2);
        for i in 0..10 {
            assert!(limiter.admit(ipv4(42, i % 5), t0));
        }
        assert!(limiter.len() <= 2);
    }

    #[test]
    fn sender_table_is_bounded_expired_first_then_oldest() {
        let at = fake_clock();
        let mut limiter = RateLimiter::new(Duration::from_mins(1), 3);
        assert!(limiter.admit(ipv4(42, 1), at(0)));
        assert!(limiter.admit(ipv4(42, 2), at(10)));
        assert!(limiter.admit(ipv4(42, 3), at(20)));
        // Full, nothing expired: the oldest (1) goes.
        assert!(limiter.admit(ipv4(42, 4), at(30)));
        assert_eq!(limiter.len(), 3);
        assert!(!limiter.last.contains_key(&ipv4(42, 1)));
        assert!(!limiter.admit(ipv4(42, 3), at(31)));
        // At 81 the entries of 2 (10) and 3 (20) have expired: both go, 4 (30) stays limited.
        assert!(limiter.admit(ipv4(42, 5), at(81)));
        assert_eq!(limiter.len(), 2);
        assert!(!limiter.admit(ipv4(42, 4), at(82)));
        for i in 10..200 {
            limiter.admit(ipv4(42, i), at(85));
            assert!(limiter.len() <= 3);
        }
    }
}
