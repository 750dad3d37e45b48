//! Per-sender state: duplicate suppression, sequence tracking (loss, reboot), the boot-time
//! estimate, panic attribution, plain line assembly and held continuation records; and the
//! bounded table of senders, least recently heard evicted first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::plain::LineAssembler;
use super::record::{PanicKind, PanicMark, Record};

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

/// Texts that begin a crash report (`kernel/panic.c`, `arch/x86/kernel/dumpstack.c`,
/// `arch/x86/kernel/traps.c`, `kernel/watchdog.c`, `lib/bug.c`). Order matters: the soft lockup
/// line also starts with text that contains `BUG:`.
const PANIC_MARKERS: &[(&[u8], PanicKind)] = &[
    (b"Kernel panic - not syncing", PanicKind::Panic),
    (b"---[ end Kernel panic", PanicKind::Panic),
    (b"Oops:", PanicKind::Oops),
    (b"watchdog: BUG: soft lockup", PanicKind::SoftLockup),
    (b"BUG:", PanicKind::Bug),
    (b"kernel BUG at", PanicKind::Bug),
    (
        b"general protection fault",
        PanicKind::GeneralProtectionFault,
    ),
];

/// The line that closes a report (`---[ end trace <id> ]---`, `---[ end Kernel panic ... ]---`).
const PANIC_END: &[u8] = b"---[ end ";

/// Which crash-report marker `text` begins with, if any.
#[must_use]
pub fn panic_marker(text: &[u8]) -> Option<PanicKind> {
    let n = text.iter().take_while(|&&b| b == b' ').count();
    let text = text.get(n..).unwrap_or_default();
    PANIC_MARKERS
        .iter()
        .find(|(m, _)| text.starts_with(m))
        .map(|&(_, k)| k)
}

/// Attributes the records after a crash report's first line to the same report.
#[derive(Debug, Default, Clone, Copy)]
pub struct PanicTracker {
    active: Option<(u64, PanicKind, u32)>,
}

impl PanicTracker {
    /// Marks `record` if it begins a report or follows one (at most `context` records, until a
    /// `---[ end` line). `next_event` numbers new reports.
    pub fn mark(&mut self, record: &mut Record, context: u32, next_event: &mut u64) {
        let marker = panic_marker(&record.text);
        let ends = {
            let n = record.text.iter().take_while(|&&b| b == b' ').count();
            record
                .text
                .get(n..)
                .is_some_and(|t| t.starts_with(PANIC_END))
        };
        let mark = match (self.active, marker) {
            (Some((event, kind, left)), _) if left > 0 => {
                self.active = Some((event, kind, left - 1));
                Some(PanicMark {
                    event,
                    kind,
                    begins: false,
                })
            }
            (_, Some(kind)) => {
                let event = *next_event;
                *next_event += 1;
                self.active = Some((event, kind, context));
                Some(PanicMark {
                    event,
                    kind,
                    begins: true,
                })
            }
            _ => {
                self.active = None;
                None
            }
        };
        if ends {
            self.active = None;
        }
        record.flags.panic = mark;
    }

    /// Forgets an open report (the sender rebooted).
    pub fn reset(&mut self) {
        self.active = None;
    }
}

/// A record with flag `c`, waiting for the record(s) that complete it.
#[derive(Debug)]
pub struct Held {
    /// The record so far.
    pub record: Record,
    /// The seq that continues it.
    pub next_seq: u64,
    /// When it is emitted as it is.
    pub deadline: Instant,
    /// When its first piece arrived (its age, for the memory budget).
    pub since: Instant,
}

/// Everything known about one sender.
#[derive(Debug)]
pub struct Sender {
    /// Address and port.
    pub addr: SocketAddr,
    /// Recent payloads, to drop duplicates.
    pub dups: DupHistory,
    /// Extended mode: highest seq.
    pub seq: SeqTracker,
    /// Last sysdata msgid.
    pub msgid: Option<u32>,
    /// The seq of the record that carried it: a msgid may advance by at most as much as the
    /// seq does, since every message a target sends is one printk record.
    pub msgid_seq: Option<u64>,
    /// Boot time estimate.
    pub boot: BootEstimate,
    /// Open crash report.
    pub panic: PanicTracker,
    /// Plain mode line assembly.
    pub plain: LineAssembler,
    /// Plain mode: latest kernel timestamp, to notice a reboot.
    pub plain_ts: Option<u64>,
    /// Continuation being joined (boxed: most senders hold none, and a record is large).
    pub held: Option<Box<Held>>,
    /// The last record completed from fragments (seq, ts): later copies of its fragments are
    /// duplicates, not the start of a new entry.
    pub last_reassembled: Option<(u64, u64)>,
    /// The deadline of this sender's entry in the decoder's timer heap, if it has one.
    pub timer: Option<Instant>,
    /// What was heard from it, for per-sender metrics.
    pub tally: SenderTally,
    /// Bytes of held state charged to the memory budget for this sender (beyond its table
    /// entry, [`SenderTable::ENTRY_BYTES`]), as of the last accounting.
    pub charged: usize,
    /// This sender's key in the decoder's index of held state by age, if it has one.
    pub aged: Option<Instant>,
}

