//! The decoder: the per-sender table, the reassembler, the timers and the memory budget around
//! the per-sender state machine ([`super::state`]).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::budget::MemoryBudget;

use super::config::{DecoderConfig, MAX_SEQ_JUMP};
use super::error::DecodeError;
use super::extended;
use super::fingerprint::fingerprint;
use super::frag::{Assembler, FragKey, Fragment, Reassembled};
use super::record::{Event, Malformed};
use super::sender::{Sender, SenderTally};
use super::seq::SeqVerdict;
use super::state::{
    DecoderInner, Release, complete, duplicate, fill_body, fire, head_record, plain_record,
    reassembled_record, release_sender, track_seq,
};
use super::stats::{DecoderStats, add};
use super::table::SenderTable;

/// One UDP payload and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// Capture time (wall clock).
    pub received: DateTime<Utc>,
    /// Interface it arrived on.
    pub ifindex: u32,
    /// Sender address and port.
    pub src: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// The netconsole decoder: all per-sender state, bounded. See the module documentation.
#[derive(Debug)]
pub struct Decoder {
    /// Bounds, counters and crash-report numbering, lent to the per-sender state machine
    /// alongside one sender.
    pub(super) inner: DecoderInner,
    senders: SenderTable,
    pub(super) assembler: Assembler,
    /// Per-sender deadlines, at most one live entry per sender (`Sender::timer`); stale ones are
    /// skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    /// Random key of the payload fingerprints.
    seed: u64,
    /// The latest `now` seen, for [`Decoder::flush`], which has none of its own.
    last_now: Option<Instant>,
    /// The memory budget every byte held here is charged to.
    budget: MemoryBudget,
    /// Bytes charged to `budget` now.
    charged: usize,
    /// Sum of the senders' [`Sender::charged`].
    sender_bytes: usize,
    /// Senders holding pieces for later (partial plain lines, continuations), by when their
    /// oldest piece began: what the budget emits first.
    aged: BTreeSet<(Instant, SocketAddr)>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DecoderConfig::default())
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // The budget may be shared and outlive the decoder.
        self.budget.release(self.charged);
    }
}

impl Decoder {
    /// A decoder with the given bounds and a memory budget of its own
    /// ([`crate::budget::DEFAULT_MAX_MEMORY_MIB`]).
    #[must_use]
    pub fn new(config: DecoderConfig) -> Self {
        Self::with_budget(config, MemoryBudget::default())
    }

