//! The verifier: reads a receiver's output (netcon-sniff's lines, socat's raw payloads), finds
//! the [`Token`]s in it, and counts per sender what arrived: received, missing, duplicated, out
//! of order; and, when asked, the latency of each record from the sender's stamp to the moment
//! the output was read.
//!
//! It needs no knowledge of the receiver's format: a record is received when the tokens of all
//! its fragments have been seen (in one line after netcon's reassembly, or spread over socat's
//! output), incomplete when only some were. What a run sent follows from its
//! [`Expectation`] (records go round-robin over the senders, see [`crate::load`]).

use std::fmt::Write as _;

use crate::record::{Token, tokens};

/// [`Expectation::records`] of a run that has not finished.
pub const UNKNOWN: u64 = u64::MAX;
/// Most records one verifier tracks: 2^28 (256 MiB of state). A token beyond it is counted as
/// unexpected rather than grown into.
pub const MAX_RECORDS: u64 = 1 << 28;

/// What one load run sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation {
    /// Its run id.
    pub run: u32,
    /// Simulated senders.
    pub senders: u32,
    /// Every sender's first sequence number.
    pub seq_start: u64,
    /// Records sent, all senders together (record `i` is sender `i % senders`'s
    /// `seq_start + i / senders`). [`UNKNOWN`] while the run is still going (a verifier that
    /// reads a receiver live); [`Verifier::set_records`] fills it in.
    pub records: u64,
    /// Fragments of each record that were sent (1 unfragmented; with `--first-fragment-only` the
    /// record was sent as 1 of N and can never complete).
    pub fragments: u8,
}

impl Expectation {
    /// Records sender `k` sent.
    #[must_use]
    pub fn records_of(&self, sender: u32) -> u64 {
        let h = u64::from(self.senders);
        self.records / h + u64::from(u64::from(sender) < self.records % h)
    }

    fn index(&self, token: &Token) -> Option<usize> {
        if token.run != self.run || token.sender >= self.senders || token.seq < self.seq_start {
            return None;
        }
        let i = (token.seq - self.seq_start)
            .checked_mul(u64::from(self.senders))?
            .checked_add(u64::from(token.sender))?;
        if i < self.records && i < MAX_RECORDS {
            usize::try_from(i).ok()
        } else {
            None
        }
    }
}

/// Per-sender counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderCounts {
    /// Records it sent.
    pub expected: u64,
    /// Records seen whole (all fragments).
    pub received: u64,
    /// Records of which only some fragments were seen.
    pub incomplete: u64,
    /// Records of which nothing was seen.
    pub missing: u64,
    /// Tokens seen again (a record or fragment printed twice).
    pub duplicated: u64,
    /// Records first seen after a later record of the same sender.
    pub out_of_order: u64,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    /// Records timed.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of `samples_ns` (sorted in place).
    #[must_use]
    pub fn of(samples_ns: &mut [u64]) -> Option<Latency> {
        if samples_ns.is_empty() {
            return None;
        }
        samples_ns.sort_unstable();
        let at = |q: f64| {
            // Nearest rank.
            let n = samples_ns.len() as u64;
            let rank = crate::f64_count((q * crate::count_f64(n)).ceil()).clamp(1, n);
            crate::count_f64(samples_ns[usize::try_from(rank - 1).unwrap_or(0)]) / 1000.0
        };
        Some(Latency {
            count: samples_ns.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: crate::count_f64(samples_ns[samples_ns.len() - 1]) / 1000.0,
        })
    }
}

/// All senders together.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    /// Totals over the senders.
    pub totals: SenderCounts,
    /// Senders that lost at least one record (missing or incomplete).
    pub senders_with_loss: u32,
    /// Tokens of other runs (a receiver printing an earlier run late).
    pub foreign: u64,
    /// Tokens of this run outside what it sent (a bug in the generator or the receiver).
    pub unexpected: u64,
    /// Latency, when timed.
    pub latency: Option<Latency>,
}

