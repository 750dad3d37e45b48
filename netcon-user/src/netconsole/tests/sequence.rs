//! Sequence numbers, msgids and boots: losses, late records, reboots, forged jumps.

use super::*;

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
