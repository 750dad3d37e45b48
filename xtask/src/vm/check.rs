//! The assertions, on [`Observed`] whichever output it was read from.
//!
//! Per boot of the guest (boots are told apart by a reboot event from netcon's decoder, or, in
//! the raw reference decoding, by the sequence number or kernel time going back):
//! - every record the guest wrote arrives once, whole, in the order written, and nothing else
//!   carries the boot's run id;
//! - extended mode: each has the level and facility it was written with, rising sequence
//!   numbers, the kernel release exactly when the `r` flag is on, and the long ones were
//!   fragmented (`ncfrag`) and reassembled byte for byte;
//! - extended mode: the sequence numbers of the boot, the kernel's own records included, run
//!   from 0 (the log replay) without a gap: nothing was lost;
//! - no record is incomplete, no datagram malformed, no loss event (netcon's decoder), every
//!   datagram from the guest's address to the configured target;
//! - the second boot of a guest: the sequence numbers start again at 0, and netcon's decoder
//!   says `rebooted` there, once.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::observe::{Item, Observed, Rec};
use super::records::{Kind, Record};

/// What one receiver should have seen.
pub struct Expectation<'a> {
    pub extended: bool,
    /// The guest's `uname -r` when the target has the `r` flag.
    pub release: Option<&'a str>,
    /// `10.N.0.10:6665`.
    pub sender: String,
    /// `10.N.0.1:6666` (or the unowned address).
    pub destination: String,
    pub boots: Vec<BootRecords>,
}

/// The records of one boot (those the guest could write).
pub struct BootRecords {
    pub runid: String,
    pub records: Vec<Record>,
}

/// What passed, for the summary.
#[derive(Debug, Default)]
pub struct Report {
    pub datagrams: usize,
    pub records: usize,
    pub matched: usize,
    pub fragmented: usize,
    /// Per boot, the sequence numbers seen (first, last).
    pub seq_ranges: Vec<Option<(u64, u64)>>,
    pub reboot_events: usize,
}

