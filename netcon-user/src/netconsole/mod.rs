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
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use thiserror::Error;

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
/// Continuation: bytes of text joined into one record at most: 16 KiB.
pub const DEFAULT_MAX_CONTINUATION_BYTES: usize = 16 * 1024;
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
    /// Continuation text bytes. Default [`DEFAULT_MAX_CONTINUATION_BYTES`] (16 KiB).
    pub max_continuation_bytes: usize,
    /// Duplicate window. Default [`DEFAULT_DUPLICATE_WINDOW`] (500 ms).
    pub duplicate_window: Duration,
    /// Fingerprints per sender. Default [`DEFAULT_DUPLICATE_HISTORY`] (128).
    pub duplicate_history: usize,
    /// Late-arrival window, records. Default [`DEFAULT_REORDER_WINDOW`] (128).
    pub reorder_window: u64,
    /// Timestamp step back that means a reboot. Default [`DEFAULT_REBOOT_BACKSTEP`] (1 s).
    pub reboot_backstep: Duration,
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
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            duplicate_history: DEFAULT_DUPLICATE_HISTORY,
            reorder_window: DEFAULT_REORDER_WINDOW,
            reboot_backstep: DEFAULT_REBOOT_BACKSTEP,
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
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DecoderConfig::default())
    }
}

/// What the per-sender functions need from the decoder.
struct Ctx<'a> {
    config: &'a DecoderConfig,
    stats: &'a mut DecoderStats,
    next_panic_event: &'a mut u64,
}

impl Decoder {
    /// A decoder with the given bounds.
    #[must_use]
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            senders: SenderTable::new(config.max_senders),
            config,
            assembler: Assembler::new(),
            timers: BinaryHeap::new(),
            seed: RandomState::new().hash_one(0x6e65_7463_6f6e_u64),
            next_panic_event: 0,
            stats: DecoderStats::default(),
            last_now: None,
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

