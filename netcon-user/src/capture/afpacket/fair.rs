//! The fair hand-over from the raw receive threads to the pipeline: a queue per source, served
//! in turn. Sans-IO: it holds items and counts bytes; the receive threads and the pipeline lock
//! it and do the waiting around it.
//!
//! A receive thread must never wait for the pipeline: while it waits, frames pile up in the
//! socket buffer, and when that overflows the kernel drops frames without knowing whose they
//! are, a victim's with a flooder's. So the thread always reads on and puts each frame in its
//! source's queue here; a flooder overflows only its own queue, and those drops are counted
//! under its name. The pipeline takes frames by deficit round-robin over the sources (each
//! source gets [`QUANTUM`] bytes a round), so a sender of a few records a second waits behind
//! at most one round however much others send.
//!
//! Every byte held is charged to the [`MemoryBudget`] (and released when the pipeline takes the
//! item) but never refused by it, so that held decoder state cannot crowd out arriving frames
//! (the decoder sheds its oldest state when the budget is over); the queue has bounds of its own: frames and bytes per source, sources, bytes in all. When the
//! total is reached the queue makes room from the longest queue (the source with the most bytes
//! waiting) rather than refusing a lighter one ("longest queue drop"), so one flooder or a few
//! cannot crowd out a sender that sends little.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

use crate::budget::MemoryBudget;

/// Bytes one source may have taken per round: 2 KiB, at least one whole frame
/// ([`super::MAX_FRAME`] with a restored VLAN tag), so every source with a frame waiting gets
/// one each round.
pub const QUANTUM: usize = 2048 + 64;

/// Most sources whose drops are counted under their own name between two
/// [`FairQueue::take_drops`]; the drops of the others are counted together (sender unknown).
/// Default 16: a notice line for each, once a second, however many addresses are spoofed.
pub const NAMED_DROPS: usize = 16;

/// The bounds of a [`FairQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most items one source may have waiting.
    pub source_items: usize,
    /// Most bytes one source may have waiting.
    pub source_bytes: usize,
    /// Most sources with items waiting.
    pub sources: usize,
    /// Most bytes waiting, all sources.
    pub total_bytes: usize,
}

/// Why an item was not queued (it is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source's queue is full (items or bytes).
    SourceFull,
    /// Every source slot is taken.
    TooManySources,
    /// The total is reached and no other source holds more than this one.
    TotalFull,
}

/// One source's waiting items.
#[derive(Debug)]
struct SourceQueue<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    /// Deficit round-robin: bytes this source may still be given this round.
    deficit: usize,
}

/// Per-source queues served round-robin, bounded in items, bytes and sources, charged to the
/// memory budget.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    limits: Limits,
    budget: MemoryBudget,
    queues: HashMap<K, SourceQueue<T>>,
    /// Sources with items waiting, in serving order.
    rotation: VecDeque<K>,
    bytes: usize,
    /// The source believed to hold the most bytes (checked before use: it may have shrunk).
    heaviest: Option<K>,
    /// Drops by source since the last [`take_drops`](Self::take_drops), at most [`NAMED_DROPS`].
    drops: HashMap<K, u64>,
    /// Drops since the last `take_drops` of sources beyond [`NAMED_DROPS`].
    unnamed_drops: u64,
    /// Every item dropped since the queue was made.
    dropped: u64,
}

impl<K: Copy + Eq + Hash, T> FairQueue<K, T> {
    /// An empty queue within `limits`, charging what it holds to `budget`.
    #[must_use]
    pub fn new(limits: Limits, budget: MemoryBudget) -> Self {
        Self {
            limits,
            budget,
            queues: HashMap::new(),
            rotation: VecDeque::new(),
            bytes: 0,
            heaviest: None,
            drops: HashMap::new(),
            unnamed_drops: 0,
            dropped: 0,
        }
    }

    /// Queues the item `make` builds for `source`, charged as `bytes`. `make` runs only once
    /// the item is admitted, so a refused frame costs no allocation. On refusal the item is
    /// counted as a drop of `source`.
    ///
    /// # Errors
    /// [`Refused`] when a bound or the budget has no room for it.
    pub fn push_with(
        &mut self,
        source: K,
        bytes: usize,
        make: impl FnOnce() -> T,
    ) -> Result<(), Refused> {
        let admitted = self.admit(source, bytes);
        if let Err(refused) = admitted {
            self.count_drops(source, 1);
            return Err(refused);
        }
        let queue = self.queues.entry(source).or_insert_with(|| {
            self.rotation.push_back(source);
            SourceQueue {
                items: VecDeque::new(),
                bytes: 0,
                deficit: 0,
            }
        });
        queue.items.push_back((make(), bytes));
        queue.bytes += bytes;
        self.bytes += bytes;
        let queued = queue.bytes;
        if self
            .heaviest
            .and_then(|h| self.queues.get(&h))
            .is_none_or(|h| h.bytes < queued)
        {
            self.heaviest = Some(source);
        }
        Ok(())
    }

