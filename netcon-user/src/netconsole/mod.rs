//! Netconsole decoding, sans-IO: datagrams and a monotonic `now` in, records and events out.
//!
//! [`Decoder::push`] takes one UDP payload; [`Decoder::poll`] fires the timers that are due,
//! [`Decoder::poll_at`] says when the next one is; [`Decoder::flush`] empties everything on exit.
//! Nothing in here reads a clock, sleeps or does I/O; the wall-clock receive time comes in with
//! each datagram ([`Incoming::received`]).
//!
//! Per payload, the format is decided by its first bytes ([`extended::looks_extended`]): an
//! optional release token, then `<pri>,<seq>,...;` is the extended format, anything else plain
//! text (`drivers/net/netconsole.c`, `Documentation/networking/netconsole.rst`). Per sender
//! (address and port) the decoder drops duplicates, assembles plain lines ([`plain`]), reassembles
//! `ncfrag` fragments ([`frag`]), joins continuation records, tracks sequence numbers (loss,
//! reboot), estimates the boot time and flags crash reports ([`sender`]).
//!
//! Every table is bounded ([`DecoderConfig`]); what falls out of a bound is still emitted, marked,
//! and counted in [`DecoderStats`].

pub mod extended;
pub mod frag;
pub mod plain;
pub mod record;
pub mod sender;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::budget::MemoryBudget;

pub use extended::ExtendedError;
pub use frag::FragError;
pub use record::{
    Caller, ContFlag, Duplicate, Escaped, Event, Field, Flags, Format, Incomplete, LossKind, Lost,
    Malformed, PanicKind, PanicMark, Priority, Rebooted, Record, Sysdata,
};

use frag::{Assembler, FragKey, FragLimits, Fragment, Reassembled};
use plain::Lines;
pub use sender::SenderTally;
use sender::{Held, Sender, SenderTable, SeqVerdict};

