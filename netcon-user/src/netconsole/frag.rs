//! `ncfrag` reassembly, in the style of smoltcp's `PacketAssembler` (`src/iface/fragmentation.rs`):
//! byte ranges rather than sentinel bytes, a deadline per entry, bounded entries and bytes.
//!
//! When the extended message (`[release,]header;` + body + userdata + sysdata) does not fit in
//! one 1000-byte payload (`MAX_PRINT_CHUNK`), `drivers/net/netconsole.c` sends chunks of the body,
//! each after a copy of the header with `,ncfrag=<off>/<total>` added. `<total>` is the length of
//! the escaped body stream, `<off>` the chunk's offset in it. Chunks arrive in order within
//! microseconds in practice, but nothing here relies on that: any order, duplicates and agreeing
//! overlaps are accepted; a disagreeing overlap is reported and the first bytes kept.
//!
//! Entries are keyed by sender, seq and kernel timestamp, so a rebooted sender reusing a seq does
//! not mix two records. All entries share one budget of entries and bytes, across senders: when a
//! new entry does not fit, the oldest entries are evicted (and handed back, so that what arrived
//! is still emitted, marked incomplete).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::extended::FragmentHeader;
use super::record::Record;

/// Why a fragment cannot be placed. The datagram is reported as malformed; the entry, if any,
/// is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FragError {
    /// `<total>` is 0: no body to cut.
    #[error("total is 0")]
    ZeroTotal,
    /// `<total>` is above the configured cap (memory would be reserved for it).
    #[error("total {total} is above the cap of {max} bytes")]
    TotalTooLarge {
        /// The announced total.
        total: usize,
        /// The cap.
        max: usize,
    },
    /// `<off>` is at or beyond `<total>`.
    #[error("offset {offset} is not below total {total}")]
    OffsetBeyondTotal {
        /// The offset.
        offset: usize,
        /// The total.
        total: usize,
    },
    /// The chunk runs past `<total>`.
    #[error("chunk of {len} bytes at offset {offset} runs past total {total}")]
    ChunkOverrun {
        /// The offset.
        offset: usize,
        /// The chunk's length.
        len: usize,
        /// The total.
        total: usize,
    },
    /// No bytes after the header (the kernel never sends an empty chunk).
    #[error("empty chunk at offset {offset}")]
    EmptyChunk {
        /// The offset.
        offset: usize,
    },
    /// Another fragment of the same record announced a different total.
    #[error("total {found} differs from the {expected} announced before")]
    TotalMismatch {
        /// Total of the first fragment.
        expected: usize,
        /// Total of this one.
        found: usize,
    },
    /// Bytes already received differ from this chunk's bytes at the same place.
    #[error("chunk of {len} bytes at offset {offset} disagrees with bytes already received")]
    ConflictingOverlap {
        /// The offset.
        offset: usize,
        /// The chunk's length.
        len: usize,
    },
    /// The entry would have more separate byte ranges than allowed.
    #[error("more than {max} separate byte ranges")]
    TooManyRanges {
        /// The bound.
        max: usize,
    },
}

/// Bounds and timeout of the assembler (from [`super::DecoderConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragLimits {
    /// Largest `<total>` accepted, bytes.
    pub max_total: usize,
    /// Entries pending at once, all senders together.
    pub max_entries: usize,
    /// Bytes reserved by pending entries, all senders together.
    pub max_bytes: usize,
    /// Separate byte ranges per entry.
    pub max_ranges: usize,
    /// Time from an entry's first fragment to its deadline.
    pub timeout: Duration,
}

/// Identifies the record a fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Sender address and port.
    pub sender: SocketAddr,
    /// printk sequence number.
    pub seq: u64,
    /// Kernel timestamp, microseconds.
    pub ts_usec: u64,
}

/// One fragment to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// Which record it belongs to.
    pub key: FragKey,
    /// Where it goes.
    pub header: FragmentHeader,
    /// Its bytes (escaped body).
    pub chunk: &'a [u8],
}

/// An entry that left the assembler: complete, timed out, or evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    /// Which record.
    pub key: FragKey,
    /// The record as built from the first fragment's header, with no text yet.
    pub head: Record,
    /// The escaped body: the received ranges in order, holes left out.
    pub body: Vec<u8>,
    /// Bytes never received.
    pub missing: usize,
    /// The announced total.
    pub total: usize,
    /// Fragments that contributed.
    pub fragments: u32,
}