impl Summary {
    /// Records lost (missing or incomplete) over records sent.
    #[must_use]
    pub fn loss_ratio(&self) -> f64 {
        if self.totals.expected == 0 {
            return 0.0;
        }
        crate::count_f64(self.totals.missing + self.totals.incomplete)
            / crate::count_f64(self.totals.expected)
    }

    /// One line for logs.
    #[must_use]
    pub fn to_line(&self) -> String {
        let t = &self.totals;
        let mut s = format!(
            "expected={} received={} missing={} incomplete={} duplicated={} out_of_order={} \
             loss={:.4}% senders_with_loss={} foreign={} unexpected={}",
            t.expected,
            t.received,
            t.missing,
            t.incomplete,
            t.duplicated,
            t.out_of_order,
            self.loss_ratio() * 100.0,
            self.senders_with_loss,
            self.foreign,
            self.unexpected
        );
        if let Some(l) = self.latency {
            let _ = write!(
                s,
                " latency_us p50={:.1} p99={:.1} p99.9={:.1} max={:.1} (n={})",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.count
            );
        }
        s
    }
}

/// Counts one run's records in a stream of output.
#[derive(Debug)]
pub struct Verifier {
    expect: Expectation,
    full: u8,
    /// Fragments seen per record, one bit each, indexed as in [`Expectation::index`].
    seen: Vec<u8>,
    /// Highest sequence number seen per sender, plus one (0: none yet).
    highest: Vec<u64>,
    duplicated: Vec<u32>,
    out_of_order: Vec<u32>,
    complete: u64,
    foreign: u64,
    unexpected: u64,
    latencies: Option<Vec<u64>>,
    carry: Vec<u8>,
    last_complete_ns: Option<u64>,
}

impl Verifier {
    /// A verifier for `expect`; with `timed`, it keeps every record's latency.
    ///
    /// # Panics
    /// If the run has more than [`MAX_RECORDS`] records.
    #[must_use]
    pub fn new(expect: Expectation, timed: bool) -> Self {
        assert!(
            expect.records == UNKNOWN || expect.records <= MAX_RECORDS,
            "at most {MAX_RECORDS} records per run"
        );
        let records = usize::try_from(expect.records.min(1 << 20)).unwrap_or(0);
        let senders = usize::try_from(expect.senders).unwrap_or(0);
        let full = u8::try_from((1u16 << expect.fragments.clamp(1, 8)) - 1).unwrap_or(u8::MAX);
        Self {
            expect,
            full,
            seen: vec![0; records],
            highest: vec![0; senders],
            duplicated: vec![0; senders],
            out_of_order: vec![0; senders],
            complete: 0,
            foreign: 0,
            unexpected: 0,
            latencies: timed.then(|| Vec::with_capacity(records.min(1 << 24))),
            carry: Vec::new(),
            last_complete_ns: None,
        }
    }

    /// What this verifier expects.
    #[must_use]
    pub fn expectation(&self) -> Expectation {
        self.expect
    }

    /// Takes the next bytes of output, read at `read_ns` (`CLOCK_MONOTONIC`). Lines may be cut
    /// anywhere between calls.
    pub fn feed(&mut self, bytes: &[u8], read_ns: u64) {
        let Some(last_newline) = memchr::memrchr(b'\n', bytes) else {
            self.carry.extend_from_slice(bytes);
            return;
        };
        let (whole, rest) = bytes.split_at(last_newline + 1);
        if self.carry.is_empty() {
            self.scan(whole, read_ns);
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(whole);
            self.scan(&carry, read_ns);
            carry.clear();
            self.carry = carry;
        }
        self.carry.extend_from_slice(rest);
    }

    /// Takes output that ends without a newline as complete (the end of a file).
    pub fn finish(&mut self, read_ns: u64) {
        let carry = std::mem::take(&mut self.carry);
        self.scan(&carry, read_ns);
    }

    fn scan(&mut self, text: &[u8], read_ns: u64) {
        for token in tokens(text) {
            self.token(&token, read_ns);
        }
    }

