//! Decoder tests: whole datagrams in, events out.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

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

// fixtures/ext.pcap, frame 220.
const DICT: &[u8] = b"6,220,1477760,-;pci_bus 0000:00: root bus resource [io  0x0d00-0xffff window]\n SUBSYSTEM=pci_bus\n DEVICE=+pci_bus:0000:00\n";

#[test]
fn extended_record_end_to_end() {
    let mut h = Harness::new();
    let events = h.push(0, DICT);
    let r = one_record(&events);
    assert_eq!(r.format, Format::Extended);
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
    // Like fixtures/ext.pcap LONGX: a fragment ends in `\x` and the next starts with `c3`.
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
fn seq_gap_is_a_loss_event() {
    let mut h = Harness::new();
    h.push(0, b"6,1,10,-;a\n");
    h.push(1, b"6,2,20,-;b\n");
    let events = h.push(2, b"6,5,50,-;e\n");
    match events.as_slice() {
        [Event::Lost(l), Event::Record(r)] => {
            assert_eq!((l.kind, l.first, l.last, l.count), (LossKind::Seq, 3, 4, 2));
            assert_eq!(r.seq, Some(5));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.dec.stats().records_lost, 2);
}

#[test]
fn late_record_is_emitted_and_counted() {
    let mut h = Harness::new();
    h.push(0, b"6,10,100,-;a\n");
    h.push(1, b"6,12,120,-;c\n");
    let events = h.push(2, b"6,11,110,-;b\n");
    assert_eq!(one_record(&events).text, b"b");
    assert_eq!(h.dec.stats().late, 1);
    assert_eq!(h.dec.stats().reboots, 0);
}

#[test]
fn seq_back_to_zero_is_a_reboot() {
    let mut h = Harness::new();
    h.push(0, b"6,589,6402705,-;before\n");
    h.push(1, b"6,590,6456131,-;last words\n");
    let events = h.push(30_000, b"5,0,0,-;Linux version 6.1.0\n");
    match events.as_slice() {
        [Event::Rebooted(r), Event::Record(rec)] => {
            assert_eq!((r.previous_seq, r.seq), (Some(590), Some(0)));
            assert_eq!(r.previous_timestamp_us, Some(6_456_131));
            // The boot estimate starts over.
            assert_eq!(rec.kernel_time, Some(wall(30_000)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.dec.stats().reboots, 1);
    // And the sequence goes on from the new boot without a loss.
    assert_eq!(records(&h.push(30_001, b"6,1,0,-;next\n")).len(), 1);
    assert_eq!(h.dec.stats().records_lost, 0);
}

/// The boot changes of four configfs senders (kernel 7.2, userdata and sysdata) crashed on
/// purpose and booted again: the last record heard from the old boot and the first from the new
/// one, as (seq, kernel timestamp in µs, msgid). A configfs target replays nothing, so the new
/// boot's first records have lower sequence numbers and timestamps near (or above) the old ones.
/// (seq, kernel timestamp in µs, msgid) before and after a boot change.
type BootChange = ((u64, u64, u32), (u64, u64, u32));

const BOOT_CHANGES: [BootChange; 4] = [
    ((390, 3_781_000, 13), (379, 3_328_000, 1)),
    ((391, 3_869_000, 5), (380, 3_999_000, 1)),
    ((392, 4_053_000, 13), (385, 3_558_000, 1)),
    ((390, 4_186_000, 13), (382, 3_753_000, 1)),
];

/// A record of one of those senders, with its sysdata msgid unless `msgid` is 0.
fn configfs_record(seq: u64, ts: u64, msgid: u32, text: &str) -> Vec<u8> {
    let mut payload = format!("7.2.13+deb14-amd64,6,{seq},{ts},-;{text}\n cpu=0\n").into_bytes();
    if msgid > 0 {
        payload.extend_from_slice(format!(" msgid={msgid}\n").as_bytes());
    }
    payload
}

/// Plays one boot change: a few records of the old boot (the sender booted at 0 ms, each
/// record received 2 ms after its timestamp), a crash, `downtime_ms` until the new boot, and the
/// new boot's first records. Returns the events of the new boot's first record and of the ones
/// after it.
fn play_boot_change(
    h: &mut Harness,
    change: BootChange,
    with_msgid: bool,
    downtime_ms: u64,
) -> (Vec<Event>, Vec<Event>) {
    let ((old_seq, old_ts, old_msgid), (new_seq, new_ts, _)) = change;
    let id = |n: u32| if with_msgid { n } else { 0 };
    for back in (0..3u64).rev() {
        let ts = old_ts - back * 40_000;
        let msgid = old_msgid - u32::try_from(back).unwrap_or(0);
        let payload = configfs_record(old_seq - back, ts, id(msgid), "old boot");
        let events = h.push(ts / 1000 + 2, &payload);
        assert_eq!(records(&events).len(), 1, "{events:?}");
        assert_eq!(events.len(), 1, "{events:?}");
    }
    let new_boot_at = old_ts / 1000 + downtime_ms;
    let first = h.push(
        new_boot_at + new_ts / 1000 + 2,
        &configfs_record(new_seq, new_ts, id(1), "new boot"),
    );
    let mut after = Vec::new();
    for n in 1..=3u64 {
        let ts = new_ts + n * 30_000;
        after.extend(h.push(
            new_boot_at + ts / 1000 + 2,
            &configfs_record(
                new_seq + n,
                ts,
                id(1 + u32::try_from(n).unwrap_or(0)),
                "new boot",
            ),
        ));
    }
    (first, after)
}

fn assert_rebooted_at_first_record(change: BootChange, first: &[Event], after: &[Event]) {
    let ((old_seq, old_ts, _), (new_seq, new_ts, _)) = change;
    match first {
        [Event::Rebooted(r), Event::Record(rec)] => {
            assert_eq!((r.previous_seq, r.seq), (Some(old_seq), Some(new_seq)));
            assert_eq!(
                (r.previous_timestamp_us, r.timestamp_us),
                (Some(old_ts), Some(new_ts))
            );
            assert_eq!(rec.text, b"new boot");
            // On the new boot's clock: kernel time within a second of the receive time.
            let kt = rec.kernel_time.expect("kernel time");
            assert!((rec.received - kt).num_milliseconds().abs() < 1000);
        }
        other => panic!("{change:?}: {other:#?}"),
    }
    // The records after it are neither losses nor another reboot, and keep the new clock.
    for e in after {
        let rec = e.as_record().unwrap_or_else(|| panic!("{change:?}: {e:?}"));
        let kt = rec.kernel_time.expect("kernel time");
        assert!((rec.received - kt).num_milliseconds().abs() < 1000);
    }
    assert_eq!(after.len(), 3);
}

#[test]
fn configfs_reboot_is_seen_at_the_new_boots_first_record() {
    for change in BOOT_CHANGES {
        // Five seconds from the crash to the new boot (panic=1, firmware, boot loader).
        let mut h = Harness::new();
        let (first, after) = play_boot_change(&mut h, change, true, 5_000);
        assert_rebooted_at_first_record(change, &first, &after);
        assert_eq!(h.dec.stats().reboots, 1);
        assert_eq!(h.dec.stats().late, 0);
        assert_eq!(h.dec.stats().records_lost, 0);
        assert_eq!(h.dec.stats().msgid_lost, 0);
    }
}

#[test]
fn configfs_reboot_without_msgid_is_seen_by_the_implied_boot_time() {
    for change in BOOT_CHANGES {
        // Even an instant reboot moves the implied boot time by the old boot's uptime.
        let mut h = Harness::new();
        let (first, after) = play_boot_change(&mut h, change, false, 0);
        assert_rebooted_at_first_record(change, &first, &after);
        assert_eq!(h.dec.stats().reboots, 1);
    }
}

#[test]
fn configfs_reboot_is_seen_by_msgid_alone() {
    for change in BOOT_CHANGES {
        // Receive times that say nothing (a capture with broken timestamps): msgid back at 1.
        let mut h = Harness::with(DecoderConfig {
            max_boot_shift: Duration::from_hours(1),
            ..DecoderConfig::default()
        });
        let (first, after) = play_boot_change(&mut h, change, true, 5_000);
        match first.as_slice() {
            [Event::Rebooted(r), Event::Record(rec)] => {
                assert_eq!(r.seq, Some(change.1.0));
                assert_eq!(rec.text, b"new boot");
            }
            other => panic!("{change:?}: {other:#?}"),
        }
        assert!(after.iter().all(|e| e.as_record().is_some()), "{after:?}");
        assert_eq!(h.dec.stats().reboots, 1);
    }
}

#[test]
fn late_records_and_copies_are_not_a_reboot() {
    let mut h = Harness::new();
    // Booted at 0 ms; records received 2 ms after their timestamp.
    for (seq, ts_ms) in [(100u64, 5_000u64), (101, 5_010), (103, 5_030)] {
        h.push(ts_ms + 2, &configfs_record(seq, ts_ms * 1000, 0, "x"));
    }
    // The last record again, after the duplicate window.
    let copy = h.push(5_032 + 600, &configfs_record(103, 5_030_000, 0, "x"));
    assert!(matches!(copy.as_slice(), [Event::Duplicate(_)]), "{copy:?}");
    // seq 102, 700 ms late: within the reorder window, and no delay beyond a network's.
    let late = h.push(5_020 + 700, &configfs_record(102, 5_020_000, 0, "late"));
    assert_eq!(one_record(&late).text, b"late");
    assert_eq!(h.dec.stats().reboots, 0);
    assert_eq!(h.dec.stats().late, 1);
    // A kernel clock running slow by 100 ppm for an hour still reads as the same boot.
    let ms = 3_600_000u64;
    let events = h.push(
        ms,
        &configfs_record(104, (ms - ms / 10_000) * 1000, 0, "an hour on"),
    );
    assert_eq!(one_record(&events).text, b"an hour on");
    assert_eq!(h.dec.stats().reboots, 0);
}

#[test]
fn plain_reboot_without_replay_is_seen_by_the_implied_boot_time() {
    let mut h = Harness::new();
    h.push(3_783, b"[    3.781000] old boot\n");
    // The new boot's first line has a timestamp below the old one by less than a second.
    let events = h.push(3_781 + 5_000 + 3_330, b"[    3.328000] new boot\n");
    match events.as_slice() {
        [Event::Rebooted(r), Event::Record(rec)] => {
            assert_eq!(
                (r.previous_timestamp_us, r.timestamp_us),
                (Some(3_781_000), Some(3_328_000))
            );
            assert_eq!(rec.kernel_time, Some(wall(3_781 + 5_000 + 3_330)));
        }
        other => panic!("{other:#?}"),
    }
}

#[test]
fn msgid_gap_is_a_loss_event() {
    let mut h = Harness::new();
    h.push(0, b"6,1,10,-;a\n msgid=1\n");
    // Two datagrams lost on the way: both counters show the gap.
    let events = h.push(1, b"6,4,40,-;b\n msgid=4\n");
    match events.as_slice() {
        [Event::Lost(seq), Event::Lost(l), Event::Record(_)] => {
            assert_eq!((seq.kind, seq.count), (LossKind::Seq, 2));
            assert_eq!(
                (l.kind, l.first, l.last, l.count),
                (LossKind::Msgid, 2, 3, 2)
            );
        }
        other => panic!("{other:?}"),
    }
    // A msgid behind the last one (late, repeated) is no loss.
    assert_eq!(h.push(2, b"6,3,30,-;c\n msgid=3\n").len(), 1);
    assert_eq!(h.dec.stats().msgid_lost, 2);
    // msgid is a u32 that wraps.
    for (i, id) in [4_294_967_294u32, 4_294_967_295, 0].iter().enumerate() {
        let payload = format!("6,{},{},-;w\n msgid={id}\n", 10 + i, 100 + i);
        let events = h.push_from(10, 20, 2, payload.as_bytes());
        assert_eq!(events.len(), 1, "{events:?}");
    }
    let events = h.push_from(11, 20, 2, b"6,14,104,-;x\n msgid=2\n");
    assert!(
        matches!(
            events.as_slice(),
            [Event::Lost(_), Event::Lost(l), Event::Record(_)] if (l.kind, l.first, l.last, l.count) == (LossKind::Msgid, 1, 1, 1)
        ),
        "{events:?}"
    );
}

#[test]
fn forged_msgid_does_not_switch_off_gap_detection() {
    let mut h = Harness::new();
    h.push(0, b"6,1,10,-;a\n msgid=1\n");
    // A forged record moves the msgid half the u32 range ahead, the seq by one: taking it
    // would make every real msgid after it look old.
    let events = h.push(1, b"6,2,20,-;forged\n msgid=2147483647\n");
    match events.as_slice() {
        [Event::Malformed(m), Event::Record(r)] => {
            assert!(
                matches!(
                    m.error,
                    DecodeError::MsgidJump {
                        previous: 1,
                        msgid: 2_147_483_647,
                        ..
                    }
                ),
                "{m:?}"
            );
            assert_eq!(r.text, b"forged");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.dec.stats().suspicious, 1);
    assert_eq!(h.dec.stats().msgid_lost, 0);
    // The real sender goes on, and its next lost message is still seen.
    assert_eq!(h.push(2, b"6,3,30,-;b\n msgid=2\n").len(), 1);
    let events = h.push(3, b"6,5,50,-;d\n msgid=4\n");
    assert!(
        events.iter().any(|e| matches!(e, Event::Lost(l) if l.kind == LossKind::Msgid && l.first == 3 && l.count == 1)),
        "{events:?}"
    );
}

#[test]
fn seq_jump_beyond_any_real_loss_is_suspicious_and_ignored() {
    let mut h = Harness::new();
    h.push(0, b"6,100,1000,-;a\n");
    let forged = format!("6,{},1001,-;forged\n", u64::MAX - 1);
    let events = h.push(1, forged.as_bytes());
    match events.as_slice() {
        [Event::Malformed(m)] => {
            assert_eq!(
                m.error,
                DecodeError::SeqJump {
                    previous: 100,
                    seq: u64::MAX - 1
                }
            );
            assert_eq!(m.payload, forged.as_bytes());
            let text = crate::sink::text::format_event(&events[0]);
            assert!(
                text.contains("suspicious seq 18446744073709551614"),
                "{text}"
            );
            let mut json = String::new();
            crate::sink::json::write_event(&events[0], &mut json);
            assert!(
                json.contains(r#""error":"suspicious seq 18446744073709551614"#),
                "{json}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The sender's sequence is where it was: the next record is the next one.
    assert_eq!(records(&h.push(2, b"6,101,1002,-;b\n")).len(), 1);
    let stats = h.dec.stats();
    assert_eq!((stats.records_lost, stats.late, stats.reboots), (0, 0, 0));
    assert_eq!((stats.suspicious, stats.malformed), (1, 1));
    // A jump of exactly 2^32 is still taken as a loss, and counting it does not wrap.
    let events = h.push(
        3,
        format!("6,{},1003,-;far\n", 101 + (1u64 << 32)).as_bytes(),
    );
    assert!(
        matches!(events.as_slice(), [Event::Lost(l), Event::Record(_)] if l.count == (1 << 32) - 1)
    );
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
    assert_eq!(r.format, Format::Plain);
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

// Property tests.

/// Text without commas, so that no piece of a plain stream looks like an extended header.
fn plain_text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b' '),
            Just(b'['),
            Just(b']'),
            Just(b'.'),
            Just(b'7'),
            Just(b'\t'),
            Just(0xc3),
            Just(0xa9),
            Just(0xff),
        ],
        0..40,
    )
}

fn plain_stream() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>)> {
    prop::collection::vec((plain_text(), prop::option::of(0u64..100_000_000)), 1..20).prop_map(
        |lines| {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (text, ts) in lines {
                let mut line = Vec::new();
                if let Some(ts) = ts {
                    let mut p = String::new();
                    let _ = write!(p, "[{:5}.{:06}] ", ts / 1_000_000, ts % 1_000_000);
                    line.extend_from_slice(p.as_bytes());
                }
                line.extend_from_slice(&text);
                expected.push(plain::parse_lines(&line).text);
                stream.extend_from_slice(&line);
                stream.push(b'\n');
            }
            (expected, stream)
        },
    )
}

proptest! {
    #[test]
    fn any_split_of_plain_payloads_gives_the_same_lines(
        (expected, stream) in plain_stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len())).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut h = Harness::with(DecoderConfig {
            // Identical pieces are legitimate here.
            duplicate_history: 0,
            ..DecoderConfig::default()
        });
        let mut events = Vec::new();
        for w in cuts.windows(2) {
            events.extend(h.push(0, &stream[w[0]..w[1]]));
        }
        events.extend(h.flush());
        let lines: Vec<Vec<u8>> = records(&events)
            .iter()
            .flat_map(|r| r.lines().map(<[u8]>::to_vec).collect::<Vec<_>>())
            .collect();
        prop_assert_eq!(lines, expected);
        prop_assert!(records(&events).iter().all(|r| !r.flags.partial));
    }

    #[test]
    fn any_kernel_fragmentation_in_any_order_with_duplicates_gives_the_original(
        text in prop::collection::vec(any::<u8>(), 0..3000),
        fields in prop::collection::vec(("[A-Za-z_]{1,10}", prop::collection::vec(any::<u8>(), 0..30)), 0..4),
        max in 80usize..=1000,
        order in any::<prop::sample::Index>(),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        dedupe in any::<bool>(),
    ) {
        let mut body = kernel_escape(&text);
        body.push(b'\n');
        for (k, v) in &fields {
            body.push(b' ');
            body.extend_from_slice(k.as_bytes());
            body.push(b'=');
            body.extend_from_slice(&kernel_escape(v));
            body.push(b'\n');
        }
        let frags = kernel_fragments("6.12.95+deb12-amd64,14,595,8439407,-,caller=T1", &body, max);
        // Any order: a rotation and a reversal chosen by `order`, then duplicates anywhere.
        let n = frags.len();
        let mut seq: Vec<usize> = (0..n).collect();
        seq.rotate_left(order.index(n));
        if order.index(2) == 1 {
            seq.reverse();
        }
        for d in &dups {
            let at = d.index(seq.len() + 1);
            seq.insert(at, d.index(n));
        }
        let mut h = Harness::with(DecoderConfig {
            duplicate_history: if dedupe { DEFAULT_DUPLICATE_HISTORY } else { 0 },
            ..DecoderConfig::default()
        });
        let mut events = Vec::new();
        for (i, f) in seq.iter().enumerate() {
            events.extend(h.push(u64::try_from(i).unwrap_or(0), &frags[*f]));
        }
        events.extend(h.flush());
        let recs = records(&events);
        prop_assert_eq!(recs.len(), 1, "{:?}", events);
        let r = recs[0];
        prop_assert_eq!(&r.text, &text);
        prop_assert_eq!(r.fields.len(), fields.len());
        for (f, (k, v)) in r.fields.iter().zip(&fields) {
            prop_assert_eq!(&f.key, k.as_bytes());
            prop_assert_eq!(&f.value, v);
        }
        prop_assert_eq!(r.release.as_deref(), Some("6.12.95+deb12-amd64"));
        prop_assert_eq!(r.caller.clone(), Some(Caller::Task(1)));
        prop_assert!(r.flags.fragmented);
        prop_assert_eq!(r.flags.incomplete, None);
        prop_assert!(!events.iter().any(|e| matches!(e, Event::Malformed(_) | Event::Lost(_))));
    }

    #[test]
    fn no_input_panics_or_leaks_past_its_bounds(
        payloads in prop::collection::vec((0u8..4, prop::collection::vec(any::<u8>(), 0..200), 0u64..2000), 0..40),
    ) {
        let mut h = Harness::with(DecoderConfig {
            max_senders: 2,
            max_fragment_entries: 2,
            ..DecoderConfig::default()
        });
        let mut now = 0;
        for (from, payload, step) in &payloads {
            now += step;
            h.push_from(now, *from, 1, payload);
            h.poll(now);
        }
        prop_assert!(h.dec.stats().senders <= 2);
        prop_assert!(h.dec.assembler.len() <= 2);
        h.flush();
        prop_assert!(h.dec.assembler.is_empty());
    }
}

// The memory budget and hostile senders.

/// The continuation flood: `6,N,T,c;` datagrams whose bodies are hundreds of empty dictionary
/// lines, one a millisecond, each continuing the one before.
fn continuation_flood(h: &mut Harness, from: u8, count: u64) -> Vec<Event> {
    let body = " \n".repeat(600);
    let mut out = Vec::new();
    for n in 0..count {
        let payload = format!("6,{n},{},c;\n{body}", n * 1000);
        out.extend(h.push_from(n, from, 2, payload.as_bytes()));
        assert!(h.dec.budget().used() <= h.dec.budget().limit());
        assert_eq!(h.dec.budget().used(), h.dec.held_bytes());
    }
    out
}

#[test]
fn continuation_flood_stays_bounded_and_is_emitted_cut() {
    let mut h = Harness::new();
    let events = continuation_flood(&mut h, 10, 2_000);
    // Each piece alone has more fields than a chain may: out at once, marked partial.
    let recs = records(&events);
    assert_eq!(recs.len(), 2_000);
    assert!(recs.iter().all(|r| r.flags.partial && r.flags.continued));
    assert_eq!(h.dec.stats().continuations_cut, 2_000);
    // Nothing held beyond the sender's own entry and its duplicate history.
    assert!(
        h.dec.budget().peak() < 16 * 1024,
        "{}",
        h.dec.budget().peak()
    );
}

#[test]
fn continuation_chain_is_cut_at_its_byte_bound() {
    let mut h = Harness::new();
    let piece = "x".repeat(900);
    let mut recs = 0;
    for n in 0..20u64 {
        let events = h.push(n, format!("6,{n},{},c;{piece}\n", n * 1000).as_bytes());
        for r in records(&events) {
            recs += 1;
            assert!(r.flags.partial && r.text.len() <= DEFAULT_MAX_CONTINUATION_BYTES);
        }
    }
    // 9 pieces of 900 bytes fit in 8 KiB: two chains cut, the third still held.
    assert_eq!(recs, 2);
    assert_eq!(h.dec.stats().continuations_cut, 2);
    let rest = h.flush();
    assert_eq!(one_record(&rest).text.len(), 2 * 900);
    assert_eq!(h.dec.stats().continuations_joined, 17);
}

#[test]
fn full_budget_emits_the_oldest_held_state_first() {
    // Room for a few senders' partial lines only.
    let budget = crate::budget::MemoryBudget::new(24 * 1024);
    let mut h = Harness {
        dec: Decoder::with_budget(DecoderConfig::default(), budget.clone()),
        t0: Instant::now(),
    };
    let mut emitted = Vec::new();
    for n in 0..100u8 {
        let line = format!("partial line {n:03} {}", "y".repeat(2000));
        emitted.extend(h.push_from(u64::from(n), n, 2, line.as_bytes()));
        assert!(budget.used() <= budget.limit());
        assert_eq!(budget.used(), h.dec.held_bytes());
    }
    assert!(h.dec.stats().budget_shed > 0);
    // The ones emitted early are the oldest, in order, and marked partial.
    let early: Vec<&Record> = records(&emitted);
    assert!(!early.is_empty());
    for (i, r) in early.iter().enumerate() {
        assert!(r.flags.partial);
        assert!(
            r.text
                .starts_with(format!("partial line {i:03}").as_bytes()),
            "{i}"
        );
    }
    // Nothing lost: the rest comes out on flush.
    emitted.extend(h.flush());
    assert_eq!(records(&emitted).len(), 100);
    drop(h);
    assert_eq!(budget.used(), 0);
}

#[test]
fn spoofed_spray_does_not_evict_an_active_sender() {
    let mut h = Harness::with(DecoderConfig {
        max_senders: 1_000,
        ..DecoderConfig::default()
    });
    let spoofed = |n: u32| {
        let [_, _, hi, lo] = n.to_be_bytes();
        SocketAddr::from(([10, 99, hi, lo], 6665))
    };
    let mut seq = 0u64;
    let mut ms = 0u64;
    for round in 0..10u32 {
        // The victim: two records, one of them opening a crash report.
        for _ in 0..2 {
            seq += 1;
            let text = if seq == 1 {
                "Kernel panic - not syncing: x"
            } else {
                "RIP: y"
            };
            let events = h.push(ms, format!("0,{seq},{},-;{text}\n", ms * 1000).as_bytes());
            assert_eq!(records(&events).len(), 1, "{events:?}");
            assert!(
                records(&events)[0].flags.panic.is_some(),
                "round {round}: {events:?}"
            );
        }
        // Then more one-off sources than the table holds.
        for n in 0..1_500 {
            let mut out = Vec::new();
            h.dec.push(
                h.at(ms),
                Incoming {
                    received: wall(ms),
                    ifindex: 2,
                    src: spoofed(round * 1_500 + n),
                    payload: b"[    1.000000] spoofed\n",
                },
                &mut out,
            );
        }
        ms += 1;
    }
    assert!(h.dec.stats().senders_evicted >= 14_000);
    // The victim was never evicted: its sequence still shows a gap, its report is still open.
    let events = h.push(
        ms,
        format!("4,{},{},-;Call Trace:\n", seq + 2, ms * 1000).as_bytes(),
    );
    match events.as_slice() {
        [Event::Lost(l), Event::Record(r)] => {
            assert_eq!(l.count, 1);
            assert!(r.flags.panic.is_some_and(|p| !p.begins));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn counters_saturate() {
    let mut h = Harness::new();
    h.push(0, b"6,0,0,-;a\n");
    h.push(1, format!("6,{},1,-;b\n", 1u64 << 32).as_bytes());
    h.dec.stats.records_lost = u64::MAX - 5;
    h.push(2, format!("6,{},2,-;c\n", 2u64 << 32).as_bytes());
    assert_eq!(h.dec.stats().records_lost, u64::MAX);
}