/// Per-sender counts, kept as long as the sender is tracked (for `--metrics-per-sender`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderTally {
    /// Records emitted.
    pub records: u64,
    /// Records missing according to seq gaps.
    pub records_lost: u64,
    /// Messages missing according to sysdata msgid gaps.
    pub msgid_lost: u64,
    /// Crash reports begun.
    pub panics: u64,
    /// Capture time of its latest datagram.
    pub last_heard: Option<DateTime<Utc>>,
}

impl Sender {
    /// A sender heard for the first time.
    #[must_use]
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            dups: DupHistory::default(),
            seq: SeqTracker::default(),
            msgid: None,
            msgid_seq: None,
            boot: BootEstimate::default(),
            panic: PanicTracker::default(),
            plain: LineAssembler::default(),
            plain_ts: None,
            held: None,
            last_reassembled: None,
            timer: None,
            tally: SenderTally::default(),
            charged: 0,
            aged: None,
        }
    }

    /// Bytes of state this sender holds beyond its table entry: duplicate history, the pending
    /// plain line, the held continuation.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.dups.held_bytes()
            + self.plain.held_bytes()
            + self
                .held
                .as_ref()
                .map_or(0, |h| size_of::<Held>() + h.record.held_bytes())
    }

    /// When the oldest piece of state this sender holds for later (a partial plain line, a
    /// continuation) began.
    #[must_use]
    pub fn pieces_since(&self) -> Option<Instant> {
        match (self.plain.started(), self.held.as_ref().map(|h| h.since)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest of this sender's timers.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        match (
            self.plain.deadline(),
            self.held.as_ref().map(|h| h.deadline),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Slot {
    sender: Option<Sender>,
    prev: usize,
    next: usize,
    /// Datagrams heard from it (saturating).
    heard: u32,
}

/// How many of the least recently heard senders eviction looks through for one heard only once:
/// 16.
const PROBATION_SCAN: usize = 16;

/// Senders by address, at most `capacity`, least recently heard evicted first.
///
/// A slab with an intrusive doubly linked list in recency order, so that hearing from a sender
/// and evicting the stalest are both O(1). Among the [`PROBATION_SCAN`] least recently heard,
/// a sender heard only once goes first: a spray of one-off (typically spoofed) source addresses
/// then evicts its own entries rather than a sender that is actively sending.
#[derive(Debug)]
pub struct SenderTable {
    index: HashMap<SocketAddr, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Most recently heard.
    head: usize,
    /// Least recently heard.
    tail: usize,
    capacity: usize,
}

impl SenderTable {
    /// Bytes one sender's entry takes in the table, whatever it holds: its slot, its index
    /// entry (with the hash map's spare capacity), its timer heap entries (at most two) and its
    /// entry in the decoder's age index. Charged to the memory budget per sender.
    pub const ENTRY_BYTES: usize = size_of::<Slot>()
        + 2 * (size_of::<(SocketAddr, usize)>() + 8)
        + 2 * size_of::<(Instant, SocketAddr)>()
        + 2 * size_of::<(Instant, SocketAddr)>()
        + size_of::<usize>();

    /// An empty table for at most `capacity` senders (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
        }
    }

    /// Senders held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// No senders held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The slot of `addr`, if present.
    #[must_use]
    pub fn find(&self, addr: &SocketAddr) -> Option<usize> {
        self.index.get(addr).copied()
    }

    /// The sender in slot `i`.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Sender> {
        self.slots.get_mut(i)?.sender.as_mut()
    }

    /// The slot of `addr`, marked most recently heard; inserted if new, evicting the least
    /// recently heard sender when full (returned, so that its pending state can be emitted).
    pub fn touch_or_insert(&mut self, addr: SocketAddr) -> (usize, Option<Sender>) {
        if let Some(i) = self.find(&addr) {
            self.unlink(i);
            self.link_front(i);
            if let Some(slot) = self.slots.get_mut(i) {
                slot.heard = slot.heard.saturating_add(1);
            }
            return (i, None);
        }
        let evicted = if self.index.len() >= self.capacity {
            self.pop_victim()
        } else {
            None
        };
        let slot = Slot {
            sender: Some(Sender::new(addr)),
            prev: NIL,
            next: NIL,
            heard: 1,
        };
        let i = if let Some(i) = self.free.pop() {
            if let Some(s) = self.slots.get_mut(i) {
                *s = slot;
            }
            i
        } else {
            self.slots.push(slot);
            self.slots.len() - 1
        };
        self.link_front(i);
        self.index.insert(addr, i);
        (i, evicted)
    }

    /// Iterates over all senders.
    pub fn iter(&self) -> impl Iterator<Item = &Sender> {
        self.slots.iter().filter_map(|s| s.sender.as_ref())
    }

    /// Iterates over all senders, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Sender> {
        self.slots.iter_mut().filter_map(|s| s.sender.as_mut())
    }

    /// Removes the sender to evict: among the [`PROBATION_SCAN`] least recently heard, the
    /// stalest one heard only once, else the least recently heard.
    pub fn pop_victim(&mut self) -> Option<Sender> {
        let mut i = self.tail;
        let mut victim = self.tail;
        for _ in 0..PROBATION_SCAN {
            let Some(slot) = self.slots.get(i) else {
                break;
            };
            if slot.heard <= 1 {
                victim = i;
                break;
            }
            i = slot.prev;
        }
        self.remove_slot(victim)
    }

    fn remove_slot(&mut self, i: usize) -> Option<Sender> {
        if i == NIL {
            return None;
        }
        self.unlink(i);
        let sender = self.slots.get_mut(i)?.sender.take()?;
        self.index.remove(&sender.addr);
        self.free.push(i);
        Some(sender)
    }

    fn unlink(&mut self, i: usize) {
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        let (prev, next) = (slot.prev, slot.next);
        match self.slots.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
        if let Some(slot) = self.slots.get_mut(i) {
            slot.prev = NIL;
            slot.next = NIL;
        }
    }

    fn link_front(&mut self, i: usize) {
        let old_head = self.head;
        if let Some(slot) = self.slots.get_mut(i) {
            slot.prev = NIL;
            slot.next = old_head;
        }
        match self.slots.get_mut(old_head) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

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
    fn short_boot_still_reboots_by_its_clock() {
        // Fewer records than the reorder window, but the clock went back by seconds.
        let mut t = SeqTracker::default();
        t.observe(40, 5_000_000, 128, 1_000_000);
        assert!(matches!(
            t.observe(0, 0, 128, 1_000_000),
            SeqVerdict::Reboot { .. }
        ));
    }

    #[test]
    fn replay_starting_above_the_old_seq_is_a_reboot() {
        let mut t = SeqTracker::default();
        t.observe(40, 50_000_000, 128, 1_000_000);
        assert!(matches!(
            t.observe(5000, 2_000_000, 128, 1_000_000),
            SeqVerdict::Reboot { .. }
        ));
    }

    #[test]
    fn far_below_is_a_reboot() {
        let mut t = SeqTracker::default();
        t.observe(1000, 1000, 128, 1_000_000);
        assert!(matches!(
            t.observe(500, 1000, 128, 1_000_000),
            SeqVerdict::Reboot { .. }
        ));
    }

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

    #[test]
    fn panic_markers() {
        for (text, kind) in [
            (
                &b"Kernel panic - not syncing: Fatal exception"[..],
                PanicKind::Panic,
            ),
            (
                b"---[ end Kernel panic - not syncing: x ]---",
                PanicKind::Panic,
            ),
            (b"Oops: 0002 [#1] PREEMPT SMP NOPTI", PanicKind::Oops),
            (
                b"BUG: kernel NULL pointer dereference, address: 0",
                PanicKind::Bug,
            ),
            (b"kernel BUG at mm/slub.c:42!", PanicKind::Bug),
            (
                b"general protection fault, probably for non-canonical address",
                PanicKind::GeneralProtectionFault,
            ),
            (
                b"watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [a:1]",
                PanicKind::SoftLockup,
            ),
        ] {
            assert_eq!(
                panic_marker(text),
                Some(kind),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(panic_marker(b"RIP: 0010:foo+0x1/0x2"), None);
        assert_eq!(panic_marker(b"a BUG: in the middle"), None);
    }

    #[test]
    fn sender_table_evicts_least_recently_heard() {
        let a = |n: u8| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)), 6665);
        let mut t = SenderTable::new(2);
        let (i1, e) = t.touch_or_insert(a(1));
        assert!(e.is_none());
        assert!(t.touch_or_insert(a(2)).1.is_none());
        // Hear 1 again: 2 is now the stalest.
        let (again, evicted) = t.touch_or_insert(a(1));
        assert!(again == i1 && evicted.is_none());
        let (_, evicted) = t.touch_or_insert(a(3));
        assert_eq!(evicted.map(|s| s.addr), Some(a(2)));
        assert_eq!(t.len(), 2);
        assert!(t.find(&a(2)).is_none());
        // 1 (heard twice) is now the stalest, but 3 was heard only once: 3 goes first.
        let (_, evicted) = t.touch_or_insert(a(4));
        assert_eq!(evicted.map(|s| s.addr), Some(a(3)));
        assert_eq!(t.iter_mut().count(), 2);
        // Between two senders heard more than once, the least recently heard goes.
        t.touch_or_insert(a(4));
        let (_, evicted) = t.touch_or_insert(a(5));
        assert_eq!(evicted.map(|s| s.addr), Some(a(1)));
    }
}