    /// A decoder with the given bounds that charges everything it holds to `budget` (shared
    /// with whatever else holds state on behalf of senders). When a charge does not fit, the
    /// oldest held state is emitted (marked partial or incomplete) and counted in
    /// [`DecoderStats::budget_shed`], and if nothing is left to emit, the least recently heard
    /// sender is evicted. Charges are settled after each call, so between two calls the decoder
    /// may hold one datagram's growth more than it has charged.
    #[must_use]
    pub fn with_budget(config: DecoderConfig, budget: MemoryBudget) -> Self {
        Self {
            senders: SenderTable::new(config.max_senders),
            inner: DecoderInner {
                config,
                stats: DecoderStats::default(),
                next_panic_event: 0,
            },
            assembler: Assembler::new(),
            timers: BinaryHeap::new(),
            seed: RandomState::new().hash_one(0x6e65_7463_6f6e_u64),
            last_now: None,
            budget,
            charged: 0,
            sender_bytes: 0,
            aged: BTreeSet::new(),
        }
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &DecoderConfig {
        &self.inner.config
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &DecoderStats {
        &self.inner.stats
    }

    /// The senders tracked now, with what was heard from each (an evicted sender is gone).
    pub fn senders(&self) -> impl Iterator<Item = (SocketAddr, &SenderTally)> {
        self.senders.iter().map(|s| (s.addr, &s.tally))
    }

    /// The memory budget in use.
    #[must_use]
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Bytes of state held now: senders' entries and what they hold, pending fragments. After
    /// each call this is what is charged to the budget.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.senders.len() * SenderTable::ENTRY_BYTES
            + self.sender_bytes
            + self.assembler.held_bytes()
    }

    /// Decodes one datagram. `now` is monotonic and drives every timer; nothing here reads a
    /// clock.
    pub fn push(&mut self, now: Instant, incoming: Incoming<'_>, out: &mut Vec<Event>) {
        self.last_now = Some(now);
        add(&mut self.inner.stats.datagrams, 1);
        if incoming.payload.is_empty() {
            add(&mut self.inner.stats.empty, 1);
            return;
        }
        let (idx, evicted) = self.senders.touch_or_insert(incoming.src);
        if let Some(old) = evicted {
            add(&mut self.inner.stats.senders_evicted, 1);
            self.retire(now, old, out);
        }
        self.push_to(now, idx, &incoming, out);
        self.account(idx);
        self.settle(now, out);
        self.inner.stats.senders = self.senders.len() as u64;
    }

    fn push_to(&mut self, now: Instant, idx: usize, incoming: &Incoming<'_>, out: &mut Vec<Event>) {
        let fingerprint = fingerprint(self.seed, incoming.payload);

        let Some(sender) = self.senders.get_mut(idx) else {
            return;
        };
        sender.tally.last_heard = Some(incoming.received);
        if sender.dups.check_and_insert(
            fingerprint,
            now,
            self.inner.config.duplicate_window,
            self.inner.config.duplicate_history,
        ) {
            add(&mut self.inner.stats.duplicates, 1);
            out.push(duplicate(incoming));
            return;
        }
        if extended::looks_extended(incoming.payload) {
            match extended::parse(incoming.payload) {
                Ok(payload) => self.push_extended(now, idx, incoming, &payload, out),
                Err(source) => {
                    self.malformed(incoming, DecodeError::Extended { source }, out);
                }
            }
        } else {
            self.push_plain(now, idx, incoming, out);
        }
        self.arm(idx);
    }

    /// Fires the timers due at `now`: plain lines and continuations waiting in vain, fragments
    /// past their deadline.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Event>) {
        self.last_now = Some(now);
        let mut expired = Vec::new();
        self.assembler.expire(now, &mut expired);
        for r in expired {
            add(&mut self.inner.stats.fragments_expired, 1);
            self.finish_reassembled(now, r, out);
        }
        while let Some(&Reverse((at, addr))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(idx) = self.senders.find(&addr) else {
                continue;
            };
            let fired = self.with_sender(idx, |sender, inner| {
                if sender.timer != Some(at) {
                    return false;
                }
                sender.timer = None;
                fire(sender, now, inner, out);
                true
            });
            if fired != Some(true) {
                continue;
            }
            self.arm(idx);
            self.account(idx);
        }
        self.settle(now, out);
    }

    /// When [`Self::poll`] has work next, if ever. May be early (then `poll` does nothing).
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        match (timer, self.assembler.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Emits everything pending (incomplete fragments, held continuations, partial lines), for
    /// exit: nothing is lost.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        // Nothing was ever pushed: nothing is pending.
        let Some(now) = self.last_now else {
            return;
        };
        let mut pending = Vec::new();
        self.assembler.drain_all(&mut pending);
        for r in pending {
            add(&mut self.inner.stats.fragments_expired, 1);
            self.finish_reassembled(now, r, out);
        }
        for sender in self.senders.iter_mut() {
            release_sender(sender, now, Release::Flush, &mut self.inner, out);
            sender.timer = None;
        }
        self.timers.clear();
        let mut sender_bytes = 0;
        for sender in self.senders.iter_mut() {
            sender.charged = sender.held_bytes();
            sender.aged = None;
            sender_bytes += sender.charged;
        }
        self.sender_bytes = sender_bytes;
        self.aged.clear();
        self.settle(now, out);
    }

    /// Runs `f` on sender `idx` with the decoder's context; `None` if the slot is empty.
    fn with_sender<R>(
        &mut self,
        idx: usize,
        f: impl FnOnce(&mut Sender, &mut DecoderInner) -> R,
    ) -> Option<R> {
        let sender = self.senders.get_mut(idx)?;
        Some(f(sender, &mut self.inner))
    }