/// Senders tracked at once: 10,000. Beyond it, the least recently heard is evicted (its pending
/// state emitted) and counted.
pub const DEFAULT_MAX_SENDERS: usize = 10_000;
/// Plain mode: how long a line without its `\n` waits for the rest: 500 ms. The kernel sends
/// the rest of a cut record right away, so this only matters when a datagram was lost.
pub const DEFAULT_PLAIN_IDLE_TIMEOUT: Duration = Duration::from_millis(500);
/// Plain mode: bytes held for one unfinished line before it is emitted as partial: 16 KiB. A
/// plain console record is at most about 1 KiB (`CONSOLE_LOG_MAX`, `kernel/printk/printk.c`).
pub const DEFAULT_MAX_PLAIN_LINE: usize = 16 * 1024;
/// `ncfrag`: time from a record's first fragment until what arrived is emitted, marked
/// incomplete: 1 s. Fragments of one record leave the sender within microseconds.
pub const DEFAULT_FRAGMENT_TIMEOUT: Duration = Duration::from_secs(1);
/// `ncfrag`: largest `<total>` accepted, bytes: 32 KiB. The kernel's body is at most
/// `CONSOLE_EXT_LOG_MAX` (8 KiB) plus userdata and sysdata (under 5 KiB).
pub const DEFAULT_MAX_FRAGMENT_TOTAL: usize = 32 * 1024;
/// `ncfrag`: records being reassembled at once, all senders together: 256.
pub const DEFAULT_MAX_FRAGMENT_ENTRIES: usize = 256;
/// `ncfrag`: bytes reserved for records being reassembled, all senders together: 4 MiB.
pub const DEFAULT_MAX_FRAGMENT_BYTES: usize = 4 * 1024 * 1024;
/// `ncfrag`: separate byte ranges kept per record: 64 (the kernel sends at most a few dozen
/// fragments per record, in order, so its ranges merge into one).
pub const DEFAULT_MAX_FRAGMENT_RANGES: usize = 64;
/// Continuation (flag `c`): how long a record waits for the one completing it: 1 s.
pub const DEFAULT_CONTINUATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Continuation: bytes of content (text, and every field's key and value) joined into one
/// chain at most: 8 KiB, the kernel's own bound on one formatted extended record
/// (`CONSOLE_EXT_LOG_MAX`; since 6.2 `PRINTK_MESSAGE_MAX`, 2 KiB, `kernel/printk/internal.h`),
/// and a `LOG_CONT` line is one record in the ring buffer (`PRINTKRB_RECORD_MAX`, 1 KiB). A chain
/// that reaches it is emitted as it is, marked partial, and the next piece starts a new one.
pub const DEFAULT_MAX_CONTINUATION_BYTES: usize = 8 * 1024;
/// Continuation: `KEY=value` fields joined into one chain at most: 512. One record carries at
/// most two dictionary fields (`struct dev_printk_info`), up to 256 userdata fields
/// (`MAX_USERDATA_ITEMS`, `drivers/net/netconsole.c`) and four sysdata fields; empty dictionary
/// lines from a forged sender would otherwise cost 48 bytes of bookkeeping per two bytes sent.
pub const DEFAULT_MAX_CONTINUATION_FIELDS: usize = 512;
/// Sequence tracking: a seq more than this far above the highest one heard (2^32) is not taken
/// as records lost, but reported as a suspicious datagram and ignored: no kernel logs four
/// billion records between two that reach the collector, while a forged seq near 2^64 would
/// otherwise report a loss of quintillions and move the sender's sequence out of reach.
pub const MAX_SEQ_JUMP: u64 = 1 << 32;
/// Duplicates: a payload identical to one heard from the same sender at most this long ago is a
/// copy (two interfaces, mirror port): 500 ms. Copies arrive microseconds to milliseconds apart;
/// a kernel sends the same bytes twice only without timestamps (plain mode, `printk.time=0`) or
/// after a reboot, which takes longer.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_millis(500);
/// Duplicates: payload fingerprints remembered per sender: 128 (more than a NAPI poll budget of
/// frames by which one interface's copy can lag the other's).
pub const DEFAULT_DUPLICATE_HISTORY: usize = 128;
/// Sequence tracking: a seq at most this many records below the highest, with a timestamp not
/// far behind, is a late arrival rather than a reboot: 128 records.
pub const DEFAULT_REORDER_WINDOW: u64 = 128;
/// Reboot detection: a kernel timestamp this far behind the latest one means a new boot: 1 s.
/// Within one boot, timestamps only go back by CPU clock skew (microseconds).
pub const DEFAULT_REBOOT_BACKSTEP: Duration = Duration::from_secs(1);
/// Reboot detection: a record whose implied boot time (receive time minus kernel timestamp) is
/// this much later than the sender's estimated boot time belongs to a new boot: 1 s. A record
/// that is merely late implies the same boot time plus its delay on the way, and netconsole's
/// path (one UDP datagram, sent from the printk call or the console thread) adds milliseconds;
/// a reboot adds at least the old boot's uptime. This is what tells the new boot of a configfs
/// target, which replays nothing, from late records of the old one: its first sequence numbers
/// and timestamps can be just below, or even above, the last ones heard.
pub const DEFAULT_MAX_BOOT_SHIFT: Duration = Duration::from_secs(1);
/// Crash reports: records after the first line attributed to the same report, at most: 200 (an
/// oops with its registers, modules and call trace is about 50 lines). A `---[ end` line closes
/// the report earlier.
pub const DEFAULT_PANIC_CONTEXT: u32 = 200;

/// Every bound and timeout of the decoder. `Default` uses the `DEFAULT_*` constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Senders tracked at once. Default [`DEFAULT_MAX_SENDERS`] (10,000).
    pub max_senders: usize,
    /// Plain mode idle timeout for an unfinished line. Default [`DEFAULT_PLAIN_IDLE_TIMEOUT`]
    /// (500 ms).
    pub plain_idle_timeout: Duration,
    /// Plain mode bytes held per unfinished line. Default [`DEFAULT_MAX_PLAIN_LINE`] (16 KiB).
    pub max_plain_line: usize,
    /// `ncfrag` deadline per record. Default [`DEFAULT_FRAGMENT_TIMEOUT`] (1 s).
    pub fragment_timeout: Duration,
    /// `ncfrag` largest `<total>`, bytes. Default [`DEFAULT_MAX_FRAGMENT_TOTAL`] (32 KiB).
    pub max_fragment_total: usize,
    /// `ncfrag` records pending at once. Default [`DEFAULT_MAX_FRAGMENT_ENTRIES`] (256).
    pub max_fragment_entries: usize,
    /// `ncfrag` bytes pending at once. Default [`DEFAULT_MAX_FRAGMENT_BYTES`] (4 MiB).
    pub max_fragment_bytes: usize,
    /// `ncfrag` byte ranges per record. Default [`DEFAULT_MAX_FRAGMENT_RANGES`] (64).
    pub max_fragment_ranges: usize,
    /// Continuation wait. Default [`DEFAULT_CONTINUATION_TIMEOUT`] (1 s).
    pub continuation_timeout: Duration,
    /// Continuation content bytes. Default [`DEFAULT_MAX_CONTINUATION_BYTES`] (8 KiB).
    pub max_continuation_bytes: usize,
    /// Continuation fields. Default [`DEFAULT_MAX_CONTINUATION_FIELDS`] (512).
    pub max_continuation_fields: usize,
    /// Duplicate window. Default [`DEFAULT_DUPLICATE_WINDOW`] (500 ms).
    pub duplicate_window: Duration,
    /// Fingerprints per sender. Default [`DEFAULT_DUPLICATE_HISTORY`] (128).
    pub duplicate_history: usize,
    /// Late-arrival window, records. Default [`DEFAULT_REORDER_WINDOW`] (128).
    pub reorder_window: u64,
    /// Timestamp step back that means a reboot. Default [`DEFAULT_REBOOT_BACKSTEP`] (1 s).
    pub reboot_backstep: Duration,
    /// Implied boot time moving later by more than this means a reboot. Default
    /// [`DEFAULT_MAX_BOOT_SHIFT`] (1 s).
    pub max_boot_shift: Duration,
    /// Records attributed to a crash report. Default [`DEFAULT_PANIC_CONTEXT`] (200).
    pub panic_context: u32,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_senders: DEFAULT_MAX_SENDERS,
            plain_idle_timeout: DEFAULT_PLAIN_IDLE_TIMEOUT,
            max_plain_line: DEFAULT_MAX_PLAIN_LINE,
            fragment_timeout: DEFAULT_FRAGMENT_TIMEOUT,
            max_fragment_total: DEFAULT_MAX_FRAGMENT_TOTAL,
            max_fragment_entries: DEFAULT_MAX_FRAGMENT_ENTRIES,
            max_fragment_bytes: DEFAULT_MAX_FRAGMENT_BYTES,
            max_fragment_ranges: DEFAULT_MAX_FRAGMENT_RANGES,
            continuation_timeout: DEFAULT_CONTINUATION_TIMEOUT,
            max_continuation_bytes: DEFAULT_MAX_CONTINUATION_BYTES,
            max_continuation_fields: DEFAULT_MAX_CONTINUATION_FIELDS,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            duplicate_history: DEFAULT_DUPLICATE_HISTORY,
            reorder_window: DEFAULT_REORDER_WINDOW,
            reboot_backstep: DEFAULT_REBOOT_BACKSTEP,
            max_boot_shift: DEFAULT_MAX_BOOT_SHIFT,
            panic_context: DEFAULT_PANIC_CONTEXT,
        }
    }
}