    fn token(&mut self, token: &Token, read_ns: u64) {
        if token.run != self.expect.run {
            self.foreign += 1;
            return;
        }
        let Some(i) = self.expect.index(token) else {
            self.unexpected += 1;
            return;
        };
        let sender = token.sender as usize;
        if i >= self.seen.len() {
            let grown = (i + 1).max(self.seen.len() * 2);
            self.seen.resize(grown, 0);
        }
        let bit = 1u8 << token.frag.min(7);
        let before = self.seen[i];
        if before & bit != 0 {
            self.duplicated[sender] += 1;
            return;
        }
        self.seen[i] = before | bit;
        if before == 0 {
            // First sight of this record: is a later one of its sender already here?
            if token.seq + 1 < self.highest[sender] {
                self.out_of_order[sender] += 1;
            }
            self.highest[sender] = self.highest[sender].max(token.seq + 1);
        }
        if self.seen[i] == self.full {
            self.complete += 1;
            self.last_complete_ns = Some(read_ns);
            if let Some(l) = &mut self.latencies {
                l.push(read_ns.saturating_sub(token.sent_ns));
            }
        }
    }

    /// Records seen whole so far.
    #[must_use]
    pub fn complete(&self) -> u64 {
        self.complete
    }

    /// Sets the number of records the run sent, once it is known. Tokens already seen beyond
    /// it count as unexpected.
    pub fn set_records(&mut self, records: u64) {
        self.expect.records = records;
        let records = usize::try_from(records).unwrap_or(usize::MAX);
        if self.seen.len() > records {
            for &m in &self.seen[records..] {
                self.unexpected += u64::from(m.count_ones());
                self.complete -= u64::from(m == self.full);
            }
            self.seen.truncate(records);
        }
        self.seen.resize(records, 0);
    }

    /// Whether every record sent has been seen whole.
    #[must_use]
    pub fn all_received(&self) -> bool {
        self.complete == self.expect.records
    }

    /// When the last record was completed (`CLOCK_MONOTONIC` ns).
    #[must_use]
    pub fn last_complete_ns(&self) -> Option<u64> {
        self.last_complete_ns
    }

    /// Counts of sender `sender`.
    #[must_use]
    pub fn sender(&self, sender: u32) -> SenderCounts {
        let step = u64::from(self.expect.senders);
        let mut counts = SenderCounts {
            expected: self.expect.records_of(sender),
            duplicated: u64::from(self.duplicated[sender as usize]),
            out_of_order: u64::from(self.out_of_order[sender as usize]),
            ..SenderCounts::default()
        };
        let mut index = u64::from(sender);
        while index < self.expect.records {
            let slot = usize::try_from(index).unwrap_or(usize::MAX);
            match self.seen.get(slot).copied().unwrap_or(0) {
                0 => counts.missing += 1,
                m if m == self.full => counts.received += 1,
                _ => counts.incomplete += 1,
            }
            index += step;
        }
        counts
    }

    /// Counts of every sender, in order.
    #[must_use]
    pub fn senders(&self) -> Vec<SenderCounts> {
        (0..self.expect.senders).map(|k| self.sender(k)).collect()
    }