#[derive(Debug)]
struct Entry {
    key: FragKey,
    head: Record,
    buf: Vec<u8>,
    /// Received byte ranges, `start..end`, sorted, neither overlapping nor touching.
    ranges: Vec<(usize, usize)>,
    deadline: Instant,
    /// When its first fragment arrived.
    since: Instant,
    /// Creation order, for evicting the oldest.
    order: u64,
    fragments: u32,
    /// What [`Entry::held_bytes`] said when last counted into [`Assembler::held_bytes`].
    charged: usize,
}

impl Entry {
    /// Bytes this entry holds: the struct, the body buffer, the ranges, the record skeleton.
    fn held_bytes(&self) -> usize {
        size_of::<Self>()
            + self.buf.capacity()
            + self.ranges.capacity() * size_of::<(usize, usize)>()
            + self.head.held_bytes()
    }

    fn received(&self) -> usize {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    fn is_complete(&self) -> bool {
        matches!(self.ranges.as_slice(), [(0, end)] if *end == self.buf.len())
    }

    fn into_reassembled(self) -> Reassembled {
        let total = self.buf.len();
        let missing = total.saturating_sub(self.received());
        let body = if missing == 0 {
            self.buf
        } else {
            let mut body = Vec::with_capacity(total - missing);
            for &(s, e) in &self.ranges {
                body.extend_from_slice(self.buf.get(s..e).unwrap_or_default());
            }
            body
        };
        Reassembled {
            key: self.key,
            head: self.head,
            body,
            missing,
            total,
            fragments: self.fragments,
        }
    }

    /// Places `chunk` at `offset` (already checked against the total). Overlaps must agree.
    fn insert(&mut self, offset: usize, chunk: &[u8], max_ranges: usize) -> Result<(), FragError> {
        let end = offset + chunk.len();
        for &(s, e) in &self.ranges {
            if s < end && e > offset {
                let (os, oe) = (s.max(offset), e.min(end));
                if self.buf.get(os..oe) != chunk.get(os - offset..oe - offset) {
                    return Err(FragError::ConflictingOverlap {
                        offset,
                        len: chunk.len(),
                    });
                }
            }
        }
        // Merge the new range with every range it overlaps or touches.
        let mut merged = (offset, end);
        let mut ranges = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &(s, e) in &self.ranges {
            if e < merged.0 {
                ranges.push((s, e));
            } else if s > merged.1 {
                if !placed {
                    ranges.push(merged);
                    placed = true;
                }
                ranges.push((s, e));
            } else {
                merged = (merged.0.min(s), merged.1.max(e));
            }
        }
        if !placed {
            ranges.push(merged);
        }
        if ranges.len() > max_ranges {
            return Err(FragError::TooManyRanges { max: max_ranges });
        }
        if let Some(dst) = self.buf.get_mut(offset..end) {
            dst.copy_from_slice(chunk);
        }
        self.ranges = ranges;
        self.fragments = self.fragments.saturating_add(1);
        Ok(())
    }
}

/// Pending `ncfrag` entries of all senders.
#[derive(Debug, Default)]
pub struct Assembler {
    entries: Vec<Entry>,
    bytes: usize,
    /// Sum of the entries' [`Entry::held_bytes`].
    held: usize,
    next_order: u64,
}

impl Assembler {
    /// An empty assembler.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries pending.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes reserved by pending entries.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes held by pending entries, bookkeeping included (for the memory budget).
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// When the oldest pending entry's first fragment arrived.
    #[must_use]
    pub fn oldest_since(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.since).min()
    }

    /// Checks a fragment against its header alone, before any state is touched.
    ///
    /// # Errors
    /// [`FragError`] for a zero or oversized total, an offset at or past the total, an empty
    /// chunk, or a chunk that runs past the total.
    pub fn check(
        limits: &FragLimits,
        frag: FragmentHeader,
        chunk_len: usize,
    ) -> Result<(), FragError> {
        let FragmentHeader { offset, total } = frag;
        if total == 0 {
            return Err(FragError::ZeroTotal);
        }
        if total > limits.max_total {
            return Err(FragError::TotalTooLarge {
                total,
                max: limits.max_total,
            });
        }
        if offset >= total {
            return Err(FragError::OffsetBeyondTotal { offset, total });
        }
        if chunk_len == 0 {
            return Err(FragError::EmptyChunk { offset });
        }
        if offset.checked_add(chunk_len).is_none_or(|end| end > total) {
            return Err(FragError::ChunkOverrun {
                offset,
                len: chunk_len,
                total,
            });
        }
        Ok(())
    }

