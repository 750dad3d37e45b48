//! The real kernel captures (`tests/data`; see its README):
//! decoding `plain.pcap` and `ext.pcap` yields every record the guest wrote, byte for byte, in
//! order, with no loss, no duplicates and nothing malformed.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use netcon::netconsole::{
    Decoder, DecoderConfig, DecoderStats, Event, Incoming, Record, RecordFormat,
};
use netcon::sink::text::write_event;
use netcon::wire::Datagram;
use pcap_file::pcap::PcapReader;
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Feeds every frame of a capture to a decoder, with the capture's timestamps as both the wall
/// clock and (relative to the first frame) the monotonic clock, polling timers as time passes.
fn decode(pcap: &str) -> (Vec<Event>, DecoderStats) {
    let file = File::open(data(pcap)).expect("open capture");
    let mut reader = PcapReader::new(file).expect("pcap header");
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut events = Vec::new();
    let base = Instant::now();
    let mut first: Option<Duration> = None;
    let mut frames = 0;
    while let Some(packet) = reader.next_packet() {
        let packet = packet.expect("pcap record");
        let ts = packet.timestamp;
        let first = *first.get_or_insert(ts);
        let now = base + ts.saturating_sub(first);
        let received: DateTime<Utc> = DateTime::from_timestamp(
            i64::try_from(ts.as_secs()).expect("time"),
            ts.subsec_nanos(),
        )
        .expect("time");
        let datagram = Datagram::parse(&packet.data).expect("UDP frame");
        assert_eq!(datagram.dst.port(), 6666);
        decoder.poll(now, &mut events);
        decoder.push(
            now,
            Incoming {
                received,
                ifindex: 1,
                src: datagram.src,
                payload: datagram.payload,
            },
            &mut events,
        );
        frames += 1;
    }
    assert!(frames > 400, "{pcap}: only {frames} frames");
    decoder.flush(&mut events);
    (events, decoder.stats().clone())
}

struct Expected {
    name: String,
    prio: u8,
    text: Vec<u8>,
}