impl DecoderConfig {
    fn frag_limits(&self) -> FragLimits {
        FragLimits {
            max_total: self.max_fragment_total,
            max_entries: self.max_fragment_entries,
            max_bytes: self.max_fragment_bytes,
            max_ranges: self.max_fragment_ranges,
            timeout: self.fragment_timeout,
        }
    }

    fn backstep_us(&self) -> u64 {
        u64::try_from(self.reboot_backstep.as_micros()).unwrap_or(u64::MAX)
    }

    fn boot_shift_us(&self) -> u64 {
        u64::try_from(self.max_boot_shift.as_micros()).unwrap_or(u64::MAX)
    }
}

/// Why a datagram could not be decoded (carried by [`Event::Malformed`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// It starts like an extended header but the header does not parse.
    #[error("bad extended header: {source}")]
    Extended {
        /// What is wrong.
        #[source]
        source: ExtendedError,
    },
    /// Its `ncfrag` fragment cannot be placed.
    #[error("bad ncfrag fragment: {source}")]
    Fragment {
        /// What is wrong.
        #[source]
        source: FragError,
    },
    /// Its seq is more than [`MAX_SEQ_JUMP`] above the highest heard from the sender: forged
    /// or corrupt, not a loss. The datagram is not decoded and the sender's state is kept.
    #[error("suspicious seq {seq}: more than 2^32 above {previous}, the highest heard; ignored")]
    SeqJump {
        /// The highest seq heard before.
        previous: u64,
        /// The datagram's seq.
        seq: u64,
    },
    /// Its sysdata msgid moved further ahead than its seq did, which a real target cannot
    /// do (each message it sends is one printk record): forged. The record is still emitted;
    /// the sender's msgid is kept, so that gap detection goes on.
    #[error(
        "suspicious msgid {msgid} with seq {seq}: the msgid moved {msgid_advance} ahead of {previous} while the seq moved {seq_advance}; msgid ignored"
    )]
    MsgidJump {
        /// The last msgid accepted.
        previous: u32,
        /// The record's msgid.
        msgid: u32,
        /// The record's seq.
        seq: u64,
        /// How far the msgid moved.
        msgid_advance: u64,
        /// How far the seq moved since that msgid.
        seq_advance: u64,
    },
}

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

/// Counters; a loss is never silent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Datagrams pushed.
    pub datagrams: u64,
    /// Empty payloads (ignored).
    pub empty: u64,
    /// Records emitted.
    pub records: u64,
    /// `ncfrag` fragments received.
    pub fragments: u64,
    /// Records reassembled whole from fragments.
    pub reassembled: u64,
    /// Reassembly entries emitted incomplete because their deadline passed (or on flush).
    pub fragments_expired: u64,
    /// Reassembly entries emitted incomplete to make room for newer ones.
    pub fragments_evicted: u64,
    /// Records emitted with bytes missing.
    pub incomplete_records: u64,
    /// Plain lines emitted without their `\n`.
    pub partial_lines: u64,
    /// Continuation records joined onto the one they continue.
    pub continuations_joined: u64,
    /// Continuation records emitted alone after waiting in vain.
    pub continuation_timeouts: u64,
    /// Continuation chains emitted, marked partial, because they reached their bound
    /// ([`DEFAULT_MAX_CONTINUATION_BYTES`], [`DEFAULT_MAX_CONTINUATION_FIELDS`]).
    pub continuations_cut: u64,
    /// Pieces of held state (continuation chains, partial lines, pending fragments) emitted
    /// early, and senders evicted, because the memory budget was full.
    pub budget_shed: u64,
    /// Datagrams whose seq or msgid jumped further than a real sender's can (reported as
    /// malformed, see [`DecodeError::SeqJump`], [`DecodeError::MsgidJump`]).
    pub suspicious: u64,
    /// Bytes of state held now, as charged to the memory budget.
    pub held_bytes: u64,
    /// Senders tracked now.
    pub senders: u64,
    /// Senders evicted from the table (least recently heard first).
    pub senders_evicted: u64,
    /// Records missing according to seq gaps.
    pub records_lost: u64,
    /// Messages missing according to sysdata msgid gaps.
    pub msgid_lost: u64,
    /// Records that arrived after a higher seq.
    pub late: u64,
    /// Reboots seen.
    pub reboots: u64,
    /// Duplicate datagrams dropped.
    pub duplicates: u64,
    /// Malformed datagrams.
    pub malformed: u64,
    /// Invalid `\x` escapes kept literally.
    pub bad_escapes: u64,
    /// Crash reports begun.
    pub panics: u64,
}