impl Report {
    /// The sequence numbers seen, per boot: `0..=590 -`.
    pub fn seq_summary(&self) -> String {
        self.seq_ranges
            .iter()
            .map(|r| r.map_or_else(|| "-".to_owned(), |(a, b)| format!("{a}..={b}")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// At most this many failures are listed per receiver.
const MAX_FAILURES: usize = 25;

/// Checks `observed` against `exp`: `Err` lists every failure found.
pub fn check(observed: &Observed, exp: &Expectation<'_>) -> Result<Report, String> {
    let mut f = Failures::default();
    let mut report = Report {
        datagrams: observed.datagrams,
        records: observed.records().count(),
        ..Report::default()
    };
    for (src, dst) in &observed.addresses {
        if *src != exp.sender || *dst != exp.destination {
            f.push(format!(
                "a datagram {src} > {dst}, expected {} > {}",
                exp.sender, exp.destination
            ));
        }
    }
    for item in &observed.items {
        match item {
            Item::Record(r) if r.sender != exp.sender => {
                f.push(format!("a record from {}: {}", r.sender, show(&r.text)));
            }
            Item::Lost {
                kind, first, last, ..
            } => f.push(format!(
                "false loss event: {kind} {first}..={last} (the guest's network is a tap: nothing is lost)"
            )),
            Item::Malformed { what, .. } => f.push(format!("malformed datagram: {what}")),
            _ => {}
        }
    }

    let segments = segment(observed);
    report.reboot_events = observed
        .items
        .iter()
        .filter(|i| matches!(i, Item::Rebooted { .. }))
        .count();
    if segments.len() != exp.boots.len() {
        f.push(format!(
            "{} boots seen (told apart by {}), {} made",
            segments.len(),
            if observed.by_netcon {
                "reboot events and sequence numbers"
            } else {
                "sequence numbers going back, or `Linux version`"
            },
            exp.boots.len()
        ));
    }
    if observed.by_netcon && report.reboot_events + 1 != exp.boots.len() {
        f.push(format!(
            "{} reboot events, expected {}",
            report.reboot_events,
            exp.boots.len() - 1
        ));
    }
    for (i, (segment, boot)) in segments.iter().zip(&exp.boots).enumerate() {
        let n = i + 1;
        if i > 0 {
            if observed.by_netcon && !segment.event {
                f.push(format!(
                    "boot {n}: no reboot event where the sender rebooted"
                ));
            }
            if exp.extended && segment.records.first().and_then(|r| r.seq) != Some(0) {
                f.push(format!(
                    "boot {n}: the sequence numbers did not start again at 0"
                ));
            }
        }
        check_boot(n, segment, boot, exp, &mut f, &mut report);
    }
    if f.list.is_empty() {
        Ok(report)
    } else {
        let mut s = f.list.join("\n");
        if f.more > 0 {
            let _ = write!(s, "\n... and {} more", f.more);
        }
        Err(s)
    }
}

#[derive(Default)]
struct Failures {
    list: Vec<String>,
    more: usize,
}

impl Failures {
    fn push(&mut self, s: String) {
        if self.list.len() < MAX_FAILURES {
            self.list.push(s);
        } else {
            self.more += 1;
        }
    }
}

/// The records of one boot of the sender.
struct Segment<'a> {
    records: Vec<&'a Rec>,
    /// Began at a reboot event.
    event: bool,
}

/// Splits the records into boots: at a reboot event, or where the sequence number goes back
/// (extended), or at the replay's first record, `Linux version` (plain: its kernel time is no
/// help, as it can go back early in a boot when the TSC is calibrated).
fn segment(observed: &Observed) -> Vec<Segment<'_>> {
    let mut segments = vec![Segment {
        records: Vec::new(),
        event: false,
    }];
    for item in &observed.items {
        let several = segments.len() > 1;
        let current = segments.last_mut().expect("never empty");
        match item {
            Item::Rebooted { .. } => {
                // The event may come just after the first record of the new boot.
                if current.records.len() <= 1 && several {
                    current.event = true;
                } else if !current.records.is_empty() {
                    segments.push(Segment {
                        records: Vec::new(),
                        event: true,
                    });
                }
            }
            Item::Record(r) => {
                let back = current
                    .records
                    .last()
                    .is_some_and(|last| match (last.seq, r.seq) {
                        (Some(a), Some(b)) => b < a,
                        _ => r.text.starts_with(b"Linux version "),
                    });
                if back {
                    segments.push(Segment {
                        records: vec![r],
                        event: false,
                    });
                } else {
                    current.records.push(r);
                }
            }
            _ => {}
        }
    }
    segments.retain(|s| !s.records.is_empty());
    segments
}

fn check_boot(
    n: usize,
    segment: &Segment<'_>,
    boot: &BootRecords,
    exp: &Expectation<'_>,
    f: &mut Failures,
    report: &mut Report,
) {
    let tag = format!("NCT-{} ", boot.runid);
    let expected: HashMap<&[u8], usize> = boot
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.text.as_slice(), i))
        .collect();
    let mut seen = vec![0usize; boot.records.len()];
    let mut last_index: Option<usize> = None;
    let mut last_seq: Option<u64> = None;
    for r in &segment.records {
        if r.incomplete {
            f.push(format!("boot {n}: incomplete record: {}", show(&r.text)));
        }
        if !r.text.starts_with(tag.as_bytes()) {
            if r.text.starts_with(b"NCT-") && !r.text.starts_with(b"NCT-FAIL") {
                f.push(format!(
                    "boot {n}: a record of another boot: {}",
                    show(&r.text)
                ));
            }
            continue;
        }
        let Some(&i) = expected.get(r.text.as_slice()) else {
            f.push(format!(
                "boot {n}: not a record the guest wrote (damaged?): {}",
                show(&r.text)
            ));
            continue;
        };
        let want = &boot.records[i];
        seen[i] += 1;
        if seen[i] > 1 {
            f.push(format!("boot {n}: {} arrived {} times", want.name, seen[i]));
            continue;
        }
        report.matched += 1;
        if let Some(last) = last_index
            && i < last
        {
            f.push(format!(
                "boot {n}: {} arrived after {}",
                want.name, boot.records[last].name
            ));
        }
        last_index = Some(i);
        if exp.extended {
            check_extended(n, r, want, exp, f, &mut last_seq, report);
        }
    }
    let missing: Vec<&str> = boot
        .records
        .iter()
        .zip(&seen)
        .filter(|(_, s)| **s == 0)
        .map(|(r, _)| r.name.as_str())
        .collect();
    if !missing.is_empty() {
        f.push(format!(
            "boot {n}: {} of {} records missing: {}",
            missing.len(),
            boot.records.len(),
            abbreviate(&missing)
        ));
    }
    if !segment
        .records
        .iter()
        .any(|r| r.text.starts_with(b"Linux version "))
    {
        f.push(format!(
            "boot {n}: no `Linux version` record: the log buffer was not replayed from its start"
        ));
    }
    report.seq_ranges.push(None);
    if exp.extended {
        check_seqs(n, segment, f, report);
    }
}

/// Extended mode: the boot's sequence numbers run from 0 without a gap or a repeat.
fn check_seqs(n: usize, segment: &Segment<'_>, f: &mut Failures, report: &mut Report) {
    let seqs: BTreeSet<u64> = segment.records.iter().filter_map(|r| r.seq).collect();
    let count = segment.records.iter().filter(|r| r.seq.is_some()).count();
    if count != seqs.len() {
        f.push(format!(
            "boot {n}: {} records share a sequence number",
            count - seqs.len()
        ));
    }
    if let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) {
        *report.seq_ranges.last_mut().expect("pushed") = Some((first, last));
        if first != 0 {
            f.push(format!(
                "boot {n}: the first sequence number is {first}, not 0"
            ));
        }
        let gaps: Vec<String> = seqs
            .iter()
            .zip(seqs.iter().skip(1))
            .filter(|(a, b)| **b != **a + 1)
            .map(|(a, b)| format!("{}..={}", a + 1, b - 1))
            .collect();
        if !gaps.is_empty() {
            f.push(format!(
                "boot {n}: sequence numbers missing (records lost): {}",
                gaps.join(", ")
            ));
        }
    }
}

