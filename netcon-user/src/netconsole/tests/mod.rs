//! Decoder tests: whole datagrams in, events out.

mod budget;
mod properties;
mod sequence;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use proptest::prelude::*;

use super::*;

const T0_US: i64 = 1_795_817_754_000_000;

fn src(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, n)), 6665)
}

fn wall(ms: u64) -> DateTime<Utc> {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX / 2000);
    DateTime::from_timestamp_micros(T0_US + ms * 1000).unwrap_or_default()
}

struct Harness {
    dec: Decoder,
    t0: Instant,
}

impl Harness {
    fn new() -> Self {
        Self::with(DecoderConfig::default())
    }

    fn with(config: DecoderConfig) -> Self {
        Self {
            dec: Decoder::new(config),
            t0: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Pushes one payload at `ms` (monotonic and wall clock move together) from `from`.
    fn push_from(&mut self, ms: u64, from: u8, ifindex: u32, payload: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        self.dec.push(
            self.at(ms),
            Incoming {
                received: wall(ms),
                ifindex,
                src: src(from),
                payload,
            },
            &mut out,
        );
        out
    }

    fn push(&mut self, ms: u64, payload: &[u8]) -> Vec<Event> {
        self.push_from(ms, 10, 2, payload)
    }

    fn poll(&mut self, ms: u64) -> Vec<Event> {
        let mut out = Vec::new();
        self.dec.poll(self.at(ms), &mut out);
        out
    }

    fn flush(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.dec.flush(&mut out);
        out
    }
}

fn records(events: &[Event]) -> Vec<&Record> {
    events.iter().filter_map(Event::as_record).collect()
}

fn one_record(events: &[Event]) -> &Record {
    match events {
        [Event::Record(r)] => r,
        other => panic!("expected one record, got {other:#?}"),
    }
}

/// Escapes like `kernel/printk/printk.c` (`msg_add_ext_text`).
fn kernel_escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if !(b' '..127).contains(&b) || b == b'\\' {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// Cuts like `drivers/net/netconsole.c` (`send_ext_msg_udp`), with `max` in place of
/// `MAX_PRINT_CHUNK`.
fn kernel_fragments(header: &str, body: &[u8], max: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < body.len() {
        let mut payload = format!("{header},ncfrag={offset}/{};", body.len()).into_bytes();
        let chunk = (body.len() - offset).min(max - payload.len());
        payload.extend_from_slice(&body[offset..offset + chunk]);
        out.push(payload);
        offset += chunk;
    }
    out
}

// tests/data/ext.pcap, frame 220.
const DICT: &[u8] = b"6,220,1477760,-;pci_bus 0000:00: root bus resource [io  0x0d00-0xffff window]\n SUBSYSTEM=pci_bus\n DEVICE=+pci_bus:0000:00\n";

#[test]
fn extended_record_end_to_end() {
    let mut h = Harness::new();
    let events = h.push(0, DICT);
    let r = one_record(&events);
    assert_eq!(r.format, RecordFormat::Extended);
    assert_eq!(r.sender, src(10));
    assert_eq!(r.ifindex, 2);
    assert_eq!(r.received, wall(0));
    assert_eq!(r.priority.map(Priority::pri), Some(6));
    assert_eq!((r.seq, r.timestamp_us), (Some(220), Some(1_477_760)));
    assert_eq!(
        r.text,
        b"pci_bus 0000:00: root bus resource [io  0x0d00-0xffff window]"
    );
    assert_eq!(r.field(b"SUBSYSTEM"), Some(&b"pci_bus"[..]));
    assert_eq!(r.field(b"DEVICE"), Some(&b"+pci_bus:0000:00"[..]));
    // First observation: the boot estimate puts the record at its receive time.
    assert_eq!(r.kernel_time, Some(wall(0)));
    assert_eq!(r.flags, Flags::default());
    assert_eq!(h.dec.stats().records, 1);
    assert_eq!(h.dec.stats().senders, 1);
}

#[test]
fn boot_estimate_takes_the_smallest_delay() {
    let mut h = Harness::new();
    // Replayed at netconsole start: ts 0 received at 0 ms.
    h.push(0, b"5,0,0,-;Linux version\n");
    // Live, 4.3 s of kernel time later, received 40 ms later: the boot was 4.26 s earlier.
    let events = h.push(40, b"6,1,4300000,-;live\n");
    let r = one_record(&events);
    assert_eq!(r.kernel_time, Some(wall(40)));
    let events = h.push(41, b"6,2,4300500,-;delayed by 0.5 ms\n");
    let r = one_record(&events);
    assert_eq!(
        r.kernel_time,
        DateTime::from_timestamp_micros(T0_US + 40_000 + 500)
    );
}

#[test]
fn release_from_header_or_sysdata() {
    let mut h = Harness::new();
    let events = h.push(0, b"6.12.95+deb12-amd64,14,382,5823895,-;NCT SHORT\n");
    assert_eq!(
        one_record(&events).release.as_deref(),
        Some("6.12.95+deb12-amd64")
    );
    let events = h.push(
        1,
        b"14,383,5823999,-;msg\n cpu=1\n taskname=bash\n release=6.14.0-rc1\n msgid=3\n",
    );
    let r = one_record(&events);
    assert_eq!(r.release.as_deref(), Some("6.14.0-rc1"));
    assert_eq!(
        r.sysdata,
        Sysdata {
            cpu: Some(1),
            taskname: Some(b"bash".to_vec()),
            release: Some("6.14.0-rc1".into()),
            msgid: Some(3),
        }
    );
    assert_eq!(r.fields.len(), 4);
}

#[test]
fn fragments_reassemble_with_an_escape_cut_in_two() {
    // Like tests/data/ext.pcap LONGX: a fragment ends in `\x` and the next starts with `c3`.
    let text = "NCT-202a75 LONGX-BEGIN ".to_owned() + &"äöü✓".repeat(80) + " LONGX-END";
    let body = [kernel_escape(text.as_bytes()), b"\n".to_vec()].concat();
    let frags = kernel_fragments("14,589,6402705,-", &body, 1000);
    assert_eq!(frags.len(), 4);
    assert!(frags.iter().any(|f| f.ends_with(b"\\x")));
    let mut h = Harness::new();
    let mut events = Vec::new();
    for (i, f) in frags.iter().enumerate() {
        events.extend(h.push(u64::try_from(i).unwrap_or(0), f));
    }
    let r = one_record(&events);
    assert_eq!(r.text, text.as_bytes());
    assert!(r.flags.fragmented);
    assert_eq!(r.flags.incomplete, None);
    assert_eq!(r.seq, Some(589));
    assert_eq!(r.received, wall(0));
    assert_eq!(h.dec.stats().reassembled, 1);
    assert_eq!(h.dec.stats().fragments, 4);
    assert_eq!(h.dec.poll_at(), None);
}

#[test]
fn fragments_any_order_and_duplicates() {
    let text = b"x".repeat(2500);
    let body = [text.clone(), b"\n SUBSYSTEM=pci\n".to_vec()].concat();
    let frags = kernel_fragments("14,9,900,-", &body, 1000);
    let mut h = Harness::new();
    let mut events = Vec::new();
    for (i, f) in [2, 0, 2, 1, 0].iter().enumerate() {
        events.extend(h.push_from(u64::try_from(i).unwrap_or(0), 10, 3, &frags[*f]));
    }
    let recs = records(&events);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].text, text);
    assert_eq!(recs[0].field(b"SUBSYSTEM"), Some(&b"pci"[..]));
    assert_eq!(h.dec.stats().duplicates, 2);
    // A copy of a fragment after the record completed is still a duplicate.
    let late = h.push(2000, &frags[1]);
    assert!(matches!(late.as_slice(), [Event::Duplicate(_)]), "{late:?}");
    assert_eq!(h.flush(), []);
}

#[test]
fn missing_fragment_gives_an_incomplete_record_after_the_deadline() {
    let body = [b"y".repeat(2500), b"\n".to_vec()].concat();
    let frags = kernel_fragments("14,9,900,-", &body, 1000);
    let mut h = Harness::new();
    assert_eq!(h.push(0, &frags[0]), []);
    assert_eq!(h.push(1, &frags[2]), []);
    assert_eq!(h.dec.poll_at(), Some(h.at(1000)));
    assert_eq!(h.poll(999), []);
    let events = h.poll(1000);
    let r = one_record(&events);
    let missing = frags[1].len() - "14,9,900,-,ncfrag=984/2501;".len();
    assert_eq!(
        r.flags.incomplete,
        Some(Incomplete {
            missing_bytes: missing,
            total_bytes: 2501
        })
    );
    assert_eq!(r.text.len(), 2500 - missing);
    assert_eq!(h.dec.stats().fragments_expired, 1);
    assert_eq!(h.dec.stats().incomplete_records, 1);
    assert_eq!(h.dec.poll_at(), None);
}

fn malformed_error(events: &[Event]) -> &DecodeError {
    match events {
        [Event::Malformed(m)] => &m.error,
        other => panic!("expected one malformed event, got {other:#?}"),
    }
}

#[test]
fn malformed_fragment_offset_beyond_total() {
    let mut h = Harness::new();
    let events = h.push(0, b"6,1,2,-,ncfrag=20/10;abc");
    assert_eq!(
        malformed_error(&events),
        &DecodeError::Fragment {
            source: FragError::OffsetBeyondTotal {
                offset: 20,
                total: 10
            }
        }
    );
    assert_eq!(h.dec.stats().malformed, 1);
}

#[test]
fn malformed_fragment_running_past_total() {
    let mut h = Harness::new();
    let events = h.push(0, b"6,1,2,-,ncfrag=8/10;abc");
    assert!(matches!(
        malformed_error(&events),
        DecodeError::Fragment {
            source: FragError::ChunkOverrun { .. }
        }
    ));
}

#[test]
fn malformed_fragment_total_zero() {
    let mut h = Harness::new();
    let events = h.push(0, b"6,1,2,-,ncfrag=0/0;abc");
    assert_eq!(
        malformed_error(&events),
        &DecodeError::Fragment {
            source: FragError::ZeroTotal
        }
    );
}

#[test]
fn malformed_fragment_huge_total() {
    let mut h = Harness::new();
    let events = h.push(0, b"6,1,2,-,ncfrag=0/4294967295;abc");
    assert!(matches!(
        malformed_error(&events),
        DecodeError::Fragment {
            source: FragError::TotalTooLarge { .. }
        }
    ));
    assert_eq!(h.dec.poll_at(), None);
}

#[test]
fn malformed_header_is_reported_with_its_payload() {
    let mut h = Harness::new();
    let payload = b"6,99999999999999999999999,2,-;text\n";
    let events = h.push(0, payload);
    match events.as_slice() {
        [Event::Malformed(m)] => {
            assert_eq!(
                m.error,
                DecodeError::Extended {
                    source: ExtendedError::NumberOverflow { field: "seq" }
                }
            );
            assert_eq!(m.payload, payload);
            assert_eq!(m.sender, src(10));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_payload_is_counted_and_ignored() {
    let mut h = Harness::new();
    assert_eq!(h.push(0, b""), []);
    assert_eq!(h.dec.stats().empty, 1);
    assert_eq!(h.dec.stats().senders, 0);
}

#[test]
fn nul_bytes_survive_in_both_formats() {
    let mut h = Harness::new();
    let events = h.push(0, b"[    1.000000] a\0b\n");
    assert_eq!(one_record(&events).text, b"a\0b");
    let events = h.push(1, b"6,1,1000002,-;c\0d\\x00e\n");
    assert_eq!(one_record(&events).text, b"c\0d\0e");
}

#[test]
fn invalid_escape_is_kept_and_counted() {
    let mut h = Harness::new();
    let events = h.push(0, b"6,1,2,-;bad \\xZZ and cut \\x4\n");
    assert_eq!(one_record(&events).text, b"bad \\xZZ and cut \\x4");
    assert_eq!(h.dec.stats().bad_escapes, 2);
}

#[test]
fn same_frame_on_two_interfaces_is_dropped_once() {
    let mut h = Harness::new();
    let first = h.push_from(0, 10, 2, DICT);
    assert_eq!(records(&first).len(), 1);
    let copy = h.push_from(0, 10, 3, DICT);
    match copy.as_slice() {
        [Event::Duplicate(d)] => {
            assert_eq!((d.ifindex, d.len), (3, DICT.len()));
        }
        other => panic!("{other:?}"),
    }
    // Even much later, the same seq and timestamp is the same record.
    assert!(matches!(
        h.push_from(5000, 10, 3, DICT).as_slice(),
        [Event::Duplicate(_)]
    ));
    assert_eq!(h.dec.stats().duplicates, 2);
    assert_eq!(h.dec.stats().records, 1);
}

#[test]
fn plain_duplicates_are_dropped_within_the_window() {
    let mut h = Harness::new();
    let line = b"[    4.578958] NCT-5d3ac7 SHORT hello-from-real-kernel\n";
    assert_eq!(records(&h.push_from(0, 10, 2, line)).len(), 1);
    assert!(matches!(
        h.push_from(1, 10, 3, line).as_slice(),
        [Event::Duplicate(_)]
    ));
    // The same bytes from another sender are not a copy.
    assert_eq!(records(&h.push_from(1, 11, 2, line)).len(), 1);
    // Past the window, identical bytes are a new line (plain mode has no seq).
    assert_eq!(records(&h.push_from(600, 10, 2, line)).len(), 1);
}

#[test]
fn continuation_is_joined_with_the_record_completing_it() {
    let mut h = Harness::new();
    assert_eq!(h.push(0, b"4,10,100,c;part one \n"), []);
    assert_eq!(h.dec.poll_at(), Some(h.at(1000)));
    let events = h.push(1, b"4,11,101,-;and two\n");
    let r = one_record(&events);
    assert_eq!(r.text, b"part one and two");
    assert!(r.flags.continued);
    assert_eq!(r.seq, Some(11));
    assert_eq!(r.timestamp_us, Some(100));
    assert_eq!(h.dec.stats().continuations_joined, 1);
}

#[test]
fn continuation_waiting_in_vain_is_emitted_after_the_timeout() {
    let mut h = Harness::new();
    assert_eq!(h.push(0, b"4,10,100,c;dangling\n"), []);
    assert_eq!(h.poll(999), []);
    let events = h.poll(1000);
    let r = one_record(&events);
    assert_eq!(r.text, b"dangling");
    assert!(r.flags.continued);
    assert_eq!(h.dec.stats().continuation_timeouts, 1);
    assert_eq!(h.dec.poll_at(), None);
}

#[test]
fn continuation_not_followed_by_its_next_seq_is_emitted_alone() {
    let mut h = Harness::new();
    h.push(0, b"4,10,100,c;piece\n");
    let events = h.push(1, b"4,12,120,-;unrelated\n");
    let texts: Vec<&[u8]> = records(&events).iter().map(|r| r.text.as_slice()).collect();
    assert_eq!(texts, [&b"piece"[..], b"unrelated"]);
}

#[test]
fn plain_multi_line_record() {
    let mut h = Harness::new();
    let events = h.push(0, b"[    4.599528] NCT-5d3ac7 MULTI line-1/3\n[    4.599528] NCT-5d3ac7 MULTI line-2/3\n[    4.599528] NCT-5d3ac7 MULTI line-3/3\n");
    let r = one_record(&events);
    assert_eq!(r.format, RecordFormat::Plain);
    assert_eq!(r.priority, None);
    assert_eq!(r.timestamp_us, Some(4_599_528));
    assert_eq!(r.lines().count(), 3);
    assert_eq!(r.kernel_time, Some(wall(0)));
}

#[test]
fn plain_partial_line_is_flushed_after_the_idle_timeout() {
    let mut h = Harness::new();
    assert_eq!(h.push(0, b"[    1.000000] no newline yet"), []);
    assert_eq!(h.dec.poll_at(), Some(h.at(500)));
    assert_eq!(h.poll(499), []);
    let events = h.poll(500);
    let r = one_record(&events);
    assert!(r.flags.partial);
    assert_eq!(r.text, b"no newline yet");
    assert_eq!(h.dec.stats().partial_lines, 1);
    assert_eq!(h.dec.poll_at(), None);
}

#[test]
fn plain_clock_going_back_is_a_reboot() {
    let mut h = Harness::new();
    h.push(0, b"[  100.000000] before\n");
    let events = h.push(20_000, b"[    0.000000] Linux version\n");
    assert!(matches!(
        events.as_slice(),
        [Event::Rebooted(r), Event::Record(_)] if r.previous_timestamp_us == Some(100_000_000) && r.seq.is_none()
    ));
}

#[test]
fn crash_report_lines_are_attributed_to_one_event() {
    let mut h = Harness::new();
    let mut marks = Vec::new();
    for (i, line) in [
        &b"6,1,100,-;normal\n"[..],
        b"1,2,200,-;BUG: kernel NULL pointer dereference, address: 0000000000000000\n",
        b"1,3,201,-;Oops: 0002 [#1] PREEMPT SMP NOPTI\n",
        b"4,4,202,-;RIP: 0010:sysrq_handle_crash+0x16/0x20\n",
        b"4,5,203,-;Call Trace:\n",
        b"4,6,204,-;---[ end trace 0000000000000000 ]---\n",
        b"0,7,205,-;Kernel panic - not syncing: Fatal exception\n",
        b"0,8,206,-;---[ end Kernel panic - not syncing: Fatal exception ]---\n",
        b"6,9,300,-;after\n",
    ]
    .iter()
    .enumerate()
    {
        let events = h.push(u64::try_from(i).unwrap_or(0), line);
        marks.push(one_record(&events).flags.panic);
    }
    let m = |event, kind, begins| {
        Some(PanicMark {
            event,
            kind,
            begins,
        })
    };
    assert_eq!(
        marks,
        [
            None,
            m(0, PanicKind::Bug, true),
            m(0, PanicKind::Bug, false),
            m(0, PanicKind::Bug, false),
            m(0, PanicKind::Bug, false),
            m(0, PanicKind::Bug, false),
            m(1, PanicKind::Panic, true),
            m(1, PanicKind::Panic, false),
            None,
        ]
    );
    assert_eq!(h.dec.stats().panics, 2);
}

#[test]
fn full_sender_table_evicts_the_least_recently_heard_and_emits_its_state() {
    let mut h = Harness::with(DecoderConfig {
        max_senders: 2,
        ..DecoderConfig::default()
    });
    assert_eq!(h.push_from(0, 1, 2, b"pending partial"), []);
    h.push_from(1, 2, 2, b"[    1.000000] two\n");
    let events = h.push_from(2, 3, 2, b"[    1.000000] three\n");
    let recs = records(&events);
    assert_eq!(recs.len(), 2);
    assert_eq!(
        (recs[0].sender, recs[0].text.as_slice()),
        (src(1), &b"pending partial"[..])
    );
    assert!(recs[0].flags.partial);
    assert_eq!(h.dec.stats().senders_evicted, 1);
    assert_eq!(h.dec.stats().senders, 2);
    // Its timer is gone with it: nothing fires later.
    assert_eq!(h.poll(10_000), []);
}

#[test]
fn senders_tally_records_losses_and_panics_and_leave_when_evicted() {
    let mut h = Harness::with(DecoderConfig {
        max_senders: 2,
        ..DecoderConfig::default()
    });
    h.push_from(0, 1, 2, b"6,1,1000,-;one\n");
    h.push_from(1, 1, 2, b"6,4,4000,-;four, after a gap\n");
    h.push_from(2, 1, 2, b"0,5,5000,-;Kernel panic - not syncing: test\n");
    h.push_from(3, 2, 2, b"6,1,1000,-;other\n");
    let mut senders: Vec<(SocketAddr, SenderTally)> =
        h.dec.senders().map(|(a, t)| (a, *t)).collect();
    senders.sort_by_key(|(a, _)| *a);
    assert_eq!(
        senders,
        [
            (
                src(1),
                SenderTally {
                    records: 3,
                    records_lost: 2,
                    msgid_lost: 0,
                    panics: 1,
                    last_heard: Some(wall(2)),
                }
            ),
            (
                src(2),
                SenderTally {
                    records: 1,
                    last_heard: Some(wall(3)),
                    ..SenderTally::default()
                }
            ),
        ]
    );
    let tracked = |h: &Harness| {
        let mut left: Vec<(SocketAddr, u64)> =
            h.dec.senders().map(|(a, t)| (a, t.records)).collect();
        left.sort();
        left
    };
    // A third sender evicts the one heard only once (2), though 1 was heard before it: its
    // tally goes with it, 1's stays.
    h.push_from(4, 3, 2, b"6,1,1000,-;third\n");
    assert_eq!(tracked(&h), [(src(1), 3), (src(3), 1)]);
    // With every sender heard more than once, the least recently heard (1) goes, tally and all.
    h.push_from(5, 3, 2, b"6,2,2000,-;third again\n");
    h.push_from(6, 4, 2, b"6,1,1000,-;fourth\n");
    assert_eq!(tracked(&h), [(src(3), 2), (src(4), 1)]);
    assert_eq!(h.dec.stats().senders_evicted, 2);
}

#[test]
fn full_fragment_table_emits_the_oldest_incomplete() {
    let mut h = Harness::with(DecoderConfig {
        max_fragment_entries: 2,
        ..DecoderConfig::default()
    });
    for (i, sender) in [1u8, 2, 3].iter().enumerate() {
        let ms = u64::try_from(i).unwrap_or(0);
        let events = h.push_from(ms, *sender, 2, b"6,1,2,-,ncfrag=0/20;0123456789");
        if *sender == 3 {
            let r = one_record(&events);
            assert_eq!(r.sender, src(1));
            assert_eq!(r.flags.incomplete.map(|i| i.missing_bytes), Some(10));
        } else {
            assert_eq!(events, []);
        }
    }
    assert_eq!(h.dec.stats().fragments_evicted, 1);
}

#[test]
fn flush_emits_everything_pending() {
    let mut h = Harness::new();
    assert_eq!(h.flush(), []);
    h.push_from(0, 1, 2, b"6,1,2,-,ncfrag=0/20;0123456789");
    h.push_from(0, 2, 2, b"4,10,100,c;held\n");
    h.push_from(0, 3, 2, b"partial");
    let events = h.flush();
    let recs = records(&events);
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().any(|r| r.flags.incomplete.is_some()));
    assert!(recs.iter().any(|r| r.flags.continued && r.text == b"held"));
    assert!(recs.iter().any(|r| r.flags.partial && r.text == b"partial"));
    assert_eq!(h.dec.poll_at(), None);
    assert_eq!(h.flush(), []);
}

#[test]
fn one_sender_may_mix_formats() {
    let mut h = Harness::new();
    assert_eq!(records(&h.push(0, b"6,1,2,-;ext\n")).len(), 1);
    assert_eq!(records(&h.push(1, b"[    0.000002] plain\n")).len(), 1);
}