/// The netconsole decoder: all per-sender state, bounded. See the module documentation.
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    senders: SenderTable,
    assembler: Assembler,
    /// Per-sender deadlines, at most one live entry per sender (`Sender::timer`); stale ones are
    /// skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    /// Random key of the payload fingerprints.
    seed: u64,
    next_panic_event: u64,
    stats: DecoderStats,
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

/// What the per-sender functions need from the decoder.
struct Ctx<'a> {
    config: &'a DecoderConfig,
    stats: &'a mut DecoderStats,
    next_panic_event: &'a mut u64,
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
            config,
            assembler: Assembler::new(),
            timers: BinaryHeap::new(),
            seed: RandomState::new().hash_one(0x6e65_7463_6f6e_u64),
            next_panic_event: 0,
            stats: DecoderStats::default(),
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
        &self.config
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &DecoderStats {
        &self.stats
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
        add(&mut self.stats.datagrams, 1);
        if incoming.payload.is_empty() {
            add(&mut self.stats.empty, 1);
            return;
        }
        let (idx, evicted) = self.senders.touch_or_insert(incoming.src);
        if let Some(old) = evicted {
            add(&mut self.stats.senders_evicted, 1);
            self.retire(now, old, out);
        }
        self.push_to(now, idx, &incoming, out);
        self.account(idx);
        self.settle(now, out);
        self.stats.senders = self.senders.len() as u64;
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
            self.config.duplicate_window,
            self.config.duplicate_history,
        ) {
            add(&mut self.stats.duplicates, 1);
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
            add(&mut self.stats.fragments_expired, 1);
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
            let fired = self.with_sender(idx, |sender, ctx| {
                if sender.timer != Some(at) {
                    return false;
                }
                sender.timer = None;
                fire(sender, now, ctx, out);
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
            add(&mut self.stats.fragments_expired, 1);
            self.finish_reassembled(now, r, out);
        }
        let Self {
            senders,
            config,
            stats,
            next_panic_event,
            timers,
            ..
        } = self;
        let mut ctx = Ctx {
            config,
            stats,
            next_panic_event,
        };
        for sender in senders.iter_mut() {
            flush_sender(sender, now, &mut ctx, out);
            sender.timer = None;
        }
        timers.clear();
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
        f: impl FnOnce(&mut Sender, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let Self {
            senders,
            config,
            stats,
            next_panic_event,
            ..
        } = self;
        let sender = senders.get_mut(idx)?;
        let mut ctx = Ctx {
            config,
            stats,
            next_panic_event,
        };
        Some(f(sender, &mut ctx))
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
        self.stats.held_bytes = self.charged as u64;
        self.stats.senders = self.senders.len() as u64;
    }

    /// Frees the oldest held state for the budget: the oldest piece held for later (a sender's
    /// continuation or partial line, or a pending fragment entry) is emitted; when there is none,
    /// the sender to evict ([`SenderTable::pop_victim`]) goes. `false` when nothing is held.
    fn shed_oldest(&mut self, now: Instant, out: &mut Vec<Event>) -> bool {
        let piece = self.aged.first().copied();
        let fragment = self.assembler.oldest_since();
        match (piece, fragment) {
            (Some((since, addr)), f) if f.is_none_or(|f| since <= f) => {
                add(&mut self.stats.budget_shed, 1);
                let Some(idx) = self.senders.find(&addr) else {
                    // Not in the table any more: a stale key (never expected).
                    self.aged.remove(&(since, addr));
                    return true;
                };
                self.with_sender(idx, |sender, ctx| shed_sender(sender, now, ctx, out));
                self.account(idx);
                true
            }
            (_, Some(_)) => {
                add(&mut self.stats.budget_shed, 1);
                if let Some(r) = self.assembler.evict_oldest() {
                    add(&mut self.stats.fragments_evicted, 1);
                    self.finish_reassembled(now, r, out);
                }
                true
            }
            _ => match self.senders.pop_victim() {
                Some(old) => {
                    add(&mut self.stats.budget_shed, 1);
                    add(&mut self.stats.senders_evicted, 1);
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
            add(&mut self.stats.suspicious, 1);
            let error = DecodeError::SeqJump {
                previous: high,
                seq: header.seq,
            };
            self.malformed(incoming, error, out);
            return;
        }
        let limits = self.config.frag_limits();
        let mut evicted = Vec::new();
        let Self {
            senders,
            config,
            stats,
            next_panic_event,
            assembler,
            ..
        } = self;
        let Some(sender) = senders.get_mut(idx) else {
            return;
        };
        let mut ctx = Ctx {
            config,
            stats,
            next_panic_event,
        };
        let verdict = track_seq(sender, incoming, header, &mut ctx, out);

        let Some(frag) = header.fragment else {
            if verdict == SeqVerdict::Same {
                // The record heard again after the duplicate window: the seq and timestamp say
                // it is the same one.
                add(&mut ctx.stats.duplicates, 1);
                out.push(duplicate(incoming));
                return;
            }
            let mut record = head_record(incoming, header);
            fill_body(&mut record, payload.body, ctx.stats);
            complete(sender, record, now, &mut ctx, out);
            return;
        };
        add(&mut ctx.stats.fragments, 1);
        if sender.last_reassembled == Some((header.seq, header.ts_usec)) {
            add(&mut ctx.stats.duplicates, 1);
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
        let added = assembler.add(
            &limits,
            now,
            fragment,
            || head_record(incoming, header),
            &mut evicted,
        );
        match added {
            Ok(Some(done)) => {
                add(&mut ctx.stats.reassembled, 1);
                sender.last_reassembled = Some((header.seq, header.ts_usec));
                let record = reassembled_record(done, ctx.stats);
                complete(sender, record, now, &mut ctx, out);
            }
            Ok(None) => {}
            Err(source) => self.malformed(incoming, DecodeError::Fragment { source }, out),
        }
        for r in evicted {
            add(&mut self.stats.fragments_evicted, 1);
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
        self.with_sender(idx, |sender, ctx| {
            let mut lines = Vec::new();
            sender.plain.push(
                now,
                incoming.received,
                incoming.ifindex,
                incoming.payload,
                ctx.config.plain_idle_timeout,
                ctx.config.max_plain_line,
                &mut lines,
            );
            for l in lines {
                plain_record(sender, &l, now, ctx, out);
            }
        });
    }

    /// Emits a reassembly entry that left the assembler, through its sender's state.
    fn finish_reassembled(&mut self, now: Instant, r: Reassembled, out: &mut Vec<Event>) {
        let idx = self.senders.find(&r.key.sender);
        let Self {
            senders,
            config,
            stats,
            next_panic_event,
            ..
        } = self;
        let record = reassembled_record(r, stats);
        let mut ctx = Ctx {
            config,
            stats,
            next_panic_event,
        };
        if let Some(sender) = idx.and_then(|i| senders.get_mut(i)) {
            complete(sender, record, now, &mut ctx, out);
        } else {
            // The sender left the table; its entries are drained when it does, so this is only
            // a safety net.
            add(&mut ctx.stats.records, 1);
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
        let mut ctx = Ctx {
            config: &self.config,
            stats: &mut self.stats,
            next_panic_event: &mut self.next_panic_event,
        };
        for r in pending {
            add(&mut ctx.stats.fragments_evicted, 1);
            let record = reassembled_record(r, ctx.stats);
            complete(&mut old, record, now, &mut ctx, out);
        }
        flush_sender(&mut old, now, &mut ctx, out);
    }

    fn malformed(&mut self, incoming: &Incoming<'_>, error: DecodeError, out: &mut Vec<Event>) {
        add(&mut self.stats.malformed, 1);
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

/// Sequence tracking for one extended datagram: reboot and loss events.
///
/// A new boot is either the implied boot time moving later than any delay explains
/// ([`DEFAULT_MAX_BOOT_SHIFT`]), or the sequence starting over ([`sender::SeqTracker::observe`]).
/// The same record heard again (same seq and timestamp as the highest) is never a reboot.
fn track_seq(
    sender: &mut Sender,
    incoming: &Incoming<'_>,
    header: &extended::Header<'_>,
    ctx: &mut Ctx<'_>,
    out: &mut Vec<Event>,
) -> SeqVerdict {
    let heard_again = sender.seq.highest() == Some((header.seq, header.ts_usec));
    let later_boot = !heard_again
        && sender.boot.is_later_boot(
            incoming.received,
            header.ts_usec,
            ctx.config.boot_shift_us(),
        );
    let verdict = if later_boot {
        sender.seq.restart(header.seq, header.ts_usec)
    } else {
        sender.seq.observe(
            header.seq,
            header.ts_usec,
            ctx.config.reorder_window,
            ctx.config.backstep_us(),
        )
    };
    match verdict {
        SeqVerdict::Reboot {
            previous_seq,
            previous_ts,
        } => new_boot(
            sender,
            NewBoot {
                received: incoming.received,
                ifindex: incoming.ifindex,
                previous_seq: Some(previous_seq),
                seq: Some(header.seq),
                previous_timestamp_us: Some(previous_ts),
                timestamp_us: Some(header.ts_usec),
            },
            ctx,
            out,
        ),
        SeqVerdict::First if later_boot => new_boot(
            sender,
            NewBoot {
                received: incoming.received,
                ifindex: incoming.ifindex,
                previous_seq: None,
                seq: Some(header.seq),
                previous_timestamp_us: sender.plain_ts,
                timestamp_us: Some(header.ts_usec),
            },
            ctx,
            out,
        ),
        SeqVerdict::Gap { first, last } => {
            let count = last - first + 1;
            add(&mut ctx.stats.records_lost, count);
            add(&mut sender.tally.records_lost, count);
            out.push(Event::Lost(Lost {
                received: incoming.received,
                sender: incoming.src,
                ifindex: incoming.ifindex,
                kind: LossKind::Seq,
                first,
                last,
                count,
            }));
        }
        SeqVerdict::Late => add(&mut ctx.stats.late, 1),
        SeqVerdict::First | SeqVerdict::Next | SeqVerdict::Same => {}
    }
    verdict
}

/// What a `rebooted` event says about the boot change.
#[derive(Clone, Copy)]
struct NewBoot {
    received: DateTime<Utc>,
    ifindex: u32,
    previous_seq: Option<u64>,
    seq: Option<u64>,
    previous_timestamp_us: Option<u64>,
    timestamp_us: Option<u64>,
}

/// The sender booted again: what the old boot still held goes out first, then the `rebooted`
/// event); the boot estimate, msgid and crash-report context start over. (The caller has already
/// restarted the sequence tracking.)
fn new_boot(sender: &mut Sender, boot: NewBoot, ctx: &mut Ctx<'_>, out: &mut Vec<Event>) {
    add(&mut ctx.stats.reboots, 1);
    if let Some(held) = sender.held.take() {
        emit(sender, held.record, ctx, out);
    }
    sender.boot.reset();
    sender.panic.reset();
    sender.msgid = None;
    sender.last_reassembled = None;
    sender.plain_ts = None;
    out.push(Event::Rebooted(Rebooted {
        received: boot.received,
        sender: sender.addr,
        ifindex: boot.ifindex,
        previous_seq: boot.previous_seq,
        seq: boot.seq,
        previous_timestamp_us: boot.previous_timestamp_us,
        timestamp_us: boot.timestamp_us,
    }));
}

/// A keyed 64-bit fingerprint of a payload, to recognise copies of it: a folded-multiply hash
/// (as in wyhash and foldhash), several times faster than `SipHash` on kilobyte payloads. The key
/// is random per decoder, so a sender cannot aim for collisions; and one who can spoof a
/// sender's address could inject anything anyway.
fn fingerprint(seed: u64, data: &[u8]) -> u64 {
    const K: [u64; 4] = [
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the low and high halves of the product are meant"
    )]
    fn mix(a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        for (d, s) in w.iter_mut().zip(b) {
            *d = *s;
        }
        u64::from_le_bytes(w)
    };
    let len = data.len() as u64;
    let mut h = seed ^ mix(len ^ K[0], seed ^ K[1]);
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let (a, b) = block.split_at(8);
        h = mix(word(a) ^ K[2], word(b) ^ h);
    }
    let tail = blocks.remainder();
    let (a, b) = tail.split_at(tail.len().min(8));
    h = mix(word(a) ^ K[3], word(b) ^ h);
    mix(h ^ K[0], len ^ K[2])
}

fn duplicate(incoming: &Incoming<'_>) -> Event {
    Event::Duplicate(Duplicate {
        received: incoming.received,
        sender: incoming.src,
        ifindex: incoming.ifindex,
        len: incoming.payload.len(),
    })
}

/// The record an extended header describes, without its text yet.
fn head_record(incoming: &Incoming<'_>, header: &extended::Header<'_>) -> Record {
    Record {
        received: incoming.received,
        sender: incoming.src,
        ifindex: incoming.ifindex,
        format: Format::Extended,
        priority: Some(header.priority),
        seq: Some(header.seq),
        timestamp_us: Some(header.ts_usec),
        kernel_time: None,
        release: header.release.map(str::to_owned),
        caller: header.caller.map(Caller::parse),
        cont: header.cont,
        header_extra: header
            .extra_fields()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect(),
        text: Vec::new(),
        fields: Vec::new(),
        sysdata: Sysdata::default(),
        flags: Flags::default(),
    }
}

/// Splits and unescapes a whole extended body into `record`.
fn fill_body(record: &mut Record, body: &[u8], stats: &mut DecoderStats) {
    let bad = extended::parse_body(body, &mut record.text, &mut record.fields);
    add(&mut stats.bad_escapes, bad as u64);
    if !record.fields.is_empty() {
        record.sysdata = Sysdata::from_fields(&record.fields);
        if record.release.is_none() {
            record.release.clone_from(&record.sysdata.release);
        }
    }
}

fn reassembled_record(r: Reassembled, stats: &mut DecoderStats) -> Record {
    let mut record = r.head;
    fill_body(&mut record, &r.body, stats);
    record.flags.fragmented = true;
    if r.missing > 0 {
        record.flags.incomplete = Some(Incomplete {
            missing_bytes: r.missing,
            total_bytes: r.total,
        });
    }
    record
}

fn plain_record(
    sender: &mut Sender,
    lines: &Lines,
    now: Instant,
    ctx: &mut Ctx<'_>,
    out: &mut Vec<Event>,
) {
    let parsed = plain::parse_lines(&lines.bytes);
    if let Some(ts) = parsed.timestamp_us {
        let went_back = sender
            .plain_ts
            .is_some_and(|prev| ts.saturating_add(ctx.config.backstep_us()) < prev);
        let later_boot = sender
            .boot
            .is_later_boot(lines.received, ts, ctx.config.boot_shift_us());
        if went_back || later_boot {
            new_boot(
                sender,
                NewBoot {
                    received: lines.received,
                    ifindex: lines.ifindex,
                    previous_seq: None,
                    seq: None,
                    previous_timestamp_us: sender.plain_ts,
                    timestamp_us: Some(ts),
                },
                ctx,
                out,
            );
        }
        sender.plain_ts = Some(ts);
    }
    let record = Record {
        received: lines.received,
        sender: sender.addr,
        ifindex: lines.ifindex,
        format: Format::Plain,
        priority: None,
        seq: None,
        timestamp_us: parsed.timestamp_us,
        kernel_time: None,
        release: None,
        caller: parsed.caller,
        cont: ContFlag::None,
        header_extra: Vec::new(),
        text: parsed.text,
        fields: Vec::new(),
        sysdata: Sysdata::default(),
        flags: Flags {
            partial: lines.partial,
            ..Flags::default()
        },
    };
    complete(sender, record, now, ctx, out);
}

/// Takes a finished record through the sender's state: boot estimate, msgid gaps, continuation
/// joining, then [`emit`].
fn complete(
    sender: &mut Sender,
    mut record: Record,
    now: Instant,
    ctx: &mut Ctx<'_>,
    out: &mut Vec<Event>,
) {
    if let Some(id) = record.sysdata.msgid
        && id == 1
        && sender.msgid.is_some_and(|prev| prev > 1)
    {
        // A configfs target numbers its messages from 1 after it is enabled: at boot.
        let previous = match record.seq {
            Some(seq) => sender.seq.restart(seq, record.timestamp_us.unwrap_or(0)),
            None => SeqVerdict::First,
        };
        let (previous_seq, previous_timestamp_us) = match previous {
            SeqVerdict::Reboot {
                previous_seq,
                previous_ts,
            } => (Some(previous_seq), Some(previous_ts)),
            _ => (None, sender.plain_ts),
        };
        new_boot(
            sender,
            NewBoot {
                received: record.received,
                ifindex: record.ifindex,
                previous_seq,
                seq: record.seq,
                previous_timestamp_us,
                timestamp_us: record.timestamp_us,
            },
            ctx,
            out,
        );
    }
    if let Some(ts) = record.timestamp_us {
        record.kernel_time = sender.boot.observe(record.received, ts);
    }
    if let Some(id) = record.sysdata.msgid {
        msgid_check(sender, &record, id, ctx, out);
    }
    if record.format == Format::Extended {
        if let Some(held) = sender.held.take() {
            if record.seq == Some(held.next_seq) {
                if chain_fits(&held.record, &record, ctx.config) {
                    add(&mut ctx.stats.continuations_joined, 1);
                    let Held {
                        record: mut joined,
                        since,
                        ..
                    } = *held;
                    join(&mut joined, record);
                    if matches!(joined.cont, ContFlag::Cont | ContFlag::Plus) {
                        let next_seq = joined.seq.map_or(0, |s| s.saturating_add(1));
                        sender.held = Some(Box::new(Held {
                            record: joined,
                            next_seq,
                            deadline: now + ctx.config.continuation_timeout,
                            since,
                        }));
                    } else {
                        emit(sender, joined, ctx, out);
                    }
                    return;
                }
                // The chain reached its bound: out it goes, cut, and this piece starts anew.
                emit_cut(sender, held.record, ctx, out);
            } else {
                emit(sender, held.record, ctx, out);
            }
        }
        match record.cont {
            ContFlag::Cont => {
                record.flags.continued = true;
                if record.fields.len() > ctx.config.max_continuation_fields
                    || record.content_len() > ctx.config.max_continuation_bytes
                {
                    // One piece already past the bound: nothing may join it.
                    emit_cut(sender, record, ctx, out);
                    return;
                }
                let next_seq = record.seq.map_or(0, |s| s.saturating_add(1));
                sender.held = Some(Box::new(Held {
                    record,
                    next_seq,
                    deadline: now + ctx.config.continuation_timeout,
                    since: now,
                }));
                return;
            }
            ContFlag::Plus => record.flags.continued = true,
            ContFlag::None | ContFlag::Unknown(_) => {}
        }
    }
    emit(sender, record, ctx, out);
}

/// Whether `next` may join the chain `held` within the chain's bounds: content bytes
/// ([`DecoderConfig::max_continuation_bytes`]) and fields
/// ([`DecoderConfig::max_continuation_fields`]).
fn chain_fits(held: &Record, next: &Record, config: &DecoderConfig) -> bool {
    held.fields.len() + next.fields.len() <= config.max_continuation_fields
        && held.content_len() + next.content_len() <= config.max_continuation_bytes
}

/// Emits a continuation chain cut short (at its bound, or by the memory budget): marked
/// partial, counted.
fn emit_cut(sender: &mut Sender, mut record: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Event>) {
    record.flags.partial = true;
    record.flags.continued = true;
    add(&mut ctx.stats.continuations_cut, 1);
    emit(sender, record, ctx, out);
}

/// Adds to a counter without wrapping: counts that a forged datagram sets (a loss of 2^64
/// records) stop at the top rather than start over.
fn add(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

/// Appends `next` to the held record `joined`. The joined record keeps the first record's
/// header, takes the last one's flag and seq (so that the next seq continues it), and the union
/// of their markings.
fn join(joined: &mut Record, next: Record) {
    joined.text.extend_from_slice(&next.text);
    joined.fields.extend(next.fields);
    if !next.sysdata.is_empty() {
        joined.sysdata = next.sysdata;
    }
    joined.cont = next.cont;
    joined.seq = next.seq.or(joined.seq);
    joined.flags.continued = true;
    joined.flags.fragmented |= next.flags.fragmented;
    if let Some(inc) = next.flags.incomplete {
        let prev = joined
            .flags
            .incomplete
            .map_or((0, 0), |i| (i.missing_bytes, i.total_bytes));
        joined.flags.incomplete = Some(Incomplete {
            missing_bytes: prev.0 + inc.missing_bytes,
            total_bytes: prev.1 + inc.total_bytes,
        });
    }
}

fn msgid_check(
    sender: &mut Sender,
    record: &Record,
    id: u32,
    ctx: &mut Ctx<'_>,
    out: &mut Vec<Event>,
) {
    let Some(prev) = sender.msgid else {
        sender.msgid = Some(id);
        sender.msgid_seq = record.seq;
        return;
    };
    let expected = prev.wrapping_add(1);
    let gap = id.wrapping_sub(expected);
    // Half the u32 range ahead is a gap, the other half behind is a late or repeated message.
    if gap >= 1 << 31 {
        return;
    }
    // Every message a target sends is one printk record, so the msgid cannot move further than
    // the seq did: a msgid that does was forged, and taking it would make the real sender's
    // msgids look old (and its gaps unseen).
    let msgid_advance = u64::from(gap) + 1;
    if let (Some(seq), Some(prev_seq)) = (record.seq, sender.msgid_seq) {
        let seq_advance = seq.saturating_sub(prev_seq);
        if msgid_advance > seq_advance {
            add(&mut ctx.stats.suspicious, 1);
            add(&mut ctx.stats.malformed, 1);
            out.push(Event::Malformed(Malformed {
                received: record.received,
                sender: record.sender,
                ifindex: record.ifindex,
                error: DecodeError::MsgidJump {
                    previous: prev,
                    msgid: id,
                    seq,
                    msgid_advance,
                    seq_advance,
                },
                payload: Vec::new(),
            }));
            return;
        }
    }
    if gap > 0 {
        add(&mut ctx.stats.msgid_lost, u64::from(gap));
        add(&mut sender.tally.msgid_lost, u64::from(gap));
        out.push(Event::Lost(Lost {
            received: record.received,
            sender: record.sender,
            ifindex: record.ifindex,
            kind: LossKind::Msgid,
            first: u64::from(expected),
            last: u64::from(id.wrapping_sub(1)),
            count: u64::from(gap),
        }));
    }
    sender.msgid = Some(id);
    sender.msgid_seq = record.seq.or(sender.msgid_seq);
}

/// Marks crash reports, counts, and hands the record out.
fn emit(sender: &mut Sender, mut record: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Event>) {
    sender
        .panic
        .mark(&mut record, ctx.config.panic_context, ctx.next_panic_event);
    add(&mut ctx.stats.records, 1);
    add(&mut sender.tally.records, 1);
    if record.flags.panic.is_some_and(|p| p.begins) {
        add(&mut ctx.stats.panics, 1);
        add(&mut sender.tally.panics, 1);
    }
    if record.flags.incomplete.is_some() {
        add(&mut ctx.stats.incomplete_records, 1);
    }
    if record.flags.partial && record.format == Format::Plain {
        add(&mut ctx.stats.partial_lines, 1);
    }
    out.push(Event::Record(record));
}

/// Fires the sender's due timers.
fn fire(sender: &mut Sender, now: Instant, ctx: &mut Ctx<'_>, out: &mut Vec<Event>) {
    let mut lines = Vec::new();
    sender.plain.poll(now, &mut lines);
    for l in lines {
        plain_record(sender, &l, now, ctx, out);
    }
    if sender.held.as_ref().is_some_and(|h| h.deadline <= now)
        && let Some(held) = sender.held.take()
    {
        add(&mut ctx.stats.continuation_timeouts, 1);
        emit(sender, held.record, ctx, out);
    }
}

/// Emits a sender's held continuation and pending plain bytes.
fn flush_sender(sender: &mut Sender, now: Instant, ctx: &mut Ctx<'_>, out: &mut Vec<Event>) {
    if let Some(held) = sender.held.take() {
        emit(sender, held.record, ctx, out);
    }
    flush_plain(sender, now, ctx, out);
}

/// Emits what a sender holds for later because the memory budget is full: the continuation
/// marked partial (cut), the pending plain bytes.
fn shed_sender(sender: &mut Sender, now: Instant, ctx: &mut Ctx<'_>, out: &mut Vec<Event>) {
    if let Some(held) = sender.held.take() {
        emit_cut(sender, held.record, ctx, out);
    }
    flush_plain(sender, now, ctx, out);
}

fn flush_plain(sender: &mut Sender, now: Instant, ctx: &mut Ctx<'_>, out: &mut Vec<Event>) {
    let mut lines = Vec::new();
    sender.plain.flush(&mut lines);
    for l in lines {
        plain_record(sender, &l, now, ctx, out);
    }
}

#[cfg(test)]
mod tests;