fn expected(json: &str) -> (String, Vec<Expected>) {
    let file = File::open(data(json)).expect("open expected");
    let doc: Value = serde_json::from_reader(file).expect("expected json");
    let runid = doc["runid"].as_str().expect("runid").to_owned();
    let records = doc["records"]
        .as_array()
        .expect("records")
        .iter()
        // LONG3K: the guest's write failed (`rejected`), so the kernel never logged it.
        .filter(|r| r.get("rejected").is_none())
        .map(|r| Expected {
            name: r["name"].as_str().expect("name").to_owned(),
            prio: u8::try_from(r["prio"].as_u64().expect("prio")).expect("prio"),
            text: hex(r["text_hex"].as_str().expect("text_hex")),
        })
        .collect();
    (runid, records)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The records the guest wrote (text starting `NCT-<runid> `), checked against the expected
/// list. Returns them for mode-specific checks.
fn check_common<'a>(
    pcap: &str,
    events: &'a [Event],
    stats: &DecoderStats,
    runid: &str,
    expected: &[Expected],
) -> Vec<&'a Record> {
    for e in events {
        assert!(
            matches!(e, Event::Record(_)),
            "{pcap}: unexpected event {e:?}"
        );
    }
    assert_eq!(stats.records_lost, 0, "{pcap}");
    assert_eq!(stats.duplicates, 0, "{pcap}");
    assert_eq!(stats.malformed, 0, "{pcap}");
    assert_eq!(stats.reboots, 0, "{pcap}");
    assert_eq!(stats.bad_escapes, 0, "{pcap}");
    assert_eq!(stats.incomplete_records, 0, "{pcap}");
    assert_eq!(stats.partial_lines, 0, "{pcap}");

    let marker = format!("NCT-{runid} ");
    let ours: Vec<&Record> = events
        .iter()
        .filter_map(Event::as_record)
        .filter(|r| r.text.starts_with(marker.as_bytes()))
        .collect();
    let names = |v: &[&Record]| -> Vec<String> {
        v.iter()
            .map(|r| String::from_utf8_lossy(&r.text[..r.text.len().min(40)]).into_owned())
            .collect()
    };
    assert_eq!(
        ours.len(),
        expected.len(),
        "{pcap}: decoded {:?}",
        names(&ours)
    );
    for (r, e) in ours.iter().zip(expected) {
        assert!(
            r.text == e.text,
            "{pcap}: {} differs:\n got  {:?}\n want {:?}",
            e.name,
            String::from_utf8_lossy(&r.text),
            String::from_utf8_lossy(&e.text)
        );
        assert!(
            !r.flags.partial && r.flags.incomplete.is_none(),
            "{pcap}: {}",
            e.name
        );
        // Every record the guest wrote came live: the boot estimate puts its kernel time
        // shortly before its receive time, never after.
        let kt = r.kernel_time.expect("kernel time");
        let lag = r.received - kt;
        assert!(
            lag >= chrono::TimeDelta::zero() && lag < chrono::TimeDelta::milliseconds(100),
            "{pcap}: {} kernel time {kt} vs received {}",
            e.name,
            r.received
        );
    }
    let burst: Vec<&&Record> = ours
        .iter()
        .filter(|r| r.text.starts_with(format!("{marker}BURST ").as_bytes()))
        .collect();
    assert_eq!(burst.len(), 200, "{pcap}: BURST001..200");
    for (i, r) in burst.iter().enumerate() {
        assert!(
            r.text
                .ends_with(format!("BURST {:03}/200", i + 1).as_bytes()),
            "{pcap}: burst out of order at {i}"
        );
    }
    let multi = ours
        .iter()
        .zip(expected)
        .find(|(_, e)| e.name == "MULTI")
        .expect("MULTI")
        .0;
    assert_eq!(multi.lines().count(), 3, "{pcap}: MULTI has three lines");

    // The default text rendering is safe for a terminal.
    let mut text = String::new();
    for e in events {
        write_event(e, &mut text);
    }
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{pcap}: control character in text output"
    );
    // One line per record, plus the extra lines of multi-line records (MULTI).
    assert!(text.lines().count() > events.len(), "{pcap}");
    ours
}

#[test]
fn ext_pcap_yields_every_record() {
    let (events, stats) = decode("ext.pcap");
    let (runid, expected) = expected("ext.expected.json");
    let ours = check_common("ext.pcap", &events, &stats, &runid, &expected);
    // Seq 0..=590, one record each; LONG came as 2 fragments and LONGX as 4.
    assert_eq!(stats.records, 591);
    assert_eq!(stats.datagrams, 595);
    assert_eq!(stats.fragments, 6);
    assert_eq!(stats.reassembled, 2);
    for (r, e) in ours.iter().zip(&expected) {
        assert_eq!(r.format, RecordFormat::Extended);
        let p = r.priority.expect("priority");
        // /dev/kmsg writes with facility user (1) unless the prefix names another one.
        let facility = if e.prio < 8 { 1 } else { e.prio >> 3 };
        assert_eq!(
            (p.facility, p.level),
            (facility, e.prio & 7),
            "{}: written with <{}>",
            e.name,
            e.prio
        );
        assert_eq!(
            r.flags.fragmented,
            e.name == "LONG" || e.name == "LONGX",
            "{}",
            e.name
        );
    }
    let facility = ours
        .iter()
        .zip(&expected)
        .find(|(_, e)| e.name == "FACILITY")
        .expect("FACILITY")
        .0;
    let p = facility.priority.expect("priority");
    assert_eq!(
        (p.facility_name(), p.level_name()),
        (Some("daemon"), "info")
    );
    // The boot log replayed at netconsole start: its dictionaries survive.
    let pci = events
        .iter()
        .filter_map(Event::as_record)
        .find(|r| r.seq == Some(220))
        .expect("seq 220");
    assert_eq!(pci.field(b"SUBSYSTEM"), Some(&b"pci_bus"[..]));
}