    /// Recounts what sender `idx` holds, and where it stands in the age index.
    fn account(&mut self, idx: usize) {
        let Some(sender) = self.senders.get_mut(idx) else {
            return;
        };
        let held = sender.held_bytes();
        self.sender_bytes = self.sender_bytes - sender.charged + held;
        sender.charged = held;
        let since = sender.pieces_since();
        if since != sender.aged {
            if let Some(at) = sender.aged {
                self.aged.remove(&(at, sender.addr));
            }
            if let Some(at) = since {
                self.aged.insert((at, sender.addr));
            }
            sender.aged = since;
        }
    }

    /// Takes a sender that left the table out of the accounts.
    fn forget(&mut self, sender: &Sender) {
        self.sender_bytes = self.sender_bytes.saturating_sub(sender.charged);
        if let Some(at) = sender.aged {
            self.aged.remove(&(at, sender.addr));
        }
    }

    /// Brings the budget charge in line with what is held: gives back what was let go, charges
    /// what was taken, and when that does not fit, emits the oldest held state until it does.
    fn settle(&mut self, now: Instant, out: &mut Vec<Event>) {
        loop {
            let total = self.held_bytes();
            if total <= self.charged {
                self.budget.release(self.charged - total);
                self.charged = total;
                break;
            }
            if self.budget.try_charge(total - self.charged) {
                self.charged = total;
                break;
            }
            if !self.shed_oldest(now, out) {
                break;
            }
        }
        self.inner.stats.held_bytes = self.charged as u64;
        self.inner.stats.senders = self.senders.len() as u64;
    }

    /// Frees the oldest held state for the budget: the oldest piece held for later (a sender's
    /// continuation or partial line, or a pending fragment entry) is emitted; when there is none,
    /// the sender to evict ([`SenderTable::pop_victim`]) goes. `false` when nothing is held.
    fn shed_oldest(&mut self, now: Instant, out: &mut Vec<Event>) -> bool {
        let piece = self.aged.first().copied();
        let fragment = self.assembler.oldest_since();
        match (piece, fragment) {
            (Some((since, addr)), f) if f.is_none_or(|f| since <= f) => {
                add(&mut self.inner.stats.budget_shed, 1);
                let Some(idx) = self.senders.find(&addr) else {
                    // Not in the table any more: a stale key (never expected).
                    self.aged.remove(&(since, addr));
                    return true;
                };
                self.with_sender(idx, |sender, inner| {
                    release_sender(sender, now, Release::Shed, inner, out);
                });
                self.account(idx);
                true
            }
            (_, Some(_)) => {
                add(&mut self.inner.stats.budget_shed, 1);
                if let Some(r) = self.assembler.evict_oldest() {
                    add(&mut self.inner.stats.fragments_evicted, 1);
                    self.finish_reassembled(now, r, out);
                }
                true
            }
            _ => match self.senders.pop_victim() {
                Some(old) => {
                    add(&mut self.inner.stats.budget_shed, 1);
                    add(&mut self.inner.stats.senders_evicted, 1);
                    self.retire(now, old, out);
                    true
                }
                None => false,
            },
        }
    }

    fn push_extended(
        &mut self,
        now: Instant,
        idx: usize,
        incoming: &Incoming<'_>,
        payload: &extended::Payload<'_>,
        out: &mut Vec<Event>,
    ) {
        let header = &payload.header;
        if let Some((high, _)) = self.senders.get_mut(idx).and_then(|s| s.seq.highest())
            && header.seq > high
            && header.seq - high > MAX_SEQ_JUMP
        {
            add(&mut self.inner.stats.suspicious, 1);
            let error = DecodeError::SeqJump {
                previous: high,
                seq: header.seq,
            };
            self.malformed(incoming, error, out);
            return;
        }
        let limits = self.inner.config.frag_limits();
        let mut evicted = Vec::new();
        let Some(sender) = self.senders.get_mut(idx) else {
            return;
        };
        let inner = &mut self.inner;
        let verdict = track_seq(sender, incoming, header, inner, out);

        let Some(frag) = header.fragment else {
            if verdict == SeqVerdict::Same {
                // The record heard again after the duplicate window: the seq and timestamp say
                // it is the same one.
                add(&mut inner.stats.duplicates, 1);
                out.push(duplicate(incoming));
                return;
            }
            let mut record = head_record(incoming, header);
            fill_body(&mut record, payload.body, &mut inner.stats);
            complete(sender, record, now, inner, out);
            return;
        };
        add(&mut inner.stats.fragments, 1);
        if sender.last_reassembled == Some((header.seq, header.ts_usec)) {
            add(&mut inner.stats.duplicates, 1);
            out.push(duplicate(incoming));
            return;
        }
        let fragment = Fragment {
            key: FragKey {
                sender: incoming.src,
                seq: header.seq,
                ts_usec: header.ts_usec,
            },
            header: frag,
            chunk: payload.body,
        };
        let added = self.assembler.add(
            &limits,
            now,
            fragment,
            || head_record(incoming, header),
            &mut evicted,
        );
        match added {
            Ok(Some(done)) => {
                add(&mut inner.stats.reassembled, 1);
                sender.last_reassembled = Some((header.seq, header.ts_usec));
                let record = reassembled_record(done, &mut inner.stats);
                complete(sender, record, now, inner, out);
            }
            Ok(None) => {}
            Err(source) => self.malformed(incoming, DecodeError::Fragment { source }, out),
        }
        for r in evicted {
            add(&mut self.inner.stats.fragments_evicted, 1);
            self.finish_reassembled(now, r, out);
        }
    }

