//! `netcon-sniff -r FILE` on the real kernel captures in `netcon-user/tests/data/` (a
//! Debian 6.1 kernel's netconsole, plain and extended), from a path and
//! from standard input, without privileges, and its errors on files that are not captures.
//!
//! What the binary prints is checked against the files as read by this crate's own pcap reader
//! and etherparse, not against the binary's own decoding. The interface column of `-r` output is
//! not asserted (the file's interface, named or numbered).

use std::net::{IpAddr, SocketAddr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
mod common;

use common::expected::expected_records;
use netcon_testkit::{
    LINKTYPE_ETHERNET, Netns, PcapFile, RawLine, Sniffer, TempDir, fixture, rfc3339_micros,
    without_stats, write_file,
};

/// Frames in the fixtures (their README).
const PLAIN_FRAMES: usize = 590;
const EXT_FRAMES: usize = 595;

/// Source, destination and UDP payload of an Ethernet frame.
fn decode(frame: &[u8]) -> (SocketAddr, SocketAddr, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(frame)
        .unwrap_or_else(|e| panic!("fixture frame does not parse ({e}): {frame:02x?}"));
    let (src, dst): (IpAddr, IpAddr) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        other => panic!("fixture frame is not IP: {other:?}"),
    };
    let Some(TransportSlice::Udp(udp)) = &p.transport else {
        panic!("fixture frame is not UDP: {frame:02x?}")
    };
    (
        SocketAddr::new(src, udp.source_port()),
        SocketAddr::new(dst, udp.destination_port()),
        udp.payload().to_vec(),
    )
}

/// `-r` on a fixture: one line per frame, in order, each with the frame's time, addresses and
/// payload; the stderr contract; every simple record the guest wrote in exactly one line.
fn read_fixture(name: &str, frames: usize) {
    let path = fixture(&format!("{name}.pcap"));
    let arg = path.to_str().expect("UTF-8 path");
    let file = PcapFile::read(&path);
    assert_eq!(file.link_type, LINKTYPE_ETHERNET);
    assert_eq!(file.records.len(), frames, "frames in {arg}");

    let run = Sniffer::read_file(arg, None);
    let n = u64::try_from(frames).unwrap();
    assert_eq!(
        without_stats(&run.stderr),
        [format!("reading {arg}, ports 6666")],
        "stderr of -r {arg} besides the summary"
    );
    // The prose summary (the default format): the stats line (repeated counters) is the
    // binary's own business; everything else is exactly the contract.
    let mut text = Sniffer::start_offline(
        &["-r", arg, "--format", "raw", "--stats-format", "text"],
        None,
    );
    let (status, stderr) = text.wait();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        without_stats(text.stderr_lines()),
        [
            format!("reading {arg}, ports 6666"),
            format!("netcon-sniff: file counters: read={n} skipped=0"),
            format!("netcon-sniff: printed {n} datagrams"),
        ],
        "stderr of -r {arg} --stats-format text"
    );
    let counters = run.summary.file();
    assert_eq!(
        (counters.read, counters.skipped, run.summary.printed),
        (n, 0, n)
    );
    assert_eq!(run.lines.len(), frames, "lines of -r {arg}");

    let mut payloads = Vec::with_capacity(frames);
    for (i, (text, rec)) in run.lines.iter().zip(&file.records).enumerate() {
        let line = RawLine::parse_any_time(text);
        let (src, dst, payload) = decode(&rec.data);
        assert_eq!(
            line.ts,
            rfc3339_micros(rec.ts_sec.into(), rec.ts_nsec),
            "frame {i}: the file's time: {text:?}"
        );
        assert_eq!((line.src, line.dst), (src, dst), "frame {i}: {text:?}");
        assert_eq!(
            line.payload_bytes(),
            payload,
            "frame {i}: payload of {text:?}"
        );
        payloads.push(payload);
    }

    // The records the decoder must print each in one line.
    let records: Vec<(String, Vec<u8>)> = expected_records(name)
        .into_iter()
        .filter(|r| r.kind == "marker" || r.kind == "burst")
        .map(|r| (r.name, r.text))
        .collect();
    assert_eq!(records.len(), 213, "marker and burst records of {name}");
    let mut checked = 0;
    for (rec_name, text) in &records {
        // Records with controls, non-ASCII or several lines are not one substring of a plain
        // or extended payload; the decoder's tests cover those.
        if !text.iter().all(|b| (0x20..0x7f).contains(b)) {
            continue;
        }
        let hits = payloads
            .iter()
            .filter(|p| p.windows(text.len()).any(|w| w == text.as_slice()))
            .count();
        assert_eq!(
            hits,
            1,
            "{name}: record {rec_name} ({:?}) is in {hits} datagrams",
            String::from_utf8_lossy(text)
        );
        checked += 1;
    }
    // SHORT, LEVEL0..7, FACILITY, END and the 200 burst records.
    assert_eq!(checked, 211, "{name}: simple records checked");
}

#[test]
fn read_plain_fixture() {
    read_fixture("plain", PLAIN_FRAMES);
}

