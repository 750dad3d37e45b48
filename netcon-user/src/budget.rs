//! One memory budget for everything held on behalf of senders.
//!
//! Any host on the segment can make netcon-sniff hold state: partial plain lines, continuation
//! chains, pending fragments, per-sender tables, open files, queued hooks and forwards. Each of
//! those charges the bytes it holds to one shared [`MemoryBudget`] and releases them when it lets
//! go. When a charge does not fit, the holder emits its oldest state (marked partial or
//! incomplete) and counts it, rather than growing: memory stays bounded whatever arrives.
//!
//! The budget is shared between the pipeline and the sinks' worker threads, so it counts with
//! atomics; it is an accounting device, not an allocator (the bytes charged are estimates of
//! what a piece of state holds, including its bookkeeping).

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// Default budget, MiB: with the process's fixed cost (about 21 MiB with the default 8 MiB
/// ring buffer, mapped once) peak RSS stays under 64 MiB whatever arrives.
pub const DEFAULT_MAX_MEMORY_MIB: u32 = 24;

/// A shared byte budget. Cloning shares it.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    refused: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit,
                used: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// A budget of `mib` MiB.
    #[must_use]
    pub fn from_mib(mib: u32) -> Self {
        Self::new(
            usize::try_from(mib)
                .unwrap_or(usize::MAX)
                .saturating_mul(1 << 20),
        )
    }

    /// Charges `bytes` if they fit; `false` (and nothing charged) if they do not. The caller
    /// then frees its oldest state and tries again, or gives up on this piece and counts it.
    #[must_use]
    pub fn try_charge(&self, bytes: usize) -> bool {
        let result = self
            .inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.inner.limit)
            });
        if let Ok(before) = result {
            self.inner.peak.fetch_max(before + bytes, Ordering::Relaxed);
            true
        } else {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Charges `bytes` whether or not they fit: for state that must be kept for a moment
    /// (the record being emitted). Pair it with [`release`](Self::release) at once.
    pub fn force_charge(&self, bytes: usize) {
        let before = self.inner.used.fetch_add(bytes, Ordering::AcqRel);
        self.inner
            .peak
            .fetch_max(before.saturating_add(bytes), Ordering::Relaxed);
    }

    /// Gives back `bytes` charged earlier. Saturates at zero: a release never wraps.
    pub fn release(&self, bytes: usize) {
        let _ = self
            .inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Bytes charged now.
    #[must_use]
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    /// The most ever charged at once.
    #[must_use]
    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::Relaxed)
    }

    /// The limit, bytes.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// How many charges did not fit.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self::from_mib(DEFAULT_MAX_MEMORY_MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_and_no_further() {
        let budget = MemoryBudget::new(100);
        assert!(budget.try_charge(60));
        assert!(!budget.try_charge(41));
        assert_eq!(budget.used(), 60);
        assert_eq!(budget.refused(), 1);
        assert!(budget.try_charge(40));
        assert_eq!(budget.used(), 100);
        budget.release(30);
        assert_eq!(budget.used(), 70);
        assert_eq!(budget.peak(), 100);
    }

    #[test]
    fn release_saturates_and_clones_share() {
        let budget = MemoryBudget::new(10);
        let shared = budget.clone();
        assert!(shared.try_charge(5));
        budget.release(50);
        assert_eq!(shared.used(), 0);
        budget.force_charge(20);
        assert_eq!(shared.used(), 20);
        assert!(!shared.try_charge(1));
    }

    #[test]
    fn a_huge_charge_does_not_wrap() {
        let budget = MemoryBudget::new(10);
        assert!(budget.try_charge(5));
        assert!(!budget.try_charge(usize::MAX));
        assert_eq!(budget.used(), 5);
    }
}
