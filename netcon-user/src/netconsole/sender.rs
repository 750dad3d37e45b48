//! Everything the decoder keeps about one sender: duplicate history, sequence tracking, boot
//! estimate, panic attribution, plain line assembly and a held continuation record.

use std::net::SocketAddr;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::boot::BootEstimate;
use super::dups::DupHistory;
use super::panic::PanicTracker;
use super::plain::LineAssembler;
use super::record::Record;
use super::seq::SeqTracker;
#[cfg(doc)]
use super::table::SenderTable;

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