#[test]
fn read_ext_fixture() {
    read_fixture("ext", EXT_FRAMES);
}

/// `-r -` reads standard input and prints exactly what `-r FILE` prints.
#[test]
fn read_stdin_matches_file() {
    for (name, frames) in [("plain", PLAIN_FRAMES), ("ext", EXT_FRAMES)] {
        let path = fixture(&format!("{name}.pcap"));
        let arg = path.to_str().expect("UTF-8 path");
        let from_file = Sniffer::read_file(arg, None);
        let bytes = std::fs::read(&path).expect("readable fixture");
        let from_stdin = Sniffer::read_file("-", Some(bytes));
        assert_eq!(from_stdin.lines.len(), frames, "lines of -r - < {arg}");
        assert_eq!(
            from_stdin.lines, from_file.lines,
            "-r - and -r {arg} print different lines"
        );
        assert_eq!(from_stdin.stderr[0], "reading -, ports 6666");
        assert_eq!(from_stdin.summary, from_file.summary);
    }
}

/// `-r FILE` needs no privilege: it works with every capability dropped (as uid 0, so the
/// root-owned checkout stays readable), where a live capture is refused.
#[test]
fn read_needs_no_privileges() {
    let ns = Netns::new("c0");
    let path = fixture("plain.pcap");
    let arg = path.to_str().expect("UTF-8 path");
    let mut s = Sniffer::start_unprivileged(&ns, &["-r", arg, "--format", "raw"], None);
    let (status, stderr) = s.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "-r without capabilities; stderr:\n{stderr}"
    );
    assert_eq!(s.stdout_lines().len(), PLAIN_FRAMES);

    // The same launch really has no privilege: a raw socket is refused.
    let mut s = Sniffer::start_unprivileged(
        &ns,
        &["-i", "lo", "--backend", "raw", "--format", "raw"],
        None,
    );
    let (status, stderr) = s.wait();
    assert_eq!(
        status.code(),
        Some(2),
        "live capture without capabilities; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("CAP_NET_RAW"),
        "the refusal does not say what is missing:\n{stderr}"
    );
}

/// Runs `-r ARG` (with `stdin` for `-`) and checks a clean failure: exit 2, one stderr line
/// that mentions `mention`, nothing on stdout.
fn assert_rejected(arg: &str, stdin: Option<Vec<u8>>, mention: &str) {
    let mut s = Sniffer::start_offline(&["-r", arg, "--format", "raw"], stdin);
    let (status, stderr) = s.wait();
    assert_eq!(
        status.code(),
        Some(2),
        "-r {arg}: exit status; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "-r {arg}: expected one stderr line:\n{stderr}"
    );
    assert!(
        lines[0].contains(mention),
        "-r {arg}: the error does not mention {mention:?}: {}",
        lines[0]
    );
    for bad in ["panicked", "backtrace"] {
        assert!(!stderr.contains(bad), "{bad:?} in stderr:\n{stderr}");
    }
    assert!(
        s.stdout_lines().is_empty(),
        "stdout: {:?}",
        s.stdout_lines()
    );
}

/// Bytes that are no capture: text, then binary.
fn garbage() -> Vec<u8> {
    let mut bytes = b"this is not a capture file\n".repeat(8);
    bytes.extend((0..=255u8).rev());
    bytes
}

#[test]
fn garbage_file_is_a_one_line_error() {
    let dir = TempDir::new("garbage");
    let path = dir.join("garbage.pcap");
    write_file(&path, &garbage());
    let arg = path.to_str().expect("UTF-8 path");
    assert_rejected(arg, None, arg);
}

#[test]
fn garbage_on_stdin_is_a_one_line_error() {
    assert_rejected("-", Some(garbage()), "-");
}

#[test]
fn empty_file_is_a_one_line_error() {
    let dir = TempDir::new("empty");
    let path = dir.join("empty.pcap");
    write_file(&path, b"");
    let arg = path.to_str().expect("UTF-8 path");
    assert_rejected(arg, None, arg);
}

#[test]
fn missing_file_is_a_one_line_error() {
    let dir = TempDir::new("missing");
    let path = dir.join("nosuch.pcap");
    let arg = path.to_str().expect("UTF-8 path");
    assert_rejected(arg, None, arg);
}

/// A capture cut off mid-frame (a `tcpdump -w -` that died): every complete frame before the
/// damage is printed, as `tcpdump -r` does, then one error line and exit 2.
#[test]
fn truncated_capture_keeps_the_frames_before_the_cut() {
    // The first 30,000 bytes of plain.pcap hold 236 whole frames and part of the 237th.
    const WHOLE_FRAMES: usize = 236;
    let bytes = std::fs::read(fixture("plain.pcap")).expect("reading plain.pcap");
    let mut s = Sniffer::start_offline(
        &["-r", "-", "--format", "raw"],
        Some(bytes[..30_000].to_vec()),
    );
    let (status, stderr) = s.wait();
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    assert_eq!(s.stdout_lines().len(), WHOLE_FRAMES, "stderr:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
}