    /// Adds one fragment. `head` builds the record skeleton when this is the entry's first
    /// fragment. Returns the entry once complete. Entries evicted to make room for a new one are
    /// appended to `evicted`, oldest first.
    ///
    /// # Errors
    /// [`FragError`] when the fragment cannot be placed; nothing is changed then.
    pub fn add(
        &mut self,
        limits: &FragLimits,
        now: Instant,
        fragment: Fragment<'_>,
        head: impl FnOnce() -> Record,
        evicted: &mut Vec<Reassembled>,
    ) -> Result<Option<Reassembled>, FragError> {
        let Fragment {
            key,
            header: frag,
            chunk,
        } = fragment;
        Self::check(limits, frag, chunk.len())?;
        let pos = if let Some(pos) = self.entries.iter().position(|e| e.key == key) {
            let expected = self.entries.get(pos).map_or(frag.total, |e| e.buf.len());
            if expected != frag.total {
                return Err(FragError::TotalMismatch {
                    expected,
                    found: frag.total,
                });
            }
            pos
        } else {
            {
                // A lone entry may need more than the whole budget when limits are odd; it is
                // still taken, so the bound is max_bytes plus one max_total.
                while !self.entries.is_empty()
                    && (self.entries.len() >= limits.max_entries.max(1)
                        || self.bytes + frag.total > limits.max_bytes)
                {
                    match self.evict_oldest() {
                        Some(old) => evicted.push(old),
                        None => break,
                    }
                }
                let order = self.next_order;
                self.next_order += 1;
                self.entries.push(Entry {
                    key,
                    head: head(),
                    buf: vec![0; frag.total],
                    ranges: Vec::new(),
                    deadline: now + limits.timeout,
                    since: now,
                    order,
                    fragments: 0,
                    charged: 0,
                });
                self.bytes += frag.total;
                self.entries.len() - 1
            }
        };
        let Some(entry) = self.entries.get_mut(pos) else {
            return Ok(None);
        };
        let fresh = entry.ranges.is_empty();
        if let Err(e) = entry.insert(frag.offset, chunk, limits.max_ranges.max(1)) {
            if fresh {
                // Do not leave an empty entry behind a rejected first fragment.
                self.remove(pos);
            }
            return Err(e);
        }
        let entry_bytes = entry.held_bytes();
        self.held = self.held - entry.charged + entry_bytes;
        entry.charged = entry_bytes;
        if entry.is_complete() {
            return Ok(self.remove(pos).map(Entry::into_reassembled));
        }
        Ok(None)
    }