    /// Whether `source`'s own queue has no room for `bytes` more: then a push is refused
    /// whatever else is queued, and the caller may skip building the item and
    /// [`count_drop`](Self::count_drop) it instead.
    #[must_use]
    pub fn source_full(&self, source: K, bytes: usize) -> bool {
        self.queues.get(&source).is_some_and(|q| {
            q.items.len() >= self.limits.source_items || q.bytes + bytes > self.limits.source_bytes
        })
    }

    /// Counts an item of `source` dropped without a push (see [`source_full`](Self::source_full)).
    pub fn count_drop(&mut self, source: K) {
        self.count_drops(source, 1);
    }

    /// Checks the bounds for `bytes` more from `source`, making room from the longest queue if
    /// only the total is in the way, and charges the budget.
    fn admit(&mut self, source: K, bytes: usize) -> Result<(), Refused> {
        let (items, held) = self
            .queues
            .get(&source)
            .map_or((0, 0), |q| (q.items.len(), q.bytes));
        if items >= self.limits.source_items || held + bytes > self.limits.source_bytes {
            return Err(Refused::SourceFull);
        }
        if items == 0 && self.queues.len() >= self.limits.sources {
            return Err(Refused::TooManySources);
        }
        while self.bytes + bytes > self.limits.total_bytes {
            self.drop_from_heaviest(source, held + bytes)?;
        }
        // Charged, but not refused by the budget: the bytes are bounded by `total_bytes`
        // already, and a genuine sender's frame must not lose to state the decoder holds for
        // a flooder. Over the budget, the decoder emits its oldest held state instead.
        self.budget.force_charge(bytes);
        Ok(())
    }

    /// Drops the newest item of the source holding the most bytes, if it holds more than
    /// `wanted` (what `source` would hold with the new item); else refuses.
    fn drop_from_heaviest(&mut self, source: K, wanted: usize) -> Result<(), Refused> {
        let heavy_enough = |q: &SourceQueue<T>| q.bytes > wanted;
        if self
            .heaviest
            .and_then(|h| self.queues.get(&h))
            .is_none_or(|q| !heavy_enough(q))
        {
            // The source believed heaviest has shrunk or gone: look again. Rare, since the
            // total is reached only when some queues are deep, and then one of them is it.
            self.heaviest = self
                .queues
                .iter()
                .max_by_key(|(_, q)| q.bytes)
                .map(|(k, _)| *k);
        }
        let heaviest = self.heaviest.ok_or(Refused::TotalFull)?;
        let queue = self.queues.get_mut(&heaviest).ok_or(Refused::TotalFull)?;
        if heaviest == source || !heavy_enough(queue) {
            return Err(Refused::TotalFull);
        }
        let (_, freed) = queue.items.pop_back().ok_or(Refused::TotalFull)?;
        queue.bytes -= freed;
        let emptied = queue.items.is_empty();
        self.bytes -= freed;
        self.budget.release(freed);
        if emptied {
            self.remove(heaviest);
        }
        self.count_drops(heaviest, 1);
        Ok(())
    }

    /// Appends up to `max` items to `out`, a round of each source at a time, releasing their
    /// bytes. Returns how many were appended.
    pub fn pop_into(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(source) = self.rotation.pop_front() else {
                break;
            };
            let Some(queue) = self.queues.get_mut(&source) else {
                continue;
            };
            queue.deficit = queue.deficit.saturating_add(QUANTUM);
            while taken < max {
                let Some(&(_, bytes)) = queue.items.front() else {
                    break;
                };
                if bytes > queue.deficit {
                    break;
                }
                if let Some((item, _)) = queue.items.pop_front() {
                    queue.deficit -= bytes;
                    queue.bytes -= bytes;
                    self.bytes -= bytes;
                    self.budget.release(bytes);
                    out.push(item);
                    taken += 1;
                }
            }
            if queue.items.is_empty() {
                self.queues.remove(&source);
            } else {
                self.rotation.push_back(source);
            }
        }
        taken
    }

    /// Whether no item is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Bytes waiting, all sources.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every item dropped since the queue was made.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The drops since the last call: by source (at most [`NAMED_DROPS`] of them), and those of
    /// the other sources together.
    pub fn take_drops(&mut self) -> (Vec<(K, u64)>, u64) {
        let named = self.drops.drain().collect();
        (named, std::mem::take(&mut self.unnamed_drops))
    }

    fn remove(&mut self, source: K) {
        self.queues.remove(&source);
        self.rotation.retain(|k| *k != source);
        if self.heaviest == Some(source) {
            self.heaviest = None;
        }
    }

    fn count_drops(&mut self, source: K, n: u64) {
        self.dropped = self.dropped.saturating_add(n);
        if let Some(count) = self.drops.get_mut(&source) {
            *count = count.saturating_add(n);
        } else if self.drops.len() < NAMED_DROPS {
            self.drops.insert(source, n);
        } else {
            self.unnamed_drops = self.unnamed_drops.saturating_add(n);
        }
    }
}