    /// Totals, with latency percentiles when timed.
    #[must_use]
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            foreign: self.foreign,
            unexpected: self.unexpected,
            ..Summary::default()
        };
        for c in self.senders() {
            let t = &mut s.totals;
            t.expected += c.expected;
            t.received += c.received;
            t.incomplete += c.incomplete;
            t.missing += c.missing;
            t.duplicated += c.duplicated;
            t.out_of_order += c.out_of_order;
            if c.missing + c.incomplete > 0 {
                s.senders_with_loss += 1;
            }
        }
        if let Some(l) = &self.latencies {
            s.latency = Latency::of(&mut l.clone());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(run: u32, sender: u32, seq: u64, sent_ns: u64) -> String {
        let t = Token {
            run,
            sender,
            seq,
            sent_ns,
            frag: 0,
            nfrag: 1,
        };
        format!("2026-01-01T00:00:00.000000Z 10.91.1.{sender} kern.info [ 1.0] {t} xx\n")
    }

    fn expect(senders: u32, records: u64, fragments: u8) -> Expectation {
        Expectation {
            run: 3,
            senders,
            seq_start: 100,
            records,
            fragments,
        }
    }

    #[test]
    fn counts_gaps_duplicates_and_order_per_sender() {
        // Two senders, 3 records each: sender 0 seqs 100..=102, sender 1 the same.
        let mut v = Verifier::new(expect(2, 6, 1), false);
        let mut out = String::new();
        out += &line(3, 0, 100, 0);
        out += &line(3, 0, 102, 0);
        out += &line(3, 0, 101, 0); // late: out of order
        out += &line(3, 0, 101, 0); // again: duplicate
        out += &line(3, 1, 100, 0); // sender 1 misses 101 and 102
        out += &line(2, 1, 101, 0); // another run
        out += &line(3, 1, 103, 0); // never sent
        out += "-- LOST 2 records\n";
        // Cut in the middle of a token.
        let (a, b) = out.split_at(out.len() / 2 + 3);
        v.feed(a.as_bytes(), 10);
        v.feed(b.as_bytes(), 20);
        let s0 = v.sender(0);
        assert_eq!(
            s0,
            SenderCounts {
                expected: 3,
                received: 3,
                incomplete: 0,
                missing: 0,
                duplicated: 1,
                out_of_order: 1
            }
        );
        let s1 = v.sender(1);
        assert_eq!((s1.expected, s1.received, s1.missing), (3, 1, 2));
        let s = v.summary();
        assert_eq!(s.totals.missing, 2);
        assert_eq!(s.senders_with_loss, 1);
        assert_eq!((s.foreign, s.unexpected), (1, 1));
        assert!((s.loss_ratio() - 2.0 / 6.0).abs() < 1e-9);
        assert!(!v.all_received());
    }

    #[test]
    fn uneven_last_round() {
        let e = expect(3, 7, 1);
        assert_eq!(
            (e.records_of(0), e.records_of(1), e.records_of(2)),
            (3, 2, 2)
        );
        let mut v = Verifier::new(e, false);
        for i in 0..7u64 {
            let (sender, seq) = (u32::try_from(i % 3).unwrap(), 100 + i / 3);
            v.feed(line(3, sender, seq, 0).as_bytes(), 0);
        }
        assert!(v.all_received());
        assert_eq!(v.summary().totals.received, 7);
        assert_eq!(v.summary().totals.out_of_order, 0);
    }

    #[test]
    fn fragments_complete_only_together_in_any_layout() {
        let mut v = Verifier::new(expect(1, 2, 3), true);
        let t = |seq, frag| Token {
            run: 3,
            sender: 0,
            seq,
            sent_ns: 1_000,
            frag,
            nfrag: 3,
        };
        // Record 100 reassembled on one line; record 101 spread as socat writes it, one piece
        // missing.
        v.feed(
            format!("x {} a{}b{}\n", t(100, 0), t(100, 1), t(100, 2)).as_bytes(),
            5_000,
        );
        v.feed(format!("{}zz{}", t(101, 0), t(101, 2)).as_bytes(), 6_000);
        v.finish(7_000);
        let s = v.summary();
        assert_eq!(s.totals.received, 1);
        assert_eq!(s.totals.incomplete, 1);
        let l = s.latency.unwrap();
        assert_eq!(l.count, 1);
        assert!((l.max_us - 4.0).abs() < 1e-9);
    }

    #[test]
    fn open_ended_run_gets_its_count_later() {
        let mut v = Verifier::new(expect(2, UNKNOWN, 1), false);
        for (sender, seq) in [(0, 100), (1, 100), (0, 101), (1, 101), (0, 5000)] {
            v.feed(line(3, sender, seq, 0).as_bytes(), 0);
        }
        v.set_records(4);
        let s = v.summary();
        assert_eq!((s.totals.expected, s.totals.received), (4, 4));
        assert_eq!(s.unexpected, 1, "seq 5000 is beyond what was sent");
        assert!(v.all_received());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let l = Latency::of(&mut samples).unwrap();
        assert!((l.p50_us - 500.0).abs() < 1e-9);
        assert!((l.p99_us - 990.0).abs() < 1e-9);
        assert!((l.max_us - 1000.0).abs() < 1e-9);
        assert!(Latency::of(&mut []).is_none());
    }
}