    /// The earliest deadline of a pending entry.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.deadline).min()
    }

    /// Removes the entries whose deadline is at or before `now`, oldest first.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Reassembled>) {
        self.drain_where(|e| e.deadline <= now, out);
    }

    /// Removes every entry of `sender`, oldest first.
    pub fn drain_sender(&mut self, sender: SocketAddr, out: &mut Vec<Reassembled>) {
        self.drain_where(|e| e.key.sender == sender, out);
    }

    /// Removes every entry, oldest first.
    pub fn drain_all(&mut self, out: &mut Vec<Reassembled>) {
        self.drain_where(|_| true, out);
    }

    fn drain_where(&mut self, pred: impl Fn(&Entry) -> bool, out: &mut Vec<Reassembled>) {
        if !self.entries.iter().any(&pred) {
            return;
        }
        let (mut gone, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(&pred);
        self.entries = kept;
        gone.sort_by_key(|e| e.order);
        for e in gone {
            self.bytes = self.bytes.saturating_sub(e.buf.len());
            self.held = self.held.saturating_sub(e.charged);
            out.push(e.into_reassembled());
        }
    }

    /// Removes the oldest entry, to make room.
    pub fn evict_oldest(&mut self) -> Option<Reassembled> {
        let pos = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.order)
            .map(|(i, _)| i)?;
        self.remove(pos).map(Entry::into_reassembled)
    }

    fn remove(&mut self, pos: usize) -> Option<Entry> {
        if pos >= self.entries.len() {
            return None;
        }
        let e = self.entries.swap_remove(pos);
        self.bytes = self.bytes.saturating_sub(e.buf.len());
        self.held = self.held.saturating_sub(e.charged);
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use chrono::DateTime;

    use super::*;
    use crate::netconsole::record::{ContFlag, Flags, RecordFormat, Sysdata};

    fn limits() -> FragLimits {
        FragLimits {
            max_total: 1024,
            max_entries: 4,
            max_bytes: 4096,
            max_ranges: 8,
            timeout: Duration::from_secs(1),
        }
    }

    fn key(seq: u64) -> FragKey {
        FragKey {
            sender: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10)), 6665),
            seq,
            ts_usec: 42,
        }
    }

    fn head() -> Record {
        Record {
            received: DateTime::UNIX_EPOCH,
            sender: key(0).sender,
            ifindex: 1,
            format: RecordFormat::Extended,
            priority: None,
            seq: None,
            timestamp_us: None,
            kernel_time: None,
            release: None,
            caller: None,
            cont: ContFlag::None,
            header_extra: Vec::new(),
            text: Vec::new(),
            fields: Vec::new(),
            sysdata: Sysdata::default(),
            flags: Flags::default(),
        }
    }

    fn fragment(key: FragKey, offset: usize, total: usize, chunk: &[u8]) -> Fragment<'_> {
        Fragment {
            key,
            header: FragmentHeader { offset, total },
            chunk,
        }
    }

    fn add(
        a: &mut Assembler,
        now: Instant,
        seq: u64,
        offset: usize,
        total: usize,
        chunk: &[u8],
    ) -> Result<Option<Reassembled>, FragError> {
        let mut evicted = Vec::new();
        let r = a.add(
            &limits(),
            now,
            fragment(key(seq), offset, total, chunk),
            head,
            &mut evicted,
        );
        assert!(evicted.is_empty());
        r
    }

    #[test]
    fn in_order() {
        let (mut a, now) = (Assembler::new(), Instant::now());
        assert_eq!(add(&mut a, now, 1, 0, 10, b"hello"), Ok(None));
        assert!(a.held_bytes() >= 10 + size_of::<Record>());
        assert_eq!(a.oldest_since(), Some(now));
        let done = add(&mut a, now, 1, 5, 10, b"world").unwrap().unwrap();
        assert_eq!(a.held_bytes(), 0);
        assert_eq!(done.body, b"helloworld");
        assert_eq!((done.missing, done.total, done.fragments), (0, 10, 2));
        assert!(a.is_empty());
        assert_eq!(a.bytes(), 0);
    }

    #[test]
    fn any_order_duplicates_and_agreeing_overlaps() {
        let (mut a, now) = (Assembler::new(), Instant::now());
        assert_eq!(add(&mut a, now, 1, 6, 10, b"6789"), Ok(None));
        assert_eq!(add(&mut a, now, 1, 6, 10, b"6789"), Ok(None));
        assert_eq!(add(&mut a, now, 1, 4, 10, b"4567"), Ok(None));
        let done = add(&mut a, now, 1, 0, 10, b"01234").unwrap().unwrap();
        assert_eq!(done.body, b"0123456789");
        assert_eq!(done.fragments, 4);
    }

    #[test]
    fn conflicting_overlap_is_rejected_and_first_bytes_kept() {
        let (mut a, now) = (Assembler::new(), Instant::now());
        assert_eq!(add(&mut a, now, 1, 0, 6, b"abcd"), Ok(None));
        assert_eq!(
            add(&mut a, now, 1, 2, 6, b"XXef"),
            Err(FragError::ConflictingOverlap { offset: 2, len: 4 })
        );
        let done = add(&mut a, now, 1, 2, 6, b"cdef").unwrap().unwrap();
        assert_eq!(done.body, b"abcdef");
    }

    #[test]
    fn zero_total() {
        let mut a = Assembler::new();
        assert_eq!(
            add(&mut a, Instant::now(), 1, 0, 0, b"x"),
            Err(FragError::ZeroTotal)
        );
        assert!(a.is_empty());
    }

    #[test]
    fn huge_total() {
        let mut a = Assembler::new();
        assert_eq!(
            add(&mut a, Instant::now(), 1, 0, usize::MAX, b"x"),
            Err(FragError::TotalTooLarge {
                total: usize::MAX,
                max: 1024
            })
        );
        assert_eq!(a.bytes(), 0);
    }

    #[test]
    fn offset_at_or_beyond_total() {
        let mut a = Assembler::new();
        for offset in [10, 11, usize::MAX] {
            assert_eq!(
                add(&mut a, Instant::now(), 1, offset, 10, b"x"),
                Err(FragError::OffsetBeyondTotal { offset, total: 10 })
            );
        }
    }

    #[test]
    fn chunk_past_total() {
        let mut a = Assembler::new();
        assert_eq!(
            add(&mut a, Instant::now(), 1, 8, 10, b"xyz"),
            Err(FragError::ChunkOverrun {
                offset: 8,
                len: 3,
                total: 10
            })
        );
        assert!(a.is_empty());
    }

    #[test]
    fn empty_chunk() {
        let mut a = Assembler::new();
        assert_eq!(
            add(&mut a, Instant::now(), 1, 3, 10, b""),
            Err(FragError::EmptyChunk { offset: 3 })
        );
    }

    #[test]
    fn total_mismatch() {
        let (mut a, now) = (Assembler::new(), Instant::now());
        assert_eq!(add(&mut a, now, 1, 0, 10, b"abc"), Ok(None));
        assert_eq!(
            add(&mut a, now, 1, 3, 12, b"def"),
            Err(FragError::TotalMismatch {
                expected: 10,
                found: 12
            })
        );
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn too_many_ranges() {
        let (mut a, now) = (Assembler::new(), Instant::now());
        for i in 0..8 {
            assert_eq!(add(&mut a, now, 1, i * 2, 100, b"x"), Ok(None));
        }
        assert_eq!(
            add(&mut a, now, 1, 50, 100, b"x"),
            Err(FragError::TooManyRanges { max: 8 })
        );
        // Filling a hole merges ranges and is still accepted.
        assert_eq!(add(&mut a, now, 1, 1, 100, b"y"), Ok(None));
    }

    #[test]
    fn expiry_emits_what_arrived_with_the_missing_count() {
        let (mut a, t0) = (Assembler::new(), Instant::now());
        assert_eq!(add(&mut a, t0, 7, 0, 10, b"abc"), Ok(None));
        assert_eq!(add(&mut a, t0, 7, 7, 10, b"hij"), Ok(None));
        assert_eq!(a.next_deadline(), Some(t0 + Duration::from_secs(1)));
        let mut out = Vec::new();
        a.expire(t0 + Duration::from_millis(999), &mut out);
        assert!(out.is_empty());
        a.expire(t0 + Duration::from_secs(1), &mut out);
        let [r] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(
            (r.body.as_slice(), r.missing, r.total),
            (&b"abchij"[..], 4, 10)
        );
        assert!(a.is_empty());
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn full_table_evicts_the_oldest_first() {
        let (mut a, now) = (Assembler::new(), Instant::now());
        for seq in 0..4 {
            assert_eq!(add(&mut a, now, seq, 0, 10, b"a"), Ok(None));
        }
        let mut evicted = Vec::new();
        let r = a.add(
            &limits(),
            now,
            fragment(key(9), 0, 10, b"b"),
            head,
            &mut evicted,
        );
        assert_eq!(r, Ok(None));
        assert_eq!(evicted.iter().map(|r| r.key.seq).collect::<Vec<_>>(), [0]);
        assert_eq!(evicted[0].missing, 9);
        assert_eq!(a.len(), 4);
    }

    #[test]
    fn byte_budget_evicts_the_oldest_first() {
        let (mut a, now) = (Assembler::new(), Instant::now());
        let lim = FragLimits {
            max_bytes: 2500,
            ..limits()
        };
        let mut evicted = Vec::new();
        for seq in 0..3 {
            let r = a.add(
                &lim,
                now,
                fragment(key(seq), 0, 1000, b"a"),
                head,
                &mut evicted,
            );
            assert_eq!(r, Ok(None));
        }
        assert_eq!(evicted.iter().map(|r| r.key.seq).collect::<Vec<_>>(), [0]);
        assert_eq!(a.len(), 2);
        assert!(a.bytes() <= lim.max_bytes);
    }

    #[test]
    fn drain_sender_takes_only_that_sender() {
        let (mut a, now) = (Assembler::new(), Instant::now());
        assert_eq!(add(&mut a, now, 0, 0, 10, b"a"), Ok(None));
        let other = FragKey {
            sender: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 11)), 6665),
            ..key(0)
        };
        let mut evicted = Vec::new();
        a.add(
            &limits(),
            now,
            fragment(other, 0, 10, b"b"),
            head,
            &mut evicted,
        )
        .unwrap();
        let mut out = Vec::new();
        a.drain_sender(key(0).sender, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(a.len(), 1);
        a.drain_all(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(a.bytes(), 0);
    }
}