impl<K, T> Drop for FairQueue<K, T> {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: Limits = Limits {
        source_items: 8,
        source_bytes: 8 * 1000,
        sources: 16,
        total_bytes: 20 * 1000,
    };

    fn queue(limits: Limits) -> FairQueue<u32, (u32, u32)> {
        FairQueue::new(limits, MemoryBudget::new(1 << 20))
    }

    /// A dying kernel's burst from one sender, nobody else sending: the production bounds
    /// take all of it (5,000 frames of a 200-byte record, with the cost the receive thread
    /// charges), and a second sender arriving then is still served.
    #[test]
    fn a_lone_burst_is_queued_whole() {
        let mut q = queue(super::super::QUEUE_LIMITS);
        let cost = 242 + super::super::receiver::FRAME_OVERHEAD;
        for i in 0..5_000 {
            q.push_with(1, cost, || (1, i)).unwrap();
        }
        q.push_with(2, cost, || (2, 0)).unwrap();
        assert_eq!(q.dropped(), 0);
        let mut out = Vec::new();
        while q.pop_into(&mut out, 1024) > 0 {}
        assert_eq!(out.len(), 5_001);
        assert!(
            out[..1024].contains(&(2, 0)),
            "the second sender waits one round at most"
        );
    }

    #[test]
    fn serves_sources_in_turn() {
        let mut q = queue(LIMITS);
        for i in 0..3 {
            q.push_with(1, 1000, || (1, i)).unwrap();
        }
        q.push_with(2, 1000, || (2, 0)).unwrap();
        let mut out = Vec::new();
        assert_eq!(q.pop_into(&mut out, 10), 4);
        // A quantum of 2112 bytes: two of source 1's frames, then source 2's, then the last.
        assert_eq!(out, [(1, 0), (1, 1), (2, 0), (1, 2)]);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn a_full_source_drops_only_its_own_and_is_named() {
        let mut q = queue(LIMITS);
        for i in 0..20 {
            let _ = q.push_with(1, 100, || (1, i));
        }
        q.push_with(2, 100, || (2, 0)).unwrap();
        assert_eq!(q.dropped(), 12);
        assert_eq!(q.take_drops(), (vec![(1, 12)], 0));
        assert_eq!(q.take_drops(), (vec![], 0));
        let mut out = Vec::new();
        q.pop_into(&mut out, 100);
        assert_eq!(out.len(), 9);
        assert!(out.contains(&(2, 0)));
    }

    #[test]
    fn a_full_source_is_known_before_the_item_is_built() {
        let mut q = queue(LIMITS);
        assert!(!q.source_full(1, 100));
        for i in 0..8 {
            q.push_with(1, 100, || (1, i)).unwrap();
        }
        assert!(q.source_full(1, 100));
        assert!(!q.source_full(2, 100));
        q.count_drop(1);
        assert_eq!((q.dropped(), q.take_drops()), (1, (vec![(1, 1)], 0)));
    }

    #[test]
    fn the_total_makes_room_from_the_longest_queue() {
        let mut q = queue(LIMITS);
        // Three sources at 7000 bytes fill the 20,000 total: the third's last frames push out
        // the first's newest, never its own.
        for source in 1..=3 {
            for i in 0..7 {
                let _ = q.push_with(source, 1000, || (source, i));
            }
        }
        assert!(q.bytes() <= LIMITS.total_bytes);
        assert_eq!(q.push_with(4, 1000, || (4, 0)), Ok(()));
        let (mut named, unnamed) = q.take_drops();
        named.sort_unstable();
        assert_eq!(unnamed, 0);
        assert!(named.iter().all(|(source, _)| *source < 4), "{named:?}");
        assert_eq!(named.iter().map(|(_, n)| n).sum::<u64>(), 2);
        // Sources that hold equally much: the newcomer that would hold as much is refused.
        let mut q = queue(Limits {
            total_bytes: 2000,
            ..LIMITS
        });
        q.push_with(1, 1000, || (1, 0)).unwrap();
        q.push_with(2, 1000, || (2, 0)).unwrap();
        assert_eq!(q.push_with(3, 1000, || (3, 0)), Err(Refused::TotalFull));
    }

    #[test]
    fn sources_are_bounded_and_bytes_charged_and_released() {
        let budget = MemoryBudget::new(2500);
        let mut q: FairQueue<u32, u32> = FairQueue::new(
            Limits {
                sources: 2,
                ..LIMITS
            },
            budget.clone(),
        );
        q.push_with(1, 1000, || 1).unwrap();
        q.push_with(2, 1000, || 2).unwrap();
        assert_eq!(q.push_with(3, 1000, || 3), Err(Refused::TooManySources));
        // Over the budget's limit: charged all the same (the decoder makes room), within the
        // queue's own total.
        q.push_with(1, 1000, || 1).unwrap();
        assert_eq!(budget.used(), 3000);
        assert!(!budget.try_charge(1));
        let mut out = Vec::new();
        q.pop_into(&mut out, 1);
        assert_eq!(budget.used(), 2000);
        drop(q);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn named_drops_are_bounded() {
        let mut q = queue(Limits {
            sources: 1,
            ..LIMITS
        });
        q.push_with(0, 10, || (0, 0)).unwrap();
        for source in 1..=100 {
            let _ = q.push_with(source, 10, || (source, 0));
        }
        let (named, unnamed) = q.take_drops();
        assert_eq!(named.len(), NAMED_DROPS);
        assert_eq!(unnamed, 100 - NAMED_DROPS as u64);
    }

    proptest! {
        /// Whatever N flooders send, a victim that sends one frame a round loses nothing, as
        /// long as the pipeline takes a frame of each source a round (however far fewer
        /// frames than arrive); the bytes held stay within the bounds and match the budget.
        #[test]
        fn a_victim_is_never_dropped_while_others_flood(
            flooders in 1u32..12,
            per_round in 1usize..40,
            extra in 0usize..64,
            sizes in proptest::collection::vec(60usize..2048, 1..50),
            rounds in 1usize..200,
        ) {
            let budget = MemoryBudget::new(1 << 30);
            let limits = Limits {
                source_items: 64,
                source_bytes: 64 * 1024,
                sources: 16,
                total_bytes: 256 * 1024,
            };
            let mut q: FairQueue<u32, (u32, usize)> = FairQueue::new(limits, budget.clone());
            let mut victim_sent = 0;
            let mut victim_got = Vec::new();
            let mut out = Vec::new();
            let mut size = sizes.iter().cycle();
            let batch = flooders as usize + 1 + extra;
            for round in 0..rounds {
                for i in 0..per_round {
                    for flooder in 1..=flooders {
                        let bytes = *size.next().unwrap();
                        let _ = q.push_with(flooder, bytes, || (flooder, i));
                    }
                }
                prop_assert_eq!(q.push_with(0, 200, || (0, round)), Ok(()));
                victim_sent += 1;
                out.clear();
                q.pop_into(&mut out, batch);
                victim_got.extend(out.iter().filter(|(s, _)| *s == 0).map(|(_, n)| *n));
                prop_assert!(q.bytes() <= limits.total_bytes);
                prop_assert_eq!(budget.used(), q.bytes());
            }
            out.clear();
            while q.pop_into(&mut out, batch) > 0 {}
            victim_got.extend(out.iter().filter(|(s, _)| *s == 0).map(|(_, n)| *n));
            prop_assert_eq!(victim_got, (0..victim_sent).collect::<Vec<_>>());
            prop_assert_eq!(budget.used(), 0);
            prop_assert!(q.take_drops().0.iter().all(|(s, _)| *s != 0));
        }

        /// Any sequence of pushes and pops keeps every bound and never panics.
        #[test]
        fn bounds_hold_for_any_sequence(
            ops in proptest::collection::vec((0u32..40, 0usize..5000, any::<bool>()), 0..400),
        ) {
            let budget = MemoryBudget::new(5_000);
            let mut q: FairQueue<u32, usize> = FairQueue::new(LIMITS, budget.clone());
            let mut pushed = 0u64;
            let mut popped = 0u64;
            for (source, bytes, pop) in ops {
                if pop {
                    let mut out = Vec::new();
                    popped += q.pop_into(&mut out, 3) as u64;
                } else if q.push_with(source, bytes, || bytes).is_ok() {
                    pushed += 1;
                }
                prop_assert!(q.bytes() <= LIMITS.total_bytes);
                prop_assert_eq!(budget.used(), q.bytes());
                prop_assert!(q.queues.len() <= LIMITS.sources);
                prop_assert!(q.queues.values().all(|s| s.items.len() <= LIMITS.source_items
                    && s.bytes <= LIMITS.source_bytes));
                prop_assert_eq!(q.rotation.len(), q.queues.len());
            }
            let mut out = Vec::new();
            while q.pop_into(&mut out, 7) > 0 {}
            popped += out.len() as u64;
            // Whatever was admitted came out, or was pushed out by a lighter source (counted).
            prop_assert!(pushed >= popped);
            prop_assert_eq!(budget.used(), 0);
        }
    }
}