#[test]
fn plain_pcap_yields_every_record() {
    let (events, stats) = decode("plain.pcap");
    let (runid, expected) = expected("plain.expected.json");
    let ours = check_common("plain.pcap", &events, &stats, &runid, &expected);
    // 590 payloads; LONG came as a 1000-byte payload and a 2-byte one.
    assert_eq!(stats.datagrams, 590);
    assert_eq!(stats.records, 589);
    for r in &ours {
        assert_eq!(r.format, RecordFormat::Plain);
        assert!(r.timestamp_us.is_some());
    }
}

/// A crash-and-reboot capture from `cargo xtask vm-test` (see `tests/data/README.md`): the
/// decoder's events, its stats, and the records' texts.
fn decode_crash(pcap: &str) -> (Vec<Event>, DecoderStats) {
    let (events, stats) = decode(pcap);
    assert_eq!(stats.records_lost, 0, "{pcap}");
    assert_eq!(stats.msgid_lost, 0, "{pcap}");
    assert_eq!(stats.malformed, 0, "{pcap}");
    assert_eq!(stats.reboots, 1, "{pcap}");
    (events, stats)
}

/// The one `rebooted` event comes right before the new boot's first record, which
/// `first_of_new_boot` recognises; every record before it is of the old boot and every one
/// after it of the new (`boot_of` tells).
fn assert_rebooted_at_first_record(
    pcap: &str,
    events: &[Event],
    first_of_new_boot: impl Fn(&Record) -> bool,
    boot_of: impl Fn(&Record) -> Option<usize>,
) {
    let at = events
        .iter()
        .position(|e| matches!(e, Event::Rebooted(_)))
        .expect("a rebooted event");
    let next = events[at + 1].as_record().expect("a record after rebooted");
    assert!(
        first_of_new_boot(next),
        "{pcap}: rebooted came before {:?}, not the new boot's first record",
        String::from_utf8_lossy(&next.text)
    );
    for (i, r) in events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, e.as_record()?)))
    {
        if let Some(boot) = boot_of(r) {
            assert_eq!(
                boot,
                usize::from(i > at),
                "{pcap}: {:?} on the wrong side of rebooted",
                String::from_utf8_lossy(&r.text)
            );
        }
    }
}

/// The record that says `Kernel panic - not syncing` begins a report and every record after
/// it is grouped under it, through the report's last line: `---[ end Kernel panic` when the
/// kernel halts, `Rebooting in N seconds..` when it resets (`kernel/panic.c`).
fn assert_panic_grouped(pcap: &str, records: &[&Record]) -> usize {
    let mut reports = 0;
    for (i, r) in records.iter().enumerate() {
        if !r.text.starts_with(b"Kernel panic - not syncing") {
            continue;
        }
        reports += 1;
        let mark = r.flags.panic.expect("panic mark");
        assert!(mark.begins, "{pcap}");
        if let Some(p) = r.priority {
            assert_eq!(p.level, 0, "{pcap}: the panic is kern.emerg");
        }
        for later in &records[i + 1..] {
            let m = later.flags.panic.expect("grouped");
            assert_eq!((m.event, m.begins), (mark.event, false), "{pcap}");
            if later.text.starts_with(b"---[ end Kernel panic")
                || later.text.starts_with(b"Rebooting in ")
            {
                break;
            }
        }
    }
    reports
}