fn check_extended(
    n: usize,
    r: &Rec,
    want: &Record,
    exp: &Expectation<'_>,
    f: &mut Failures,
    last_seq: &mut Option<u64>,
    report: &mut Report,
) {
    let name = &want.name;
    if !r.extended {
        f.push(format!(
            "boot {n}: {name} did not arrive in the extended format"
        ));
        return;
    }
    if (r.facility, r.level) != (Some(want.facility()), Some(want.level())) {
        f.push(format!(
            "boot {n}: {name}: facility {:?} level {:?}, written as <{}> (facility {}, level {})",
            r.facility,
            r.level,
            want.prio,
            want.facility(),
            want.level()
        ));
    }
    match (r.seq, *last_seq) {
        (None, _) => f.push(format!("boot {n}: {name} has no sequence number")),
        (Some(s), Some(last)) if s <= last => f.push(format!(
            "boot {n}: {name} has sequence number {s}, not after {last}"
        )),
        (Some(s), _) => *last_seq = Some(s),
    }
    if r.release.as_deref() != exp.release {
        f.push(format!(
            "boot {n}: {name}: release {:?}, expected {:?}",
            r.release, exp.release
        ));
    }
    if want.kind == Kind::Long {
        // Both long records are longer than one datagram once the header is added.
        let in_pieces = r.fragmented && (r.datagrams == 0 || r.datagrams >= 2);
        if in_pieces {
            report.fragmented += 1;
        } else {
            f.push(format!(
                "boot {n}: {name} was not fragmented (fragmented {}, {} datagrams)",
                r.fragmented, r.datagrams
            ));
        }
    }
}

/// A record's text for a message: escaped, cut.
fn show(text: &[u8]) -> String {
    let s = text.escape_ascii().to_string();
    if s.len() > 120 {
        format!("{}...", &s[..117])
    } else {
        s
    }
}

fn abbreviate(names: &[&str]) -> String {
    if names.len() <= 12 {
        names.join(" ")
    } else {
        format!(
            "{} ... {}",
            names[..6].join(" "),
            names[names.len() - 3..].join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::records::records;
    use super::*;

    fn exp(boots: &[&str]) -> Expectation<'static> {
        Expectation {
            extended: true,
            release: None,
            sender: "10.0.0.10:6665".into(),
            destination: "10.0.0.1:6666".into(),
            boots: boots
                .iter()
                .map(|id| BootRecords {
                    runid: (*id).to_owned(),
                    records: records(id),
                })
                .collect(),
        }
    }

    /// What a perfect extended capture of `boots` decodes to.
    fn perfect(e: &Expectation<'_>, reboot_events: bool) -> Observed {
        let mut o = Observed::default();
        for (b, boot) in e.boots.iter().enumerate() {
            if b > 0 && reboot_events {
                o.items.push(Item::Rebooted {
                    sender: e.sender.clone(),
                });
            }
            let mut seq = 0;
            let mut rec = |text: Vec<u8>, facility, level, long: bool| {
                o.items.push(Item::Record(Rec {
                    sender: e.sender.clone(),
                    extended: true,
                    seq: Some(seq),
                    facility: Some(facility),
                    level: Some(level),
                    text,
                    fragmented: long,
                    datagrams: if long { 2 } else { 1 },
                    ..Rec::default()
                }));
                seq += 1;
            };
            rec(b"Linux version 6.1".to_vec(), 0, 5, false);
            for r in &boot.records {
                rec(
                    r.text.clone(),
                    r.facility(),
                    r.level(),
                    r.kind == Kind::Long,
                );
            }
        }
        o.by_netcon = reboot_events;
        o
    }

    #[test]
    fn a_perfect_capture_passes() {
        let e = exp(&["aaaaaa", "bbbbbb"]);
        let report = check(&perfect(&e, false), &e).unwrap();
        assert_eq!(report.matched, 2 * e.boots[0].records.len());
        assert_eq!(report.fragmented, 4);
        check(&perfect(&e, true), &e).unwrap();
    }

    #[test]
    fn a_missing_reboot_event_fails() {
        let e = exp(&["aaaaaa", "bbbbbb"]);
        let mut o = perfect(&e, true);
        o.items.retain(|i| !matches!(i, Item::Rebooted { .. }));
        let err = check(&o, &e).unwrap_err();
        assert!(err.contains("reboot event"), "{err}");
    }

    #[test]
    fn loss_wrong_level_and_damage_fail() {
        let e = exp(&["aaaaaa"]);
        let mut o = perfect(&e, false);
        o.items.remove(20);
        if let Item::Record(r) = &mut o.items[5] {
            r.level = Some(3);
        }
        if let Item::Record(r) = &mut o.items[30] {
            r.text.push(b'!');
        }
        let err = check(&o, &e).unwrap_err();
        assert!(err.contains("sequence numbers missing"), "{err}");
        assert!(err.contains("level Some(3)"), "{err}");
        assert!(err.contains("damaged"), "{err}");
        assert!(err.contains("missing: "), "{err}");
    }
}