    fn push_plain(
        &mut self,
        now: Instant,
        idx: usize,
        incoming: &Incoming<'_>,
        out: &mut Vec<Event>,
    ) {
        self.with_sender(idx, |sender, inner| {
            let mut lines = Vec::new();
            sender.plain.push(
                now,
                incoming.received,
                incoming.ifindex,
                incoming.payload,
                inner.config.plain_idle_timeout,
                inner.config.max_plain_line,
                &mut lines,
            );
            for l in lines {
                plain_record(sender, &l, now, inner, out);
            }
        });
    }

    /// Emits a reassembly entry that left the assembler, through its sender's state.
    fn finish_reassembled(&mut self, now: Instant, r: Reassembled, out: &mut Vec<Event>) {
        let idx = self.senders.find(&r.key.sender);
        let inner = &mut self.inner;
        let record = reassembled_record(r, &mut inner.stats);
        if let Some(sender) = idx.and_then(|i| self.senders.get_mut(i)) {
            complete(sender, record, now, inner, out);
        } else {
            // The sender left the table; its entries are drained when it does, so this is only
            // a safety net.
            add(&mut inner.stats.records, 1);
            out.push(Event::Record(record));
        }
        if let Some(idx) = idx {
            self.arm(idx);
            self.account(idx);
        }
    }

    /// Emits everything an evicted sender still held.
    fn retire(&mut self, now: Instant, mut old: Sender, out: &mut Vec<Event>) {
        self.forget(&old);
        let mut pending = Vec::new();
        self.assembler.drain_sender(old.addr, &mut pending);
        let inner = &mut self.inner;
        for r in pending {
            add(&mut inner.stats.fragments_evicted, 1);
            let record = reassembled_record(r, &mut inner.stats);
            complete(&mut old, record, now, inner, out);
        }
        release_sender(&mut old, now, Release::Flush, inner, out);
    }

    fn malformed(&mut self, incoming: &Incoming<'_>, error: DecodeError, out: &mut Vec<Event>) {
        add(&mut self.inner.stats.malformed, 1);
        out.push(Event::Malformed(Malformed {
            received: incoming.received,
            sender: incoming.src,
            ifindex: incoming.ifindex,
            error,
            payload: incoming.payload.to_vec(),
        }));
    }

    /// Makes sure the sender's earliest deadline has an entry in the timer heap.
    fn arm(&mut self, idx: usize) {
        let Some(sender) = self.senders.get_mut(idx) else {
            return;
        };
        let Some(deadline) = sender.next_deadline() else {
            return;
        };
        if sender.timer.is_none_or(|t| deadline < t) {
            sender.timer = Some(deadline);
            self.timers.push(Reverse((deadline, sender.addr)));
        }
        // Stale entries (senders evicted, deadlines moved) are skipped when popped; rebuild the
        // heap if they pile up, so that it stays bounded by the number of senders.
        if self.timers.len() > 2 * self.senders.len() + 1024 {
            self.timers = self
                .senders
                .iter_mut()
                .filter_map(|s| s.timer.map(|t| Reverse((t, s.addr))))
                .collect();
        }
    }
}