    /// Decodes one datagram. `now` is monotonic and drives every timer; nothing here reads a
    /// clock.
    pub fn push(&mut self, now: Instant, incoming: Incoming<'_>, out: &mut Vec<Event>) {
        self.last_now = Some(now);
        self.stats.datagrams += 1;
        if incoming.payload.is_empty() {
            self.stats.empty += 1;
            return;
        }
        let fingerprint = fingerprint(self.seed, incoming.payload);
        let (idx, evicted) = self.senders.touch_or_insert(incoming.src);
        if let Some(old) = evicted {
            self.stats.senders_evicted += 1;
            self.retire(now, old, out);
        }
        self.stats.senders = self.senders.len() as u64;

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
            self.stats.duplicates += 1;
            out.push(duplicate(&incoming));
            return;
        }
        if extended::looks_extended(incoming.payload) {
            match extended::parse(incoming.payload) {
                Ok(payload) => self.push_extended(now, idx, &incoming, &payload, out),
                Err(source) => {
                    self.malformed(&incoming, DecodeError::Extended { source }, out);
                }
            }
        } else {
            self.push_plain(now, idx, &incoming, out);
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
            self.stats.fragments_expired += 1;
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
            let Self {
                senders,
                config,
                stats,
                next_panic_event,
                ..
            } = self;
            let Some(sender) = senders.get_mut(idx) else {
                continue;
            };
            if sender.timer != Some(at) {
                continue;
            }
            sender.timer = None;
            let mut ctx = Ctx {
                config,
                stats,
                next_panic_event,
            };
            fire(sender, now, &mut ctx, out);
            self.arm(idx);
        }
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
            self.stats.fragments_expired += 1;
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
                ctx.stats.duplicates += 1;
                out.push(duplicate(incoming));
                return;
            }
            let mut record = head_record(incoming, header);
            fill_body(&mut record, payload.body, ctx.stats);
            complete(sender, record, now, &mut ctx, out);
            return;
        };
        ctx.stats.fragments += 1;
        if sender.last_reassembled == Some((header.seq, header.ts_usec)) {
            ctx.stats.duplicates += 1;
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
                ctx.stats.reassembled += 1;
                sender.last_reassembled = Some((header.seq, header.ts_usec));
                let record = reassembled_record(done, ctx.stats);
                complete(sender, record, now, &mut ctx, out);
            }
            Ok(None) => {}
            Err(source) => self.malformed(incoming, DecodeError::Fragment { source }, out),
        }
        for r in evicted {
            self.stats.fragments_evicted += 1;
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
        let Self {
            senders,
            config,
            stats,
            next_panic_event,
            ..
        } = self;
        let Some(sender) = senders.get_mut(idx) else {
            return;
        };
        let mut lines = Vec::new();
        sender.plain.push(
            now,
            incoming.received,
            incoming.ifindex,
            incoming.payload,
            config.plain_idle_timeout,
            config.max_plain_line,
            &mut lines,
        );
        let mut ctx = Ctx {
            config,
            stats,
            next_panic_event,
        };
        for l in lines {
            plain_record(sender, &l, now, &mut ctx, out);
        }
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
            ctx.stats.records += 1;
            out.push(Event::Record(record));
        }
        if let Some(idx) = idx {
            self.arm(idx);
        }
    }

    /// Emits everything an evicted sender still held.
    fn retire(&mut self, now: Instant, mut old: Sender, out: &mut Vec<Event>) {
        let mut pending = Vec::new();
        self.assembler.drain_sender(old.addr, &mut pending);
        let mut ctx = Ctx {
            config: &self.config,
            stats: &mut self.stats,
            next_panic_event: &mut self.next_panic_event,
        };
        for r in pending {
            ctx.stats.fragments_evicted += 1;
            let record = reassembled_record(r, ctx.stats);
            complete(&mut old, record, now, &mut ctx, out);
        }
        flush_sender(&mut old, now, &mut ctx, out);
    }

    fn malformed(&mut self, incoming: &Incoming<'_>, error: DecodeError, out: &mut Vec<Event>) {
        self.stats.malformed += 1;
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
fn track_seq(
    sender: &mut Sender,
    incoming: &Incoming<'_>,
    header: &extended::Header<'_>,
    ctx: &mut Ctx<'_>,
    out: &mut Vec<Event>,
) -> SeqVerdict {
    let verdict = sender.seq.observe(
        header.seq,
        header.ts_usec,
        ctx.config.reorder_window,
        ctx.config.backstep_us(),
    );
    match verdict {
        SeqVerdict::Reboot {
            previous_seq,
            previous_ts,
        } => {
            ctx.stats.reboots += 1;
            if let Some(held) = sender.held.take() {
                emit(sender, held.record, ctx, out);
            }
            sender.boot.reset();
            sender.panic.reset();
            sender.msgid = None;
            sender.last_reassembled = None;
            out.push(Event::Rebooted(Rebooted {
                received: incoming.received,
                sender: incoming.src,
                ifindex: incoming.ifindex,
                previous_seq: Some(previous_seq),
                seq: Some(header.seq),
                previous_timestamp_us: Some(previous_ts),
                timestamp_us: Some(header.ts_usec),
            }));
        }
        SeqVerdict::Gap { first, last } => {
            let count = last - first + 1;
            ctx.stats.records_lost += count;
            sender.tally.records_lost += count;
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
        SeqVerdict::Late => ctx.stats.late += 1,
        SeqVerdict::First | SeqVerdict::Next | SeqVerdict::Same => {}
    }
    verdict
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
    stats.bad_escapes += bad as u64;
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
        if let Some(prev) = sender.plain_ts
            && ts.saturating_add(ctx.config.backstep_us()) < prev
        {
            ctx.stats.reboots += 1;
            sender.boot.reset();
            sender.panic.reset();
            out.push(Event::Rebooted(Rebooted {
                received: lines.received,
                sender: sender.addr,
                ifindex: lines.ifindex,
                previous_seq: None,
                seq: None,
                previous_timestamp_us: Some(prev),
                timestamp_us: Some(ts),
            }));
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
    if let Some(ts) = record.timestamp_us {
        record.kernel_time = sender.boot.observe(record.received, ts);
    }
    if let Some(id) = record.sysdata.msgid {
        msgid_check(sender, &record, id, ctx, out);
    }
    if record.format == Format::Extended {
        if let Some(held) = sender.held.take() {
            let joins = record.seq == Some(held.next_seq)
                && held.record.text.len() + record.text.len() <= ctx.config.max_continuation_bytes;
            if joins {
                ctx.stats.continuations_joined += 1;
                let mut joined = held.record;
                join(&mut joined, record);
                if matches!(joined.cont, ContFlag::Cont | ContFlag::Plus) {
                    let next_seq = joined.seq.map_or(0, |s| s.saturating_add(1));
                    sender.held = Some(Held {
                        record: joined,
                        next_seq,
                        deadline: now + ctx.config.continuation_timeout,
                    });
                } else {
                    emit(sender, joined, ctx, out);
                }
                return;
            }
            emit(sender, held.record, ctx, out);
        }
        match record.cont {
            ContFlag::Cont => {
                record.flags.continued = true;
                let next_seq = record.seq.map_or(0, |s| s.saturating_add(1));
                sender.held = Some(Held {
                    record,
                    next_seq,
                    deadline: now + ctx.config.continuation_timeout,
                });
                return;
            }
            ContFlag::Plus => record.flags.continued = true,
            ContFlag::None | ContFlag::Unknown(_) => {}
        }
    }
    emit(sender, record, ctx, out);
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
        return;
    };
    let expected = prev.wrapping_add(1);
    let gap = id.wrapping_sub(expected);
    // Half the u32 range ahead is a gap, the other half behind is a late or repeated message.
    if gap >= 1 << 31 {
        return;
    }
    if gap > 0 {
        ctx.stats.msgid_lost += u64::from(gap);
        sender.tally.msgid_lost += u64::from(gap);
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
}

/// Marks crash reports, counts, and hands the record out.
fn emit(sender: &mut Sender, mut record: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Event>) {
    sender
        .panic
        .mark(&mut record, ctx.config.panic_context, ctx.next_panic_event);
    ctx.stats.records += 1;
    sender.tally.records += 1;
    if record.flags.panic.is_some_and(|p| p.begins) {
        ctx.stats.panics += 1;
        sender.tally.panics += 1;
    }
    if record.flags.incomplete.is_some() {
        ctx.stats.incomplete_records += 1;
    }
    if record.flags.partial {
        ctx.stats.partial_lines += 1;
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
        ctx.stats.continuation_timeouts += 1;
        emit(sender, held.record, ctx, out);
    }
}

/// Emits a sender's held continuation and pending plain bytes.
fn flush_sender(sender: &mut Sender, now: Instant, ctx: &mut Ctx<'_>, out: &mut Vec<Event>) {
    if let Some(held) = sender.held.take() {
        emit(sender, held.record, ctx, out);
    }
    let mut lines = Vec::new();
    sender.plain.flush(&mut lines);
    for l in lines {
        plain_record(sender, &l, now, ctx, out);
    }
}

#[cfg(test)]
mod tests;