/// Configfs targets (7.2, userdata `run=<runid>`, every sysdata): the new boot replays nothing,
/// so its first record is the one with msgid 1; every record's kernel time is its receive time
/// within a second, before and after the reboot (the boot estimate starts over there).
fn check_configfs_crash(pcap: &str, runs: [&str; 2]) {
    let (events, stats) = decode_crash(pcap);
    let boot_of = |r: &Record| {
        let run = r.field(b"run")?;
        runs.iter().position(|id| id.as_bytes() == run)
    };
    assert_rebooted_at_first_record(pcap, &events, |r| r.sysdata.msgid == Some(1), boot_of);
    let records: Vec<&Record> = events.iter().filter_map(Event::as_record).collect();
    assert!(records.iter().all(|r| boot_of(r).is_some()), "{pcap}");
    for r in &records {
        let kt = r.kernel_time.expect("kernel time");
        let off = (r.received - kt).abs();
        assert!(
            off < chrono::TimeDelta::seconds(1),
            "{pcap}: {:?} (seq {:?}) kernel time {kt}, received {}",
            String::from_utf8_lossy(&r.text),
            r.seq,
            r.received
        );
    }
    // kernel.panic=3 then 0 on an nbcon netconsole: only the halted boot's report arrived.
    assert_eq!(assert_panic_grouped(pcap, &records), 1, "{pcap}");
    assert_eq!(stats.panics, 1, "{pcap}");
    for run in runs {
        let end = format!("NCT-{run} END");
        assert!(
            records.iter().any(|r| r.text.starts_with(end.as_bytes())),
            "{pcap}: {end}"
        );
    }
}

#[test]
fn configfs_crash_and_reboot_a() {
    check_configfs_crash("crash-configfs-a.pcap", ["2b1bad", "7959e2"]);
}

#[test]
fn configfs_crash_and_reboot_b() {
    check_configfs_crash("crash-configfs-b.pcap", ["013fe4", "2ae6a1"]);
}

/// The hard case: the new boot's netconsole started when its clock was just below the old
/// boot's last record (0.22 s), with a sequence number below the old one, as a late record of
/// the old boot would look.
#[test]
fn configfs_crash_and_reboot_with_close_clocks() {
    let pcap = "crash-configfs-close.pcap";
    check_configfs_crash(pcap, ["f33d8b", "ede367"]);
    let (events, _) = decode(pcap);
    let at = events
        .iter()
        .position(|e| matches!(e, Event::Rebooted(_)))
        .expect("rebooted");
    let old = events[..at]
        .iter()
        .rev()
        .find_map(Event::as_record)
        .expect("old boot");
    let new = events[at + 1].as_record().expect("new boot");
    let (old_ts, new_ts) = (old.timestamp_us.unwrap(), new.timestamp_us.unwrap());
    assert!(
        new.seq < old.seq && new_ts < old_ts && old_ts - new_ts < 1_000_000,
        "{pcap}: seq {:?} -> {:?}, timestamp {old_ts} -> {new_ts}",
        old.seq,
        new.seq
    );
}

/// Plain 6.1 (module parameter): each boot replays its log from `Linux version`; both crashes'
/// reports arrived whole (kernel.panic=1, then 0) and each is grouped under its panic.
#[test]
fn plain_crash_and_reboot() {
    let pcap = "crash-plain.pcap";
    let (events, stats) = decode_crash(pcap);
    let runs = ["eabfc3", "310e41"];
    let boot_of = |r: &Record| {
        runs.iter()
            .position(|id| r.text.starts_with(format!("NCT-{id} ").as_bytes()))
    };
    let mut versions = 0;
    assert_rebooted_at_first_record(
        pcap,
        &events,
        |r| r.text.starts_with(b"Linux version "),
        boot_of,
    );
    let records: Vec<&Record> = events.iter().filter_map(Event::as_record).collect();
    for r in &records {
        assert_eq!(r.format, RecordFormat::Plain);
        versions += usize::from(r.text.starts_with(b"Linux version "));
    }
    assert_eq!(versions, 2, "{pcap}: two boots, each replayed");
    assert_eq!(assert_panic_grouped(pcap, &records), 2, "{pcap}");
    assert_eq!(stats.panics, 2, "{pcap}");
}
